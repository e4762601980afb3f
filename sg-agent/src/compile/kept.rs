//! Compiled policies kept between states: a fleet's agent compiles its
//! interfaces at every change of the fleet's state, and most changes touch
//! none of them (docs/fleet.md, "What an agent does per change").

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::{Compiled, compile_interface};
use crate::model::{Desired, Group, Interface, PrefixList, Rule};

/// Compiles interfaces, keeping each one's policy while what it was
/// compiled from is unchanged: the interface, its groups' resolved rules
/// (which states share while a group's rules are unchanged: compared by
/// pointer, and held here so that a pointer compared cannot be a new
/// allocation's) and the prefix lists.
#[derive(Default)]
pub struct Compiler {
    prefix_lists: Vec<PrefixList>,
    kept: HashMap<String, Kept>,
}

struct Kept {
    iface: Interface,
    rules: Vec<Option<[Arc<[Rule]>; 2]>>,
    compiled: Arc<Compiled>,
}

impl Compiler {
    /// The policy of each of `ifaces`, interfaces of `d`; what was kept for
    /// any other interface is dropped.
    pub fn compile<'a>(
        &mut self,
        d: &Desired,
        ifaces: impl IntoIterator<Item = &'a Interface>,
    ) -> Vec<Arc<Compiled>> {
        if self.prefix_lists != d.prefix_lists {
            self.kept.clear();
            self.prefix_lists = d.prefix_lists.clone();
        }
        let mut kept = HashMap::with_capacity(self.kept.len());
        let mut out = Vec::new();
        let groups: HashMap<&str, &Group> = d.groups.iter().map(|g| (g.id.as_str(), g)).collect();
        for iface in ifaces {
            let rules: Vec<_> = (iface.groups.iter())
                .map(|g| {
                    let g = groups.get(g.as_str())?;
                    Some([g.ingress.clone(), g.egress.clone()])
                })
                .collect();
            let k = match self.kept.remove(&iface.id) {
                Some(k) if k.iface == *iface && same(&k.rules, &rules) => k,
                _ => Kept {
                    iface: iface.clone(),
                    rules,
                    compiled: Arc::new(compile_interface(d, iface)),
                },
            };
            out.push(k.compiled.clone());
            kept.insert(iface.id.clone(), k);
        }
        self.kept = kept;
        out
    }
}

/// The same groups, each with the same rules (or absent on both sides).
fn same(a: &[Option<[Arc<[Rule]>; 2]>], b: &[Option<[Arc<[Rule]>; 2]>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => x.iter().zip(y).all(|(p, q)| Arc::ptr_eq(p, q)),
            (None, None) => true,
            _ => false,
        })
}
