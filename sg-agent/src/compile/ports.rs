//! The rules that apply to one identity, as what the datapath scans: per
//! protocol, sorted disjoint port segments with their flags.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};

use sg_common::{PORT_ALLOW, PORT_UNTRACKED, PROTO_TCP, PROTO_UDP, PortSeg, family_index};

use super::{Atom, DirPolicy, Rule, is_default_route};
use crate::model::Protocol;

/// What a policy allows one identity: by protocol (0 standing for every
/// protocol), sorted disjoint port segments.
pub type Segments = Vec<(u8, Vec<PortSeg>)>;

/// A direction's rules indexed by atom, to find those of an identity.
pub struct PolicyIndex<'a> {
    policy: &'a DirPolicy,
    by_atom: HashMap<&'a Atom, Vec<&'a Rule>>,
}

impl<'a> PolicyIndex<'a> {
    pub fn new(policy: &'a DirPolicy) -> Self {
        let mut by_atom: HashMap<&Atom, Vec<&Rule>> = HashMap::new();
        for r in &policy.rules {
            by_atom.entry(&r.atom).or_default().push(r);
        }
        PolicyIndex { policy, by_atom }
    }

    /// Whether some rule's peer is one of `atoms`.
    pub fn relevant(&self, atoms: &[Atom]) -> bool {
        atoms.iter().any(|a| self.by_atom.contains_key(a))
    }

    /// What the rules whose peers are among `atoms` allow (empty: nothing).
    pub fn segments(&self, atoms: &[Atom]) -> Segments {
        let rules: Vec<&Rule> = atoms
            .iter()
            .filter_map(|a| self.by_atom.get(a))
            .flatten()
            .copied()
            .collect();
        segments(&rules, &|r, proto| {
            (proto == PROTO_TCP || proto == PROTO_UDP)
                && is_default_route(&r.atom).is_some_and(|family| {
                    self.policy.untracked_ok
                        [family_index(family) * 2 + usize::from(proto == PROTO_UDP)]
                })
        })
    }
}

/// Segments for a set of rules that all apply to one peer; `untracked(r, p)`
/// says whether rule `r` leaves flows of protocol `p` untracked.
fn segments(rules: &[&Rule], untracked: &dyn Fn(&Rule, u8) -> bool) -> Segments {
    let mut out = Segments::new();
    if rules.is_empty() {
        return out;
    }
    let any_all = rules.iter().any(|r| r.protocol == Protocol::All);
    let mut protos: BTreeSet<u8> = rules
        .iter()
        .filter_map(|r| match r.protocol {
            Protocol::Number(n) => Some(n),
            Protocol::All => None,
        })
        .collect();
    if any_all {
        // Other protocols fall through to the every-protocol entry. TCP and
        // UDP get entries of their own so that they can carry the untracked
        // flag.
        out.push((
            0,
            vec![PortSeg {
                lo: 0,
                hi: u16::MAX,
                flags: PORT_ALLOW,
            }],
        ));
        protos.insert(PROTO_TCP);
        protos.insert(PROTO_UDP);
    }
    for proto in protos {
        let ivs: Vec<(u16, u16, bool)> = rules
            .iter()
            .filter(|r| r.protocol == Protocol::All || r.protocol == Protocol::Number(proto))
            .map(|r| (r.lo, r.hi, untracked(r, proto)))
            .collect();
        let segs = partition(&ivs)
            .into_iter()
            .map(|(lo, hi, u)| PortSeg {
                lo,
                hi,
                flags: PORT_ALLOW | if u { PORT_UNTRACKED } else { 0 },
            })
            .collect();
        out.push((proto, segs));
    }
    out
}

/// Whether sorted disjoint `segs` cover every port.
pub fn covers_all(segs: &[PortSeg]) -> bool {
    segs.first().is_some_and(|s| s.lo == 0)
        && segs.last().is_some_and(|s| s.hi == u16::MAX)
        && segs
            .windows(2)
            .all(|w| w[0].hi as u32 + 1 == w[1].lo as u32)
}

/// Disjoint, maximal segments covered by `ivs`; a segment is untracked when
/// any interval covering it is.
fn partition(ivs: &[(u16, u16, bool)]) -> Vec<(u16, u16, bool)> {
    let mut cuts: BTreeSet<u32> = BTreeSet::new();
    for &(lo, hi, _) in ivs {
        cuts.insert(lo as u32);
        cuts.insert(hi as u32 + 1);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<(u16, u16, bool)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let covering = ivs
            .iter()
            .filter(|iv| iv.0 as u32 <= lo && hi <= iv.1 as u32);
        let mut covered = false;
        let mut untracked = false;
        for iv in covering {
            covered = true;
            untracked |= iv.2;
        }
        if !covered {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 as u32 + 1 == lo && last.2 == untracked => last.1 = hi as u16,
            _ => out.push((lo as u16, hi as u16, untracked)),
        }
    }
    out
}
