//! `sg-agent audit` (docs/observe.md, "Audit"): what AWS Firewall Manager's
//! audit policies find in a state, on a file or a managed state, and over
//! the API (`DescribeAuditFindings`): unused groups and prefix lists,
//! redundant rules, rules that break a guardrail, stale references, and
//! interfaces and groups at or near a quota.

mod guardrails;
mod redundant;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use guardrails::{Guardrail, Guardrails};

use crate::model::{Desired, Group, Peer, Rule};

/// How much a finding matters; `--fail-on` gates on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// The classes of finding, as `kind` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    UnusedGroup,
    UnusedPrefixList,
    RedundantRule,
    Guardrail,
    StaleReference,
    Quota,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    /// The group, rule, prefix list or interface the finding is about.
    pub resource: String,
    /// The rule's group, for rule findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// A guardrail's name, for guardrail findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<String>,
    pub detail: String,
}

/// Every finding in `d`, most severe first.
pub fn audit(d: &Desired, guardrails: &Guardrails) -> Vec<Finding> {
    let mut out = Vec::new();
    unused(d, &mut out);
    out.extend(redundant::find(d));
    out.extend(guardrails.check(d));
    stale(d, &mut out);
    quotas(d, &mut out);
    out.sort_by(|a, b| {
        (b.severity.cmp(&a.severity))
            .then(a.kind.cmp(&b.kind))
            .then_with(|| a.resource.cmp(&b.resource))
            .then_with(|| a.guardrail.cmp(&b.guardrail))
    });
    out
}

/// The rules of a group, with the direction's name.
pub(crate) fn rules(g: &Group) -> impl Iterator<Item = (&'static str, &Rule)> {
    let inbound = g.ingress.iter().map(|r| ("ingress", r));
    inbound.chain(g.egress.iter().map(|r| ("egress", r)))
}

/// A rule as the console and `describe` show it: `tcp 22 from 0.0.0.0/0`.
pub(crate) fn show(dir: &str, r: &Rule) -> String {
    let ports = match (r.from_port, r.to_port) {
        (-1, _) => String::new(),
        (f, t) if f == t => format!(" {f}"),
        (f, t) => format!(" {f}-{t}"),
    };
    let peer = match &r.peer {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(id) => id.clone(),
        Peer::Group { id, .. } => id.clone(),
    };
    let to = if dir == "ingress" { "from" } else { "to" };
    format!("{dir} {}{ports} {to} {peer}", r.protocol)
}

fn unused(d: &Desired, out: &mut Vec<Finding>) {
    for g in &d.groups {
        // A default group cannot be deleted: unused, it is not a finding.
        if g.is_default || d.interfaces.iter().any(|i| i.groups.contains(&g.id)) {
            continue;
        }
        out.push(Finding {
            severity: Severity::Info,
            kind: Kind::UnusedGroup,
            resource: g.id.clone(),
            group_id: None,
            guardrail: None,
            detail: format!("{} ({}) is attached to no interface", g.id, g.name),
        });
    }
    for p in &d.prefix_lists {
        let used = d
            .groups
            .iter()
            .any(|g| rules(g).any(|(_, r)| matches!(&r.peer, Peer::PrefixList(id) if *id == p.id)));
        if !used {
            out.push(Finding {
                severity: Severity::Info,
                kind: Kind::UnusedPrefixList,
                resource: p.id.clone(),
                group_id: None,
                guardrail: None,
                detail: format!("{} ({}) is referenced by no rule", p.id, p.name),
            });
        }
    }
}

fn stale(d: &Desired, out: &mut Vec<Finding>) {
    for g in &d.groups {
        for (dir, r) in rules(g) {
            if let Peer::Group {
                id,
                peering,
                stale: true,
                ..
            } = &r.peer
            {
                let why = match (peering, d.group(id)) {
                    (Some(p), _) => format!("{id} across {p}, which is gone or not active"),
                    (None, Some(other)) => format!(
                        "{id} ({}) in {}, a VPC not peered with {}",
                        other.name, other.vpc, g.vpc
                    ),
                    (None, None) => format!("{id}, which does not exist"),
                };
                out.push(Finding {
                    severity: Severity::Warning,
                    kind: Kind::StaleReference,
                    resource: r.id.clone(),
                    group_id: Some(g.id.clone()),
                    guardrail: None,
                    detail: format!("{} references {why}: it matches nothing", show(dir, r)),
                });
            }
        }
    }
}

/// Share of a quota from which it is "near": 80 %.
const NEAR: f64 = 0.8;

fn quota(
    out: &mut Vec<Finding>,
    resource: &str,
    group_id: Option<&str>,
    used: usize,
    limit: u32,
    what: &str,
) {
    let limit = limit as usize;
    let severity = if used >= limit {
        Severity::Warning
    } else if used as f64 >= limit as f64 * NEAR {
        Severity::Info
    } else {
        return;
    };
    let at = if used >= limit { "at" } else { "near" };
    out.push(Finding {
        severity,
        kind: Kind::Quota,
        resource: resource.into(),
        group_id: group_id.map(String::from),
        guardrail: None,
        detail: format!("{at} quota: {used} of {limit} {what}"),
    });
}

fn quotas(d: &Desired, out: &mut Vec<Finding>) {
    let q = d.quotas;
    for i in d.interfaces.iter() {
        quota(
            out,
            &i.id,
            None,
            i.groups.len(),
            q.groups_per_interface,
            "security groups per network interface",
        );
        // AWS bounds rules per interface by groups × rules per group.
        let per_iface = q.groups_per_interface.saturating_mul(q.rules_per_group);
        let mut counts = BTreeMap::new();
        for g in i.groups.iter().filter_map(|id| d.group(id)) {
            for (dir, _) in rules(g) {
                *counts.entry(dir).or_insert(0usize) += 1;
            }
        }
        for (dir, n) in counts {
            quota(
                out,
                &i.id,
                None,
                n,
                per_iface,
                &format!("{dir} rules per network interface"),
            );
        }
    }
    for g in &d.groups {
        for (dir, list) in [("inbound", &g.ingress), ("outbound", &g.egress)] {
            // AWS counts IPv4 and IPv6 rules apart; a prefix-list reference
            // weighs its max_entries.
            let (mut v4, mut v6) = (0, 0);
            for r in list.iter() {
                match &r.peer {
                    Peer::Cidr(ipnet::IpNet::V6(_)) => v6 += 1,
                    Peer::PrefixList(id) => match d.prefix_list(id) {
                        Some(p) if p.ipv6 => v6 += p.max_entries as usize,
                        Some(p) => v4 += p.max_entries as usize,
                        None => {}
                    },
                    _ => v4 += 1,
                }
            }
            for (family, n) in [("IPv4", v4), ("IPv6", v6)] {
                quota(
                    out,
                    &g.id,
                    None,
                    n,
                    q.rules_per_group,
                    &format!("{dir} {family} rules per security group"),
                );
            }
        }
    }
}

/// The report `--output json` prints and `DescribeAuditFindings` answers.
pub fn report(findings: &[Finding]) -> Value {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    json!({
        "findings": findings,
        "summary": {
            "critical": count(Severity::Critical),
            "warning": count(Severity::Warning),
            "info": count(Severity::Info),
        },
    })
}

/// The findings as a table, one per line.
pub fn table(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings\n".into();
    }
    let rows: Vec<[String; 4]> = findings
        .iter()
        .map(|f| {
            let resource = match &f.group_id {
                Some(g) => format!("{g}/{}", f.resource),
                None => f.resource.clone(),
            };
            let kind = match &f.guardrail {
                Some(name) => format!("{}:{name}", f.kind),
                None => f.kind.to_string(),
            };
            [f.severity.to_string(), kind, resource, f.detail.clone()]
        })
        .collect();
    let head = ["SEVERITY", "FINDING", "RESOURCE", "DETAIL"].map(String::from);
    let width = |c: usize| {
        rows.iter()
            .chain([&head])
            .map(|r| r[c].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut s = String::new();
    for r in [&head].into_iter().chain(&rows) {
        s += &format!("{:w0$}  {:w1$}  {:w2$}  {}\n", r[0], r[1], r[2], r[3]);
    }
    s
}

#[cfg(test)]
mod tests;
