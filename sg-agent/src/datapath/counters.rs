//! Counters per interface and direction, summed over CPUs.

use std::collections::HashMap as StdHashMap;

use anyhow::Result;
use sg_common::{Reason, Stats};

use super::Maps;

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfaceStats {
    pub ifindex: u32,
    /// Inbound, outbound.
    pub dirs: [Stats; 2],
    /// Tracked flows of the interface in the table now.
    pub flows_in_use: u64,
}

impl Maps {
    /// Counters of every configured interface, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<IfaceStats>> {
        let mut flows: StdHashMap<u32, u64> = StdHashMap::new();
        for k in self.ct.keys().filter_map(|k| k.ok()) {
            *flows.entry(k.ifindex).or_default() += 1;
        }
        let mut out = Vec::new();
        for (ifindex, cfg) in self.iface_cfgs() {
            let mut s = IfaceStats {
                ifindex,
                flows_in_use: flows.get(&ifindex).copied().unwrap_or(0),
                ..Default::default()
            };
            for (dir, d) in s.dirs.iter_mut().enumerate() {
                for cpu in self
                    .stats
                    .get(&(cfg.stats_slot * 2 + dir as u32), 0)?
                    .iter()
                {
                    d.accepted_packets += cpu.accepted_packets;
                    d.accepted_bytes += cpu.accepted_bytes;
                    d.rejected_packets += cpu.rejected_packets;
                    d.rejected_bytes += cpu.rejected_bytes;
                    d.flows_created += cpu.flows_created;
                    d.flows_refused += cpu.flows_refused;
                    d.events_skipped += cpu.events_skipped;
                    for r in Reason::ALL {
                        d.drops[r as usize] += cpu.drops[r as usize];
                    }
                }
            }
            out.push(s);
        }
        out.sort_by_key(|s| s.ifindex);
        Ok(out)
    }
}
