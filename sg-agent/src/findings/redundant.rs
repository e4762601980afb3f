//! Redundant rules: a rule that another rule lets through already, either
//! in the same group (wherever the group is attached) or in another group
//! on every interface that has the rule's group.
//!
//! Rules are judged one at a time, in a fixed order, against the rules not
//! yet found redundant. Coverage is transitive on each interface, so the
//! rules left over still let through everything the state does: removing
//! every rule found redundant changes no verdict, and of two equal rules
//! one is found, not both.

use std::collections::HashSet;

use ipnet::IpNet;

use super::{Finding, Kind, Severity, rules, show};
use crate::{
    compile::{peer_nets, port_span},
    model::{Desired, Peer, Protocol, Rule},
};

/// A rule as coverage sees it.
struct Judged<'a> {
    group: &'a str,
    dir: &'static str,
    rule: &'a Rule,
    span: (u16, u16),
    /// The blocks a CIDR or prefix-list peer stands for; a group peer is
    /// matched by identity (its members change), so it has none.
    nets: Vec<IpNet>,
}

/// `a` lets through everything `b` does.
fn covers(a: &Judged, b: &Judged) -> bool {
    if a.dir != b.dir
        || !(a.rule.protocol == Protocol::All || a.rule.protocol == b.rule.protocol)
        || a.span.0 > b.span.0
        || b.span.1 > a.span.1
    {
        return false;
    }
    match (&a.rule.peer, &b.rule.peer) {
        (
            Peer::Group {
                id: x,
                stale: false,
                ..
            },
            Peer::Group {
                id: y,
                stale: false,
                ..
            },
        ) => x == y,
        (Peer::Group { .. }, _) | (_, Peer::Group { .. }) => false,
        _ => !b.nets.is_empty() && b.nets.iter().all(|n| a.nets.iter().any(|m| m.contains(n))),
    }
}

pub fn find(d: &Desired) -> Vec<Finding> {
    let all: Vec<Judged> = d
        .groups
        .iter()
        .flat_map(|g| {
            rules(g).map(move |(dir, r)| Judged {
                group: &g.id,
                dir,
                rule: r,
                span: port_span(r.protocol, r.from_port, r.to_port),
                nets: match r.peer {
                    Peer::Group { .. } => Vec::new(),
                    _ => peer_nets(d, &r.peer),
                },
            })
        })
        .collect();
    // The groups of each interface.
    let ifaces: Vec<HashSet<&str>> = d
        .interfaces
        .iter()
        .map(|i| i.groups.iter().map(String::as_str).collect())
        .collect();
    let mut redundant = vec![false; all.len()];
    let mut out = Vec::new();
    for (n, r) in all.iter().enumerate() {
        let live = |m: usize| m != n && !redundant[m] && covers(&all[m], r);
        let same = (0..all.len()).find(|&m| all[m].group == r.group && live(m));
        let by = match same {
            Some(m) => Some(format!(
                "covered by {} in the same group",
                show(all[m].dir, all[m].rule)
            )),
            None => across(&all, &ifaces, r, &live),
        };
        if let Some(by) = by {
            redundant[n] = true;
            out.push(Finding {
                severity: Severity::Warning,
                kind: Kind::RedundantRule,
                resource: r.rule.id.clone(),
                group_id: Some(r.group.to_string()),
                guardrail: None,
                detail: format!("{} is {by}", show(r.dir, r.rule)),
            });
        }
    }
    out
}

/// Whether, on every interface that has `r`'s group (at least one), a rule
/// of another group there covers `r`; the covering rules, named.
fn across(
    all: &[Judged],
    ifaces: &[HashSet<&str>],
    r: &Judged,
    live: &dyn Fn(usize) -> bool,
) -> Option<String> {
    let mut by = Vec::new();
    let mut any = false;
    for groups in ifaces.iter().filter(|g| g.contains(r.group)) {
        any = true;
        let m = (0..all.len())
            .find(|&m| all[m].group != r.group && groups.contains(all[m].group) && live(m))?;
        let name = format!("{} of {}", show(all[m].dir, all[m].rule), all[m].group);
        if !by.contains(&name) {
            by.push(name);
        }
    }
    any.then(|| {
        format!(
            "covered on every interface with its group by {}",
            by.join("; ")
        )
    })
}
