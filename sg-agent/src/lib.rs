//! sg-agent: AWS-style security groups for Linux interfaces, enforced by eBPF.
//!
//! The pure parts (configuration, compilation) need neither root nor a kernel
//! and are unit-tested here; `datapath` talks to the kernel.

pub mod agent;
pub mod api;
pub mod cli;
pub mod compile;
pub mod console;
pub mod control;
pub mod datapath;
pub mod describe;
pub mod file;
pub mod findings;
pub mod flowlog;
pub mod graph;
pub mod managed;
pub mod metrics;
pub mod model;
pub mod pins;
pub mod reload;
pub mod source;
pub mod store;
pub mod watch;
pub mod widen;
