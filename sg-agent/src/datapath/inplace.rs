//! Policies changed in place: when every interface using a policy moves to
//! the same new rules and nothing else about them changes, only the entries
//! that differ are rewritten, under the same id — a rule added to a group of
//! 1,000 rules writes a few entries, not a thousand. Each entry is replaced
//! whole (RCU), and a packet reads one entry of one policy, so it sees the
//! old or the new one; where a packet would read two entries that both
//! change (a protocol's entry in several chunks, or the every-protocol entry
//! it falls back to) the policy is written under a fresh id instead
//! (docs/datapath.md, "Atomic changes").

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};

use anyhow::Result;
use sg_common::{PolicyKey, PolicyVal};

use super::state::{Entries, State};
use crate::compile::{Atom, DirPolicy, PolicyIndex, Rule, policy_entries};

/// A policy's entries to write and to remove, in place.
#[derive(Default)]
pub(super) struct Rewrite {
    pub writes: Entries,
    pub removes: Vec<PolicyKey>,
    /// The entries by identity afterwards, for the mirror.
    pub after: Vec<((u32, u32), Entries)>,
}

impl State {
    /// The policies among `moved` (interface, direction) that can change in
    /// place, with their new content and rewrite. `same_cfg(i)`: interface
    /// `i`'s configuration stays as it is but for policy ids. `ids`: the
    /// identities the address map will hold; `fresh` among them get their
    /// entries as any new policy's do.
    pub fn rewrites(
        &self,
        moved: &[(u32, usize)],
        content_of: impl Fn(u32, usize) -> Option<Arc<DirPolicy>>,
        same_cfg: impl Fn(u32) -> bool,
        ids: &HashSet<u32>,
        fresh: &HashSet<u32>,
    ) -> Result<HashMap<u32, (Arc<DirPolicy>, Rewrite)>> {
        let moved_set: HashSet<(u32, usize)> = moved.iter().copied().collect();
        let mut users: HashMap<u32, Vec<(u32, usize)>> = HashMap::new();
        for (i, p) in &self.installed {
            for (d, id) in p.iter().enumerate() {
                users.entry(*id).or_default().push((*i, d));
            }
        }
        let mut out = HashMap::new();
        for (p, us) in users {
            if !self.contents.contains_key(&p) || !us.iter().all(|u| moved_set.contains(u)) {
                continue;
            }
            let mut contents = us.iter().map(|(i, d)| content_of(*i, *d));
            let Some(Some(new)) = contents.next() else {
                continue;
            };
            if contents.any(|c| c.as_ref() != Some(&new))
                || self.policy_ids.contains_key(&new)
                || us
                    .iter()
                    .any(|(i, d)| moved_set.contains(&(*i, 1 - d)) || !same_cfg(*i))
            {
                continue;
            }
            if let Some(rw) = self.rewrite(p, &new, ids, fresh)? {
                out.insert(p, (new, rw));
            }
        }
        Ok(out)
    }

    /// The rewrite of policy `p` to `new`, or None where a packet could see
    /// half of it.
    fn rewrite(
        &self,
        p: u32,
        new: &DirPolicy,
        ids: &HashSet<u32>,
        fresh: &HashSet<u32>,
    ) -> Result<Option<Rewrite>> {
        let index = PolicyIndex::new(new);
        // Only identities with an atom whose rules changed can be judged
        // otherwise (all of them when the untracked flags change).
        let old_content = &self.contents[&p];
        let changed = (old_content.untracked_ok == new.untracked_ok).then(|| {
            let (r0, r1): (HashSet<&Rule>, HashSet<&Rule>) = (
                old_content.rules.iter().collect(),
                new.rules.iter().collect(),
            );
            r0.symmetric_difference(&r1)
                .map(|r| &r.atom)
                .collect::<HashSet<&Atom>>()
        });
        let mut rw = Rewrite::default();
        for id in ids.difference(fresh) {
            let id = *id;
            let Some(atoms) = self.atoms_of.get(&id) else {
                continue;
            };
            // Its entries, written from the old content, stand.
            if let Some(changed) = &changed
                && !atoms.iter().any(|a| changed.contains(a))
                && (self.pol.contains_key(&(p, id)) || !index.relevant(atoms))
            {
                continue;
            }
            let old = self.pol.get(&(p, id)).cloned().unwrap_or_default();
            let entries = if index.relevant(atoms) {
                policy_entries(p, id, &index.segments(atoms))?
            } else {
                vec![]
            };
            if entries == old {
                continue;
            }
            let protos: HashSet<u8> = old.iter().chain(&entries).map(|(k, _)| k.proto).collect();
            for proto in protos {
                let of = |v: &[(PolicyKey, PolicyVal)]| -> Entries {
                    v.iter()
                        .filter(|(k, _)| k.proto == proto)
                        .copied()
                        .collect()
                };
                let (o, n) = (of(&old), of(&entries));
                if o.len() > 1 || n.len() > 1 || proto == 0 && o != n {
                    return Ok(None);
                }
            }
            let keys: HashSet<PolicyKey> = entries.iter().map(|(k, _)| *k).collect();
            rw.removes
                .extend(old.iter().map(|(k, _)| *k).filter(|k| !keys.contains(k)));
            rw.writes
                .extend(entries.iter().filter(|e| !old.contains(e)).copied());
            rw.after.push(((p, id), entries));
        }
        Ok(Some(rw))
    }
}
