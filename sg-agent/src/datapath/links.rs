//! tcx and XDP links: attached (or adopted from an earlier agent's pin, the
//! new program swapped in place), pinned under `<pin dir>/links`, detached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};

use super::Datapath;
use crate::model::IngressHook;

/// A program that can be attached to an interface through a link: tcx
/// (`SchedClassifier`) or XDP. One way down for both: adopt the pinned link
/// (replacing its program in place) or attach anew, then pin.
trait Attach {
    type Id;
    /// Attaches anew to `iface`.
    fn attach_new(&mut self, iface: &str) -> Result<Self::Id, ProgramError>;
    /// Replaces the program inside an existing link: an error converting
    /// the link is returned as such; one replacing the program (the device
    /// went away with its link) is the inner result.
    fn replace(&mut self, old: FdLink) -> Result<Result<Self::Id, ProgramError>>;
    fn take(&mut self, id: Self::Id) -> Result<FdLink>;
}

struct Tc<'a>(&'a mut SchedClassifier, TcAttachType);

impl Attach for Tc<'_> {
    type Id = aya::programs::tc::SchedClassifierLinkId;
    fn attach_new(&mut self, iface: &str) -> Result<Self::Id, ProgramError> {
        self.0.attach(iface, self.1)
    }
    fn replace(&mut self, old: FdLink) -> Result<Result<Self::Id, ProgramError>> {
        Ok(self.0.attach_to_link(SchedClassifierLink::try_from(old)?))
    }
    fn take(&mut self, id: Self::Id) -> Result<FdLink> {
        Ok(FdLink::try_from(self.0.take_link(id)?)?)
    }
}

impl Attach for Xdp {
    type Id = aya::programs::xdp::XdpLinkId;
    fn attach_new(&mut self, iface: &str) -> Result<Self::Id, ProgramError> {
        self.attach(iface, XdpMode::Default)
    }
    fn replace(&mut self, old: FdLink) -> Result<Result<Self::Id, ProgramError>> {
        Ok(self.attach_to_link(XdpLink::try_from(old)?))
    }
    fn take(&mut self, id: Self::Id) -> Result<FdLink> {
        Ok(FdLink::try_from(self.take_link(id)?)?)
    }
}

/// Adopts the link pinned at `pin` (swapping `prog` in) or attaches `prog`
/// to `iface` and pins the new link.
fn attach_pinned<P: Attach>(prog: &mut P, iface: &str, prog_name: &str, pin: &Path) -> Result<()> {
    let adopted = match PinnedLink::from_pin(pin) {
        Ok(old) => adopt(iface, prog_name, pin, prog.replace(FdLink::from(old))?),
        Err(_) => None,
    };
    let fresh = adopted.is_none();
    let id = match adopted {
        Some(id) => id,
        None => prog
            .attach_new(iface)
            .with_context(|| format!("attaching {prog_name} to {iface}"))?,
    };
    let link = prog.take(id)?;
    if fresh {
        link.pin(pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    // Dropping our handle leaves the link to its pin.
    Ok(())
}

impl Datapath {
    /// Attaches the programs to `name`: egress with tcx, ingress with tcx or
    /// XDP, each link pinned under `dir/links`. Where an earlier agent's link
    /// is pinned, the new program replaces the old one inside it atomically:
    /// enforcement never pauses. A changed ingress hook is attached before
    /// the old one goes, so no packet passes unjudged.
    pub fn attach(&mut self, name: &str, ifindex: u32, ingress: IngressHook) -> Result<()> {
        match ingress {
            IngressHook::Tcx => self.attach_tc(name, ifindex, TcAttachType::Ingress)?,
            IngressHook::Xdp => self.attach_xdp(name, ifindex)?,
        }
        self.attach_tc(name, ifindex, TcAttachType::Egress)?;
        let other = match ingress {
            IngressHook::Tcx => LINK_XDP,
            IngressHook::Xdp => LINK_TC_INGRESS,
        };
        unpin_link(&link_pin_at(&self.maps.dir, ifindex, other));
        self.links.insert(ifindex, ingress);
        Ok(())
    }

    fn attach_tc(&mut self, name: &str, ifindex: u32, hook: TcAttachType) -> Result<()> {
        let (prog_name, kind) = if hook == TcAttachType::Ingress {
            (self.progs.ingress, LINK_TC_INGRESS)
        } else {
            (self.progs.egress, LINK_TC_EGRESS)
        };
        let pin = link_pin_at(&self.maps.dir, ifindex, kind);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog_name)
            .context("program missing")?
            .try_into()?;
        attach_pinned(&mut Tc(prog, hook), name, prog_name, &pin)
    }

    fn attach_xdp(&mut self, name: &str, ifindex: u32) -> Result<()> {
        let pin = link_pin_at(&self.maps.dir, ifindex, LINK_XDP);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(self.progs.xdp)
            .context("program missing")?
            .try_into()?;
        attach_pinned(prog, name, self.progs.xdp, &pin)
    }

    /// The ingress hook this agent attached to the interface, if any.
    pub fn attached_hook(&self, ifindex: u32) -> Option<IngressHook> {
        self.links.get(&ifindex).copied()
    }
}

/// Names of an interface's link pins, `<ifindex>-<kind>`.
const LINK_TC_INGRESS: &str = "ingress";
const LINK_TC_EGRESS: &str = "egress";
const LINK_XDP: &str = "xdp";

pub(super) fn link_pin_at(dir: &Path, ifindex: u32, kind: &str) -> PathBuf {
    dir.join("links").join(format!("{ifindex}-{kind}"))
}

/// The outcome of replacing the program inside an earlier agent's link.
fn adopt<I>(name: &str, prog: &str, pin: &Path, replaced: Result<I, ProgramError>) -> Option<I> {
    match replaced {
        Ok(id) => {
            log::info!(
                "{name}: adopted the pinned {prog} link; the new program replaced the old in place"
            );
            Some(id)
        }
        Err(e) => {
            // The device went away with its link: start afresh.
            log::warn!(
                "{name}: pinned link {} is stale ({e}); attaching anew",
                pin.display()
            );
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// Detaches a link: unpinned, the last handle closes it.
pub(super) fn unpin_link(pin: &Path) {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            if let Err(e) = link.unpin() {
                log::warn!("unpinning {}: {e}", pin.display());
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(pin);
        }
    }
}

/// Detaches all of an interface's links.
pub(super) fn unpin_links_at(dir: &Path, ifindex: u32) {
    for kind in [LINK_TC_INGRESS, LINK_TC_EGRESS, LINK_XDP] {
        unpin_link(&link_pin_at(dir, ifindex, kind));
    }
}
