//! Validation as AWS validates (docs/contract.md §4), with AWS's error codes,
//! and resolution of the input into the model: ids, default groups, default
//! egress, one peer per rule. One file per phase, run in this order: quota
//! settings, VPCs and peerings, prefix lists, groups and default groups,
//! rules, interfaces. Every problem is reported at once.

mod groups;
mod ids;
mod interfaces;
mod prefix_lists;
mod quotas;
mod rules;
#[cfg(test)]
mod tests;
mod vpcs;

pub use ids::{make_id, sha256_hex, valid_id};
pub use interfaces::valid_host;
pub use rules::peer_text;

use super::{Collector, Desired, Issue, Issues, Locate, input::RawConfig};

/// Validates `raw` as a whole; `locate` places each problem in its source.
/// `previous` is the state in force, if any (deleting a group still in use
/// is a `DependencyViolation` rather than a `NotFound`).
pub fn validate(
    raw: &RawConfig,
    locate: &dyn Locate,
    previous: Option<&Desired>,
) -> Result<Desired, Issues> {
    validate_from(raw, locate, previous, None)
}

/// A state that validated, and how the input now validated differs from
/// the one it was validated from.
#[derive(Clone, Copy)]
pub struct Prior<'a> {
    pub desired: &'a Desired,
    pub since: Since<'a>,
}

/// How an input differs from the one a prior state was validated from.
#[derive(Clone, Copy)]
pub enum Since<'a> {
    /// Found by comparing with that input (an API call: the state before
    /// it, at hand).
    Raw(&'a RawConfig),
    /// As its source tracked it, by object (a fleet's follower, which
    /// patches its copy of the stored state with each commit it sees).
    Touched(&'a Touched),
}

/// What changed in an input since a state was validated from it, by
/// object: enough to say which resolved parts can be taken unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// The settings (account, quotas), a VPC or a prefix list: what every
    /// rule and interface is resolved against.
    pub context: bool,
    /// Groups (ids) whose own object or rules were written, added or
    /// removed.
    pub groups: foldhash::HashSet<String>,
    /// An interface was written, added or removed.
    pub interfaces: bool,
}

impl Touched {
    /// Everything: an input read whole.
    pub fn all() -> Touched {
        Touched {
            context: true,
            interfaces: true,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.context && !self.interfaces && self.groups.is_empty()
    }

    /// What `self` and then `later` touched.
    pub fn merge(&mut self, later: Touched) {
        self.context |= later.context;
        self.interfaces |= later.interfaces;
        self.groups.extend(later.groups);
    }
}

/// As [`validate`], taking from `prior` what cannot have changed: a
/// group's rules when the group's written rules and everything they are
/// resolved against (VPCs, prefix lists, quotas, the groups' ids, names and
/// VPCs) are as they were, and the interfaces when they and what they are
/// resolved against are. Validation is a function of its input, so the
/// parts taken are the ones validating again would give, and without
/// issues, since `prior` had none. A fleet's agent validates a state of
/// tens of thousands of objects at every change; this keeps resolving to
/// the objects the change touched (docs/fleet.md, "What an agent does per
/// change").
pub fn validate_from(
    raw: &RawConfig,
    locate: &dyn Locate,
    previous: Option<&Desired>,
    prior: Option<Prior>,
) -> Result<Desired, Issues> {
    let mut c = Collector::new(locate);
    let v = &mut c;
    let q = raw.quotas;
    quotas::settings(v, raw);
    let account = raw
        .account_id
        .clone()
        .unwrap_or_else(|| "000000000000".into());
    let vpcs = vpcs::resolve(v, raw);
    let pls = prefix_lists::resolve(v, raw);
    let (mut groups, mut group_src) = groups::identities(v, raw, &vpcs, &account);
    groups::defaults(&mut groups, &mut group_src, &vpcs, &account);
    quotas::groups_per_vpc(v, &groups, q.groups_per_vpc);
    let same = prior.filter(|p| same_context(raw, p, &groups));
    rules::resolve(
        v,
        &mut groups,
        &group_src,
        &vpcs,
        &pls,
        previous,
        q.rules_per_group,
        same,
    );
    let ifaces_same = same.is_some_and(|p| match p.since {
        Since::Raw(was) => was.network_interfaces == raw.network_interfaces,
        Since::Touched(t) => !t.interfaces,
    });
    let ifaces = match same {
        Some(p) if ifaces_same => p.desired.interfaces.clone(),
        _ => interfaces::resolve(v, raw, &vpcs, &groups).into(),
    };
    let (warnings, errors): (Vec<Issue>, Vec<Issue>) =
        c.issues.into_iter().partition(|i| i.warning);
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        return Err(Issues(all));
    }
    Ok(Desired {
        account_id: account,
        vpcs: vpcs.list,
        prefix_lists: pls,
        groups,
        interfaces: ifaces,
        conntrack: raw.conntrack,
        quotas: q,
        warnings,
    })
}

/// Whether what rules and interfaces are resolved against is as it was in
/// `prior`: the same written VPCs, prefix lists, quotas and account, and
/// the same groups (id, name, VPC, default or not) in the same order.
fn same_context(raw: &RawConfig, prior: &Prior, groups: &[super::Group]) -> bool {
    let written = match prior.since {
        Since::Raw(p) => {
            raw.vpcs == p.vpcs
                && raw.prefix_lists == p.prefix_lists
                && raw.quotas == p.quotas
                && raw.account_id == p.account_id
        }
        Since::Touched(t) => !t.context,
    };
    written
        && groups.len() == prior.desired.groups.len()
        && groups.iter().zip(&prior.desired.groups).all(|(a, b)| {
            a.id == b.id && a.name == b.name && a.vpc == b.vpc && a.is_default == b.is_default
        })
}
