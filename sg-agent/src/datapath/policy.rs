//! Changing what the kernel enforces, one transaction at a time: the shared
//! address map (block → identity), the policies (policy, identity,
//! protocol → port segments) and each interface's configuration, written
//! in an order that lets every packet see the whole old or the whole new
//! state (docs/datapath.md, "Atomic changes"). The encoding of entries is
//! `compile`'s; this allocates ids and writes.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashSet, HashSetExt};

use anyhow::{Context, Result, anyhow};
use ipnet::IpNet;
use sg_common::{PolicyKey, PolicyVal, STATS_SLOTS};

use super::{Datapath, ifname, txn::Txn};
use crate::compile::{AddrKey, Compiled, DirPolicy, Members, addr_key, lens_value, prefix_lengths};

/// How long replaced policy entries stay after the change (see `commit`).
pub(super) const RETIRE_GRACE: Duration = Duration::from_millis(20);

/// One interface's new policy.
pub struct Change<'a> {
    pub name: &'a str,
    pub ifindex: u32,
    pub compiled: &'a Compiled,
}

/// What a change wrote, by map: the figures of "a membership change is one
/// write per address".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    pub addresses: usize,
    pub policy: usize,
    pub interfaces: usize,
    /// Whether the change was staged (`stage.rs`): its blocks went through
    /// temporary identities, and it waited for a grace.
    pub staged: bool,
}

/// A policy direction as the transaction sees it: its content when this
/// agent wrote it (an earlier agent's is unknown).
pub(super) type Content = Option<Arc<DirPolicy>>;

impl Datapath {
    /// Enforces `compiled` on one interface, the rest as they are, with no
    /// group members (tests and benchmarks, whose rules are address blocks).
    pub fn install(&mut self, name: &str, ifindex: u32, compiled: &Compiled) -> Result<Writes> {
        self.commit(
            &[Change {
                name,
                ifindex,
                compiled,
            }],
            &Members::default(),
        )
    }

    /// Enforces `changes` (interfaces not named keep their policy) with
    /// `members` as the groups' members, as one transaction:
    ///
    /// 1. every entry the new state needs is written under ids nothing uses
    ///    yet (new policies; existing policies' entries for new identities);
    /// 2. when policies and addresses change in ways a packet reading one
    ///    old and one new could mix into a verdict neither state gives
    ///    (`stage.rs`), each changed block first moves to a temporary
    ///    identity that every policy, old and new, judges as the old state
    ///    did; otherwise the policies that stragglers may read judge the
    ///    identities they may meet;
    /// 3. the interfaces switch to their new policies, one map write each
    ///    (or, where every user of a policy moves to the same rules, the
    ///    policy is rewritten in place: `inplace.rs`);
    /// 4. the blocks take their new identities, one write each;
    /// 5. what nothing refers to goes after a grace (`retire_expired`).
    ///
    /// A packet reads one interface configuration and then one address
    /// entry; with a grace between steps 3 and 4 when staged (a packet that
    /// read the old configuration is done before any block leaves its
    /// temporary identity), it is judged by the whole old or the whole new
    /// state at every step.
    pub fn commit(&mut self, changes: &[Change], members: &Members) -> Result<Writes> {
        let mut same_cfg = HashSet::new();
        for c in changes {
            match self.maps.ifaces.get(&c.ifindex, 0) {
                Ok(old) if c.compiled.iface_cfg(old.policy, old.stats_slot) == old => {
                    same_cfg.insert(c.ifindex)
                }
                _ => same_cfg.remove(&c.ifindex),
            };
        }
        let t = self.state.plan(changes, members, &same_cfg)?;
        self.write(t, changes)
    }

    /// Writes a planned change, in the order `commit` describes.
    fn write(&mut self, t: Txn, changes: &[Change]) -> Result<Writes> {
        let mut w = Writes::default();
        let Txn {
            after,
            target,
            ids,
            changed,
            source,
            temp,
            new_policy,
            rewrites,
            entries,
        } = t;
        // 1. Entries under ids nothing uses yet.
        if let Err(e) = self.write_entries(&entries) {
            self.remove_entries(entries.iter().map(|(k, _)| *k));
            return Err(e);
        }
        w.policy = entries.len();
        for (k, v) in entries {
            self.state
                .pol
                .entry((k.policy, k.identity))
                .or_default()
                .push((k, v));
        }

        let union: BTreeSet<IpNet> = self
            .state
            .addr
            .keys()
            .chain(target.keys())
            .copied()
            .collect();
        self.write_lens(union.iter())?;
        // 2. Changed blocks to the temporary identities of their old ones.
        for n in &changed {
            if let Some(Some(k)) = source.get(n)
                && let Some(tmp) = temp.get(k)
            {
                self.write_addr(n, Some(*tmp))?;
                w.addresses += 1;
            }
        }
        // 3. The interfaces switch: policies changed in place entry by
        // entry, the others by their configuration.
        for (p, (content, rw)) in rewrites {
            self.write_entries(&rw.writes)?;
            self.remove_entries(rw.removes.iter().copied());
            w.policy += rw.writes.len() + rw.removes.len();
            for (k, entries) in rw.after {
                if entries.is_empty() {
                    self.state.pol.remove(&k);
                } else {
                    self.state.pol.insert(k, entries);
                }
            }
            if let Some(old) = self.state.contents.insert(p, content.clone()) {
                self.state.policy_ids.remove(&old);
            }
            self.state.policy_ids.insert(content, p);
        }
        // Each changed interface once, as its last change says.
        let mut seen = HashSet::new();
        for c in changes.iter().rev().filter(|c| seen.insert(c.ifindex)) {
            let (i, dirs) = (c.ifindex, &after[&c.ifindex]);
            let policy = [0, 1].map(|d| {
                new_policy
                    .get(&(i, d))
                    .copied()
                    .unwrap_or_else(|| self.state.installed[&i][d])
            });
            if self.configure(c.name, i, c.compiled, policy)? {
                w.interfaces += 1;
            }
            self.state.installed.insert(i, policy);
            for d in 0..2 {
                if let Some(content) = &dirs[d] {
                    self.state.policy_ids.insert(content.clone(), policy[d]);
                    self.state.contents.insert(policy[d], content.clone());
                }
            }
        }
        // A packet reads its interface's configuration before its peer's
        // address entry: one that read an old configuration just before the
        // switch must not meet the blocks' new identities, which its old
        // policy would judge by old rules and new members. So, staged, the
        // blocks move only once every such packet is done (the grace that
        // retirement relies on too).
        if !temp.is_empty() {
            w.staged = true;
            std::thread::sleep(RETIRE_GRACE);
        }
        // 4. The blocks take their identities.
        for n in &changed {
            self.write_addr(n, ids.get(n).copied())?;
            w.addresses += 1;
        }
        self.write_lens(target.keys())?;
        // 5. Retire what nothing refers to.
        let retired = self.state.unreferenced(&temp.values().copied().collect());
        self.retire_later(retired);
        Ok(w)
    }

    /// Writes an interface's configuration if it differs; whether it did.
    fn configure(
        &mut self,
        name: &str,
        ifindex: u32,
        c: &Compiled,
        policy: [u32; 2],
    ) -> Result<bool> {
        let slot = match self.maps.ifaces.get(&ifindex, 0) {
            Ok(old) => {
                if old == c.iface_cfg(policy, old.stats_slot) {
                    return Ok(false);
                }
                old.stats_slot
            }
            Err(_) => match self.free_slots.pop() {
                Some(s) => s,
                None if self.next_slot < STATS_SLOTS => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                None => return Err(anyhow!("more than {} interfaces", STATS_SLOTS - 1)),
            },
        };
        self.maps
            .ifaces
            .insert(ifindex, c.iface_cfg(policy, slot), 0)
            .with_context(|| format!("configuring interface {name}"))?;
        Ok(true)
    }

    fn write_entries(&mut self, entries: &[(PolicyKey, PolicyVal)]) -> Result<()> {
        for (k, v) in entries {
            self.maps
                .policy
                .insert(k, v, 0)
                .context("writing the policy map")?;
        }
        Ok(())
    }

    fn remove_entries(&mut self, keys: impl Iterator<Item = PolicyKey>) {
        for k in keys {
            let _ = self.maps.policy.remove(&k);
        }
    }

    /// Points `net` at `identity`, or removes it.
    fn write_addr(&mut self, net: &IpNet, identity: Option<u32>) -> Result<()> {
        let r = match (addr_key(net), identity) {
            (AddrKey::V4(k), Some(id)) => self.maps.addr4.insert(k, id, 0),
            (AddrKey::V6(k), Some(id)) => self.maps.addr6.insert(k, id, 0),
            (AddrKey::V4(k), None) => self.maps.addr4.remove(&k),
            (AddrKey::V6(k), None) => self.maps.addr6.remove(&k),
        };
        match identity {
            Some(id) => {
                r.with_context(|| format!("writing {net} to the address map"))?;
                self.state.addr.insert(*net, id);
            }
            None => {
                // Already absent is what was wanted.
                let _ = r;
                self.state.addr.remove(net);
            }
        }
        Ok(())
    }

    /// Makes `LENS` list the prefix lengths of `nets`, longest first
    /// (index 0: IPv4, 1: IPv6).
    fn write_lens<'a>(&mut self, nets: impl Iterator<Item = &'a IpNet>) -> Result<()> {
        for (i, family) in prefix_lengths(nets).into_iter().enumerate() {
            if self.state.lens[i] == family {
                continue;
            }
            self.maps
                .lens
                .set(i as u32, lens_value(&family), 0)
                .context("writing the prefix lengths")?;
            self.state.lens[i] = family;
        }
        Ok(())
    }

    fn retire_later(&mut self, keys: Vec<PolicyKey>) {
        if !keys.is_empty() {
            self.retiring.push((Instant::now(), keys));
        }
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
        for (_, keys) in done {
            self.remove_entries(keys.into_iter());
        }
        !self.retiring.is_empty()
    }

    /// Stops enforcing on an interface: detaches, then drops its
    /// configuration; its policies go once nothing uses them. Its tracked
    /// flows go with the next sweep.
    pub fn forget(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
        if let Some(cfg) = self.maps.unconfigure(ifindex) {
            self.free_slots.push(cfg.stats_slot);
        }
        self.state.installed.remove(&ifindex);
        let retired = self.state.unreferenced(&HashSet::new());
        self.retire_later(retired);
    }

    /// Removes the configurations of interfaces that no longer exist, and
    /// policy entries nothing refers to (what an earlier agent left behind
    /// once this one installed its own, or what a detach left). An
    /// interface that exists keeps whatever it has: leaving it out of the
    /// configuration does not detach it.
    pub fn collect_garbage(&mut self) {
        for (ifindex, _) in self.maps.iface_cfgs() {
            if ifname(ifindex).is_none() {
                self.maps.unconfigure(ifindex);
                self.state.installed.remove(&ifindex);
            }
        }
        let keys = self.state.unreferenced(&HashSet::new());
        let n = keys.len();
        std::thread::sleep(RETIRE_GRACE);
        self.remove_entries(keys.into_iter());
        if n > 0 {
            log::info!("removed {n} policy entries no interface uses");
        }
    }
}
