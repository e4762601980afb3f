//! Tracked flows: the allowance's slack, the sweep of idle flows, flushes,
//! and the flow clock.

use std::{net::IpAddr, time::Duration};

use anyhow::Result;
use ipnet::IpNet;
use sg_common::{CtKey, CtVal, FragKey, timeout_ns};

use super::Maps;

/// Entries beyond the allowance. The table is a preallocated hash whose free
/// elements sit on per-CPU lists that an allocating CPU steals from when its
/// own is empty (`kernel/bpf/percpu_freelist.c`, `___pcpu_freelist_pop`), so
/// every element is usable from any CPU, and replacing an existing key takes
/// one of the map's per-CPU `extra_elems` (`kernel/bpf/hashtab.c`), not a free
/// element: the kernel needs no slack. The datapath's own check needs a
/// little: each CPU may be between the allowance check and its insert in two
/// contexts at once (a program in task context interrupted by one in
/// softirq), and the sweeper re-bases the count so that it errs high, never
/// low (`Maps::sweep`).
pub fn ct_slack(ncpus: u32) -> u32 {
    2 * ncpus
}

/// Which tracked flows `Maps::flush` deletes: those matching every field given.
#[derive(Debug, Clone, Default)]
pub struct FlowMatch {
    pub ifindex: Option<u32>,
    /// The peer's address lies in this block.
    pub peer: Option<IpNet>,
    pub protocol: Option<u8>,
    /// Either end's port (TCP and UDP).
    pub port: Option<u16>,
}

impl FlowMatch {
    pub fn matches(&self, k: &CtKey) -> bool {
        let port = |p: u16| u16::from_be_bytes(p.to_ne_bytes());
        self.ifindex.is_none_or(|i| k.ifindex == i)
            && self
                .peer
                .is_none_or(|n| n.contains(&ct_addr(k.family, &k.remote)))
            && self.protocol.is_none_or(|p| k.proto == p)
            && self.port.is_none_or(|p| {
                matches!(k.proto, sg_common::PROTO_TCP | sg_common::PROTO_UDP)
                    && (port(k.local_port) == p || port(k.remote_port) == p)
            })
    }
}

impl Maps {
    /// Deletes tracked flows idle past their timeout; returns how many. Also
    /// re-bases the flow count the datapath checks against the table's
    /// contents, so that nothing (a flush, an eviction) makes it drift.
    pub fn sweep(&mut self) -> Result<u64> {
        let now = flow_clock_ns();
        // Read before the walk: flows created during it then make the count
        // too high for one sweep, never too low.
        let inserted = self.inserted();
        let cfgs = self.iface_cfgs();
        let mut stale = Vec::new();
        let mut live = 0u64;
        for item in self.ct.iter() {
            let Ok((k, v)) = item else { continue };
            let expired = match cfgs.get(&k.ifindex) {
                Some(cfg) => now.saturating_sub(v.last_seen_ns) > timeout_ns(cfg, v.state, v.flags),
                // The interface is gone: its flows can never pass again.
                None => true,
            };
            if expired {
                stale.push(k);
            } else {
                live += 1;
            }
        }
        let mut removed = 0;
        for k in stale {
            if self.ct.remove(&k).is_ok() {
                removed += 1;
            }
        }
        self.ct_removed.set(0, inserted.saturating_sub(live), 0)?;
        Ok(removed)
    }

    fn inserted(&self) -> u64 {
        self.ct_inserted
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Tracked flows the datapath counts against the allowance.
    pub fn flows_in_use(&self) -> u64 {
        self.inserted()
            .saturating_sub(self.ct_removed.get(&0, 0).unwrap_or(0))
    }

    /// Deletes the tracked flows that `m` matches, the operator's way to cut
    /// flows that rule removal leaves running (docs/contract.md §3). Returns how
    /// many went. The flow count follows at the agent's next sweep.
    pub fn flush(&mut self, m: &FlowMatch) -> Result<u64> {
        let keys: Vec<CtKey> = self
            .ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| m.matches(k))
            .collect();
        let mut removed = 0;
        for k in keys {
            if self.ct.remove(&k).is_ok() {
                removed += 1;
            }
        }
        let frags: Vec<FragKey> = self
            .frags
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| m.ifindex.is_none_or(|i| k.ifindex == i))
            .collect();
        for k in frags {
            let _ = self.frags.remove(&k);
        }
        Ok(removed)
    }

    /// Inserts a tracked flow (benchmarks fill the table this way).
    pub fn insert_flow(&mut self, key: &CtKey, val: &CtVal) -> Result<()> {
        self.ct.insert(key, val, 0)?;
        Ok(())
    }

    /// Datagrams whose first fragment passed, for tests.
    pub fn fragments(&self, ifindex: u32) -> Vec<FragKey> {
        self.frags
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.ifindex == ifindex)
            .collect()
    }

    /// Every tracked flow.
    pub fn tracked(&self) -> impl Iterator<Item = (CtKey, CtVal)> + '_ {
        self.ct.iter().filter_map(|r| r.ok())
    }

    /// One tracked flow, if the table holds it.
    pub fn tracked_flow(&self, key: &CtKey) -> Option<CtVal> {
        self.ct.get(key, 0).ok()
    }

    /// Tracked flows of an interface.
    pub fn flows(&self, ifindex: u32) -> Vec<(CtKey, CtVal)> {
        self.ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| k.ifindex == ifindex)
            .collect()
    }
}

/// The clock the datapath stamps flows with (`bpf_ktime_get_coarse_ns`,
/// CLOCK_MONOTONIC at tick resolution).
pub fn flow_clock_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32).as_nanos() as u64
}

/// A conntrack or fragment key's address as an `IpAddr`.
pub fn ct_addr(family: u8, a: &sg_common::Addr) -> IpAddr {
    let b = sg_common::addr_bytes(a);
    if family == sg_common::FAMILY_V4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}
