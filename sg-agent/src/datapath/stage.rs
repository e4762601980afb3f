//! Whether a change needs the staged order (`Datapath::commit`, step 2 and
//! the grace before step 4). A packet reads its interface's configuration
//! and then its peer's identity, so while interfaces switch and blocks move
//! it may combine old rules with new identities, or new rules with old
//! ones. Verdicts are unions over (rule, atom) pairs, so such a reading
//! lies between the old verdict and the new one whenever, for the atoms
//! the rules name, the block's atoms and the rules change in the same
//! direction: both only grow (a rule for a new CIDR, a member joining with
//! rules added), both only shrink (a rule revoked with its CIDR), or the
//! named atoms stay as they are. Only a change that grows one while it
//! shrinks the other (a rule moved from a group to an address while the
//! address leaves the group) can give a verdict that neither state gives,
//! and only that one is staged.

use std::{collections::BTreeSet, sync::Arc};

use foldhash::{HashMap, HashSet, HashSetExt};

use ipnet::IpNet;

use super::{policy::Content, state::State};
use crate::compile::{Atom, DirPolicy, Rule, covering, prefix_lengths};

impl State {
    /// Whether moving `moved` to their contents in `after` while the
    /// changed blocks of `source` (block → the identity that judged it)
    /// take their identities in `ids` could mix the states (see above).
    pub(super) fn mixes(
        &self,
        moved: &[(u32, usize)],
        after: &HashMap<u32, [Content; 2]>,
        source: &HashMap<IpNet, Option<u32>>,
        ids: &HashMap<IpNet, u32>,
    ) -> bool {
        if moved.is_empty() || source.is_empty() {
            return false;
        }
        let Some(blocks) = self.atoms_before_after(source, ids) else {
            return true;
        };
        let none = Arc::new(DirPolicy::default());
        let mut seen = HashSet::new();
        for &(i, d) in moved {
            // An interface configured for the first time had nothing
            // allowed; one an earlier agent configured has rules this one
            // cannot know.
            let old = match self.installed.get(&i) {
                None => &none,
                Some(p) => match self.contents.get(&p[d]) {
                    Some(c) => c,
                    None => return true,
                },
            };
            let new = after[&i][d]
                .as_ref()
                .expect("moved directions have content");
            if seen.insert((Arc::as_ptr(old), Arc::as_ptr(new))) && !monotone(old, new, &blocks) {
                return true;
            }
        }
        false
    }

    /// Each changed block's atoms before and after (`None` if one of its
    /// identities is an earlier agent's, whose atoms are unknown).
    fn atoms_before_after<'a>(
        &'a self,
        source: &HashMap<IpNet, Option<u32>>,
        ids: &HashMap<IpNet, u32>,
    ) -> Option<Vec<(&'a [Atom], &'a [Atom])>> {
        let atoms = |id: Option<u32>| match id {
            None => Some(&[][..]),
            Some(id) => self.atoms_of.get(&id).map(Vec::as_slice),
        };
        // A removed block's addresses fall to its longest ancestor.
        let lens = prefix_lengths(ids.keys());
        source
            .iter()
            .map(|(n, before)| Some((atoms(*before)?, atoms(covering(ids, &lens, n))?)))
            .collect()
    }
}

/// Whether every block's named atoms move the way the rules do (or not at
/// all) from `old` to `new`.
fn monotone(old: &DirPolicy, new: &DirPolicy, blocks: &[(&[Atom], &[Atom])]) -> bool {
    let (r0, r1): (HashSet<&Rule>, HashSet<&Rule>) =
        (old.rules.iter().collect(), new.rules.iter().collect());
    // Untracked flags change how a flow is kept, not whether it passes;
    // kept out of the reasoning all the same.
    let same = old.untracked_ok == new.untracked_ok;
    let grows = same && r0.is_subset(&r1);
    let shrinks = same && r1.is_subset(&r0);
    let named: HashSet<&Atom> = old.atoms().chain(new.atoms()).collect();
    blocks.iter().all(|(before, after)| {
        let a0: BTreeSet<&Atom> = before.iter().filter(|a| named.contains(a)).collect();
        let a1: BTreeSet<&Atom> = after.iter().filter(|a| named.contains(a)).collect();
        a0 == a1 || grows && a0.is_subset(&a1) || shrinks && a1.is_subset(&a0)
    })
}
