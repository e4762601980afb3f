//! sg's datapath: allow-only, stateful security-group enforcement at tcx.
//!
//! Order of work, after Cilium's `bpf_lxc.c`: parse, look the flow up in the
//! tracking table (one lookup for both directions), and only for a packet of
//! no tracked flow consult the policy (two trie lookups, whatever the number of
//! rules), then create state. Every error is a counted drop.
// Built for the BPF target by sg-agent's build.rs. On the host (clippy, a
// workspace check) it is an ordinary binary that only refuses to run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::{ffi::c_void, mem::MaybeUninit, mem::size_of};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_map_lookup_percpu_elem, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use sg_common::*;

#[map]
static IFACES: HashMap<u32, IfaceCfg> = HashMap::with_max_entries(STATS_SLOTS, 0);

#[map]
static ADDR4: LpmTrie<AddrKey4, u32> = LpmTrie::with_max_entries(1 << 20, 0);

#[map]
static ADDR6: LpmTrie<AddrKey6, u32> = LpmTrie::with_max_entries(1 << 20, 0);

#[map]
static PORTS: LpmTrie<PortKey, PortVal> = LpmTrie::with_max_entries(1 << 20, 0);

/// The tracking table: a plain, preallocated hash, so nothing is ever
/// evicted; the program refuses new flows past the allowance (`CT_LIMIT`) and
/// the agent sweeps idle ones. Sized by the agent at load time
/// (`map_max_entries`) to the allowance plus a slack of a few entries per CPU
/// (`ct_slack` in the agent says why): memory grows with the allowance, not
/// with the number of CPUs, as an LRU's per-CPU lists would make it.
#[map]
static CT: HashMap<CtKey, CtVal> = HashMap::with_max_entries(65536, 0);

/// Flows inserted, counted per CPU: the BPF target has no atomic
/// read-modify-write in Rust, and per-CPU cells need none.
#[map]
static CT_INSERTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Flows the agent's sweeper deleted; the agent is its only writer.
#[map]
static CT_REMOVED: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static FRAGS: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

#[map]
static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(STATS_SLOTS * 2, 0);

/// The tracking table's allowance, patched by the agent at load time.
#[unsafe(no_mangle)]
static CT_LIMIT: u64 = 65536;

/// Possible CPUs (the per-CPU cells to sum), patched by the agent at load time.
#[unsafe(no_mangle)]
static NR_CPUS: u32 = 1;

/// Bound of the per-CPU sum, for the verifier.
const MAX_CPUS: u32 = 256;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

#[classifier]
pub fn sg_tc_ingress(ctx: TcContext) -> i32 {
    if run(&ctx, true) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

#[classifier]
pub fn sg_tc_egress(ctx: TcContext) -> i32 {
    if run(&ctx, false) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// The same decision at XDP, for an interface's ingress: drops before an skb
/// exists, which pays on real NICs (on veth tcx is cheaper, docs/datapath.md).
#[xdp]
pub fn sg_xdp(ctx: XdpContext) -> u32 {
    if run(&ctx, true) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// What the decision needs of a hook's context.
trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length, paged parts included.
    fn len(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Reads a `T` at `off` outside the linear data (paged skb, XDP frags).
    fn load_slow<T>(&self, off: usize) -> Option<T>;
}

impl Frame for TcContext {
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.skb.skb).ifindex }
    }
    fn load_slow<T>(&self, off: usize) -> Option<T> {
        self.load::<T>(off).ok()
    }
}

impl Frame for XdpContext {
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    fn len(&self) -> usize {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    fn load_slow<T>(&self, off: usize) -> Option<T> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                off as u32,
                v.as_mut_ptr() as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        // SAFETY: initialised when the helper succeeded.
        (r == 0).then(|| unsafe { v.assume_init() })
    }
}

/// Passes everything: the baseline `sg-bench` subtracts from sg's cost. The
/// agent never attaches it.
#[classifier]
pub fn sg_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// The verdict on the frame: pass (true) or a counted drop.
#[inline(always)]
fn run<C: Frame>(ctx: &C, hook_ingress: bool) -> bool {
    let ifindex = ctx.ifindex();
    let len = ctx.len() as u64;
    let Some(cfg) = (unsafe { IFACES.get(ifindex) }) else {
        count(
            0,
            if hook_ingress { 0 } else { 1 },
            len,
            Err(Reason::NoConfig),
        );
        return false;
    };
    // Copy what we need so that a concurrent policy swap (a new IfaceCfg
    // element) cannot mix two policies within this packet.
    let cfg = *cfg;
    let inbound = hook_ingress != (cfg.flags & IFACE_HOST_SIDE != 0);
    let dir = if inbound { DIR_INBOUND } else { DIR_OUTBOUND };
    let verdict = decide(ctx, ifindex, &cfg, dir);
    count(cfg.stats_slot, dir as u32, len, verdict);
    verdict.is_ok()
}

/// What a pass did to the tracking table, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Plain,
    NewFlow,
}

#[inline(always)]
fn count(slot: u32, dir: u32, len: u64, verdict: Result<Pass, Reason>) {
    let idx = slot.min(STATS_SLOTS - 1) * 2 + dir;
    let Some(s) = STATS.get_ptr_mut(idx) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU; nothing else writes it meanwhile.
    let s = unsafe { &mut *s };
    match verdict {
        Ok(p) => {
            s.accepted_packets += 1;
            s.accepted_bytes += len;
            if p == Pass::NewFlow {
                s.flows_created += 1;
            }
        }
        Err(r) => {
            s.rejected_packets += 1;
            s.rejected_bytes += len;
            if r == Reason::TableFull {
                s.flows_refused += 1;
            }
            let i = r as usize;
            if i < REASON_COUNT {
                s.drops[i] += 1;
            }
        }
    }
}

/// The parts of a packet the decision needs.
struct Pkt {
    family: u8,
    proto: u8,
    src: Addr,
    dst: Addr,
    /// Destination / source port in network order (ICMP: `[type, code]` in
    /// `dport`, the query identifier in `sport`).
    sport: [u8; 2],
    dport: [u8; 2],
    tcp_flags: u8,
    /// 0: not a fragment; 1: first fragment; 2: a later fragment (no L4 header).
    frag: u8,
    frag_id: u32,
    /// Offset of the transport header in the frame.
    l4_off: usize,
}

const FRAG_NONE: u8 = 0;
const FRAG_FIRST: u8 = 1;
const FRAG_LATER: u8 = 2;

/// The flow clock: CLOCK_MONOTONIC at tick resolution. Timeouts are seconds
/// and refreshes a quarter second, so a tick (at most 10 ms) is precision
/// enough, and the coarse clock is a plain read where the precise one reads
/// the clock source (costly in a VM).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn load<T: Copy, C: Frame>(ctx: &C, off: usize) -> Result<T, Reason> {
    // Headers are almost always in the linear part of the skb: read them in
    // place (no helper call). The bound on `off` keeps the verifier's packet
    // range analysis finite; anything else goes through the helper, which
    // also reads paged data.
    const DIRECT_MAX: usize = 255;
    let (start, end) = (ctx.data(), ctx.data_end());
    if off <= DIRECT_MAX {
        let off = off & DIRECT_MAX;
        if start + off + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above; packet
            // loads need no alignment on the architectures BPF JITs for here.
            return Ok(unsafe { core::ptr::read((start + off) as *const T) });
        }
    }
    ctx.load_slow::<T>(off).ok_or(Reason::Malformed)
}

#[inline(always)]
fn decide<C: Frame>(ctx: &C, ifindex: u32, cfg: &IfaceCfg, dir: u8) -> Result<Pass, Reason> {
    let eth: EthHdr = load(ctx, 0)?;
    let pkt = match u16::from_be(eth.ether_type) {
        ETH_P_IP => parse_v4(ctx)?,
        ETH_P_IPV6 => {
            let p = parse_v6(ctx)?;
            // Neighbour discovery (ICMPv6 133-137) always passes (docs/contract.md §5).
            if p.proto == PROTO_ICMPV6 && p.frag == FRAG_NONE && (133..=137).contains(&p.dport[0]) {
                return Ok(Pass::Plain);
            }
            p
        }
        ETH_P_ARP => return Ok(Pass::Plain),
        _ => return Err(Reason::UnsupportedL2),
    };
    if pkt.frag == FRAG_LATER {
        return later_fragment(ifindex, cfg, dir, &pkt);
    }
    if cfg.flags & IFACE_RELATED_ICMP != 0
        && icmp_is_error(pkt.family, pkt.proto, pkt.dport[0])
        && pkt.frag == FRAG_NONE
        && related(ctx, ifindex, cfg, dir, &pkt)
    {
        return Ok(Pass::Plain);
    }
    let verdict = decide_l4(ifindex, cfg, dir, &pkt);
    if verdict.is_ok() && pkt.frag == FRAG_FIRST {
        let key = frag_key(ifindex, &pkt);
        let now = now_ns();
        if FRAGS.insert(key, now, BPF_ANY as u64).is_err() {
            return Err(Reason::MapError);
        }
    }
    verdict
}

#[inline(always)]
fn frag_key(ifindex: u32, p: &Pkt) -> FragKey {
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
fn later_fragment(ifindex: u32, cfg: &IfaceCfg, dir: u8, p: &Pkt) -> Result<Pass, Reason> {
    let key = frag_key(ifindex, p);
    if let Some(t) = unsafe { FRAGS.get(key) } {
        let now = now_ns();
        if now.wrapping_sub(*t) <= TIMEOUT_FRAG_S as u64 * 1_000_000_000 {
            return Ok(Pass::Plain);
        }
    }
    let remote = if dir == DIR_INBOUND { &p.src } else { &p.dst };
    match policy(
        cfg,
        dir,
        p.family,
        remote,
        p.proto,
        [0, 0],
        PORT_KEY_PROTO_BITS,
    ) {
        Some(_) => Ok(Pass::Plain),
        None => Err(Reason::Fragment),
    }
}

/// The bytes of a header loaded as words (for aligned word access to the
/// addresses and cheap byte access to the rest).
#[inline(always)]
fn bytes<const W: usize, const B: usize>(w: &[u32; W]) -> &[u8; B] {
    const { assert!(W * 4 == B) };
    // SAFETY: same size, and u8 has no alignment requirement.
    unsafe { &*(w as *const [u32; W] as *const [u8; B]) }
}

#[inline(always)]
fn parse_v4<C: Frame>(ctx: &C) -> Result<Pkt, Reason> {
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

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

#[inline(always)]
fn parse_v6<C: Frame>(ctx: &C) -> Result<Pkt, Reason> {
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
fn parse_l4<C: Frame>(ctx: &C, off: usize, end: usize, pkt: &mut Pkt) -> Result<(), Reason> {
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

#[inline(always)]
fn icmp_is_error(family: u8, proto: u8, t: u8) -> bool {
    match (family, proto) {
        (FAMILY_V4, PROTO_ICMP) => matches!(t, 3 | 4 | 5 | 11 | 12),
        (FAMILY_V6, PROTO_ICMPV6) => matches!(t, 1..=4),
        _ => false,
    }
}

/// Is this ICMP error about a live tracked flow? The header it quotes went
/// the other way, so its source is our local end when the error is inbound.
#[inline(always)]
fn related<C: Frame>(ctx: &C, ifindex: u32, cfg: &IfaceCfg, dir: u8, p: &Pkt) -> bool {
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

/// The tracking key of a flow, named by the workload's (local) and the peer's
/// (remote) ends so that both directions find it. ICMP keys by the query
/// identifier `id` alone.
#[expect(clippy::too_many_arguments, reason = "a key has this many parts")]
#[inline(always)]
fn ct_key(
    ifindex: u32,
    family: u8,
    proto: u8,
    local: Addr,
    remote: Addr,
    lport: [u8; 2],
    rport: [u8; 2],
    id: [u8; 2],
) -> CtKey {
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    CtKey {
        ifindex,
        family,
        proto,
        local_port: u16::from_ne_bytes(if icmp { id } else { lport }),
        remote_port: if icmp { 0 } else { u16::from_ne_bytes(rport) },
        _pad: 0,
        local,
        remote,
    }
}

/// Allow flags of the policy for `(dir, family)` towards `remote` for
/// `(proto, port)`, the port trie consulted up to `prefix` bits.
#[inline(always)]
fn policy(
    cfg: &IfaceCfg,
    dir: u8,
    family: u8,
    remote: &Addr,
    proto: u8,
    port: [u8; 2],
    prefix: u32,
) -> Option<u32> {
    let id = cfg.policy[policy_index(dir, family) & 3];
    if id == 0 {
        return None;
    }
    // Trie keys are packed structs; built as word arrays of the same layout
    // they are written with word stores instead of byte stores.
    let class = if family == FAMILY_V4 {
        let k: [u32; 3] = [ADDR_KEY_POLICY_BITS + 32, id, remote[0]];
        // SAFETY: `Key<AddrKey4>` is packed (align 1) with this layout:
        // prefix_len, policy, the address bytes.
        *ADDR4.get(unsafe { &*(k.as_ptr() as *const Key<AddrKey4>) })?
    } else {
        let k: [u32; 6] = [
            ADDR_KEY_POLICY_BITS + 128,
            id,
            remote[0],
            remote[1],
            remote[2],
            remote[3],
        ];
        // SAFETY: as above, for `Key<AddrKey6>`.
        *ADDR6.get(unsafe { &*(k.as_ptr() as *const Key<AddrKey6>) })?
    };
    let k: [u32; 3] = [
        prefix,
        class,
        u32::from_ne_bytes([proto, port[0], port[1], 0]),
    ];
    // SAFETY: `Key<PortKey>` is packed: prefix_len, class, proto, port, pad.
    let v = PORTS.get(unsafe { &*(k.as_ptr() as *const Key<PortKey>) })?;
    if v.flags & PORT_ALLOW != 0 {
        Some(v.flags)
    } else {
        None
    }
}

#[inline(always)]
fn decide_l4(ifindex: u32, cfg: &IfaceCfg, dir: u8, p: &Pkt) -> Result<Pass, Reason> {
    let inbound = dir == DIR_INBOUND;
    let (local, remote, lport, rport) = if inbound {
        (p.dst, p.src, p.dport, p.sport)
    } else {
        (p.src, p.dst, p.sport, p.dport)
    };
    // ICMP queries key by identifier (in `sport`); the type travels in `dport`.
    let key = ct_key(
        ifindex, p.family, p.proto, local, remote, lport, rport, p.sport,
    );
    let now = now_ns();

    let existing = CT.get_ptr_mut(key);
    if let Some(ct) = existing {
        // SAFETY: LRU values stay valid under RCU for the program's run; a
        // racing writer can at worst make a refresh land twice.
        let ct = unsafe { &mut *ct };
        if now.wrapping_sub(ct.last_seen_ns) <= timeout_ns(cfg, ct.state, ct.flags)
            && icmp_fits(p, ct, dir)
        {
            refresh(ct, p, dir, now);
            return Ok(Pass::Plain);
        }
    }

    // No live tracked flow: the policy decides.
    let flags = policy(
        cfg,
        dir,
        p.family,
        &remote,
        p.proto,
        p.dport,
        PORT_KEY_FULL_BITS,
    )
    .ok_or(Reason::NoRule)?;
    if p.proto == PROTO_TCP || p.proto == PROTO_UDP {
        if flags & PORT_UNTRACKED != 0 {
            return Ok(Pass::Plain);
        }
        // A packet of an untracked flow started in the other direction (a
        // response) also keeps no state: the other direction would have let
        // the reversed packet start an untracked flow.
        let other = if inbound { DIR_OUTBOUND } else { DIR_INBOUND };
        if cfg.all_response & all_response_bit(dir, p.family, p.proto) != 0
            && let Some(f) = policy(
                cfg,
                other,
                p.family,
                &remote,
                p.proto,
                p.sport,
                PORT_KEY_FULL_BITS,
            )
            && f & PORT_UNTRACKED != 0
        {
            return Ok(Pass::Plain);
        }
        // A lone RST opens nothing.
        if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
            return Ok(Pass::Plain);
        }
    }
    create(&key, existing.is_some(), p, dir, now)
}

#[inline(always)]
fn icmp_fits(p: &Pkt, ct: &CtVal, dir: u8) -> bool {
    if p.proto != PROTO_ICMP && p.proto != PROTO_ICMPV6 || ct.icmp_type == 0xff {
        return true;
    }
    let from_orig = (ct.flags & CT_ORIG_OUTBOUND != 0) == (dir == DIR_OUTBOUND);
    if from_orig {
        p.dport[0] == ct.icmp_type
    } else {
        icmp_reply_of(p.family, ct.icmp_type) == Some(p.dport[0])
    }
}

/// Advances a tracked flow in place: no `bpf_map_update_elem` per packet.
#[inline(always)]
fn refresh(ct: &mut CtVal, p: &Pkt, dir: u8, now: u64) {
    let from_orig = (ct.flags & CT_ORIG_OUTBOUND != 0) == (dir == DIR_OUTBOUND);
    let mut flags = ct.flags;
    let mut state = ct.state;
    if !from_orig {
        flags |= CT_SEEN_REPLY;
    }
    if p.proto == PROTO_TCP {
        let f = p.tcp_flags;
        if f & TCP_RST != 0 {
            state = TCP_RESET;
        } else {
            if state == TCP_SYN_SENT && !from_orig && f & TCP_ACK != 0 {
                state = TCP_ESTABLISHED;
            }
            if f & TCP_FIN != 0 {
                flags |= if from_orig { CT_FIN_ORIG } else { CT_FIN_REPLY };
                state = if flags & CT_FIN_ORIG != 0 && flags & CT_FIN_REPLY != 0 {
                    TCP_CLOSED
                } else {
                    TCP_FIN_WAIT
                };
            }
            // A new SYN on a closed or reset tuple reopens it.
            if (state == TCP_CLOSED || state == TCP_RESET) && f & TCP_SYN != 0 && f & TCP_ACK == 0 {
                state = TCP_SYN_SENT;
                flags &= CT_ORIG_OUTBOUND;
            }
        }
    } else if p.proto == PROTO_UDP && ct.flags & CT_SEEN_REPLY != 0 {
        flags |= CT_UDP_STREAM;
    }
    if flags != ct.flags || state != ct.state {
        ct.flags = flags;
        ct.state = state;
    }
    if now.wrapping_sub(ct.last_seen_ns) >= CT_REFRESH_NS {
        ct.last_seen_ns = now;
    }
}

#[inline(always)]
fn create(key: &CtKey, replace: bool, p: &Pkt, dir: u8, now: u64) -> Result<Pass, Reason> {
    let state = match p.proto {
        PROTO_TCP => {
            if p.tcp_flags & TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0 {
                TCP_SYN_SENT
            } else {
                // Picked up mid-stream (a flow older than the table entry).
                TCP_ESTABLISHED
            }
        }
        PROTO_UDP => CT_STATE_UDP,
        PROTO_ICMP | PROTO_ICMPV6 => CT_STATE_ICMP,
        _ => CT_STATE_OTHER,
    };
    let icmp_type = if state == CT_STATE_ICMP {
        // Only ICMP queries start conversations; errors and other messages
        // are judged by the rules each time.
        if icmp_reply_of(p.family, p.dport[0]).is_none() {
            return Ok(Pass::Plain);
        }
        p.dport[0]
    } else {
        0xff
    };
    let val = CtVal {
        last_seen_ns: now,
        state,
        flags: if dir == DIR_OUTBOUND {
            CT_ORIG_OUTBOUND
        } else {
            0
        },
        icmp_type,
        _pad: [0; 5],
    };
    if replace {
        // An expired entry of the same tuple: reuse its slot, count unchanged.
        return CT
            .insert(key, val, BPF_ANY as u64)
            .map(|_| Pass::NewFlow)
            .map_err(|_| Reason::MapError);
    }
    if flows_in_use() >= unsafe { core::ptr::read_volatile(&CT_LIMIT) } {
        return Err(Reason::TableFull);
    }
    match CT.insert(key, val, BPF_NOEXIST as u64) {
        Ok(()) => {
            let n = CT_INSERTED.get_ptr_mut(0).ok_or(Reason::MapError)?;
            // SAFETY: this CPU's cell; nothing else writes it meanwhile.
            unsafe { *n += 1 };
            Ok(Pass::NewFlow)
        }
        // Another CPU created it meanwhile: the flow is tracked either way.
        Err(_) if CT.get_ptr(key).is_some() => Ok(Pass::Plain),
        Err(_) => Err(Reason::MapError),
    }
}

/// Tracked flows in the table: inserted on every CPU less swept by the agent.
#[inline(always)]
fn flows_in_use() -> u64 {
    let ncpus = unsafe { core::ptr::read_volatile(&NR_CPUS) };
    let key = 0u32;
    let mut inserted = 0u64;
    for cpu in 0..MAX_CPUS {
        if cpu >= ncpus {
            break;
        }
        // SAFETY: the map pointer is the relocated map; the key is a u32 index.
        let p = unsafe {
            bpf_map_lookup_percpu_elem(
                &CT_INSERTED as *const _ as *mut c_void,
                &key as *const u32 as *const c_void,
                cpu,
            )
        };
        if !p.is_null() {
            inserted += unsafe { *(p as *const u64) };
        }
    }
    let removed = CT_REMOVED.get(0).copied().unwrap_or(0);
    inserted.saturating_sub(removed)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sg-ebpf is a BPF object: sg-agent embeds it; it does not run on the host");
    std::process::exit(2);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
