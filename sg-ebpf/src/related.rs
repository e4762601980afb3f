//! Related ICMP (`related_icmp`): an error whose quoted header belongs to a
//! live tracked flow.

use network_types::ip::Ipv6Hdr;
use sg_common::*;

use crate::{
    conntrack::{ct_key, now_ns},
    context::{Frame, load},
    maps::CT,
    parse::{Pkt, bytes},
};

#[inline(always)]
pub(crate) fn icmp_is_error(family: u8, proto: u8, t: u8) -> bool {
    match (family, proto) {
        (FAMILY_V4, PROTO_ICMP) => matches!(t, 3 | 4 | 5 | 11 | 12),
        (FAMILY_V6, PROTO_ICMPV6) => matches!(t, 1..=4),
        _ => false,
    }
}

/// Is this ICMP error about a live tracked flow? The header it quotes went
/// the other way, so its source is our local end when the error is inbound.
#[inline(always)]
pub(crate) fn related<C: Frame>(ctx: &C, ifindex: u32, cfg: &IfaceCfg, dir: u8, p: &Pkt) -> bool {
    let off = p.l4_off + 8;
    let (proto, l4, src, dst) = if p.family == FAMILY_V4 {
        let Ok(w) = load::<[u32; 5], C>(ctx, off) else {
            return false;
        };
        let b: &[u8; 20] = bytes(&w);
        (
            b[9],
            off + (((b[0] & 0x0f) as usize * 4) & 0x3c),
            [w[3], 0, 0, 0],
            [w[4], 0, 0, 0],
        )
    } else {
        let Ok(w) = load::<[u32; 10], C>(ctx, off) else {
            return false;
        };
        let b: &[u8; 40] = bytes(&w);
        (
            b[6],
            off + Ipv6Hdr::LEN,
            [w[2], w[3], w[4], w[5]],
            [w[6], w[7], w[8], w[9]],
        )
    };
    let Ok(h) = load::<[u8; 8], C>(ctx, l4) else {
        return false;
    };
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => ([h[0], h[1]], [h[2], h[3]]),
        PROTO_ICMP | PROTO_ICMPV6 => ([h[4], h[5]], [0, 0]),
        _ => ([0, 0], [0, 0]),
    };
    let quoted_outbound = dir == DIR_INBOUND;
    let (local, remote, lport, rport) = if quoted_outbound {
        (src, dst, sport, dport)
    } else {
        (dst, src, dport, sport)
    };
    let key = ct_key(ifindex, p.family, proto, local, remote, lport, rport, sport);
    let Some(ct) = (unsafe { CT.get(key) }) else {
        return false;
    };
    let now = now_ns();
    now.wrapping_sub(ct.last_seen_ns) <= timeout_ns(cfg, ct.state, ct.flags)
}
