//! Validation as AWS validates (docs/contract.md §4), with AWS's error codes, and
//! resolution of the written configuration into the desired state: ids,
//! default groups, default egress, one peer per rule.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

use super::{
    AttachMode, ConntrackTable, Doc, IngressHook, Issues, Protocol, Quotas, RawConfig, RawGroup,
    RawPeer, RawRule, RawTimeouts, Timeouts,
};

/// One problem: where, in which object, AWS's code, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: String,
    pub line: Option<usize>,
    pub object: String,
    pub code: &'static str,
    pub message: String,
    /// Reported, but the configuration is still applied (stale references).
    pub warning: bool,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        write!(f, ": {}: {}", self.code, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
    pub peers: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList {
    pub id: String,
    pub name: String,
    pub ipv6: bool,
    pub max_entries: u32,
    pub entries: Vec<(IpNet, Option<String>)>,
}

/// A rule's one peer (docs/contract.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Cidr(IpNet),
    PrefixList(String),
    Group {
        id: String,
        vpc: String,
        peering: Option<String>,
        /// The group or the peering is gone: kept, reported, matches nothing.
        stale: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub protocol: Protocol,
    /// As AWS reports them: port range, or ICMP type and code; -1 for all.
    pub from_port: i32,
    pub to_port: i32,
    /// The range the datapath matches: ports, or ICMP `type << 8 | code`.
    pub ports: (u16, u16),
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc: String,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub id: String,
    pub vpc: String,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Group ids.
    pub groups: Vec<String>,
    pub attach: AttachMode,
    pub ingress_hook: IngressHook,
    pub timeouts: Timeouts,
    pub related_icmp: bool,
    pub optional: bool,
    /// The operator's explicit "stop enforcing here": removing an interface
    /// from the file never detaches it (README, "How reloads are taken").
    pub detached: bool,
}

/// The validated desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub account_id: String,
    pub vpcs: Vec<Vpc>,
    pub prefix_lists: Vec<PrefixList>,
    pub groups: Vec<Group>,
    pub interfaces: Vec<Interface>,
    pub conntrack: ConntrackTable,
    pub quotas: Quotas,
    /// Problems that do not stop the configuration (stale references).
    pub warnings: Vec<Issue>,
}

impl Desired {
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    pub fn prefix_list(&self, id: &str) -> Option<&PrefixList> {
        self.prefix_lists.iter().find(|p| p.id == id)
    }
}

/// A stable id: `prefix-` and 17 hex digits of a hash of what names the
/// object, so that ids survive reloads and restarts.
pub fn make_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}", &hex[..17])
}

fn valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|h| {
            (8..=17).contains(&h.len())
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// An object's id: the one written in the file when it is well formed, a
/// generated one (from `parts`) when none is written, `None` (reported with
/// AWS's code for the kind) when it is malformed.
fn object_id(
    v: &mut V,
    given: &Option<String>,
    prefix: &str,
    parts: &[&str],
    doc: usize,
    path: &str,
    obj: &str,
) -> Option<String> {
    let Some(id) = given else {
        return Some(make_id(prefix, parts));
    };
    if valid_id(prefix, id) {
        return Some(id.clone());
    }
    let code = match prefix {
        "vpc" => "InvalidVpcID.Malformed",
        "pl" => "InvalidPrefixListID.Malformed",
        "sg" => "InvalidGroupId.Malformed",
        _ => "InvalidNetworkInterfaceID.Malformed",
    };
    v.err(
        doc,
        &format!("{path}.id"),
        obj,
        code,
        format!("{id:?} is not {prefix}- and 8-17 hex digits"),
    );
    None
}

/// AWS's character set for group names and descriptions (VPC).
fn valid_text(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c))
}

struct V<'a> {
    docs: &'a [Doc],
    issues: Vec<Issue>,
}

impl V<'_> {
    fn push(
        &mut self,
        doc: usize,
        path: &str,
        object: &str,
        code: &'static str,
        message: String,
        warning: bool,
    ) {
        let d = &self.docs[doc];
        self.issues.push(Issue {
            file: d.file.clone(),
            line: d.lines.line(path),
            object: object.to_string(),
            code,
            message,
            warning,
        });
    }

    fn err(
        &mut self,
        doc: usize,
        path: &str,
        object: &str,
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.push(doc, path, object, code, message.into(), false);
    }
}

const INVALID: &str = "InvalidParameterValue";

fn parse_v4(s: &str) -> Option<Ipv4Net> {
    let s = s.trim();
    s.parse::<Ipv4Net>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .ok()
        .map(|n| n.trunc())
}

fn parse_v6(s: &str) -> Option<Ipv6Net> {
    let s = s.trim();
    s.parse::<Ipv6Net>()
        .or_else(|_| s.parse::<Ipv6Addr>().map(Ipv6Net::from))
        .ok()
        .map(|n| n.trunc())
}

pub fn validate(
    raw: &RawConfig,
    docs: &[Doc],
    previous: Option<&Desired>,
) -> Result<Desired, Issues> {
    let mut v = V {
        docs,
        issues: Vec::new(),
    };
    let q = raw.quotas;
    if !(1..=16).contains(&q.groups_per_interface) {
        v.err(
            0,
            "quotas.groups_per_interface",
            "quotas",
            INVALID,
            format!(
                "groups_per_interface {} is outside 1-16",
                q.groups_per_interface
            ),
        );
    }
    if q.rules_per_group == 0 || q.rules_per_group.saturating_mul(q.groups_per_interface) > 1000 {
        v.err(
            0,
            "quotas.rules_per_group",
            "quotas",
            INVALID,
            format!(
                "rules_per_group ({}) x groups_per_interface ({}) must be 1-1000",
                q.rules_per_group, q.groups_per_interface
            ),
        );
    }
    if raw.conntrack.max_flows == 0 {
        v.err(
            0,
            "conntrack.max_flows",
            "conntrack",
            INVALID,
            "max_flows must be at least 1",
        );
    }
    let account = raw
        .account_id
        .clone()
        .unwrap_or_else(|| "000000000000".into());

    // VPCs: declared, or one implicit VPC that holds every address.
    let mut vpcs: Vec<Vpc> = Vec::new();
    for (i, r) in raw.vpcs.iter().enumerate() {
        let path = format!("vpcs[{i}]");
        let name = r.name.clone().or_else(|| r.id.clone()).unwrap_or_default();
        let obj = format!("VPC {name:?}");
        if name.is_empty() {
            v.err(0, &path, "VPC", INVALID, "a VPC needs a name or an id");
            continue;
        }
        let Some(id) = object_id(&mut v, &r.id, "vpc", &[&name], 0, &path, &obj) else {
            continue;
        };
        if vpcs.iter().any(|x| x.id == id || x.name == name) {
            v.err(
                0,
                &path,
                &obj,
                INVALID,
                format!("VPC {name:?} ({id}) is declared twice"),
            );
            continue;
        }
        let mut ipv4 = Vec::new();
        for (j, c) in r.cidr_blocks.iter().enumerate() {
            match parse_v4(c) {
                Some(n) => ipv4.push(n),
                None => v.err(
                    0,
                    &format!("{path}.cidr_blocks[{j}]"),
                    &obj,
                    INVALID,
                    format!("invalid IPv4 CIDR {c:?}"),
                ),
            }
        }
        let mut ipv6 = Vec::new();
        for (j, c) in r.ipv6_cidr_blocks.iter().enumerate() {
            match parse_v6(c) {
                Some(n) => ipv6.push(n),
                None => v.err(
                    0,
                    &format!("{path}.ipv6_cidr_blocks[{j}]"),
                    &obj,
                    INVALID,
                    format!("invalid IPv6 CIDR {c:?}"),
                ),
            }
        }
        vpcs.push(Vpc {
            id,
            name,
            ipv4,
            ipv6,
            peers: BTreeSet::new(),
        });
    }
    for (i, r) in raw.vpcs.iter().enumerate() {
        let Some(me) = vpcs
            .iter()
            .position(|x| Some(&x.name) == r.name.as_ref() || Some(&x.id) == r.id.as_ref())
        else {
            continue;
        };
        for (j, p) in r.peerings.iter().enumerate() {
            match vpcs.iter().position(|x| &x.name == p || &x.id == p) {
                Some(other) if other != me => {
                    let (a, b) = (vpcs[me].id.clone(), vpcs[other].id.clone());
                    vpcs[me].peers.insert(b);
                    vpcs[other].peers.insert(a);
                }
                _ => v.err(
                    0,
                    &format!("vpcs[{i}].peerings[{j}]"),
                    &format!("VPC {:?}", vpcs[me].name),
                    "InvalidVpcID.NotFound",
                    format!("no other VPC {p:?} to peer with"),
                ),
            }
        }
    }
    let implicit = vpcs.is_empty();
    if implicit {
        vpcs.push(Vpc {
            id: make_id("vpc", &["default"]),
            name: "default".into(),
            ipv4: vec![Ipv4Net::default()],
            ipv6: vec![Ipv6Net::default()],
            peers: BTreeSet::new(),
        });
    }
    // Imported groups may name VPCs the file does not declare.
    for g in &raw.aws_security_groups {
        if let Some(id) = &g.vpc
            && !implicit
            && !vpcs.iter().any(|x| &x.id == id || &x.name == id)
            && valid_id("vpc", id)
        {
            vpcs.push(Vpc {
                id: id.clone(),
                name: id.clone(),
                ipv4: vec![],
                ipv6: vec![],
                peers: BTreeSet::new(),
            });
        }
    }
    let resolve_vpc =
        |v: &mut V, given: &Option<String>, doc: usize, path: &str, obj: &str| -> Option<String> {
            match given {
                Some(x) if implicit => {
                    // Without declared VPCs everything shares the implicit one.
                    let _ = x;
                    Some(vpcs[0].id.clone())
                }
                Some(x) => match vpcs.iter().find(|vp| &vp.id == x || &vp.name == x) {
                    Some(vp) => Some(vp.id.clone()),
                    None => {
                        v.err(
                            doc,
                            path,
                            obj,
                            "InvalidVpcID.NotFound",
                            format!("no VPC {x:?}"),
                        );
                        None
                    }
                },
                None if vpcs.len() == 1 => Some(vpcs[0].id.clone()),
                None => {
                    v.err(
                        doc,
                        path,
                        obj,
                        INVALID,
                        "there are several VPCs: name this one's `vpc`",
                    );
                    None
                }
            }
        };

    // Prefix lists.
    let mut pls: Vec<PrefixList> = Vec::new();
    for (i, r) in raw.prefix_lists.iter().enumerate() {
        let path = format!("prefix_lists[{i}]");
        let obj = format!("prefix list {:?}", r.name);
        let Some(id) = object_id(&mut v, &r.id, "pl", &[&r.name], 0, &path, &obj) else {
            continue;
        };
        if pls.iter().any(|p| p.id == id || p.name == r.name) {
            v.err(0, &path, &obj, INVALID, "prefix list declared twice");
            continue;
        }
        let ipv6 = match r.address_family.as_str() {
            "IPv4" | "ipv4" => false,
            "IPv6" | "ipv6" => true,
            other => {
                v.err(
                    0,
                    &format!("{path}.address_family"),
                    &obj,
                    INVALID,
                    format!("address_family {other:?}: IPv4 or IPv6"),
                );
                continue;
            }
        };
        if r.max_entries == 0 || r.max_entries > q.prefix_list_max_entries {
            v.err(
                0,
                &format!("{path}.max_entries"),
                &obj,
                INVALID,
                format!(
                    "max_entries {} is outside 1-{}",
                    r.max_entries, q.prefix_list_max_entries
                ),
            );
        }
        if r.entries.len() > r.max_entries as usize {
            v.err(
                0,
                &format!("{path}.entries"),
                &obj,
                "PrefixListMaxEntriesExceeded",
                format!(
                    "{} entries, max_entries is {}",
                    r.entries.len(),
                    r.max_entries
                ),
            );
        }
        let mut entries = Vec::new();
        for (j, e) in r.entries.iter().enumerate() {
            let net = if ipv6 {
                parse_v6(&e.cidr).map(IpNet::V6)
            } else {
                parse_v4(&e.cidr).map(IpNet::V4)
            };
            match net {
                Some(n) if entries.iter().any(|(x, _)| *x == n) => v.err(
                    0,
                    &format!("{path}.entries[{j}]"),
                    &obj,
                    INVALID,
                    format!("entry {n} is listed twice"),
                ),
                Some(n) => entries.push((n, e.description.clone())),
                None => v.err(
                    0,
                    &format!("{path}.entries[{j}]"),
                    &obj,
                    INVALID,
                    format!("invalid {} CIDR {:?}", r.address_family, e.cidr),
                ),
            }
        }
        pls.push(PrefixList {
            id,
            name: r.name.clone(),
            ipv6,
            max_entries: r.max_entries,
            entries,
        });
    }

    // Groups: first their identity, so that rules can refer to any of them.
    let sources: Vec<&RawGroup> = raw
        .security_groups
        .iter()
        .chain(raw.aws_security_groups.iter())
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_src: Vec<Option<&RawGroup>> = Vec::new();
    for g in &sources {
        let (doc, path) = (g.origin.doc, g.origin.path.as_str());
        let name = g.name.trim_end().to_string();
        let obj = format!("security group {name:?}");
        let mut ok = true;
        if name.is_empty() || name.len() > 255 {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name is 1-255 characters",
            );
            ok = false;
        } else if !valid_text(&name) {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name may hold only a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*",
            );
            ok = false;
        } else if name.to_ascii_lowercase().starts_with("sg-") {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name may not start with sg-",
            );
            ok = false;
        }
        // Without a description the name (checked above) stands in for it.
        let description = g.description.clone().unwrap_or_else(|| name.clone());
        if g.description.is_some()
            && (description.is_empty() || description.len() > 255 || !valid_text(&description))
        {
            v.err(doc, &format!("{path}.description"), &obj, INVALID, "a description is 1-255 characters of a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*");
            ok = false;
        }
        let Some(vpc) = resolve_vpc(&mut v, &g.vpc, doc, &format!("{path}.vpc"), &obj) else {
            continue;
        };
        let Some(id) = object_id(&mut v, &g.id, "sg", &[&vpc, &name], doc, path, &obj) else {
            continue;
        };
        if let Some(other) = groups
            .iter()
            .find(|x| (x.vpc == vpc && x.name == name) || x.id == id)
        {
            v.err(
                doc,
                path,
                &obj,
                "InvalidGroup.Duplicate",
                format!(
                    "the group {:?} ({}) already exists in {vpc}",
                    other.name, other.id
                ),
            );
            continue;
        }
        if !ok {
            continue;
        }
        groups.push(Group {
            id,
            name: name.clone(),
            description,
            vpc,
            owner: g.owner_id.clone().unwrap_or_else(|| account.clone()),
            tags: g.tags.clone(),
            ingress: vec![],
            egress: vec![],
            is_default: name == "default",
        });
        group_src.push(Some(g));
    }
    // Every VPC has its default group (created when not written).
    for vpc in &vpcs {
        if !groups.iter().any(|g| g.vpc == vpc.id && g.is_default) {
            let id = make_id("sg", &[&vpc.id, "default"]);
            let mut g = Group {
                id: id.clone(),
                name: "default".into(),
                description: "default VPC security group".into(),
                vpc: vpc.id.clone(),
                owner: account.clone(),
                tags: BTreeMap::new(),
                ingress: vec![],
                egress: default_egress(&id, vpc),
                is_default: true,
            };
            g.ingress.push(rule(
                &id,
                "ingress",
                Protocol::All,
                -1,
                -1,
                (0, u16::MAX),
                Peer::Group {
                    id: id.clone(),
                    vpc: vpc.id.clone(),
                    peering: None,
                    stale: false,
                },
                None,
            ));
            groups.push(g);
            group_src.push(None);
        }
    }
    let per_vpc: HashMap<&str, usize> = groups.iter().fold(HashMap::new(), |mut m, g| {
        *m.entry(g.vpc.as_str()).or_default() += 1;
        m
    });
    for (vpc, n) in per_vpc {
        if n as u32 > q.groups_per_vpc {
            v.err(
                0,
                "security_groups",
                &format!("VPC {vpc}"),
                "SecurityGroupLimitExceeded",
                format!("{n} groups, the quota is {}", q.groups_per_vpc),
            );
        }
    }

    // Rules.
    let previous_groups: HashSet<&str> = previous
        .map(|p| p.groups.iter().map(|g| g.id.as_str()).collect())
        .unwrap_or_default();
    let snapshot: Vec<(String, String, String)> = groups
        .iter()
        .map(|g| (g.id.clone(), g.name.clone(), g.vpc.clone()))
        .collect();
    for gi in 0..groups.len() {
        let Some(src) = group_src[gi] else { continue };
        let (doc, gpath) = (src.origin.doc, src.origin.path.clone());
        let obj = format!("security group {:?} ({})", groups[gi].name, groups[gi].id);
        let vpc = vpcs
            .iter()
            .find(|x| x.id == groups[gi].vpc)
            .expect("resolved")
            .clone();
        let ctx = RuleCtx {
            vpc: &vpc,
            vpcs: &vpcs,
            groups: &snapshot,
            pls: &pls,
            previous: &previous_groups,
        };
        let ingress = rules_of(
            &mut v,
            &ctx,
            &groups[gi].id,
            "ingress",
            &src.ingress,
            doc,
            &gpath,
            &obj,
            q.rules_per_group,
        );
        let egress = match &src.egress {
            Some(rs) => rules_of(
                &mut v,
                &ctx,
                &groups[gi].id,
                "egress",
                rs,
                doc,
                &gpath,
                &obj,
                q.rules_per_group,
            ),
            None => default_egress(&groups[gi].id, &vpc),
        };
        groups[gi].ingress = ingress;
        groups[gi].egress = egress;
    }

    // Interfaces.
    let mut ifaces: Vec<Interface> = Vec::new();
    for (i, r) in raw.network_interfaces.iter().enumerate() {
        let path = format!("network_interfaces[{i}]");
        let obj = format!("network interface {:?}", r.interface);
        if r.interface.is_empty() || r.interface.len() > 15 {
            v.err(
                0,
                &format!("{path}.interface"),
                &obj,
                INVALID,
                "a Linux interface name is 1-15 characters",
            );
            continue;
        }
        if ifaces.iter().any(|x| x.name == r.interface) {
            v.err(
                0,
                &path,
                &obj,
                INVALID,
                format!("interface {:?} is listed twice", r.interface),
            );
            continue;
        }
        let Some(vpc_id) = resolve_vpc(&mut v, &r.vpc, 0, &format!("{path}.vpc"), &obj) else {
            continue;
        };
        let vpc = vpcs.iter().find(|x| x.id == vpc_id).expect("resolved");
        let Some(id) = object_id(&mut v, &r.id, "eni", &[&r.interface], 0, &path, &obj) else {
            continue;
        };
        // Without IPv4 blocks (a VPC known only by id) any IPv4 address goes.
        let ipv4 = private_addrs(
            &mut v,
            &r.private_ipv4,
            &format!("{path}.private_ipv4"),
            &obj,
            "IPv4",
            |ip: &Ipv4Addr| vpc.ipv4.is_empty() || vpc.ipv4.iter().any(|n| n.contains(ip)),
        );
        let ipv6 = private_addrs(
            &mut v,
            &r.private_ipv6,
            &format!("{path}.private_ipv6"),
            &obj,
            "IPv6",
            |ip: &Ipv6Addr| vpc.ipv6.iter().any(|n| n.contains(ip)),
        );
        let mut gids = Vec::new();
        match &r.groups {
            None => gids.push(
                groups
                    .iter()
                    .find(|g| g.vpc == vpc_id && g.is_default)
                    .expect("default group")
                    .id
                    .clone(),
            ),
            Some(list) => {
                if list.is_empty() {
                    v.err(0, &format!("{path}.groups"), &obj, INVALID, "an interface needs at least one group (omit `groups` for the VPC's default group)");
                }
                for (j, name) in list.iter().enumerate() {
                    match groups
                        .iter()
                        .find(|g| g.vpc == vpc_id && (g.id == *name || g.name == name.trim_end()))
                    {
                        Some(g) if gids.contains(&g.id) => v.err(
                            0,
                            &format!("{path}.groups[{j}]"),
                            &obj,
                            INVALID,
                            format!("group {name:?} is listed twice"),
                        ),
                        Some(g) => gids.push(g.id.clone()),
                        None => v.err(
                            0,
                            &format!("{path}.groups[{j}]"),
                            &obj,
                            "InvalidGroup.NotFound",
                            format!("no security group {name:?} in {vpc_id}"),
                        ),
                    }
                }
            }
        }
        if gids.len() as u32 > q.groups_per_interface {
            v.err(
                0,
                &format!("{path}.groups"),
                &obj,
                "SecurityGroupsPerInterfaceLimitExceeded",
                format!(
                    "{} groups, the quota is {}",
                    gids.len(),
                    q.groups_per_interface
                ),
            );
        }
        let timeouts = timeouts(&mut v, &r.conntrack, &format!("{path}.conntrack"), &obj);
        ifaces.push(Interface {
            name: r.interface.clone(),
            id,
            vpc: vpc_id,
            ipv4,
            ipv6,
            groups: gids,
            attach: r.attach,
            ingress_hook: r.ingress_hook,
            timeouts,
            related_icmp: r.related_icmp,
            optional: r.optional,
            detached: r.detached,
        });
    }

    let (warnings, errors): (Vec<Issue>, Vec<Issue>) =
        v.issues.into_iter().partition(|i| i.warning);
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        return Err(Issues(all));
    }
    Ok(Desired {
        account_id: account,
        vpcs,
        prefix_lists: pls,
        groups,
        interfaces: ifaces,
        conntrack: raw.conntrack,
        quotas: q,
        warnings,
    })
}

/// An interface's private addresses of one family, each inside the VPC.
fn private_addrs<A: std::str::FromStr + fmt::Display>(
    v: &mut V,
    list: &[String],
    path: &str,
    obj: &str,
    family: &str,
    in_vpc: impl Fn(&A) -> bool,
) -> Vec<A> {
    let mut out = Vec::new();
    for (j, a) in list.iter().enumerate() {
        let at = format!("{path}[{j}]");
        match a.trim().parse::<A>() {
            Ok(ip) if in_vpc(&ip) => out.push(ip),
            Ok(ip) => v.err(
                0,
                &at,
                obj,
                INVALID,
                format!("{ip} is outside the VPC's {family} blocks"),
            ),
            Err(_) => v.err(
                0,
                &at,
                obj,
                INVALID,
                format!("invalid {family} address {a:?}"),
            ),
        }
    }
    out
}

struct RuleCtx<'a> {
    vpc: &'a Vpc,
    vpcs: &'a [Vpc],
    /// (id, name, vpc) of every group.
    groups: &'a [(String, String, String)],
    pls: &'a [PrefixList],
    previous: &'a HashSet<&'a str>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one rule needs all of its context"
)]
fn rule(
    group: &str,
    dir: &str,
    protocol: Protocol,
    from: i32,
    to: i32,
    ports: (u16, u16),
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
        ports,
        peer,
        description,
    }
}

/// AWS's default outbound rules: all traffic to 0.0.0.0/0, and to ::/0 when
/// the VPC has an IPv6 block.
fn default_egress(group: &str, vpc: &Vpc) -> Vec<Rule> {
    let mut out = vec![rule(
        group,
        "egress",
        Protocol::All,
        -1,
        -1,
        (0, u16::MAX),
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
            (0, u16::MAX),
            Peer::Cidr(IpNet::V6(Ipv6Net::default())),
            None,
        ));
    }
    out
}

fn timeouts(v: &mut V, r: &RawTimeouts, path: &str, obj: &str) -> Timeouts {
    let d = Timeouts::default();
    let mut pick = |name: &str, val: Option<i64>, def: u32, min: i64, max: i64| match val {
        None => def,
        Some(x) if (min..=max).contains(&x) => x as u32,
        Some(x) => {
            v.err(
                0,
                &format!("{path}.{name}"),
                obj,
                INVALID,
                format!("{name} timeout {x} s is out of range {min}-{max} s"),
            );
            def
        }
    };
    Timeouts {
        tcp_established: pick(
            "tcp_established",
            r.tcp_established,
            d.tcp_established,
            60,
            432_000,
        ),
        udp_stream: pick("udp_stream", r.udp_stream, d.udp_stream, 60, 180),
        udp: pick("udp", r.udp, d.udp, 30, 60),
    }
}

/// Protocol, ports, peers and descriptions of one direction's rules; each
/// written permission becomes one rule per peer.
#[expect(
    clippy::too_many_arguments,
    reason = "the place of every error needs all of these"
)]
fn rules_of(
    v: &mut V,
    ctx: &RuleCtx,
    group: &str,
    dir: &'static str,
    raw: &[RawRule],
    doc: usize,
    gpath: &str,
    obj: &str,
    quota: u32,
) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let (mut n4, mut n6) = (0u32, 0u32);
    for (i, r) in raw.iter().enumerate() {
        let path = format!("{gpath}.{dir}[{i}]");
        let protocol = match Protocol::parse(&r.ip_protocol) {
            Ok(p) => p,
            Err(e) => {
                v.err(doc, &format!("{path}.ip_protocol"), obj, INVALID, e);
                continue;
            }
        };
        let Some((from, to, ports)) = port_range(v, protocol, r, doc, &path, obj) else {
            continue;
        };
        let peers: Vec<(&str, usize, &RawPeer)> = [
            ("ip_ranges", &r.ip_ranges),
            ("ipv6_ranges", &r.ipv6_ranges),
            ("prefix_list_ids", &r.prefix_list_ids),
            ("user_id_group_pairs", &r.user_id_group_pairs),
        ]
        .into_iter()
        .flat_map(|(k, list)| list.iter().enumerate().map(move |(j, p)| (k, j, p)))
        .collect();
        if peers.is_empty() {
            v.err(doc, &path, obj, INVALID, "a rule needs a peer: ip_ranges, ipv6_ranges, prefix_list_ids or user_id_group_pairs");
        }
        for (kind, j, p) in peers {
            let ppath = format!("{path}.{kind}[{j}]");
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
                            &ppath,
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
                            &ppath,
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
            let new = rule(
                group,
                dir,
                protocol,
                from,
                to,
                ports,
                peer,
                p.description.clone(),
            );
            if out
                .iter()
                .any(|x| x.protocol == new.protocol && x.ports == new.ports && x.peer == new.peer)
            {
                v.err(
                    doc,
                    &ppath,
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
    v: &mut V,
    ctx: &RuleCtx,
    p: &RawPeer,
    doc: usize,
    path: &str,
    obj: &str,
) -> Option<Peer> {
    let other_vpc = p
        .vpc
        .as_ref()
        .filter(|x| **x != ctx.vpc.id && **x != ctx.vpc.name);
    match other_vpc {
        None => match ctx
            .groups
            .iter()
            .find(|(id, name, vpc)| *vpc == ctx.vpc.id && (*id == p.value || *name == p.value))
        {
            Some((id, ..)) => Some(Peer::Group {
                id: id.clone(),
                vpc: ctx.vpc.id.clone(),
                peering: None,
                stale: false,
            }),
            None if ctx.previous.contains(p.value.as_str()) => {
                v.err(doc, path, obj, "DependencyViolation", format!("group {:?} is still referenced here; remove the reference before the group", p.value));
                None
            }
            None => {
                v.err(
                    doc,
                    path,
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
            let found = ctx
                .groups
                .iter()
                .find(|(id, name, gv)| *gv == vpc_id && (*id == p.value || *name == p.value));
            let id = found.map_or(p.value.clone(), |(id, ..)| id.clone());
            let stale = !peered || found.is_none();
            if stale {
                let why = if found.is_none() {
                    "the group is gone"
                } else {
                    "the VPCs are not peered"
                };
                v.push(
                    doc,
                    path,
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
    v: &mut V,
    protocol: Protocol,
    r: &RawRule,
    doc: usize,
    path: &str,
    obj: &str,
) -> Option<(i32, i32, (u16, u16))> {
    match protocol {
        Protocol::Number(6 | 17) => {
            let (Some(from), Some(to)) = (r.from_port, r.to_port) else {
                v.err(
                    doc,
                    path,
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
                    path,
                    obj,
                    INVALID,
                    format!("invalid port range {from}-{to}: ports are 0-65535"),
                );
                return None;
            }
            if from > to {
                v.err(
                    doc,
                    path,
                    obj,
                    INVALID,
                    format!("invalid port range {from}-{to}: from_port is greater than to_port"),
                );
                return None;
            }
            Some((from as i32, to as i32, (from as u16, to as u16)))
        }
        Protocol::Number(1 | 58) => {
            let t = r.from_port.unwrap_or(-1);
            let c = r.to_port.unwrap_or(-1);
            let ok = |x: i64| (-1..=255).contains(&x);
            if !ok(t) || !ok(c) {
                v.err(
                    doc,
                    path,
                    obj,
                    INVALID,
                    format!("invalid ICMP type {t} / code {c}: each is -1 (all) or 0-255"),
                );
                return None;
            }
            let ports = match (t, c) {
                (-1, -1) => (0, u16::MAX),
                (-1, _) => {
                    v.err(doc, path, obj, INVALID, format!("invalid ICMP code {c} with type -1: the code must be -1 when the type is -1"));
                    return None;
                }
                (t, -1) => ((t as u16) << 8, (t as u16) << 8 | 0xff),
                (t, c) => ((t as u16) << 8 | c as u16, (t as u16) << 8 | c as u16),
            };
            Some((t as i32, c as i32, ports))
        }
        // All ports, whatever range is given (docs/contract.md §2).
        _ => Some((-1, -1, (0, u16::MAX))),
    }
}

#[cfg(test)]
mod tests;
