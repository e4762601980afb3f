//! Planning a change: from the interfaces' new policies and the groups'
//! members to what `Datapath::commit` writes, in its order. Nothing here
//! touches the kernel; the ids it hands out are fresh.

use std::{collections::BTreeSet, sync::Arc};

use foldhash::{HashMap, HashMapExt, HashSet};

use anyhow::Result;
use ipnet::IpNet;

use super::{
    inplace::Rewrite,
    policy::{Change, Content},
    state::{Entries, State},
};
use crate::compile::{Atom, DirPolicy, Members, PolicyIndex, address_map, policy_entries};

/// A change, planned.
pub(super) struct Txn {
    /// The contents after the change, by interface and direction.
    pub after: HashMap<u32, [Content; 2]>,
    /// The address map after the change: block → atoms, and their ids.
    pub target: HashMap<IpNet, Vec<Atom>>,
    pub ids: HashMap<IpNet, u32>,
    /// Blocks whose identity changes (new and removed ones too).
    pub changed: Vec<IpNet>,
    /// Where each changed block's packets got their verdict before: its
    /// own entry or its longest ancestor's.
    pub source: HashMap<IpNet, Option<u32>>,
    /// Staged: old identity → the temporary one standing for it.
    pub temp: HashMap<u32, u32>,
    /// The policy id of each (interface, direction) that moves.
    pub new_policy: HashMap<(u32, usize), u32>,
    /// Policies changed in place.
    pub rewrites: HashMap<u32, (Arc<DirPolicy>, Rewrite)>,
    /// Entries written before anything refers to them.
    pub entries: Entries,
}

impl State {
    /// Plans `changes` with `members`; `same_cfg`: the changed interfaces
    /// whose configuration stays as it is but for policy ids.
    pub fn plan(
        &mut self,
        changes: &[Change],
        members: &Members,
        same_cfg: &HashSet<u32>,
    ) -> Result<Txn> {
        let mut after: HashMap<u32, [Content; 2]> = self
            .installed
            .iter()
            .map(|(i, ids)| (*i, ids.map(|p| self.contents.get(&p).cloned())))
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
                let known = self
                    .installed
                    .get(i)
                    .and_then(|p| self.contents.get(&p[*d]));
                c.is_some() && known != c.as_ref()
            })
            .map(|(i, d, _)| (i, d))
            .collect();
        let kept = self.kept(&after);
        let atoms: BTreeSet<&Atom> = after
            .values()
            .flatten()
            .flatten()
            .flat_map(|c| c.atoms())
            .chain(&kept)
            .collect();
        let target = address_map(atoms, members);
        let (ids, fresh) = self.identities(&target);
        let changed: Vec<IpNet> = target
            .keys()
            .filter(|n| self.addr.get(n) != ids.get(n))
            .chain(self.addr.keys().filter(|n| !target.contains_key(n)))
            .copied()
            .collect();
        let source: HashMap<IpNet, Option<u32>> =
            changed.iter().map(|n| (*n, self.judged_by(n))).collect();
        let staged = self.mixes(&moved, &after, &source, &ids);
        let distinct: HashSet<u32> = ids.values().copied().collect();
        let rewrites = self.rewrites(
            &moved,
            |i, d| after.get(&i).and_then(|c| c[d].clone()),
            |i| same_cfg.contains(&i),
            &distinct,
            &fresh,
        )?;
        let new_policy = self.policy_ids(&moved, &after, &rewrites, staged);
        let mut t = Txn {
            after,
            target,
            ids,
            changed,
            source,
            temp: HashMap::new(),
            new_policy,
            rewrites,
            entries: Entries::new(),
        };
        // Unstaged, a packet that read a new configuration just after the
        // switch may still meet a changed block's old identity: the new
        // policies judge those too.
        let mut judged = distinct.clone();
        if !staged {
            let old = t.source.values().flatten();
            judged.extend(old.filter(|k| self.atoms_of.contains_key(k)));
        }
        let live_after = self.live_after(&t);
        t.entries = self.new_entries(&t, &live_after, &judged, &fresh)?;
        if staged {
            self.temporaries(&mut t);
        } else {
            t.entries
                .extend(self.replaced_entries(&moved, &live_after, &fresh)?);
        }
        self.fits(&t.target, t.entries.len())?;
        Ok(t)
    }

    /// Blocks that policies of unknown content (an earlier agent's, on
    /// interfaces kept as they were) judge: they stay, as the identity
    /// those policies know them by.
    fn kept(&self, after: &HashMap<u32, [Content; 2]>) -> Vec<Atom> {
        if after.values().flatten().all(Option::is_some) {
            return vec![];
        }
        let unknown: HashSet<u32> = after
            .iter()
            .flat_map(|(i, dirs)| {
                (0..2)
                    .filter(|d| dirs[*d].is_none())
                    .map(|d| self.installed[i][d])
            })
            .collect();
        let judged: HashSet<u32> = self
            .pol
            .keys()
            .filter(|(p, _)| unknown.contains(p))
            .map(|(_, id)| *id)
            .collect();
        self.addr
            .iter()
            .filter(|(_, id)| judged.contains(id))
            .map(|(n, id)| Atom::Kept(*n, *id))
            .collect()
    }

    /// The policy id of each moving direction: its own when rewritten in
    /// place, an equal live policy's, or a fresh one. Staged, a policy is
    /// shared only by interfaces that come from the same old one (its
    /// temporary entries copy the old).
    fn policy_ids(
        &mut self,
        moved: &[(u32, usize)],
        after: &HashMap<u32, [Content; 2]>,
        rewrites: &HashMap<u32, (Arc<DirPolicy>, Rewrite)>,
        staged: bool,
    ) -> HashMap<(u32, usize), u32> {
        let mut out = HashMap::new();
        let mut by_content: HashMap<(Arc<DirPolicy>, u32), u32> = HashMap::new();
        for &(i, d) in moved {
            let content = after[&i][d].clone().expect("moved directions have content");
            let old = self.installed.get(&i).map_or(0, |p| p[d]);
            if rewrites.contains_key(&old) {
                out.insert((i, d), old);
                continue;
            }
            let key = (content.clone(), if staged { old } else { 0 });
            let id = match by_content.get(&key) {
                Some(id) => *id,
                None => {
                    let id = match self.policy_ids.get(&content) {
                        Some(id) if !staged => *id,
                        _ => {
                            self.next_policy += 1;
                            self.next_policy - 1
                        }
                    };
                    by_content.insert(key, id);
                    id
                }
            };
            out.insert((i, d), id);
        }
        out
    }

    /// The policies in force after the change, with their contents.
    fn live_after(&self, t: &Txn) -> HashMap<u32, Content> {
        t.after
            .iter()
            .flat_map(|(i, dirs)| {
                (0..2).map(move |d| {
                    let id = t
                        .new_policy
                        .get(&(*i, d))
                        .copied()
                        .unwrap_or_else(|| self.installed[i][d]);
                    (id, dirs[d].clone())
                })
            })
            .collect()
    }

    /// The entries the new state needs that no packet can reach yet: new
    /// policies', and existing policies' for new identities.
    fn new_entries(
        &self,
        t: &Txn,
        live_after: &HashMap<u32, Content>,
        distinct: &HashSet<u32>,
        fresh: &HashSet<u32>,
    ) -> Result<Entries> {
        let mut entries = Entries::new();
        // For an earlier agent's policies: the identities a fresh one's
        // blocks were judged by before, gathered once.
        let mut judged_before: HashMap<u32, HashSet<Option<u32>>> = HashMap::new();
        if live_after.values().any(Option::is_none) {
            for (n, id) in &t.ids {
                if fresh.contains(id) {
                    let before = t.source.get(n).copied().flatten();
                    judged_before.entry(*id).or_default().insert(before);
                }
            }
        }
        for (&p, content) in live_after {
            match content {
                Some(c) => {
                    // A policy in force with this content, or changed in
                    // place (which has its rewrite), judges every identity
                    // but the fresh ones already.
                    let judges_all = t.rewrites.contains_key(&p)
                        || self.contents.get(&p).is_some_and(|old| old == c);
                    let ids = if judges_all { fresh } else { distinct };
                    let mut index = None;
                    for &id in ids {
                        if self.pol.contains_key(&(p, id)) {
                            continue;
                        }
                        let index = index.get_or_insert_with(|| PolicyIndex::new(c));
                        let atoms = &self.atoms_of[&id];
                        if index.relevant(atoms) {
                            entries.extend(policy_entries(p, id, &index.segments(atoms))?);
                        }
                    }
                }
                // An earlier agent's policy (an interface kept as it was):
                // a new identity is judged as the one its blocks had, when
                // they all had the same; otherwise it is denied (fail closed).
                None => {
                    for (&j, olds) in &judged_before {
                        if let [Some(k)] = olds.iter().copied().collect::<Vec<_>>()[..] {
                            entries.extend(self.copy(p, k, p, j));
                        }
                    }
                }
            }
        }
        Ok(entries)
    }

    /// Unstaged, a packet that read a replaced policy's configuration just
    /// before the switch may meet a new identity just after the blocks
    /// move: the replaced policies judge the new identities too (`mixes`
    /// made sure that they judge them as the old state did, or between it
    /// and the new).
    fn replaced_entries(
        &self,
        moved: &[(u32, usize)],
        live_after: &HashMap<u32, Content>,
        fresh: &HashSet<u32>,
    ) -> Result<Entries> {
        let replaced: BTreeSet<u32> = moved
            .iter()
            .filter_map(|(i, d)| self.installed.get(i).map(|p| p[*d]))
            .filter(|p| !live_after.contains_key(p))
            .collect();
        let mut entries = Entries::new();
        for p in replaced {
            let Some(content) = self.contents.get(&p) else {
                continue;
            };
            let index = PolicyIndex::new(content);
            for id in fresh {
                let atoms = &self.atoms_of[id];
                if index.relevant(atoms) {
                    entries.extend(policy_entries(p, *id, &index.segments(atoms))?);
                }
            }
        }
        Ok(entries)
    }

    /// Temporary identities for the changed blocks' old ones, judged by
    /// every policy, old and new, as the old state judged.
    fn temporaries(&mut self, t: &mut Txn) {
        for k in t.source.values().flatten() {
            t.temp.entry(*k).or_insert_with(|| {
                self.next_id += 1;
                self.next_id - 1
            });
        }
        let live_now: HashSet<u32> = self.installed.values().flatten().copied().collect();
        for (&k, &tmp) in &t.temp {
            for &q in &live_now {
                t.entries.extend(self.copy(q, k, q, tmp));
            }
            for (&(i, d), &p) in &t.new_policy {
                if let Some(old) = self.installed.get(&i)
                    && old[d] != p
                {
                    t.entries.extend(self.copy(old[d], k, p, tmp));
                }
            }
        }
    }
}
