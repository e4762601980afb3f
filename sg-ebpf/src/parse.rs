//! Parsing: Ethernet, IPv4 (options, fragments), IPv6 (extension headers,
//! bounded), and the transport header, into the parts the decision needs.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use sg_common::*;

use crate::context::{Frame, load};

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const ETH_P_ARP: u16 = 0x0806;

/// The parts of a packet the decision needs.
pub(crate) struct Pkt {
    pub(crate) family: u8,
    pub(crate) proto: u8,
    pub(crate) src: Addr,
    pub(crate) dst: Addr,
    /// Destination / source port in network order (ICMP: `[type, code]` in
    /// `dport`, the query identifier in `sport`).
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
    pub(crate) tcp_flags: u8,
    /// 0: not a fragment; 1: first fragment; 2: a later fragment (no L4 header).
    pub(crate) frag: u8,
    pub(crate) frag_id: u32,
    /// Offset of the transport header in the frame.
    pub(crate) l4_off: usize,
}

pub(crate) const FRAG_NONE: u8 = 0;
pub(crate) const FRAG_FIRST: u8 = 1;
pub(crate) const FRAG_LATER: u8 = 2;

/// The bytes of a header loaded as words (for aligned word access to the
/// addresses and cheap byte access to the rest).
#[inline(always)]
pub(crate) fn bytes<const W: usize, const B: usize>(w: &[u32; W]) -> &[u8; B] {
    const { assert!(W * 4 == B) };
    // SAFETY: same size, and u8 has no alignment requirement.
    unsafe { &*(w as *const [u32; W] as *const [u8; B]) }
}

#[inline(always)]
pub(crate) fn parse_v4<C: Frame>(ctx: &C) -> Result<Pkt, Reason> {
    let w: [u32; 5] = load(ctx, EthHdr::LEN)?;
    let b: &[u8; 20] = bytes(&w);
    let ihl = ((b[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if b[0] >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl {
        return Err(Reason::Malformed);
    }
    if EthHdr::LEN + tot_len > ctx.len() {
        return Err(Reason::Malformed);
    }
    let frags = u16::from_be_bytes([b[6], b[7]]);
    let offset = frags & 0x1fff;
    let more = frags & 0x2000 != 0;
    let mut pkt = Pkt {
        family: FAMILY_V4,
        proto: b[9],
        src: [w[3], 0, 0, 0],
        dst: [w[4], 0, 0, 0],
        sport: [0, 0],
        dport: [0, 0],
        tcp_flags: 0,
        frag: if offset != 0 {
            FRAG_LATER
        } else if more {
            FRAG_FIRST
        } else {
            FRAG_NONE
        },
        frag_id: u16::from_be_bytes([b[4], b[5]]) as u32,
        l4_off: 0,
    };
    if pkt.frag != FRAG_LATER {
        parse_l4(
            ctx,
            EthHdr::LEN + (ihl & 0x3c),
            EthHdr::LEN + tot_len,
            &mut pkt,
        )?;
    }
    Ok(pkt)
}

pub(crate) const NEXTHDR_HOP: u8 = 0;
pub(crate) const NEXTHDR_ROUTING: u8 = 43;
pub(crate) const NEXTHDR_FRAGMENT: u8 = 44;
pub(crate) const NEXTHDR_AUTH: u8 = 51;
pub(crate) const NEXTHDR_DEST: u8 = 60;

#[inline(always)]
pub(crate) fn parse_v6<C: Frame>(ctx: &C) -> Result<Pkt, Reason> {
    let w: [u32; 10] = load(ctx, EthHdr::LEN)?;
    let b: &[u8; 40] = bytes(&w);
    if b[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let end = EthHdr::LEN + Ipv6Hdr::LEN + u16::from_be_bytes([b[4], b[5]]) as usize;
    if end > ctx.len() {
        return Err(Reason::Malformed);
    }
    let mut pkt = Pkt {
        family: FAMILY_V6,
        proto: b[6],
        src: [w[2], w[3], w[4], w[5]],
        dst: [w[6], w[7], w[8], w[9]],
        sport: [0, 0],
        dport: [0, 0],
        tcp_flags: 0,
        frag: FRAG_NONE,
        frag_id: 0,
        l4_off: 0,
    };
    let mut off = EthHdr::LEN + Ipv6Hdr::LEN;
    // Up to MAX_EXT_HEADERS extension headers; one more is refused.
    for i in 0..=MAX_EXT_HEADERS {
        if !matches!(
            pkt.proto,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
        ) {
            break;
        }
        if i == MAX_EXT_HEADERS {
            return Err(Reason::ExtHeaders);
        }
        if pkt.proto == NEXTHDR_FRAGMENT {
            let h: [u8; 8] = load(ctx, off)?;
            let fo = u16::from_be_bytes([h[2], h[3]]);
            pkt.proto = h[0];
            pkt.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            off += 8;
            if fo & 0xfff8 != 0 {
                pkt.frag = FRAG_LATER;
            } else if fo & 1 != 0 {
                pkt.frag = FRAG_FIRST;
            }
        } else {
            let h: [u8; 2] = load(ctx, off)?;
            let len = if pkt.proto == NEXTHDR_AUTH {
                (h[1] as usize + 2) * 4
            } else {
                (h[1] as usize + 1) * 8
            };
            pkt.proto = h[0];
            off += len;
        }
        if off > end {
            return Err(Reason::Malformed);
        }
        if pkt.frag == FRAG_LATER {
            return Ok(pkt);
        }
    }
    parse_l4(ctx, off, end, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
pub(crate) fn parse_l4<C: Frame>(
    ctx: &C,
    off: usize,
    end: usize,
    pkt: &mut Pkt,
) -> Result<(), Reason> {
    pkt.l4_off = off;
    match pkt.proto {
        PROTO_TCP => {
            if off + TcpHdr::LEN > end {
                return Err(Reason::Malformed);
            }
            let w: [u32; 4] = load(ctx, off)?;
            let h: &[u8; 16] = bytes(&w);
            let doff = (h[12] >> 4) as usize * 4;
            if doff < TcpHdr::LEN || off + doff > end {
                return Err(Reason::Malformed);
            }
            pkt.sport = [h[0], h[1]];
            pkt.dport = [h[2], h[3]];
            pkt.tcp_flags = h[13];
        }
        PROTO_UDP => {
            if off + 8 > end {
                return Err(Reason::Malformed);
            }
            let w: [u32; 1] = load(ctx, off)?;
            let h: &[u8; 4] = bytes(&w);
            pkt.sport = [h[0], h[1]];
            pkt.dport = [h[2], h[3]];
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if off + 8 > end {
                return Err(Reason::Malformed);
            }
            let w: [u32; 2] = load(ctx, off)?;
            let h: &[u8; 8] = bytes(&w);
            pkt.dport = [h[0], h[1]];
            // The identifier keys query/reply pairs; other messages key by
            // addresses alone.
            if icmp_reply_of(pkt.family, h[0]).is_some()
                || icmp_request_of(pkt.family, h[0]).is_some()
            {
                pkt.sport = [h[4], h[5]];
            }
        }
        _ => {}
    }
    Ok(())
}
