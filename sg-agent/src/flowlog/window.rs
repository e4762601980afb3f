//! Aggregation: what the datapath reports (tracked flows' counts, walked
//! from the table; flow events from the ring buffer) turned into one
//! record per flow, direction and window, as VPC Flow Logs aggregate.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use sg_common::{
    CT_ORIG_OUTBOUND, CtKey, CtVal, DIR_INBOUND, FlowEvent, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN,
};

use super::format::{Action, FlowPart, Record, Status};
use crate::datapath::ct_addr;

/// One record's identity: a direction of a flow on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub ingress: bool,
    pub action: Action,
}

/// Packets seen of one `FlowId`, with when (the flow clock, ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Counts {
    fn merge(&mut self, o: &Counts) {
        if self.packets == 0 {
            self.first_ns = o.first_ns;
        }
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.tcp_flags |= o.tcp_flags;
        self.first_ns = self.first_ns.min(o.first_ns);
        self.last_ns = self.last_ns.max(o.last_ns);
    }
}

/// What a walk or an event adds to the windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Flow(FlowId, Counts),
    /// Events the datapath could not write for this interface.
    Skipped(u32, u64),
}

/// The datapath counts frames; flow logs count IP bytes, as AWS's do. Every
/// frame it lets through or logs has a plain 14-byte Ethernet header (it
/// drops any other L2).
const ETH_LEN: u64 = 14;

fn port(p: u16) -> u16 {
    u16::from_be_bytes(p.to_ne_bytes())
}

/// AWS's `tcp-flags`: FIN, SYN and RST as seen, and SYN-ACK (18) for the
/// responder's SYN with ACK.
fn aws_tcp_flags(seen: u8, responder: bool) -> u8 {
    let mut f = seen & (TCP_FIN | TCP_SYN | TCP_RST);
    if responder && seen & TCP_SYN != 0 && seen & TCP_ACK != 0 {
        f |= TCP_ACK;
    }
    f
}

/// What the tracker has already reported of a tracked flow.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    packets: [u64; 2],
    bytes: [u64; 2],
    /// When its START event came (the flow clock), if one did.
    started_ns: Option<u64>,
}

/// Turns the table's cumulative per-flow counts into deltas.
#[derive(Default)]
pub struct Tracker {
    reported: HashMap<CtKey, Reported>,
    skipped: HashMap<u32, u64>,
}

impl Tracker {
    /// The deltas of one tracked flow since it was last reported; `since`
    /// is when the previous walk ran (the flow clock).
    fn deltas(&mut self, k: &CtKey, v: &CtVal, since: u64, out: &mut Vec<Seen>) {
        let r = self.reported.entry(*k).or_default();
        // Counts below what was reported: the tuple is a new flow.
        if v.packets[0] < r.packets[0] || v.packets[1] < r.packets[1] {
            r.packets = [0; 2];
            r.bytes = [0; 2];
        }
        let (local, remote) = (ct_addr(k.family, &k.local), ct_addr(k.family, &k.remote));
        let ports = matches!(k.proto, PROTO_TCP | PROTO_UDP);
        let (lp, rp) = if ports {
            (port(k.local_port), port(k.remote_port))
        } else {
            (0, 0)
        };
        let orig_out = v.flags & CT_ORIG_OUTBOUND != 0;
        let first = r
            .started_ns
            .take()
            .unwrap_or(since)
            .max(since.min(v.last_seen_ns));
        for end in 0..2 {
            let packets = v.packets[end] - r.packets[end];
            if packets == 0 {
                continue;
            }
            // End 0 is the originator: outbound-started flows' originator is
            // the workload (local).
            let outbound = (end == 0) == orig_out;
            let (src, dst, sport, dport) = if outbound {
                (local, remote, lp, rp)
            } else {
                (remote, local, rp, lp)
            };
            let id = FlowId {
                ifindex: k.ifindex,
                src,
                dst,
                sport,
                dport,
                protocol: k.proto,
                ingress: !outbound,
                action: Action::Accept,
            };
            let counts = Counts {
                packets,
                bytes: (v.bytes[end] - r.bytes[end]).saturating_sub(ETH_LEN * packets),
                tcp_flags: if k.proto == PROTO_TCP {
                    aws_tcp_flags(v.tcp_flags[end], end == 1)
                } else {
                    0
                },
                first_ns: first,
                last_ns: v.last_seen_ns.max(first),
            };
            out.push(Seen::Flow(id, counts));
        }
        r.packets = v.packets;
        r.bytes = v.bytes;
    }

    /// A flow that ended (`EVENT_END`), read from the table at once: its
    /// packets since the last walk, whatever becomes of its entry after.
    pub fn ended(&mut self, k: &CtKey, v: &CtVal, since: u64) -> Vec<Seen> {
        let mut out = Vec::new();
        self.deltas(k, v, since, &mut out);
        out
    }

    /// One walk of the tracked flows of the logged interfaces: what each
    /// carried since the last walk. Flows gone from the table are forgotten
    /// (their last packets were reported: a flow is swept only after
    /// seconds idle, longer than the walk's period).
    pub fn walk(
        &mut self,
        flows: impl Iterator<Item = (CtKey, CtVal)>,
        skipped: impl Iterator<Item = (u32, u64)>,
        since: u64,
    ) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut live = std::collections::HashSet::new();
        for (k, v) in flows {
            self.deltas(&k, &v, since, &mut out);
            live.insert(k);
        }
        self.reported.retain(|k, _| live.contains(k));
        for (ifindex, total) in skipped {
            let before = self.skipped.insert(ifindex, total).unwrap_or(total);
            if total > before {
                out.push(Seen::Skipped(ifindex, total - before));
            }
        }
        out
    }

    /// A flow event from the ring buffer.
    pub fn event(&mut self, ev: &FlowEvent) -> Vec<Seen> {
        let key = event_key(ev);
        match ev.kind {
            sg_common::EVENT_START => {
                self.reported.insert(
                    key,
                    Reported {
                        started_ns: Some(ev.ts_ns),
                        ..Reported::default()
                    },
                );
                Vec::new()
            }
            _ => vec![Seen::Flow(reject_id(ev), reject_counts(ev))],
        }
    }
}

fn ev_ports(ev: &FlowEvent) -> (u16, u16) {
    if matches!(ev.proto, PROTO_TCP | PROTO_UDP) {
        (u16::from_be_bytes(ev.sport), u16::from_be_bytes(ev.dport))
    } else {
        (0, 0)
    }
}

/// The tracking key of an event's flow (local and remote ends).
pub(super) fn event_key(ev: &FlowEvent) -> CtKey {
    let inbound = ev.dir == DIR_INBOUND;
    let (local, remote, lport, rport) = if inbound {
        (ev.dst, ev.src, ev.dport, ev.sport)
    } else {
        (ev.src, ev.dst, ev.sport, ev.dport)
    };
    let icmp = !matches!(ev.proto, PROTO_TCP | PROTO_UDP);
    CtKey {
        ifindex: ev.ifindex,
        family: ev.family,
        proto: ev.proto,
        local_port: if icmp {
            u16::from_ne_bytes(ev.sport)
        } else {
            u16::from_ne_bytes(lport)
        },
        remote_port: if icmp { 0 } else { u16::from_ne_bytes(rport) },
        _pad: 0,
        local,
        remote,
    }
}

fn reject_id(ev: &FlowEvent) -> FlowId {
    let (sport, dport) = ev_ports(ev);
    FlowId {
        ifindex: ev.ifindex,
        src: ct_addr(ev.family, &ev.src),
        dst: ct_addr(ev.family, &ev.dst),
        sport,
        dport,
        protocol: ev.proto,
        ingress: ev.dir == DIR_INBOUND,
        action: Action::Reject,
    }
}

fn reject_counts(ev: &FlowEvent) -> Counts {
    Counts {
        packets: 1,
        bytes: (ev.len as u64).saturating_sub(ETH_LEN),
        tcp_flags: if ev.proto == PROTO_TCP {
            aws_tcp_flags(ev.tcp_flags, false)
        } else {
            0
        },
        first_ns: ev.ts_ns,
        last_ns: ev.ts_ns,
    }
}

/// An interface as its records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceInfo {
    pub interface_id: String,
    pub vpc_id: String,
    pub account_id: String,
}

/// One flow log's open window.
#[derive(Default)]
pub struct Window {
    flows: BTreeMap<FlowId, Counts>,
    skipped: BTreeMap<u32, u64>,
}

impl Window {
    pub fn add(&mut self, s: &Seen) {
        match s {
            Seen::Flow(id, c) => self.flows.entry(id.clone()).or_default().merge(c),
            Seen::Skipped(i, n) => *self.skipped.entry(*i).or_default() += n,
        }
    }

    /// Closes the window `[start, end]` (Unix seconds): a record per flow
    /// and direction; for an interface that had records skipped a SKIPDATA
    /// record, and for one without traffic a NODATA record. `to_unix`
    /// turns the flow clock into Unix seconds.
    pub fn close(
        self,
        start: u64,
        end: u64,
        ifaces: &BTreeMap<u32, IfaceInfo>,
        to_unix: impl Fn(u64) -> u64,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        let record = |info: &IfaceInfo, status, flow| Record {
            account_id: info.account_id.clone(),
            interface_id: info.interface_id.clone(),
            vpc_id: info.vpc_id.clone(),
            status,
            start,
            end,
            flow,
        };
        for (ifindex, info) in ifaces {
            let mut any = false;
            for (id, c) in self
                .flows
                .range(first_of(*ifindex)..)
                .take_while(|(id, _)| id.ifindex == *ifindex)
            {
                any = true;
                let mut r = record(
                    info,
                    Status::Ok,
                    Some(FlowPart {
                        src: id.src,
                        dst: id.dst,
                        sport: id.sport,
                        dport: id.dport,
                        protocol: id.protocol,
                        packets: c.packets,
                        bytes: c.bytes,
                        action: id.action,
                        tcp_flags: c.tcp_flags,
                        ingress: id.ingress,
                    }),
                );
                r.start = to_unix(c.first_ns).clamp(start, end);
                r.end = to_unix(c.last_ns).clamp(r.start, end);
                out.push(r);
            }
            if self.skipped.get(ifindex).is_some_and(|n| *n > 0) {
                out.push(record(info, Status::SkipData, None));
            } else if !any {
                out.push(record(info, Status::NoData, None));
            }
        }
        out
    }
}

/// The smallest `FlowId` of an interface, to range over its records.
fn first_of(ifindex: u32) -> FlowId {
    FlowId {
        ifindex,
        src: IpAddr::from([0, 0, 0, 0]),
        dst: IpAddr::from([0, 0, 0, 0]),
        sport: 0,
        dport: 0,
        protocol: 0,
        ingress: false,
        action: Action::Accept,
    }
}
