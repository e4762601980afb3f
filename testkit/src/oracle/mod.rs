//! The reference oracle: what verdict docs/contract.md §2, §3 and §5 give a frame,
//! written as plainly as possible and independently of the datapath's map
//! layout. Rules are scanned one by one, flows live in an ordinary map, and
//! the frame is parsed from a byte slice. The differential tests run the real
//! program on the same frames and demand the same verdicts and state.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sg_common::{
    CT_FIN_ORIG, CT_FIN_REPLY, CT_ORIG_OUTBOUND, CT_SEEN_REPLY, CT_STATE_ICMP, CT_STATE_OTHER,
    CT_STATE_UDP, CT_UDP_STREAM, DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FAMILY_V6, MAX_EXT_HEADERS,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Reason, TCP_ACK, TCP_CLOSED, TCP_ESTABLISHED,
    TCP_FIN, TCP_FIN_WAIT, TCP_RESET, TCP_RST, TCP_SYN, TCP_SYN_SENT, icmp_reply_of,
    icmp_request_of,
};

use sg_agent::{compile::Flat, model::Protocol};

/// An interface's policy as the oracle sees it: the rules themselves.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub inbound: Vec<Flat>,
    pub outbound: Vec<Flat>,
    pub related_icmp: bool,
    /// Flows the table may hold.
    pub max_flows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop(Reason),
}

/// A flow's identity: the workload's end and the peer's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId {
    pub family: u8,
    pub proto: u8,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// TCP/UDP: the local port; ICMP queries: the identifier; else 0.
    pub local_port: u16,
    pub remote_port: u16,
}

/// What the tracker remembers of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub state: u8,
    pub flags: u8,
    /// The query type that opened an ICMP flow, 0xff for other protocols.
    pub icmp_type: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FragId {
    pub family: u8,
    pub proto: u8,
    pub id: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// The tracker's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub flows: BTreeMap<FlowId, Flow>,
    pub frags: BTreeSet<FragId>,
}

/// A parsed packet.
#[derive(Debug, Clone, Copy)]
struct Packet {
    family: u8,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    icmp: Option<(u8, u8)>,
    tcp_flags: u8,
    /// None, or Some(true) for a first fragment, Some(false) for a later one.
    first_fragment: Option<bool>,
    frag_id: u32,
    l4: usize,
}

/// The verdict on `frame`, seen in direction `dir` (`DIR_INBOUND` or
/// `DIR_OUTBOUND`), and the tracker's state after it.
pub fn verdict(policy: &Policy, state: &State, dir: u8, frame: &[u8]) -> (Verdict, State) {
    let mut next = state.clone();
    let v = match decide(policy, &mut next, dir, frame) {
        Ok(()) => Verdict::Pass,
        Err(r) => Verdict::Drop(r),
    };
    if v != Verdict::Pass {
        // A drop changes nothing.
        return (v, state.clone());
    }
    (v, next)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn decide(policy: &Policy, st: &mut State, dir: u8, frame: &[u8]) -> Result<(), Reason> {
    let ethertype = be16(frame, 12).ok_or(Reason::Malformed)?;
    let pkt = match ethertype {
        0x0806 => return Ok(()), // ARP always passes (§5)
        0x0800 => parse_v4(frame)?,
        0x86dd => parse_v6(frame)?,
        _ => return Err(Reason::UnsupportedL2),
    };
    // Neighbour discovery always passes (§5).
    if pkt.family == FAMILY_V6
        && pkt.proto == PROTO_ICMPV6
        && pkt.first_fragment.is_none()
        && matches!(pkt.icmp, Some((133..=137, _)))
    {
        return Ok(());
    }
    let remote = if dir == DIR_INBOUND { pkt.src } else { pkt.dst };
    let frag = FragId {
        family: pkt.family,
        proto: pkt.proto,
        id: pkt.frag_id,
        src: pkt.src,
        dst: pkt.dst,
    };
    if pkt.first_fragment == Some(false) {
        // A later fragment carries no ports (§5).
        if st.frags.contains(&frag) || allows_all_ports(policy, dir, remote, pkt.proto) {
            return Ok(());
        }
        return Err(Reason::Fragment);
    }
    if policy.related_icmp
        && pkt.first_fragment.is_none()
        && is_icmp_error(&pkt)
        && let Some(id) = quoted_flow(frame, &pkt, dir)
        && st.flows.contains_key(&id)
    {
        return Ok(());
    }
    track(policy, st, dir, &pkt)?;
    if pkt.first_fragment == Some(true) {
        st.frags.insert(frag);
    }
    Ok(())
}

fn parse_v4(f: &[u8]) -> Result<Packet, Reason> {
    let ip = f.get(14..34).ok_or(Reason::Malformed)?;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > f.len() {
        return Err(Reason::Malformed);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let (offset, more) = (frag & 0x1fff, frag & 0x2000 != 0);
    let mut p = Packet {
        family: FAMILY_V4,
        proto: ip[9],
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        sport: 0,
        dport: 0,
        icmp: None,
        tcp_flags: 0,
        first_fragment: match (offset, more) {
            (0, false) => None,
            (0, true) => Some(true),
            _ => Some(false),
        },
        frag_id: u16::from_be_bytes([ip[4], ip[5]]) as u32,
        l4: 14 + ihl,
    };
    if p.first_fragment != Some(false) {
        transport(f, 14 + total, &mut p)?;
    }
    Ok(p)
}

fn parse_v6(f: &[u8]) -> Result<Packet, Reason> {
    let ip = f.get(14..54).ok_or(Reason::Malformed)?;
    if ip[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let end = 54 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if end > f.len() {
        return Err(Reason::Malformed);
    }
    let addr = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
    let mut p = Packet {
        family: FAMILY_V6,
        proto: ip[6],
        src: addr(&ip[8..24]),
        dst: addr(&ip[24..40]),
        sport: 0,
        dport: 0,
        icmp: None,
        tcp_flags: 0,
        first_fragment: None,
        frag_id: 0,
        l4: 54,
    };
    let mut walked = 0;
    // Hop-by-hop, routing, fragment, AH and destination options (§5).
    while matches!(p.proto, 0 | 43 | 44 | 51 | 60) {
        if walked == MAX_EXT_HEADERS {
            return Err(Reason::ExtHeaders);
        }
        walked += 1;
        let at = p.l4;
        let next = *f.get(at).ok_or(Reason::Malformed)?;
        let len = match p.proto {
            44 => {
                let h = f.get(at..at + 8).ok_or(Reason::Malformed)?;
                let fo = u16::from_be_bytes([h[2], h[3]]);
                p.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if fo >> 3 != 0 {
                    p.first_fragment = Some(false);
                } else if fo & 1 != 0 {
                    p.first_fragment = Some(true);
                }
                8
            }
            51 => (*f.get(at + 1).ok_or(Reason::Malformed)? as usize + 2) * 4,
            _ => (*f.get(at + 1).ok_or(Reason::Malformed)? as usize + 1) * 8,
        };
        p.proto = next;
        p.l4 = at + len;
        if p.l4 > end {
            return Err(Reason::Malformed);
        }
        if p.first_fragment == Some(false) {
            return Ok(p);
        }
    }
    transport(f, end, &mut p)?;
    Ok(p)
}

fn transport(f: &[u8], end: usize, p: &mut Packet) -> Result<(), Reason> {
    let at = p.l4;
    let need = |n: usize| {
        if at + n > end {
            Err(Reason::Malformed)
        } else {
            Ok(&f[at..at + n])
        }
    };
    match p.proto {
        PROTO_TCP => {
            let h = need(20)?;
            let doff = (h[12] >> 4) as usize * 4;
            if doff < 20 || at + doff > end {
                return Err(Reason::Malformed);
            }
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_flags = h[13];
        }
        PROTO_UDP => {
            let h = need(8)?;
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h = need(8)?;
            p.icmp = Some((h[0], h[1]));
            p.dport = u16::from_be_bytes([h[0], h[1]]);
            if icmp_reply_of(p.family, h[0]).is_some() || icmp_request_of(p.family, h[0]).is_some()
            {
                p.sport = u16::from_be_bytes([h[4], h[5]]);
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_icmp_error(p: &Packet) -> bool {
    match (p.family, p.proto, p.icmp) {
        (FAMILY_V4, PROTO_ICMP, Some((t, _))) => matches!(t, 3 | 4 | 5 | 11 | 12),
        (FAMILY_V6, PROTO_ICMPV6, Some((t, _))) => (1..=4).contains(&t),
        _ => false,
    }
}

/// The flow an ICMP error quotes. The quoted packet went the other way.
fn quoted_flow(f: &[u8], p: &Packet, dir: u8) -> Option<FlowId> {
    let at = p.l4 + 8;
    let (proto, src, dst, l4) = if p.family == FAMILY_V4 {
        let h = f.get(at..at + 20)?;
        let ihl = (h[0] & 0x0f) as usize * 4;
        (
            h[9],
            IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            at + ihl,
        )
    } else {
        let h = f.get(at..at + 40)?;
        let a = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16")));
        (h[6], a(&h[8..24]), a(&h[24..40]), at + 40)
    };
    let t = f.get(l4..l4 + 8)?;
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ),
        _ if icmp => (u16::from_be_bytes([t[4], t[5]]), 0),
        _ => (0, 0),
    };
    let quoted_outbound = dir == DIR_INBOUND;
    let (local, remote, lport, rport) = if quoted_outbound {
        (src, dst, sport, dport)
    } else {
        (dst, src, dport, sport)
    };
    Some(FlowId {
        family: p.family,
        proto,
        local,
        remote,
        local_port: if icmp { sport } else { lport },
        remote_port: if icmp { 0 } else { rport },
    })
}

fn rules(policy: &Policy, dir: u8) -> &[Flat] {
    if dir == DIR_INBOUND {
        &policy.inbound
    } else {
        &policy.outbound
    }
}

fn proto_matches(r: &Flat, proto: u8) -> bool {
    r.protocol == Protocol::All || r.protocol == Protocol::Number(proto)
}

/// The rules of `dir` that allow `proto` to `port` from/to `remote` (§2).
fn matching(
    policy: &Policy,
    dir: u8,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> impl Iterator<Item = &Flat> {
    rules(policy, dir).iter().filter(move |r| {
        r.net.contains(&remote) && proto_matches(r, proto) && r.lo <= port && port <= r.hi
    })
}

fn allows_all_ports(policy: &Policy, dir: u8, remote: IpAddr, proto: u8) -> bool {
    rules(policy, dir).iter().any(|r| {
        r.net.contains(&remote) && proto_matches(r, proto) && r.lo == 0 && r.hi == u16::MAX
    })
}

/// Does `dir` allow all `proto` traffic of `family` to `0/0` on all ports?
fn all_response(policy: &Policy, dir: u8, family: u8, proto: u8) -> bool {
    rules(policy, dir).iter().any(|r| {
        r.net.prefix_len() == 0
            && (r.net.addr().is_ipv4() == (family == FAMILY_V4))
            && proto_matches(r, proto)
            && r.lo == 0
            && r.hi == u16::MAX
    })
}

/// Would a flow started by (`remote`, `proto`, `port`) in `dir` be untracked
/// (§3): allowed by a `/0` rule while the other direction allows all responses.
fn untracked(policy: &Policy, dir: u8, family: u8, remote: IpAddr, proto: u8, port: u16) -> bool {
    let other = if dir == DIR_INBOUND {
        DIR_OUTBOUND
    } else {
        DIR_INBOUND
    };
    (proto == PROTO_TCP || proto == PROTO_UDP)
        && matching(policy, dir, remote, proto, port).any(|r| r.net.prefix_len() == 0)
        && all_response(policy, other, family, proto)
}

fn track(policy: &Policy, st: &mut State, dir: u8, p: &Packet) -> Result<(), Reason> {
    let inbound = dir == DIR_INBOUND;
    let icmp = p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6;
    let (local, remote, lport, rport) = if inbound {
        (p.dst, p.src, p.dport, p.sport)
    } else {
        (p.src, p.dst, p.sport, p.dport)
    };
    let id = FlowId {
        family: p.family,
        proto: p.proto,
        local,
        remote,
        local_port: if icmp { p.sport } else { lport },
        remote_port: if icmp { 0 } else { rport },
    };
    if let Some(flow) = st.flows.get_mut(&id)
        && icmp_fits(p, flow, dir)
    {
        advance(flow, p, dir);
        return Ok(());
    }
    if matching(policy, dir, remote, p.proto, p.dport)
        .next()
        .is_none()
    {
        return Err(Reason::NoRule);
    }
    if p.proto == PROTO_TCP || p.proto == PROTO_UDP {
        let other = if inbound { DIR_OUTBOUND } else { DIR_INBOUND };
        if untracked(policy, dir, p.family, remote, p.proto, p.dport)
            || untracked(policy, other, p.family, remote, p.proto, p.sport)
        {
            // Part of an untracked flow, either way round: no state.
            return Ok(());
        }
        if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
            return Ok(());
        }
    }
    // Only ICMP queries start conversations; errors and other messages are
    // judged by the rules each time.
    if let Some((t, _)) = p.icmp
        && icmp_reply_of(p.family, t).is_none()
    {
        return Ok(());
    }
    if st.flows.len() >= policy.max_flows && !st.flows.contains_key(&id) {
        return Err(Reason::TableFull);
    }
    let state = match p.proto {
        PROTO_TCP if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => TCP_SYN_SENT,
        PROTO_TCP => TCP_ESTABLISHED,
        PROTO_UDP => CT_STATE_UDP,
        _ if icmp => CT_STATE_ICMP,
        _ => CT_STATE_OTHER,
    };
    let icmp_type = p.icmp.map_or(0xff, |(t, _)| t);
    st.flows.insert(
        id,
        Flow {
            state,
            flags: if inbound { 0 } else { CT_ORIG_OUTBOUND },
            icmp_type,
        },
    );
    Ok(())
}

/// An ICMP query flow admits its query type one way and its reply type back.
fn icmp_fits(p: &Packet, flow: &Flow, dir: u8) -> bool {
    let Some((t, _)) = p.icmp else { return true };
    if flow.icmp_type == 0xff {
        return true;
    }
    if from_originator(flow, dir) {
        t == flow.icmp_type
    } else {
        icmp_reply_of(p.family, flow.icmp_type) == Some(t)
    }
}

fn from_originator(flow: &Flow, dir: u8) -> bool {
    (flow.flags & CT_ORIG_OUTBOUND != 0) == (dir == DIR_OUTBOUND)
}

/// A packet of a tracked flow moves its state on (§3).
fn advance(flow: &mut Flow, p: &Packet, dir: u8) {
    let orig = from_originator(flow, dir);
    let before = flow.flags;
    if !orig {
        flow.flags |= CT_SEEN_REPLY;
    }
    if p.proto == PROTO_TCP {
        let f = p.tcp_flags;
        if f & TCP_RST != 0 {
            flow.state = TCP_RESET;
            return;
        }
        if flow.state == TCP_SYN_SENT && !orig && f & TCP_ACK != 0 {
            flow.state = TCP_ESTABLISHED;
        }
        if f & TCP_FIN != 0 {
            flow.flags |= if orig { CT_FIN_ORIG } else { CT_FIN_REPLY };
            let both = CT_FIN_ORIG | CT_FIN_REPLY;
            flow.state = if flow.flags & both == both {
                TCP_CLOSED
            } else {
                TCP_FIN_WAIT
            };
        }
        if matches!(flow.state, TCP_CLOSED | TCP_RESET) && f & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // A new connection on the same tuple.
            flow.state = TCP_SYN_SENT;
            flow.flags &= CT_ORIG_OUTBOUND;
        }
    } else if p.proto == PROTO_UDP && before & CT_SEEN_REPLY != 0 {
        flow.flags |= CT_UDP_STREAM;
    }
}

#[cfg(test)]
mod tests;
