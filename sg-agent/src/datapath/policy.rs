//! Writing compiled policy under fresh ids, swapping an interface to it in
//! one map write, and removing what nothing refers to any more. The
//! encoding of entries is `compile`'s; this only allocates ids and writes.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use aya::maps::lpm_trie::Key;
use sg_common::{AddrKey4, AddrKey6, PortKey, STATS_SLOTS};

use super::{Datapath, ifname};
use crate::compile::Compiled;

/// The keys one interface's policy was written under, to remove when it is
/// replaced.
#[derive(Default)]
pub(super) struct Written {
    addr4: Vec<Key<AddrKey4>>,
    addr6: Vec<Key<AddrKey6>>,
    ports: Vec<Key<PortKey>>,
}

/// How long replaced policy entries stay after the swap (see `install`).
pub(super) const RETIRE_GRACE: Duration = Duration::from_millis(20);

impl Datapath {
    /// Writes `compiled` under fresh ids, points the interface at it in one
    /// map update; the entries of the policy it replaced go at the next
    /// [`Datapath::retire`]. Each packet therefore sees the whole old or the
    /// whole new policy.
    pub fn install(&mut self, name: &str, ifindex: u32, compiled: &Compiled) -> Result<()> {
        let mut written = Written::default();
        let policy = match self.write_policy(compiled, &mut written) {
            Ok(policy) => policy,
            Err(e) => {
                // Nothing points at the new ids yet: take them back out.
                self.remove_entries(&written);
                return Err(e);
            }
        };
        let slot = match self.maps.ifaces.get(&ifindex, 0) {
            Ok(old) => old.stats_slot,
            Err(_) => match self.free_slots.pop() {
                Some(s) => s,
                None if self.next_slot < STATS_SLOTS => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                None => {
                    self.remove_entries(&written);
                    return Err(anyhow!("more than {} interfaces", STATS_SLOTS - 1));
                }
            },
        };
        let cfg = compiled.iface_cfg(policy, slot);
        if let Err(e) = self.maps.ifaces.insert(ifindex, cfg, 0) {
            self.remove_entries(&written);
            return Err(e).with_context(|| format!("configuring interface {name}"));
        }
        if let Some(old) = self.written.insert(ifindex, written) {
            self.retiring.push((Instant::now(), old));
        }
        Ok(())
    }

    /// Removes the entries of replaced policies. A packet that read an old
    /// configuration just before its swap may still be looking its entries
    /// up; programs run for microseconds, so a short wait outlasts them all.
    /// Waits out the grace of the last one.
    pub fn retire(&mut self) {
        if let Some((at, _)) = self.retiring.last() {
            std::thread::sleep(RETIRE_GRACE.saturating_sub(at.elapsed()));
        }
        self.retire_expired();
    }

    /// Whether replaced entries wait for their grace to end.
    pub fn retiring(&self) -> bool {
        !self.retiring.is_empty()
    }

    /// Removes the replaced entries whose grace is over, without waiting
    /// (the agent's loop calls it on a tick, so that no change waits for
    /// the previous one's cleanup); returns whether some are still waiting.
    pub fn retire_expired(&mut self) -> bool {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(at, _)| at.elapsed() >= RETIRE_GRACE);
        self.retiring = waiting;
        for (_, old) in done {
            self.remove_entries(&old);
        }
        !self.retiring.is_empty()
    }

    /// Allocates class and policy ids and writes the entries `compiled`
    /// encodes for them; returns the policy ids.
    fn write_policy(&mut self, compiled: &Compiled, w: &mut Written) -> Result<[u32; 4]> {
        let class_base = self.next_class;
        self.next_class += compiled.classes.len() as u32;
        for (key, val) in compiled.port_keys(class_base) {
            self.maps
                .ports
                .insert(&key, val, 0)
                .context("writing the port trie")?;
            w.ports.push(key);
        }
        let mut policy = [0u32; 4];
        for (idx, id) in policy.iter_mut().enumerate() {
            if compiled.addrs[idx].is_empty() {
                continue;
            }
            *id = self.next_policy;
            self.next_policy += 1;
            let keys = compiled.addr_keys(idx, *id, class_base);
            for (key, class) in keys.v4 {
                self.maps
                    .addr4
                    .insert(&key, class, 0)
                    .context("writing the IPv4 address trie")?;
                w.addr4.push(key);
            }
            for (key, class) in keys.v6 {
                self.maps
                    .addr6
                    .insert(&key, class, 0)
                    .context("writing the IPv6 address trie")?;
                w.addr6.push(key);
            }
        }
        Ok(policy)
    }

    fn remove_entries(&mut self, w: &Written) {
        for k in &w.addr4 {
            let _ = self.maps.addr4.remove(k);
        }
        for k in &w.addr6 {
            let _ = self.maps.addr6.remove(k);
        }
        for k in &w.ports {
            let _ = self.maps.ports.remove(k);
        }
    }

    /// Stops enforcing on an interface: detaches, then drops its
    /// configuration and policy. Its tracked flows go with the next sweep.
    pub fn forget(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
        if let Some(cfg) = self.maps.unconfigure(ifindex) {
            self.free_slots.push(cfg.stats_slot);
        }
        if let Some(old) = self.written.remove(&ifindex) {
            self.retiring.push((Instant::now(), old));
        }
    }

    /// Removes policy entries that no interface configuration refers to
    /// (what an earlier agent left behind once this one installed its own,
    /// or what a detach left), and the configurations of interfaces that no
    /// longer exist. An interface that exists keeps whatever it has: leaving
    /// it out of the configuration does not detach it.
    pub fn collect_garbage(&mut self) {
        for (ifindex, _) in self.maps.iface_cfgs() {
            if ifname(ifindex).is_none() {
                self.maps.unconfigure(ifindex);
            }
        }
        let live: HashSet<u32> = self
            .maps
            .iface_cfgs()
            .values()
            .flat_map(|c| c.policy)
            .collect();
        let a4: Vec<_> = self
            .maps
            .addr4
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !live.contains(&k.data().policy))
            .collect();
        let a6: Vec<_> = self
            .maps
            .addr6
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !live.contains(&k.data().policy))
            .collect();
        let mut classes: HashSet<u32> = HashSet::new();
        for (k, v) in self.maps.addr4.iter().filter_map(|r| r.ok()) {
            if live.contains(&k.data().policy) {
                classes.insert(v);
            }
        }
        for (k, v) in self.maps.addr6.iter().filter_map(|r| r.ok()) {
            if live.contains(&k.data().policy) {
                classes.insert(v);
            }
        }
        let ports: Vec<_> = self
            .maps
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !classes.contains(&k.data().class))
            .collect();
        let n = a4.len() + a6.len() + ports.len();
        std::thread::sleep(RETIRE_GRACE);
        for k in a4 {
            let _ = self.maps.addr4.remove(&k);
        }
        for k in a6 {
            let _ = self.maps.addr6.remove(&k);
        }
        for k in ports {
            let _ = self.maps.ports.remove(&k);
        }
        if n > 0 {
            log::info!("removed {n} policy entries no interface uses");
        }
    }
}
