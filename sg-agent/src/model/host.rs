//! This host's identity (`--host-id`, by default the hostname). One state
//! can describe a fleet: an interface that names a host is enforced by that
//! host's agent only, while every agent counts its addresses as members of
//! its groups (docs/fleet.md). An interface without a host is enforced by
//! whichever agent has it, as on a single host.

use std::sync::OnceLock;

use super::{Desired, Interface, validate::valid_host};

static HOST: OnceLock<String> = OnceLock::new();

/// Sets this host's id, once, before any state is planned.
pub fn set(id: &str) -> Result<(), String> {
    if !valid_host(id) {
        return Err(format!(
            "--host-id {id:?}: a host id is 1-253 characters of a-z A-Z 0-9 . _ -"
        ));
    }
    HOST.set(id.to_string())
        .map_err(|_| "the host id is set once".to_string())
}

/// This host's id: the one set, or the hostname.
pub fn this() -> &'static str {
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    })
}

impl Interface {
    /// The interface is this host's to enforce.
    pub fn here(&self) -> bool {
        self.host.as_deref().is_none_or(|h| h == this())
    }
}

impl Desired {
    /// The interfaces this host enforces or detaches.
    pub fn local(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.iter().filter(|i| i.here())
    }
}
