//! Flow logs' kernel half (docs/observe.md): per-flow counts in the
//! tracking entry, and flow events (a flow's start, its end by FIN or RST,
//! rejected packets) through the `EVENTS` ring buffer. The agent reads an
//! ended flow's counts at its end event, and every flow's by walking the
//! table every 5 s (an idle flow lingers longer than that). Rejects are
//! rate-limited per CPU by a token bucket so that a flood costs the host a
//! bounded number of events; every event not written is counted
//! (`Stats::events_skipped`), which the agent reports as `SKIPDATA`.

use sg_common::*;

use network_types::eth::EthHdr;

use crate::{
    conntrack::now_ns,
    context::Frame,
    maps::{BUCKETS, EVENTS, FLOWLOG, STATS},
    parse::{ETH_P_IP, ETH_P_IPV6},
};

/// Counts a packet of a tracked flow; `from_orig` says which end sent it.
#[inline(always)]
pub(crate) fn count(ct: &mut CtVal, from_orig: bool, len: u32, tcp_flags: u8) {
    let i = if from_orig { 0 } else { 1 };
    ct.packets[i] += 1;
    ct.bytes[i] += len as u64;
    ct.tcp_flags[i] |= tcp_flags;
}

/// What an event says beside the packet's tuple, packed in two words so
/// that it travels in registers: the decision's frame has no room for it.
#[derive(Clone, Copy)]
pub(crate) struct Note {
    /// `ifindex | slot << 32`.
    pub(crate) at: u64,
    /// `len | kind << 32 | dir << 40 | detail << 48`.
    pub(crate) what: u64,
}

impl Note {
    #[inline(always)]
    pub(crate) fn new(kind: u8, dir: u8, detail: u8, ifindex: u32, slot: u32, len: u32) -> Note {
        Note {
            at: ifindex as u64 | (slot as u64) << 32,
            what: len as u64 | (kind as u64) << 32 | (dir as u64) << 40 | (detail as u64) << 48,
        }
    }
}

#[inline(always)]
fn skipped(slot: u32, dir: u8) {
    let idx = slot.min(STATS_SLOTS - 1) * 2 + (dir as u32 & 1);
    if let Some(s) = STATS.get_ptr_mut(idx) {
        // SAFETY: this CPU's cell; nothing else writes it meanwhile.
        unsafe { (*s).events_skipped += 1 };
    }
}

/// The event `n` of the frame in `ctx`: a flow it started, or its reject
/// (written if this CPU's bucket has credit, else counted as skipped).
/// Called once, after the verdict, rather than from each place the decision
/// creates or rejects (which multiplied the paths the verifier walks past
/// its limit); it reads the few header fields it reports itself with the
/// load helper (direct packet reads do not verify in a subprogram).
/// IPv6 extension headers are not walked: behind them the ports are 0.
#[inline(never)]
pub(crate) fn event<C: Frame>(ctx: &C, at: u64, what: u64) {
    let (ifindex, slot) = (at as u32, (at >> 32) as u32);
    let (len, kind, dir, detail) = (
        what as u32,
        (what >> 32) as u8,
        (what >> 40) as u8,
        (what >> 48) as u8,
    );
    if kind == EVENT_REJECT && !take_token() {
        skipped(slot, dir);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        skipped(slot, dir);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable FlowEvent, written whole
    // (zeroed, then the fields known) before the submit; the helper loads
    // stay within the fields they name.
    unsafe {
        core::ptr::write_bytes(e, 0, 1);
        (*e).ts_ns = now_ns();
        (*e).ifindex = ifindex;
        (*e).kind = kind;
        (*e).dir = dir;
        (*e).detail = detail;
        (*e).len = len;
        // Header bytes are loaded straight into the event (the fields, or
        // its address words as scratch): this frame adds to the decision's
        // within the kernel's 512 bytes of stack, so it keeps none.
        let l4 = if !ctx.load_to(12, (*e)._pad.as_mut_ptr(), 2) {
            None
        } else if u16::from_be_bytes((*e)._pad) == ETH_P_IP {
            // The 20-byte header lands on src[0..3] + dst[0]: its source
            // address is then src[3] and its destination already dst[0].
            if ctx.load_to(EthHdr::LEN, (*e).src.as_mut_ptr() as *mut u8, 20) {
                let (w0, w1, w2) = (
                    (*e).src[0].to_ne_bytes(),
                    (*e).src[1].to_ne_bytes(),
                    (*e).src[2].to_ne_bytes(),
                );
                (*e).family = FAMILY_V4;
                (*e).proto = w2[1];
                (*e).src = [(*e).src[3], 0, 0, 0];
                let frag = u16::from_be_bytes([w1[2], w1[3]]);
                (frag & 0x1fff == 0).then_some(EthHdr::LEN + ((w0[0] & 0x0f) as usize) * 4)
            } else {
                (*e).src = [0; 4];
                None
            }
        } else if u16::from_be_bytes((*e)._pad) == ETH_P_IPV6 {
            if ctx.load_to(EthHdr::LEN + 6, &mut (*e).proto, 1) {
                (*e).family = FAMILY_V6;
                ctx.load_to(EthHdr::LEN + 8, (*e).src.as_mut_ptr() as *mut u8, 16);
                ctx.load_to(EthHdr::LEN + 24, (*e).dst.as_mut_ptr() as *mut u8, 16);
                Some(EthHdr::LEN + 40)
            } else {
                None
            }
        } else {
            None
        };
        (*e)._pad = [0; 2];
        let proto = (*e).proto;
        if let Some(off) = l4
            && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6)
            && ctx.load_to(off, (*e).sport.as_mut_ptr(), 4)
        {
            if proto == PROTO_ICMP || proto == PROTO_ICMPV6 {
                (*e).dport = (*e).sport;
                (*e).sport = [0; 2];
            }
            if proto == PROTO_TCP {
                ctx.load_to(off + 13, &mut (*e).tcp_flags, 1);
            }
        }
    }
    entry.submit(0);
}

/// The token bucket: credit accrues with time up to the burst; an event
/// spends `ns_per_event` of it. Per CPU, so no atomics are needed.
#[inline(always)]
fn take_token() -> bool {
    let Some(cfg) = FLOWLOG.get(0).filter(|c| c.enabled != 0) else {
        return false;
    };
    let Some(b) = BUCKETS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's bucket; nothing else writes it meanwhile.
    let b = unsafe { &mut *b };
    let now = now_ns();
    let credit = b
        .credit_ns
        .saturating_add(now.saturating_sub(b.last_ns))
        .min(cfg.burst_ns);
    b.last_ns = now;
    if credit >= cfg.ns_per_event {
        b.credit_ns = credit - cfg.ns_per_event;
        true
    } else {
        b.credit_ns = credit;
        false
    }
}
