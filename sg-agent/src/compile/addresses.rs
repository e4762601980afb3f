//! The shared address map: every address block some rule's peer stands
//! for, with the identity it gets — the atoms that contain it.

use std::{collections::BTreeSet, net::IpAddr};

use foldhash::{HashMap, HashMapExt};

use ipnet::IpNet;

use super::{Atom, truncate};
use crate::model::{Desired, Interface};

/// The private addresses of each group's members (both families), by
/// group id: what a group atom stands for. Hashed: a fleet's state has
/// thousands of groups and tens of thousands of memberships.
pub type Members = HashMap<String, Vec<IpAddr>>;

/// Every interface of `d` counts, wherever it runs: a reference matches
/// the members' addresses, not only the local ones.
pub fn members(d: &Desired) -> Members {
    let mut out = Members::new();
    for i in d.interfaces.iter() {
        for g in &i.groups {
            // The id copied once per group, not once per membership.
            match out.get_mut(g) {
                Some(list) => list.extend(of(i)),
                None => {
                    out.insert(g.clone(), of(i).collect());
                }
            }
        }
    }
    out
}

/// An interface's private addresses, both families: what it brings to
/// each of its groups.
pub(super) fn of(i: &Interface) -> impl Iterator<Item = IpAddr> + '_ {
    let v4 = i.ipv4.iter().map(|a| IpAddr::V4(*a));
    v4.chain(i.ipv6.iter().map(|a| IpAddr::V6(*a)))
}

/// The prefix lengths of `nets`, per family (IPv4, IPv6).
pub fn prefix_lengths<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> [BTreeSet<u8>; 2] {
    let mut lens: [BTreeSet<u8>; 2] = Default::default();
    for n in nets {
        lens[usize::from(n.addr().is_ipv6())].insert(n.prefix_len());
    }
    lens
}

/// What `map` holds for `net`'s own block or, failing that, for its longest
/// ancestor among `lens` (per family): what its addresses are looked up by.
pub fn covering<V: Copy>(
    map: &HashMap<IpNet, V>,
    lens: &[BTreeSet<u8>; 2],
    net: &IpNet,
) -> Option<V> {
    map.get(net).copied().or_else(|| {
        lens[usize::from(net.addr().is_ipv6())]
            .range(..net.prefix_len())
            .rev()
            .find_map(|len| map.get(&truncate(net, *len)).copied())
    })
}

/// The address map of `atoms`: each block → the atoms containing it,
/// sorted. A block's atoms are its own and those of every shorter block
/// that contains it, so that the longest match alone finds them all.
pub fn address_map<'a>(
    atoms: impl IntoIterator<Item = &'a Atom>,
    members: &Members,
) -> HashMap<IpNet, Vec<Atom>> {
    // Lists, sorted and deduplicated once at the end: most blocks have one
    // atom, and a set per block costs a node of its own.
    let mut direct: HashMap<IpNet, Vec<Atom>> = HashMap::new();
    for atom in atoms {
        match atom {
            Atom::Net(n) | Atom::Kept(n, _) => {
                direct.entry(n.trunc()).or_default().push(atom.clone());
            }
            Atom::Group(g) => {
                for a in members.get(g).into_iter().flatten() {
                    direct
                        .entry(IpNet::from(*a))
                        .or_default()
                        .push(atom.clone());
                }
            }
        }
    }
    // The lengths present, per family: the only ancestors to look for.
    let lens = prefix_lengths(direct.keys());
    direct
        .iter()
        .map(|(net, own)| {
            let mut all = own.clone();
            for &len in lens[usize::from(net.addr().is_ipv6())].range(..net.prefix_len()) {
                if let Some(up) = direct.get(&truncate(net, len)) {
                    all.extend(up.iter().cloned());
                }
            }
            all.sort_unstable();
            all.dedup();
            (*net, all)
        })
        .collect()
}
