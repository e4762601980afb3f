//! The one exit: every verdict is counted, every drop by its reason.

use sg_common::*;

use crate::maps::STATS;

/// What a pass did to the tracking table, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Plain,
    NewFlow,
    /// A packet of a tracked flow that ended it (reported with flow logs).
    EndedFlow,
}

#[inline(always)]
pub(crate) fn count(slot: u32, dir: u32, len: u64, verdict: Result<Pass, Reason>) {
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
