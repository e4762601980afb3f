//! The effective state in the shapes AWS's API returns
//! (`describe-security-groups`, `describe-security-group-rules`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{Desired, Group, Peer, Rule};

fn port(r: &Rule) -> (Option<i32>, Option<i32>) {
    match r.protocol {
        crate::model::Protocol::All => (None, None),
        _ => (Some(r.from_port), Some(r.to_port)),
    }
}

/// `IpPermissions`: rules grouped by protocol and ports, peers listed by kind.
fn permissions(d: &Desired, g: &Group, rules: &[Rule]) -> Value {
    let mut by_key: BTreeMap<(String, i32, i32), Vec<&Rule>> = BTreeMap::new();
    for r in rules {
        by_key
            .entry((r.protocol.aws(), r.from_port, r.to_port))
            .or_default()
            .push(r);
    }
    let perms: Vec<Value> = by_key
        .into_values()
        .map(|rs| {
            let (from, to) = port(rs[0]);
            let mut v4 = vec![];
            let mut v6 = vec![];
            let mut pls = vec![];
            let mut pairs = vec![];
            for r in &rs {
                let desc = |k: &str, val: String| {
                    let mut m = serde_json::Map::new();
                    m.insert(k.into(), val.into());
                    if let Some(dsc) = &r.description {
                        m.insert("Description".into(), dsc.clone().into());
                    }
                    Value::Object(m)
                };
                match &r.peer {
                    Peer::Cidr(n) if n.addr().is_ipv4() => v4.push(desc("CidrIp", n.to_string())),
                    Peer::Cidr(n) => v6.push(desc("CidrIpv6", n.to_string())),
                    Peer::PrefixList(id) => pls.push(desc("PrefixListId", id.clone())),
                    Peer::Group {
                        id,
                        vpc,
                        peering,
                        stale,
                    } => {
                        let mut p = group_pair(d, g, id, vpc, peering, *stale);
                        if let Some(dsc) = &r.description {
                            p["Description"] = dsc.clone().into();
                        }
                        pairs.push(p);
                    }
                }
            }
            let mut p = json!({
                "IpProtocol": rs[0].protocol.aws(),
                "IpRanges": v4,
                "Ipv6Ranges": v6,
                "PrefixListIds": pls,
                "UserIdGroupPairs": pairs,
            });
            if let (Some(f), Some(t)) = (from, to) {
                p["FromPort"] = f.into();
                p["ToPort"] = t.into();
            }
            p
        })
        .collect();
    Value::Array(perms)
}

/// A referenced group as AWS shows it (`UserIdGroupPairs` entries and
/// `ReferencedGroupInfo`): with its VPC and peering when it lies in another
/// VPC, `PeeringStatus: deleted` when the reference is stale.
fn group_pair(
    d: &Desired,
    g: &Group,
    id: &str,
    vpc: &str,
    peering: &Option<String>,
    stale: bool,
) -> Value {
    let owner = d.group(id).map_or(&g.owner, |x| &x.owner);
    let mut p = json!({"GroupId": id, "UserId": owner});
    if vpc != g.vpc {
        p["VpcId"] = vpc.into();
        if let Some(pc) = peering {
            p["VpcPeeringConnectionId"] = pc.clone().into();
        }
        p["PeeringStatus"] = if stale { "deleted" } else { "active" }.into();
    }
    p
}

pub fn security_groups(d: &Desired) -> Value {
    let groups: Vec<Value> = d
        .groups
        .iter()
        .map(|g| {
            json!({
                "GroupId": g.id,
                "GroupName": g.name,
                "Description": g.description,
                "VpcId": g.vpc,
                "OwnerId": g.owner,
                "Tags": g.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
                "IpPermissions": permissions(d, g, &g.ingress),
                "IpPermissionsEgress": permissions(d, g, &g.egress),
            })
        })
        .collect();
    json!({ "SecurityGroups": groups })
}

pub fn security_group_rules(d: &Desired) -> Value {
    let mut out = vec![];
    for g in &d.groups {
        for (egress, rules) in [(false, &g.ingress), (true, &g.egress)] {
            for r in rules.iter() {
                let (from, to) = port(r);
                let mut v = json!({
                    "SecurityGroupRuleId": r.id,
                    "GroupId": g.id,
                    "GroupOwnerId": g.owner,
                    "IsEgress": egress,
                    "IpProtocol": r.protocol.aws(),
                    "FromPort": from.unwrap_or(-1),
                    "ToPort": to.unwrap_or(-1),
                });
                match &r.peer {
                    Peer::Cidr(n) if n.addr().is_ipv4() => v["CidrIpv4"] = n.to_string().into(),
                    Peer::Cidr(n) => v["CidrIpv6"] = n.to_string().into(),
                    Peer::PrefixList(id) => v["PrefixListId"] = id.clone().into(),
                    Peer::Group {
                        id,
                        vpc,
                        peering,
                        stale,
                    } => v["ReferencedGroupInfo"] = group_pair(d, g, id, vpc, peering, *stale),
                }
                if let Some(dsc) = &r.description {
                    v["Description"] = dsc.clone().into();
                }
                out.push(v);
            }
        }
    }
    json!({ "SecurityGroupRules": out })
}

/// A plain table of the per-rule view.
pub fn rules_table(d: &Desired) -> String {
    let mut s = format!(
        "{:<22} {:<22} {:<16} {:<8} {:<7} {:<11} {}\n",
        "rule", "group", "name", "dir", "proto", "ports", "peer"
    );
    for g in &d.groups {
        for (dir, rules) in [("inbound", &g.ingress), ("outbound", &g.egress)] {
            for r in rules.iter() {
                let ports = match port(r) {
                    (Some(f), Some(t)) if f == t => f.to_string(),
                    (Some(f), Some(t)) => format!("{f}-{t}"),
                    _ => "all".into(),
                };
                let peer = match &r.peer {
                    Peer::Group {
                        id, stale: true, ..
                    } => format!("{id} (stale)"),
                    p => crate::model::validate::peer_text(p),
                };
                s.push_str(&format!(
                    "{:<22} {:<22} {:<16} {:<8} {:<7} {:<11} {}\n",
                    r.id,
                    g.id,
                    g.name,
                    dir,
                    r.protocol.aws(),
                    ports,
                    peer
                ));
            }
        }
    }
    s
}
