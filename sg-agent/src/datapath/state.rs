//! The agent's mirror of the policy state in the kernel: what the address,
//! length and policy maps hold, which identity stands for which atoms, and
//! which policy holds which content. Rebuilt from the pinned maps when an
//! agent starts over an earlier one's (whose contents and identities it
//! cannot know: those stay as they are until replaced).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use anyhow::{Result, bail};
use ipnet::IpNet;
use sg_common::{ADDR4_ENTRIES, ADDR6_ENTRIES, POLICY_ENTRIES, PolicyKey, PolicyVal, addr_bytes};

use super::Maps;
use crate::compile::{Atom, DirPolicy, covering};

/// A policy's entries towards one identity, as written.
pub(super) type Entries = Vec<(PolicyKey, PolicyVal)>;

#[derive(Default)]
pub(super) struct State {
    /// What `ADDR4`/`ADDR6` hold: block → identity.
    pub addr: HashMap<IpNet, u32>,
    /// What `LENS` holds, per family (IPv4, IPv6).
    pub lens: [BTreeSet<u8>; 2],
    /// What `POLICY` holds, by (policy, identity).
    pub pol: HashMap<(u32, u32), Entries>,
    /// The identities this agent named: atoms → id, and back.
    pub ids: HashMap<Vec<Atom>, u32>,
    pub atoms_of: HashMap<u32, Vec<Atom>>,
    /// Policies this agent wrote: content → id, and back.
    pub policy_ids: HashMap<Arc<DirPolicy>, u32>,
    pub contents: HashMap<u32, Arc<DirPolicy>>,
    /// Each configured interface's policy ids, as `IFACES` holds them.
    pub installed: HashMap<u32, [u32; 2]>,
    pub next_id: u32,
    pub next_policy: u32,
}

impl State {
    /// The state the pinned maps hold: an earlier agent's, or nothing.
    pub fn read(maps: &Maps) -> State {
        let mut st = State::default();
        for (k, id) in maps.addr4.iter().filter_map(|r| r.ok()) {
            let a = Ipv4Addr::from(k.addr.to_ne_bytes());
            if let Ok(n) = IpNet::new(IpAddr::V4(a), k.prefix_len as u8) {
                st.addr.insert(n, id);
            }
        }
        for (k, id) in maps.addr6.iter().filter_map(|r| r.ok()) {
            let a = Ipv6Addr::from(addr_bytes(&k.addr));
            if let Ok(n) = IpNet::new(IpAddr::V6(a), k.prefix_len as u8) {
                st.addr.insert(n, id);
            }
        }
        for i in 0..2 {
            if let Ok(l) = maps.lens.get(&(i as u32), 0) {
                st.lens[i] = l.entries[..(l.n as usize).min(l.entries.len())]
                    .iter()
                    .map(|e| e.len as u8)
                    .collect();
            }
        }
        for (k, v) in maps.policy.iter().filter_map(|r| r.ok()) {
            st.pol
                .entry((k.policy, k.identity))
                .or_default()
                .push((k, v));
        }
        for (ifindex, cfg) in maps.iface_cfgs() {
            st.installed.insert(ifindex, cfg.policy);
        }
        let ids = st.addr.values().copied().chain(st.pol.keys().map(|k| k.1));
        st.next_id = 1 + ids.max().unwrap_or(0);
        let policies = st
            .pol
            .keys()
            .map(|k| k.0)
            .chain(st.installed.values().flatten().copied());
        st.next_policy = 1 + policies.max().unwrap_or(0);
        st
    }
}

impl State {
    /// Identities for the blocks of `target`: the id its atoms already
    /// have, an earlier agent's id that every block now holding it would
    /// get (so that a restart rewrites nothing), or a fresh one. Returns
    /// them and the fresh ones.
    pub(super) fn identities(
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
    pub(super) fn fits(
        &self,
        target: &HashMap<IpNet, Vec<Atom>>,
        new_entries: usize,
    ) -> Result<()> {
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
    pub(super) fn judged_by(&self, net: &IpNet) -> Option<u32> {
        covering(&self.addr, &self.lens, net)
    }

    /// The entries of `(from, k)` rewritten as `(to, t)`.
    pub(super) fn copy(&self, from: u32, k: u32, to: u32, t: u32) -> Vec<(PolicyKey, PolicyVal)> {
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
    pub(super) fn unreferenced(&mut self, temporary: &HashSet<u32>) -> Vec<PolicyKey> {
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
