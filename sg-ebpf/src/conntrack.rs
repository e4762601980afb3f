//! The tracking table: keys, the lookup (with its explicit status), the
//! in-place refresh, and the creation of flows within the allowance.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_map_lookup_percpu_elem},
};
use core::ffi::c_void;
use sg_common::*;

use crate::{
    flowlog,
    maps::{CT, CT_INSERTED, CT_LIMIT, CT_REMOVED, CT_SCRATCH, MAX_CPUS, NR_CPUS},
    parse::Pkt,
    verdict::Pass,
};

/// What flow logs need of a packet: whether they are on, and its length.
#[derive(Clone, Copy)]
pub(crate) struct Meter {
    pub(crate) on: bool,
    pub(crate) len: u32,
}

/// The flow clock: CLOCK_MONOTONIC at tick resolution. Timeouts are seconds
/// and refreshes a quarter second, so a tick (at most 10 ms) is precision
/// enough, and the coarse clock is a plain read where the precise one reads
/// the clock source (costly in a VM).
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The tracking key of a flow, named by the workload's (local) and the peer's
/// (remote) ends so that both directions find it. ICMP keys by the query
/// identifier `id` alone.
#[expect(clippy::too_many_arguments, reason = "a key has this many parts")]
#[inline(always)]
pub(crate) fn ct_key(
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

/// What the tracking table says of a packet: the Cilium-style status the
/// pipeline switches on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtStatus {
    /// A live flow carries the packet; it has been refreshed in place.
    Established,
    /// As `Established`, and this packet ended the flow (flow logs only).
    Ended,
    /// The tuple has an entry that does not carry this packet (expired, or
    /// an ICMP type that does not fit): a new flow replaces it.
    Stale,
    /// The tuple is not tracked.
    New,
}

/// Looks `key` up, and refreshes a live flow in place.
#[inline(always)]
pub(crate) fn lookup(
    key: &CtKey,
    cfg: &IfaceCfg,
    p: &Pkt,
    dir: u8,
    now: u64,
    m: Meter,
) -> CtStatus {
    let Some(ct) = CT.get_ptr_mut(*key) else {
        return CtStatus::New;
    };
    // SAFETY: hash values stay valid under RCU for the program's run; a
    // racing writer can at worst make a refresh land twice.
    let ct = unsafe { &mut *ct };
    if now.wrapping_sub(ct.last_seen_ns) <= timeout_ns(cfg, ct.state, ct.flags)
        && icmp_fits(p, ct, dir)
    {
        if refresh(ct, p, dir, now, m) {
            CtStatus::Ended
        } else {
            CtStatus::Established
        }
    } else {
        CtStatus::Stale
    }
}

#[inline(always)]
pub(crate) fn icmp_fits(p: &Pkt, ct: &CtVal, dir: u8) -> bool {
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
/// With flow logs on, says whether this packet ended the flow.
#[inline(always)]
pub(crate) fn refresh(ct: &mut CtVal, p: &Pkt, dir: u8, now: u64, m: Meter) -> bool {
    let from_orig = (ct.flags & CT_ORIG_OUTBOUND != 0) == (dir == DIR_OUTBOUND);
    if m.on {
        flowlog::count(ct, from_orig, m.len, p.tcp_flags);
    }
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
    let ended = m.on && state != ct.state && (state == TCP_CLOSED || state == TCP_RESET);
    if flags != ct.flags || state != ct.state {
        ct.flags = flags;
        ct.state = state;
    }
    if now.wrapping_sub(ct.last_seen_ns) >= CT_REFRESH_NS {
        ct.last_seen_ns = now;
    }
    ended
}

#[inline(always)]
pub(crate) fn create(
    key: &CtKey,
    replace: bool,
    p: &Pkt,
    dir: u8,
    now: u64,
    m: Meter,
) -> Result<Pass, Reason> {
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
    let val = CT_SCRATCH.get_ptr_mut(0).ok_or(Reason::MapError)?;
    // SAFETY: this CPU's scratch cell, written whole here before its use.
    let val = unsafe { &mut *val };
    *val = CtVal {
        last_seen_ns: now,
        state,
        flags: if dir == DIR_OUTBOUND {
            CT_ORIG_OUTBOUND
        } else {
            0
        },
        icmp_type,
        ..CtVal::default()
    };
    if m.on {
        flowlog::count(val, true, m.len, p.tcp_flags);
    }
    if replace {
        // An expired entry of the same tuple: reuse its slot, count unchanged.
        // The value goes by reference: the scratch cell, not a stack copy.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the 48-byte value would be copied to the stack"
        )]
        CT.insert(key, &*val, BPF_ANY as u64)
            .map(|_| Pass::NewFlow)
            .map_err(|_| Reason::MapError)
    } else {
        insert_new(key, val)
    }
}

/// Inserts a flow the table does not hold, within the allowance.
#[inline(always)]
fn insert_new(key: &CtKey, val: &CtVal) -> Result<Pass, Reason> {
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
pub(crate) fn flows_in_use() -> u64 {
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
