//! Changing what the kernel enforces, one transaction at a time: the shared
//! address map (block → identity), the policies (policy, identity,
//! protocol → port segments) and each interface's configuration, written
//! in an order that lets every packet see the whole old or the whole new
//! state (docs/datapath.md, "Atomic changes"). The encoding of entries is
//! `compile`'s; this allocates ids and writes.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use sg_common::{ADDR4_ENTRIES, ADDR6_ENTRIES, POLICY_ENTRIES, PolicyKey, PolicyVal, STATS_SLOTS};

use super::{Datapath, ifname, state::State};
use crate::compile::{
    AddrKey, Atom, Compiled, DirPolicy, Members, PolicyIndex, addr_key, address_map, lens_value,
    policy_entries, truncate,
};

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
}

/// A policy direction as the transaction sees it: its content when this
/// agent wrote it (an earlier agent's is unknown).
type Content = Option<Arc<DirPolicy>>;

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
            &Members::new(),
        )
    }

    /// Enforces `changes` (interfaces not named keep their policy) with
    /// `members` as the groups' members, as one transaction:
    ///
    /// 1. every entry the new state needs is written under ids nothing uses
    ///    yet (new policies; existing policies' entries for new identities);
    /// 2. when both policies and addresses change, each changed block first
    ///    moves to a temporary identity that every policy, old and new,
    ///    judges as the old state did;
    /// 3. the interfaces switch to their new policies, one map write each;
    /// 4. the blocks take their new identities, one write each;
    /// 5. what nothing refers to goes after a grace (`retire_expired`).
    ///
    /// A packet reads one interface configuration and one address entry, so
    /// at every step it is judged by the whole old or the whole new state.
    pub fn commit(&mut self, changes: &[Change], members: &Members) -> Result<Writes> {
        let mut w = Writes::default();
        let st = &self.state;
        // The contents after the change, by interface and direction.
        let mut after: HashMap<u32, [Content; 2]> = st
            .installed
            .iter()
            .map(|(i, ids)| (*i, ids.map(|p| st.contents.get(&p).cloned())))
            .collect();
        for c in changes {
            after.insert(
                c.ifindex,
                c.compiled.dirs.clone().map(|d| Some(Arc::new(d))),
            );
        }
        // Directions whose policy changes: another content than installed.
        let moved: Vec<(u32, usize)> = after
            .iter()
            .flat_map(|(i, dirs)| (0..2).map(move |d| (*i, d, &dirs[d])))
            .filter(|(i, d, c)| {
                let known = st.installed.get(i).and_then(|p| st.contents.get(&p[*d]));
                c.is_some() && known != c.as_ref()
            })
            .map(|(i, d, _)| (i, d))
            .collect();
        // Blocks that policies of unknown content (an earlier agent's, on
        // interfaces kept as they were) judge stay, as the identity they
        // know them by.
        let unknown: HashSet<u32> = after
            .iter()
            .flat_map(|(i, dirs)| {
                (0..2)
                    .filter(|d| dirs[*d].is_none())
                    .map(|d| st.installed[i][d])
            })
            .collect();
        let judged: HashSet<u32> = st
            .pol
            .keys()
            .filter(|(p, _)| unknown.contains(p))
            .map(|(_, id)| *id)
            .collect();
        let kept: Vec<Atom> = st
            .addr
            .iter()
            .filter(|(_, id)| judged.contains(id))
            .map(|(n, id)| Atom::Kept(*n, *id))
            .collect();
        let atoms: BTreeSet<&Atom> = after
            .values()
            .flatten()
            .flatten()
            .flat_map(|c| c.atoms())
            .chain(&kept)
            .collect();
        let target = address_map(atoms, members);
        let (ids, fresh) = self.state.identities(&target);
        let st = &self.state;
        let changed: Vec<IpNet> = target
            .keys()
            .filter(|n| st.addr.get(n) != ids.get(n))
            .chain(st.addr.keys().filter(|n| !target.contains_key(n)))
            .copied()
            .collect();
        let staged = !moved.is_empty() && !changed.is_empty();
        let distinct: HashSet<u32> = ids.values().copied().collect();
        let rewrites = st.rewrites(
            &moved,
            |i, d| after.get(&i).and_then(|c| c[d].clone()),
            |i| {
                let c = changes.iter().rev().find(|c| c.ifindex == i);
                match (self.maps.ifaces.get(&i, 0), c) {
                    (Ok(old), Some(c)) => c.compiled.iface_cfg(old.policy, old.stats_slot) == old,
                    _ => false,
                }
            },
            &distinct,
            &fresh,
        )?;

        // New policy ids. Staged, a policy is shared only by interfaces that
        // come from the same old one (its temporary entries copy the old).
        let mut new_policy: HashMap<(u32, usize), u32> = HashMap::new();
        let mut by_content: HashMap<(Arc<DirPolicy>, u32), u32> = HashMap::new();
        let mut next_policy = self.state.next_policy;
        for &(i, d) in &moved {
            let content = after[&i][d].clone().expect("moved directions have content");
            let old = st.installed.get(&i).map_or(0, |p| p[d]);
            if rewrites.contains_key(&old) {
                new_policy.insert((i, d), old);
                continue;
            }
            let key = (content.clone(), if staged { old } else { 0 });
            let id = match by_content.get(&key) {
                Some(id) => *id,
                None => {
                    let id = match st.policy_ids.get(&content) {
                        Some(id) if !staged => *id,
                        _ => {
                            next_policy += 1;
                            next_policy - 1
                        }
                    };
                    by_content.insert(key, id);
                    id
                }
            };
            new_policy.insert((i, d), id);
        }

        // 1. Entries under ids nothing uses yet.
        let mut entries: Vec<(PolicyKey, PolicyVal)> = Vec::new();
        let np = &new_policy;
        let live_after: HashMap<u32, Content> = after
            .iter()
            .flat_map(|(i, dirs)| {
                (0..2).map(move |d| {
                    let id = np
                        .get(&(*i, d))
                        .copied()
                        .unwrap_or_else(|| st.installed[i][d]);
                    (id, dirs[d].clone())
                })
            })
            .collect();
        // Where each changed block's packets got their verdict before: its
        // own entry or its longest ancestor's.
        let source: HashMap<IpNet, Option<u32>> =
            changed.iter().map(|n| (*n, st.judged_by(n))).collect();
        for (&p, content) in &live_after {
            match content {
                Some(c) => {
                    let index = PolicyIndex::new(c);
                    for &id in &distinct {
                        // A policy changed in place has its rewrite.
                        if st.pol.contains_key(&(p, id))
                            || rewrites.contains_key(&p) && !fresh.contains(&id)
                        {
                            continue;
                        }
                        let atoms = &st.atoms_of[&id];
                        if index.relevant(atoms) {
                            entries.extend(policy_entries(p, id, &index.segments(atoms))?);
                        }
                    }
                }
                // An earlier agent's policy (an interface kept as it was):
                // a new identity is judged as the one its blocks had, when
                // they all had the same; otherwise it is denied (fail closed).
                None => {
                    for &j in &fresh {
                        let olds: HashSet<Option<u32>> = ids
                            .iter()
                            .filter(|(_, id)| **id == j)
                            .map(|(n, _)| source.get(n).copied().flatten())
                            .collect();
                        if let [Some(k)] = olds.into_iter().collect::<Vec<_>>()[..] {
                            entries.extend(st.copy(p, k, p, j));
                        }
                    }
                }
            }
        }
        // 2. Temporary identities, judged everywhere as the old state judged.
        let mut temp: HashMap<u32, u32> = HashMap::new();
        let mut next_id = self.state.next_id;
        if staged {
            for k in source.values().flatten() {
                temp.entry(*k).or_insert_with(|| {
                    next_id += 1;
                    next_id - 1
                });
            }
            let live_now: HashSet<u32> = st.installed.values().flatten().copied().collect();
            for (&k, &t) in &temp {
                for &q in &live_now {
                    entries.extend(st.copy(q, k, q, t));
                }
                for (&(i, d), &p) in &new_policy {
                    if let Some(old) = st.installed.get(&i)
                        && old[d] != p
                    {
                        entries.extend(st.copy(old[d], k, p, t));
                    }
                }
            }
        }
        self.state.next_policy = next_policy;
        self.state.next_id = next_id;
        self.state.fits(&target, entries.len())?;
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
        if staged {
            for n in &changed {
                if let Some(Some(k)) = source.get(n) {
                    self.write_addr(n, Some(temp[k]))?;
                    w.addresses += 1;
                }
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
        for (&i, dirs) in &after {
            let policy = [0, 1].map(|d| {
                new_policy
                    .get(&(i, d))
                    .copied()
                    .unwrap_or_else(|| self.state.installed[&i][d])
            });
            let Some(c) = changes.iter().rev().find(|c| c.ifindex == i) else {
                continue;
            };
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
        let mut lens: [BTreeSet<u8>; 2] = Default::default();
        for n in nets {
            lens[usize::from(n.addr().is_ipv6())].insert(n.prefix_len());
        }
        for (i, family) in lens.into_iter().enumerate() {
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

impl State {
    /// Identities for the blocks of `target`: the id its atoms already
    /// have, an earlier agent's id that every block now holding it would
    /// get (so that a restart rewrites nothing), or a fresh one. Returns
    /// them and the fresh ones.
    fn identities(
        &mut self,
        target: &HashMap<IpNet, Vec<Atom>>,
    ) -> (HashMap<IpNet, u32>, HashSet<u32>) {
        let mut adopt: HashMap<u32, Option<&Vec<Atom>>> = HashMap::new();
        for (n, atoms) in target {
            if let Some(k) = self.addr.get(n)
                && !self.atoms_of.contains_key(k)
            {
                let e = adopt.entry(*k).or_insert(Some(atoms));
                if *e != Some(atoms) {
                    *e = None;
                }
            }
        }
        for (k, atoms) in adopt {
            if let Some(atoms) = atoms
                && !self.ids.contains_key(atoms)
            {
                self.ids.insert(atoms.clone(), k);
                self.atoms_of.insert(k, atoms.clone());
            }
        }
        let mut fresh = HashSet::new();
        let ids = target
            .iter()
            .map(|(n, atoms)| {
                let id = match self.ids.get(atoms) {
                    Some(id) => *id,
                    None => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.ids.insert(atoms.clone(), id);
                        self.atoms_of.insert(id, atoms.clone());
                        fresh.insert(id);
                        id
                    }
                };
                (*n, id)
            })
            .collect();
        (ids, fresh)
    }

    /// Refuses, before anything is written, a change the maps cannot hold
    /// while it is made (old and new side by side until the old goes).
    fn fits(&self, target: &HashMap<IpNet, Vec<Atom>>, new_entries: usize) -> Result<()> {
        for (v6, max, family) in [
            (false, ADDR4_ENTRIES, "IPv4"),
            (true, ADDR6_ENTRIES, "IPv6"),
        ] {
            let n = target
                .keys()
                .chain(self.addr.keys().filter(|n| !target.contains_key(n)))
                .filter(|n| n.addr().is_ipv6() == v6)
                .count();
            if n > max as usize {
                bail!(
                    "the policies need {n} {family} address blocks (rule CIDRs, prefix-list entries and group members' addresses) while the change is made; the datapath holds at most {max} (docs/datapath.md, \"Capacity\")"
                );
            }
        }
        let n = self.pol.values().map(Vec::len).sum::<usize>() + new_entries;
        if n > POLICY_ENTRIES as usize {
            bail!(
                "the policies need {n} policy entries while the change is made; the datapath holds at most {POLICY_ENTRIES} (docs/datapath.md, \"Capacity\")"
            );
        }
        Ok(())
    }

    /// The identity that judged packets from `net` before: its own entry's,
    /// or its longest ancestor's.
    fn judged_by(&self, net: &IpNet) -> Option<u32> {
        if let Some(id) = self.addr.get(net) {
            return Some(*id);
        }
        let lens = &self.lens[usize::from(net.addr().is_ipv6())];
        lens.range(..net.prefix_len())
            .rev()
            .find_map(|len| self.addr.get(&truncate(net, *len)).copied())
    }

    /// The entries of `(from, k)` rewritten as `(to, t)`.
    fn copy(&self, from: u32, k: u32, to: u32, t: u32) -> Vec<(PolicyKey, PolicyVal)> {
        self.pol
            .get(&(from, k))
            .into_iter()
            .flatten()
            .map(|(key, v)| {
                (
                    PolicyKey {
                        policy: to,
                        identity: t,
                        ..*key
                    },
                    *v,
                )
            })
            .collect()
    }

    /// Drops from the mirror, and returns the keys of, the entries of
    /// policies no interface uses and of identities no block has (but
    /// `keep`); forgets those policies' contents and those identities.
    fn unreferenced(&mut self, temporary: &HashSet<u32>) -> Vec<PolicyKey> {
        let policies: HashSet<u32> = self.installed.values().flatten().copied().collect();
        let identities: HashSet<u32> = self.addr.values().copied().collect();
        let mut out = Vec::new();
        self.pol.retain(|(p, id), keys| {
            let keep = policies.contains(p) && identities.contains(id) && !temporary.contains(id);
            if !keep {
                out.extend(keys.iter().map(|(k, _)| *k));
            }
            keep
        });
        self.contents.retain(|p, _| policies.contains(p));
        let contents = &self.contents;
        self.policy_ids.retain(|_, p| contents.contains_key(p));
        self.ids.retain(|_, id| identities.contains(id));
        self.atoms_of.retain(|id, _| identities.contains(id));
        out
    }
}
