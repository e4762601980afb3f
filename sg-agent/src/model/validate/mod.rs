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
    rules::resolve(
        v,
        &mut groups,
        &group_src,
        &vpcs,
        &pls,
        previous,
        q.rules_per_group,
    );
    let ifaces = interfaces::resolve(v, raw, &vpcs, &groups);
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
