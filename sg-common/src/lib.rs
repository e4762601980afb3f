//! Types shared by the eBPF datapath (`sg-ebpf`) and the agent (`sg-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding: the kernel compares
//! map keys byte for byte, so a padding byte left uninitialised would make two
//! equal keys differ. Each type has a size assertion beside it so that a layout
//! change is a compile error rather than a verifier or lookup mystery.
#![no_std]

use core::mem::{offset_of, size_of};

/// Version of the map layout. Pins live under `/sys/fs/bpf/sg/v{LAYOUT_VERSION}`;
/// bump it whenever a key or value below (or a map's type) changes, since aya reuses a pinned map
/// without checking its layout.
pub const LAYOUT_VERSION: u32 = 6;

/// Names of the object's maps and programs. The agent loads, opens and pins
/// them by these; the eBPF side declares them with the same names (its
/// macros take the item's identifier), which a unit test of the agent checks
/// against the embedded object.
pub mod names {
    pub const IFACES: &str = "IFACES";
    pub const ADDR4: &str = "ADDR4";
    pub const ADDR6: &str = "ADDR6";
    pub const LENS: &str = "LENS";
    pub const POLICY: &str = "POLICY";
    pub const CT: &str = "CT";
    pub const FRAGS: &str = "FRAGS";
    pub const CT_INSERTED: &str = "CT_INSERTED";
    pub const CT_REMOVED: &str = "CT_REMOVED";
    pub const STATS: &str = "STATS";
    /// Flow logs (docs/observe.md): their switch and rate, the reject
    /// token buckets, and the ring buffer of flow events.
    pub const FLOWLOG: &str = "FLOWLOG";
    pub const BUCKETS: &str = "BUCKETS";
    pub const EVENTS: &str = "EVENTS";
    /// Every map, each pinned as `<pin dir>/<name>`.
    pub const MAPS: [&str; 13] = [
        IFACES,
        ADDR4,
        ADDR6,
        LENS,
        POLICY,
        CT,
        FRAGS,
        CT_INSERTED,
        CT_REMOVED,
        STATS,
        FLOWLOG,
        BUCKETS,
        EVENTS,
    ];
    /// Load-time globals.
    pub const CT_LIMIT: &str = "CT_LIMIT";
    pub const NR_CPUS: &str = "NR_CPUS";
    pub const PROG_INGRESS: &str = "sg_tc_ingress";
    pub const PROG_EGRESS: &str = "sg_tc_egress";
    /// The ingress decision at XDP.
    pub const PROG_XDP: &str = "sg_xdp";
    /// The same with flow logs (docs/observe.md).
    pub const PROG_INGRESS_LOG: &str = "sg_tc_ingress_log";
    pub const PROG_EGRESS_LOG: &str = "sg_tc_egress_log";
    pub const PROG_XDP_LOG: &str = "sg_xdp_log";
    /// The baseline: passes everything (benchmarks only).
    pub const PROG_PASS: &str = "sg_tc_pass";
    /// Benchmarks only: one tracking lookup (the floor), and the pipeline
    /// stopped after each stage.
    pub const PROG_FLOOR: &str = "sg_tc_floor";
    pub const PROG_STAGES: [&str; 3] = [
        "sg_tc_stage_config",
        "sg_tc_stage_parse",
        "sg_tc_stage_track",
    ];
}

/// Direction of a packet relative to the workload behind the interface.
pub const DIR_INBOUND: u8 = 0;
pub const DIR_OUTBOUND: u8 = 1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// For an ICMP query type (echo, timestamp, information, address mask; for
/// ICMPv6, echo), the type of its reply.
#[inline(always)]
pub const fn icmp_reply_of(family: u8, t: u8) -> Option<u8> {
    match (family, t) {
        (FAMILY_V4, 8) => Some(0),
        (FAMILY_V4, 13) => Some(14),
        (FAMILY_V4, 15) => Some(16),
        (FAMILY_V4, 17) => Some(18),
        (FAMILY_V6, 128) => Some(129),
        _ => None,
    }
}

/// For an ICMP reply type, the type of its query.
#[inline(always)]
pub const fn icmp_request_of(family: u8, t: u8) -> Option<u8> {
    match (family, t) {
        (FAMILY_V4, 0) => Some(8),
        (FAMILY_V4, 14) => Some(13),
        (FAMILY_V4, 16) => Some(15),
        (FAMILY_V4, 18) => Some(17),
        (FAMILY_V6, 129) => Some(128),
        _ => None,
    }
}

/// `IfaceCfg::flags`: the program sits on the host side of a veth (or a tap)
/// whose peer is the workload, so the host side's egress is the workload's
/// inbound.
pub const IFACE_HOST_SIDE: u32 = 1 << 0;
/// `IfaceCfg::flags`: ICMP errors whose embedded header belongs to a tracked
/// flow pass (Linux's RELATED). Off by default, as on AWS.
pub const IFACE_RELATED_ICMP: u32 = 1 << 1;

/// Index of a family in `all_response` bits.
#[inline(always)]
pub const fn family_index(family: u8) -> usize {
    if family == FAMILY_V6 { 1 } else { 0 }
}

/// Bit of `IfaceCfg::all_response`: the direction allows all traffic of the
/// protocol on all ports to `0.0.0.0/0` (or `::/0`), which is what makes flows
/// started in the *other* direction untracked (docs/contract.md §3).
#[inline(always)]
pub const fn all_response_bit(dir: u8, family: u8, proto: u8) -> u32 {
    let p = if proto == PROTO_UDP { 1 } else { 0 };
    1 << (((dir as usize) * 2 + family_index(family)) * 2 + p)
}

/// Per-interface settings, keyed by ifindex in `IFACES`.
///
/// A policy change writes the new policy's entries under fresh ids and then
/// this value in one map update, so each packet sees either the whole old or
/// the whole new policy (docs/datapath.md, "Atomic changes").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCfg {
    /// Policy ids (keys of `POLICY`), indexed by direction. 0 means "no rules".
    pub policy: [u32; 2],
    /// Row of `STATS` for this interface (two rows: inbound, outbound).
    pub stats_slot: u32,
    /// `IFACE_*` flags.
    pub flags: u32,
    /// [`all_response_bit`]s.
    pub all_response: u32,
    /// Idle timeouts in seconds (docs/contract.md §3).
    pub tcp_established: u32,
    pub udp_stream: u32,
    pub udp: u32,
}
const _: () = assert!(size_of::<IfaceCfg>() == 32);

/// Key of the shared address map `ADDR4`: a CIDR, as its prefix length and
/// its address with the host bits zero. The program looks an address up at
/// each prefix length present (`LENS`), longest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey4 {
    pub prefix_len: u32,
    /// Network order.
    pub addr: u32,
}
const _: () = assert!(size_of::<AddrKey4>() == 8);
// The kernel side builds this key by hand, as words: [prefix_len, addr].
const _: () = assert!(offset_of!(AddrKey4, prefix_len) == 0 && offset_of!(AddrKey4, addr) == 4);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey6 {
    pub prefix_len: u32,
    /// Four words holding the bytes in network order.
    pub addr: [u32; 4],
}
const _: () = assert!(size_of::<AddrKey6>() == 20);
const _: () = assert!(offset_of!(AddrKey6, prefix_len) == 0 && offset_of!(AddrKey6, addr) == 4);

/// A prefix length and its network-order mask, as four words (IPv4: the
/// first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LenMask {
    pub len: u32,
    pub mask: [u32; 4],
}
const _: () = assert!(size_of::<LenMask>() == 20);

/// The prefix lengths present in a family's address map, longest first
/// (`LENS`, index 0 for IPv4, 1 for IPv6), each with its mask: the program then builds a
/// key without a branch per word, which keeps the verifier's walk of the
/// loop linear.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lens {
    pub n: u32,
    pub entries: [LenMask; MAX_LENS],
}
impl Default for Lens {
    fn default() -> Self {
        Lens {
            n: 0,
            entries: [LenMask::default(); MAX_LENS],
        }
    }
}
/// 0 to 128.
pub const MAX_LENS: usize = 129;
const _: () = assert!(size_of::<Lens>() == 4 + 20 * MAX_LENS);

/// Capacities of the shared maps (docs/datapath.md, "Capacity"): blocks
/// of each family in the address map, and policy entries.
pub const ADDR4_ENTRIES: u32 = 1 << 18;
pub const ADDR6_ENTRIES: u32 = 1 << 17;
pub const POLICY_ENTRIES: u32 = 1 << 19;

/// Key of `POLICY`: what a policy allows towards an identity for one
/// protocol (0: every protocol), in chunks of [`POLICY_SEGS`] port segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy: u32,
    pub identity: u32,
    pub proto: u8,
    pub chunk: u8,
    pub _pad: u16,
}
const _: () = assert!(size_of::<PolicyKey>() == 12);
// Built by hand as [policy, identity, proto | chunk << 8].
const _: () = assert!(
    offset_of!(PolicyKey, policy) == 0
        && offset_of!(PolicyKey, identity) == 4
        && offset_of!(PolicyKey, proto) == 8
        && offset_of!(PolicyKey, chunk) == 9
);

/// Port segments per `POLICY` value; more continue in the next chunk.
pub const POLICY_SEGS: usize = 8;
/// Chunks the program walks: at most `POLICY_SEGS * POLICY_CHUNKS` disjoint
/// port ranges per peer identity and protocol, more than AWS's 1,000 rules
/// per interface can make (the compiler refuses more).
pub const POLICY_CHUNKS: u8 = 128;

/// A range of destination ports (ICMP: `type << 8 | code`), host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSeg {
    pub lo: u16,
    pub hi: u16,
    /// `PORT_*` flags.
    pub flags: u32,
}
const _: () = assert!(size_of::<PortSeg>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyVal {
    /// `PORT_ALLOW` when the segments cover every port (what a non-first
    /// fragment, which has no ports, asks).
    pub all_ports: u32,
    /// Segments used in this chunk, sorted by port and disjoint.
    pub n: u32,
    pub segs: [PortSeg; POLICY_SEGS],
}
const _: () = assert!(size_of::<PolicyVal>() == 72);

/// `PortSeg::flags`: the matching traffic is allowed.
pub const PORT_ALLOW: u32 = 1 << 0;
/// `PortSeg::flags`: a flow started by this traffic is untracked: a rule with
/// a `/0` peer allows it and the opposite direction allows all responses.
pub const PORT_UNTRACKED: u32 = 1 << 1;

/// An IPv4 or IPv6 address as four 32-bit words holding its bytes in network
/// order (IPv4: the first word, the rest zero). Words rather than bytes: the
/// BPF target has no unaligned access, and byte arrays are copied a byte at a
/// time.
pub type Addr = [u32; 4];

/// The bytes of an [`Addr`], in network order.
#[inline(always)]
pub fn addr_bytes(a: &Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// Connection-tracking key: the same for both directions of a flow, because it
/// names the workload's (local) end and the peer's (remote) end rather than
/// source and destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    /// TCP/UDP: ports in network order. ICMP query/reply: the identifier in
    /// `local_port`, 0 in `remote_port`. Other protocols: 0.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local: Addr,
    pub remote: Addr,
}
const _: () = assert!(size_of::<CtKey>() == 44);

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// TCP states kept by the tracker (docs/contract.md §3).
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_ESTABLISHED: u8 = 2;
pub const TCP_FIN_WAIT: u8 = 3;
pub const TCP_CLOSED: u8 = 4;
pub const TCP_RESET: u8 = 5;

/// `CtVal::flags`: the flow was started by a packet the workload sent.
pub const CT_ORIG_OUTBOUND: u8 = 1 << 0;
/// A packet has been seen in the reply direction.
pub const CT_SEEN_REPLY: u8 = 1 << 1;
/// UDP: more than one request/response seen (the `udp_stream` timeout applies).
pub const CT_UDP_STREAM: u8 = 1 << 2;
/// TCP: FIN seen from the flow's originator / from the responder.
pub const CT_FIN_ORIG: u8 = 1 << 3;
pub const CT_FIN_REPLY: u8 = 1 << 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtVal {
    /// The flow clock (`bpf_ktime_get_coarse_ns`) at the last packet, refreshed in place at most
    /// once per [`CT_REFRESH_NS`].
    pub last_seen_ns: u64,
    pub state: u8,
    pub flags: u8,
    /// ICMP: the request type that opened the flow.
    pub icmp_type: u8,
    /// TCP flags seen, OR-ed, from the originator (0) and the responder (1);
    /// kept while flow logs are on.
    pub tcp_flags: [u8; 2],
    pub _pad: [u8; 3],
    /// Packets and bytes from the originator (0) and the responder (1),
    /// counted while flow logs are on (docs/observe.md). Plain adds, not
    /// atomic ones: two CPUs carrying one flow at once can lose a count.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}
const _: () = assert!(size_of::<CtVal>() == 48);

/// Refresh granularity of `CtVal::last_seen_ns`: rewriting it on every packet
/// would bounce its cache line between CPUs for no gain in precision worth
/// having against timeouts counted in seconds.
pub const CT_REFRESH_NS: u64 = 250_000_000;

/// Timeouts the program applies besides the configurable ones
/// (docs/contract.md §3, a choice of sg's).
pub const TIMEOUT_TCP_SYN_S: u32 = 120;
pub const TIMEOUT_TCP_CLOSED_S: u32 = 120;
pub const TIMEOUT_TCP_RESET_S: u32 = 10;
pub const TIMEOUT_ICMP_S: u32 = 30;
pub const TIMEOUT_OTHER_S: u32 = 600;
/// How long a non-first fragment may follow its datagram's first fragment
/// (Linux's `ipfrag_time`).
pub const TIMEOUT_FRAG_S: u32 = 30;

/// Non-TCP states, so that the timeout follows from the state alone.
pub const CT_STATE_UDP: u8 = 16;
pub const CT_STATE_ICMP: u8 = 17;
pub const CT_STATE_OTHER: u8 = 18;

/// Idle timeout of a tracked flow in its state, in nanoseconds. Shared by the
/// datapath (is the entry live?) and the agent's sweeper (may it go?).
#[inline(always)]
pub fn timeout_ns(cfg: &IfaceCfg, state: u8, flags: u8) -> u64 {
    let s = match state {
        TCP_SYN_SENT => TIMEOUT_TCP_SYN_S,
        TCP_ESTABLISHED | TCP_FIN_WAIT => cfg.tcp_established,
        TCP_CLOSED => TIMEOUT_TCP_CLOSED_S,
        TCP_RESET => TIMEOUT_TCP_RESET_S,
        CT_STATE_UDP => {
            if flags & CT_UDP_STREAM != 0 {
                cfg.udp_stream
            } else {
                cfg.udp
            }
        }
        CT_STATE_ICMP => TIMEOUT_ICMP_S,
        _ => TIMEOUT_OTHER_S,
    };
    s as u64 * 1_000_000_000
}

/// IPv6 extension headers walked before the transport header; a packet with
/// more is dropped (`Reason::ExtHeaders`).
pub const MAX_EXT_HEADERS: usize = 8;

/// Key of the fragment table: a datagram whose first fragment passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub ifindex: u32,
    pub id: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad: u16,
    pub src: Addr,
    pub dst: Addr,
}
const _: () = assert!(size_of::<FragKey>() == 44);

/// Per-interface, per-direction counters (`STATS` row), summed over CPUs by
/// the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted_packets: u64,
    pub accepted_bytes: u64,
    pub rejected_packets: u64,
    pub rejected_bytes: u64,
    /// Flows inserted into the tracking table.
    pub flows_created: u64,
    /// New flows refused because the tracking table was at its allowance.
    pub flows_refused: u64,
    /// Rejects by reason, indexed by `Reason as usize`.
    pub drops: [u64; REASON_COUNT],
    /// Flow events that were not written: over the reject rate, or the ring
    /// buffer full (flow logs' `SKIPDATA`).
    pub events_skipped: u64,
}
const _: () = assert!(size_of::<Stats>() == 56 + 8 * REASON_COUNT);

/// `FLOWLOG`'s one value: whether the datapath reports flows, and the rate
/// at which it reports rejected packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowLogCfg {
    /// Non-zero while an agent reads the events; rejects are reported only
    /// then (otherwise counted as skipped).
    pub enabled: u32,
    pub _pad: u32,
    /// A reject event costs this much credit, in nanoseconds (10^9 / the
    /// rate per second per CPU).
    pub ns_per_event: u64,
    /// The most credit a CPU's bucket holds (the burst), in nanoseconds.
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<FlowLogCfg>() == 24);

/// A CPU's token bucket for reject events (`BUCKETS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<Bucket>() == 16);

/// `FlowEvent::kind`: a tracked flow was created by this packet.
pub const EVENT_START: u8 = 1;
/// A packet was rejected (within the reject rate).
pub const EVENT_REJECT: u8 = 2;
/// This packet ended its tracked flow (a TCP FIN both ways, or an RST): the
/// agent reads the flow's final counts at once.
pub const EVENT_END: u8 = 3;

/// Ring buffer record (`EVENTS`). Addresses and ports as the packet
/// carried them (source, destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub kind: u8,
    pub family: u8,
    pub proto: u8,
    /// `DIR_INBOUND` / `DIR_OUTBOUND` of this packet.
    pub dir: u8,
    pub tcp_flags: u8,
    /// REJECT: the `Reason`.
    pub detail: u8,
    /// Network order; ICMP: `[type, code]` in `dport`.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub _pad: [u8; 2],
    /// The frame's length.
    pub len: u32,
    pub _pad2: u32,
    pub src: Addr,
    pub dst: Addr,
}
const _: () = assert!(size_of::<FlowEvent>() == 64);

/// Size of the `EVENTS` ring buffer (a power of two pages).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Why a packet was dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No rule of the interface's groups allows it.
    NoRule = 0,
    /// A header is cut short or a length field lies.
    Malformed = 1,
    /// Neither IPv4, IPv6 nor ARP.
    UnsupportedL2 = 2,
    /// A non-first fragment whose first fragment was not seen to pass.
    Fragment = 3,
    /// The tracking table is at its allowance; the new flow is refused.
    TableFull = 4,
    /// The interface has no configuration (the agent is mid-setup): fail closed.
    NoConfig = 5,
    /// A map operation failed.
    MapError = 6,
    /// More IPv6 extension headers than the walk's bound.
    ExtHeaders = 7,
}
pub const REASON_COUNT: usize = 8;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT] = [
        Reason::NoRule,
        Reason::Malformed,
        Reason::UnsupportedL2,
        Reason::Fragment,
        Reason::TableFull,
        Reason::NoConfig,
        Reason::MapError,
        Reason::ExtHeaders,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::NoRule => "no_rule",
            Reason::Malformed => "malformed",
            Reason::UnsupportedL2 => "unsupported_l2",
            Reason::Fragment => "fragment",
            Reason::TableFull => "table_full",
            Reason::NoConfig => "no_config",
            Reason::MapError => "map_error",
            Reason::ExtHeaders => "ext_headers",
        }
    }
}

/// Rows of `STATS`: slot 0 is for interfaces the program has no slot for.
pub const STATS_SLOTS: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no
    // pointers, so any byte pattern is a valid value.
    unsafe impl aya::Pod for IfaceCfg {}
    unsafe impl aya::Pod for AddrKey4 {}
    unsafe impl aya::Pod for AddrKey6 {}
    unsafe impl aya::Pod for Lens {}
    unsafe impl aya::Pod for LenMask {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyVal {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtVal {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for FlowLogCfg {}
    unsafe impl aya::Pod for Bucket {}
}
