//! Rules: protocol, ports, peers and descriptions, one rule per peer; AWS's
//! default egress; references to groups and prefix lists.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    Prior, Since,
    ids::{make_id, parse_v4, parse_v6, valid_id, valid_text},
    vpcs::Vpcs,
};
use crate::model::{
    Collector, Desired, Group, INVALID, Peer, PrefixList, Protocol, Rule, Vpc,
    input::{RawGroup, RawPeer, RawRule},
};

/// Resolves every written group's rules; a group without written egress gets
/// AWS's default. `same`: a prior state resolved against the same context
/// (`validate_from`), whose groups' rules are taken where they were written
/// alike.
#[expect(
    clippy::too_many_arguments,
    reason = "the context rules are resolved against"
)]
pub fn resolve(
    v: &mut Collector,
    groups: &mut [Group],
    group_src: &[Option<&RawGroup>],
    vpcs: &Vpcs,
    pls: &[PrefixList],
    previous: Option<&Desired>,
    rules_per_group: u32,
    same: Option<Prior>,
) {
    // The prior state's written groups, in the order their resolved ones
    // stand (it validated, so none was left out), when it is at hand.
    let prior_src: Vec<&RawGroup> = match same.map(|p| p.since) {
        Some(Since::Raw(raw)) => raw
            .security_groups
            .iter()
            .chain(&raw.aws_security_groups)
            .collect(),
        _ => vec![],
    };
    // Whether group `gi`, `old` in the prior state, has the rules written
    // as they were.
    let written_alike = |gi: usize, src: &RawGroup, old: &Group| match same.map(|p| p.since) {
        Some(Since::Raw(_)) => prior_src.get(gi).is_some_and(|was| {
            // The written group `old` was resolved from (a stored state
            // writes every group's id).
            was.id.as_deref() == Some(old.id.as_str())
                && was.ingress == src.ingress
                && was.egress == src.egress
        }),
        // The groups are the prior's, in its order (`same_context`).
        Some(Since::Touched(t)) => !t.groups.contains(&old.id),
        None => false,
    };
    // Rules.
    let previous_groups: HashSet<&str> = previous
        .map(|p| p.groups.iter().map(|g| g.id.as_str()).collect())
        .unwrap_or_default();
    // Each group's rules: the prior's where they were written alike, else
    // resolved (with the groups borrowed as they stand, then set).
    let mut rules: Vec<Option<[Arc<[Rule]>; 2]>> = (0..groups.len())
        .map(|gi| {
            let (p, src) = (same?, group_src[gi]?);
            let old = p.desired.groups.get(gi)?;
            // Stale references are warned of at each validation.
            let stale = (old.ingress.iter().chain(old.egress.iter()))
                .any(|r| matches!(r.peer, Peer::Group { stale: true, .. }));
            (written_alike(gi, src, old) && !stale)
                .then(|| [old.ingress.clone(), old.egress.clone()])
        })
        .collect();
    let to_resolve: Vec<usize> = (0..groups.len())
        .filter(|&gi| rules[gi].is_none() && group_src[gi].is_some())
        .collect();
    if !to_resolve.is_empty() {
        // (VPC, id or name) → the first such group: thousands of groups,
        // each rule's references looked up.
        let mut by_key = HashMap::new();
        for (i, g) in groups.iter().enumerate().rev() {
            by_key.insert((g.vpc.as_str(), g.id.as_str()), i);
            by_key.insert((g.vpc.as_str(), g.name.as_str()), i);
        }
        for gi in to_resolve {
            let src = group_src[gi].expect("written");
            let g = &groups[gi];
            let (doc, gpath) = (src.origin.doc, src.origin.path.as_str());
            let obj = format!("security group {:?} ({})", g.name, g.id);
            let vpc = (vpcs.list.iter())
                .find(|x| x.id == g.vpc)
                .expect("resolved");
            let ctx = RuleCtx {
                vpc,
                vpcs: &vpcs.list,
                groups,
                by_key: &by_key,
                pls,
                previous: &previous_groups,
            };
            let of = |v: &mut Collector, dir, written| {
                rules_of(
                    v,
                    &ctx,
                    &g.id,
                    dir,
                    written,
                    doc,
                    gpath,
                    &obj,
                    rules_per_group,
                )
            };
            let ingress = of(v, "ingress", &src.ingress);
            let egress = match &src.egress {
                Some(rs) => of(v, "egress", rs),
                None => default_egress(&g.id, vpc),
            };
            rules[gi] = Some([ingress.into(), egress.into()]);
        }
    }
    for (g, r) in groups.iter_mut().zip(rules) {
        if let Some([ingress, egress]) = r {
            (g.ingress, g.egress) = (ingress, egress);
        }
    }
}

/// Where a rule, or one of its peers, was written: formatted only for an
/// error (a group may hold thousands of rules).
#[derive(Clone, Copy)]
struct At<'a> {
    gpath: &'a str,
    dir: &'a str,
    i: usize,
    peer: Option<(&'a str, usize)>,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}.{}[{}]", self.gpath, self.dir, self.i)?;
        if let Some((kind, j)) = self.peer {
            write!(f, ".{kind}[{j}]")?;
        }
        Ok(())
    }
}

struct RuleCtx<'a> {
    vpc: &'a Vpc,
    vpcs: &'a [Vpc],
    /// Every group.
    groups: &'a [Group],
    /// Where in `groups` a (VPC, id or name) is first.
    by_key: &'a HashMap<(&'a str, &'a str), usize>,
    pls: &'a [PrefixList],
    previous: &'a HashSet<&'a str>,
}

impl RuleCtx<'_> {
    /// The first group of `vpc` whose id or name is `value`.
    fn group(&self, vpc: &str, value: &str) -> Option<&Group> {
        self.by_key.get(&(vpc, value)).map(|&i| &self.groups[i])
    }
}

pub fn rule(
    group: &str,
    dir: &str,
    protocol: Protocol,
    from: i32,
    to: i32,
    peer: Peer,
    description: Option<String>,
) -> Rule {
    let peer_s = format!("{peer:?}");
    Rule {
        id: make_id(
            "sgr",
            &[
                group,
                dir,
                &protocol.to_string(),
                &from.to_string(),
                &to.to_string(),
                &peer_s,
            ],
        ),
        protocol,
        from_port: from,
        to_port: to,
        peer,
        description,
        tags: Default::default(),
    }
}

/// AWS's default outbound rules: all traffic to 0.0.0.0/0, and to ::/0 when
/// the VPC has an IPv6 block.
pub fn default_egress(group: &str, vpc: &Vpc) -> Vec<Rule> {
    let mut out = vec![rule(
        group,
        "egress",
        Protocol::All,
        -1,
        -1,
        Peer::Cidr(IpNet::V4(Ipv4Net::default())),
        None,
    )];
    if !vpc.ipv6.is_empty() {
        out.push(rule(
            group,
            "egress",
            Protocol::All,
            -1,
            -1,
            Peer::Cidr(IpNet::V6(Ipv6Net::default())),
            None,
        ));
    }
    out
}

/// Protocol, ports, peers and descriptions of one direction's rules; each
/// written permission becomes one rule per peer.
#[expect(
    clippy::too_many_arguments,
    reason = "the place of every error needs all of these"
)]
fn rules_of(
    v: &mut Collector,
    ctx: &RuleCtx,
    group: &str,
    dir: &'static str,
    raw: &[RawRule],
    doc: usize,
    gpath: &str,
    obj: &str,
    quota: u32,
) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::with_capacity(raw.len());
    // What is already there, for the duplicate checks (a group may hold
    // thousands of rules: no pairwise scans).
    let mut seen: HashSet<(Protocol, i32, i32, Peer)> = HashSet::with_capacity(raw.len());
    let mut ids: HashSet<String> = HashSet::with_capacity(raw.len());
    let (mut n4, mut n6) = (0u32, 0u32);
    for (i, r) in raw.iter().enumerate() {
        let path = At {
            gpath,
            dir,
            i,
            peer: None,
        };
        let protocol = match Protocol::parse(&r.ip_protocol) {
            Ok(p) => p,
            Err(e) => {
                v.err(doc, &format!("{path}.ip_protocol"), obj, INVALID, e);
                continue;
            }
        };
        let Some((from, to)) = port_range(v, protocol, r, doc, &path, obj) else {
            continue;
        };
        let peers = [
            ("ip_ranges", &r.ip_ranges),
            ("ipv6_ranges", &r.ipv6_ranges),
            ("prefix_list_ids", &r.prefix_list_ids),
            ("user_id_group_pairs", &r.user_id_group_pairs),
        ]
        .into_iter()
        .flat_map(|(k, list)| list.iter().enumerate().map(move |(j, p)| (k, j, p)));
        if r.peers().next().is_none() {
            v.err(doc, &path.to_string(), obj, INVALID, "a rule needs a peer: ip_ranges, ipv6_ranges, prefix_list_ids or user_id_group_pairs");
        }
        for (kind, j, p) in peers {
            let ppath = At {
                peer: Some((kind, j)),
                ..path
            };
            if let Some(d) = &p.description
                && (d.len() > 255 || !valid_text(d))
            {
                v.err(doc, &format!("{ppath}.description"), obj, INVALID, "a rule description is up to 255 characters of a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*");
            }
            let peer = match kind {
                "ip_ranges" | "ipv6_ranges" => {
                    let v6 = kind == "ipv6_ranges";
                    let net = if v6 {
                        parse_v6(&p.value).map(IpNet::V6)
                    } else {
                        parse_v4(&p.value).map(IpNet::V4)
                    };
                    let Some(net) = net else {
                        let fam = if v6 { "IPv6" } else { "IPv4" };
                        v.err(
                            doc,
                            &ppath.to_string(),
                            obj,
                            INVALID,
                            format!("invalid {fam} CIDR {:?}", p.value),
                        );
                        continue;
                    };
                    *(if v6 { &mut n6 } else { &mut n4 }) += 1;
                    Peer::Cidr(net)
                }
                "prefix_list_ids" => match ctx
                    .pls
                    .iter()
                    .find(|pl| pl.id == p.value || pl.name == p.value)
                {
                    Some(pl) => {
                        // A prefix-list reference weighs its max entries.
                        if pl.ipv6 {
                            n6 += pl.max_entries;
                        } else {
                            n4 += pl.max_entries;
                        }
                        Peer::PrefixList(pl.id.clone())
                    }
                    None => {
                        v.err(
                            doc,
                            &ppath.to_string(),
                            obj,
                            "InvalidPrefixListID.NotFound",
                            format!("no prefix list {:?}", p.value),
                        );
                        continue;
                    }
                },
                _ => {
                    n4 += 1;
                    match group_peer(v, ctx, p, doc, &ppath, obj) {
                        Some(peer) => peer,
                        None => continue,
                    }
                }
            };
            let mut new = match &p.rule_id {
                // A kept id: no need to derive one.
                Some(id) => Rule {
                    id: id.clone(),
                    protocol,
                    from_port: from,
                    to_port: to,
                    peer,
                    description: p.description.clone(),
                    tags: Default::default(),
                },
                None => rule(group, dir, protocol, from, to, peer, p.description.clone()),
            };
            new.tags = p.tags.clone();
            if let Some(id) = &p.rule_id
                && !valid_id("sgr", id)
            {
                v.err(
                    doc,
                    &format!("{ppath}.rule_id"),
                    obj,
                    "InvalidSecurityGroupRuleId.Malformed",
                    format!("{id:?} is not sgr- and 8-17 hex digits"),
                );
                continue;
            }
            if !seen.insert((new.protocol, new.from_port, new.to_port, new.peer.clone())) {
                v.err(
                    doc,
                    &ppath.to_string(),
                    obj,
                    "InvalidPermission.Duplicate",
                    format!(
                        "the {dir} rule {} {}-{} {} is already there",
                        new.protocol,
                        from,
                        to,
                        peer_text(&new.peer)
                    ),
                );
                continue;
            }
            if !ids.insert(new.id.clone()) {
                v.err(
                    doc,
                    &format!("{ppath}.rule_id"),
                    obj,
                    "InvalidSecurityGroupRuleId.Duplicate",
                    format!("rule id {} is given twice", new.id),
                );
                continue;
            }
            out.push(new);
        }
    }
    for (fam, n) in [("IPv4", n4), ("IPv6", n6)] {
        if n > quota {
            v.err(doc, &format!("{gpath}.{dir}"), obj, "RulesPerSecurityGroupLimitExceeded", format!("{n} {fam} {dir} rules (prefix lists weigh their max entries), the quota is {quota}"));
        }
    }
    out
}

pub fn peer_text(p: &Peer) -> String {
    match p {
        Peer::Cidr(n) => n.to_string(),
        Peer::PrefixList(id) => id.clone(),
        Peer::Group { id, .. } => id.clone(),
    }
}

fn group_peer(
    v: &mut Collector,
    ctx: &RuleCtx,
    p: &RawPeer,
    doc: usize,
    path: &At,
    obj: &str,
) -> Option<Peer> {
    let other_vpc = p
        .vpc
        .as_ref()
        .filter(|x| **x != ctx.vpc.id && **x != ctx.vpc.name);
    match other_vpc {
        None => match ctx.group(&ctx.vpc.id, &p.value) {
            Some(g) => Some(Peer::Group {
                id: g.id.clone(),
                vpc: ctx.vpc.id.clone(),
                peering: None,
                stale: false,
            }),
            None if ctx.previous.contains(p.value.as_str()) => {
                v.err(doc, &path.to_string(), obj, "DependencyViolation", format!("group {:?} is still referenced here; remove the reference before the group", p.value));
                None
            }
            None => {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    "InvalidGroup.NotFound",
                    format!("no security group {:?} in {}", p.value, ctx.vpc.id),
                );
                None
            }
        },
        Some(vpc) => {
            // A group in another VPC: usable through a peering; when the
            // group or the peering is gone the rule is stale (kept, matches
            // nothing), as on AWS.
            let vpc_id = ctx
                .vpcs
                .iter()
                .find(|x| x.id == *vpc || x.name == *vpc)
                .map_or(vpc.clone(), |x| x.id.clone());
            let peered = ctx.vpc.peers.contains(&vpc_id);
            let found = ctx.group(&vpc_id, &p.value);
            let id = found.map_or(p.value.clone(), |g| g.id.clone());
            let stale = !peered || found.is_none();
            if stale {
                let why = if found.is_none() {
                    "the group is gone"
                } else {
                    "the VPCs are not peered"
                };
                v.push(
                    doc,
                    &path.to_string(),
                    obj,
                    "StaleSecurityGroupReference",
                    format!(
                        "{} in {vpc_id}: {why}; the rule is kept and matches nothing",
                        p.value
                    ),
                    true,
                );
            }
            Some(Peer::Group {
                id,
                vpc: vpc_id,
                peering: p.peering.clone(),
                stale,
            })
        }
    }
}

/// Ports of a permission, as AWS reports them and as the datapath matches.
fn port_range(
    v: &mut Collector,
    protocol: Protocol,
    r: &RawRule,
    doc: usize,
    path: &At,
    obj: &str,
) -> Option<(i32, i32)> {
    match protocol {
        Protocol::Number(6 | 17) => {
            let (Some(from), Some(to)) = (r.from_port, r.to_port) else {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    INVALID,
                    format!("a {protocol} rule needs from_port and to_port"),
                );
                return None;
            };
            let ok = |p: i64| (0..=65535).contains(&p);
            if !ok(from) || !ok(to) {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    INVALID,
                    format!("invalid port range {from}-{to}: ports are 0-65535"),
                );
                return None;
            }
            if from > to {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    INVALID,
                    format!("invalid port range {from}-{to}: from_port is greater than to_port"),
                );
                return None;
            }
            Some((from as i32, to as i32))
        }
        Protocol::Number(1 | 58) => {
            let t = r.from_port.unwrap_or(-1);
            let c = r.to_port.unwrap_or(-1);
            let ok = |x: i64| (-1..=255).contains(&x);
            if !ok(t) || !ok(c) {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    INVALID,
                    format!("invalid ICMP type {t} / code {c}: each is -1 (all) or 0-255"),
                );
                return None;
            }
            if t == -1 && c != -1 {
                v.err(
                    doc,
                    &path.to_string(),
                    obj,
                    INVALID,
                    format!(
                        "invalid ICMP code {c} with type -1: the code must be -1 when the type is -1"
                    ),
                );
                return None;
            }
            Some((t as i32, c as i32))
        }
        // All ports, whatever range is given (docs/contract.md §2).
        _ => Some((-1, -1)),
    }
}
