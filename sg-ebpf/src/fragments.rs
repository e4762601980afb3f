//! Fragments: a later fragment carries no ports, so it follows a first
//! fragment that passed, or a rule allowing its protocol on all ports.

use sg_common::*;

use crate::{
    conntrack::now_ns,
    maps::FRAGS,
    parse::Pkt,
    policy::{allows, identity},
    verdict::Pass,
};

#[inline(always)]
pub(crate) fn frag_key(ifindex: u32, p: &Pkt) -> FragKey {
    FragKey {
        ifindex,
        id: p.frag_id,
        family: p.family,
        proto: p.proto,
        _pad: 0,
        src: p.src,
        dst: p.dst,
    }
}

/// A fragment without the transport header: it follows its first fragment, or
/// passes when a rule allows its protocol on all ports from that peer.
#[inline(always)]
pub(crate) fn later_fragment(
    ifindex: u32,
    cfg: &IfaceCfg,
    dir: u8,
    p: &Pkt,
) -> Result<Pass, Reason> {
    let key = frag_key(ifindex, p);
    if let Some(t) = unsafe { FRAGS.get(key) } {
        let now = now_ns();
        if now.wrapping_sub(*t) <= TIMEOUT_FRAG_S as u64 * 1_000_000_000 {
            return Ok(Pass::Plain);
        }
    }
    let remote = if dir == DIR_INBOUND { &p.src } else { &p.dst };
    let allowed = identity(p.family, remote)
        .and_then(|id| allows(cfg.policy[dir as usize & 1], id, p.proto, 0, true));
    match allowed {
        Some(_) => Ok(Pass::Plain),
        None => Err(Reason::Fragment),
    }
}
