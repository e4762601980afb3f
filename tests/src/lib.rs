//! A testbed of network namespaces joined by veth pairs, for sg's kernel-level
//! tests and its demo: uniquely named namespaces (tests run in parallel),
//! traffic probes from inside them, and an `sg-agent` process handle. Every
//! resource is removed on drop.

mod agent;
mod api;
mod fleet;
mod netns;
mod terraform;
mod traffic;

pub use agent::*;
pub use api::*;
pub use fleet::*;
pub use netns::*;
pub use terraform::*;
pub use traffic::*;

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process, for names of namespaces and
/// directories.
fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
