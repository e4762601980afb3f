//! The model as EC2 describes it: each object as the response shapes'
//! members (`GroupId`, `IpPermissions`, ...), with the account and region
//! of the request in owner ids and ARNs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{
    Desired, Group, Interface, Peer, PrefixList, Protocol, Rule, Vpc, validate::make_id,
};

/// Who is asking, where: what owner ids and ARNs carry.
#[derive(Debug, Clone)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

impl Scope {
    pub fn arn(&self, kind: &str, id: &str) -> String {
        format!("arn:aws:ec2:{}:{}:{kind}/{id}", self.region, self.account)
    }
}

/// An object of `pairs`, the values moved in (`json!` would copy each
/// value it is given through `Serialize`: a large answer, twice).
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

pub fn tags(t: &BTreeMap<String, String>) -> Value {
    Value::Array(
        t.iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect(),
    )
}

/// Ports as `describe-security-groups` shows them: none for all protocols
/// (and protocols without ports), type and code for ICMP.
fn has_ports(p: Protocol) -> bool {
    matches!(p, Protocol::Number(1 | 6 | 17 | 58))
}

pub fn group(g: &Group, s: &Scope) -> Value {
    object([
        ("GroupId", g.id.clone().into()),
        ("GroupName", g.name.clone().into()),
        ("Description", g.description.clone().into()),
        ("VpcId", g.vpc.clone().into()),
        ("OwnerId", s.account.clone().into()),
        ("SecurityGroupArn", s.arn("security-group", &g.id).into()),
        ("Tags", tags(&g.tags)),
        ("IpPermissions", permissions(&g.ingress, s)),
        ("IpPermissionsEgress", permissions(&g.egress, s)),
    ])
}

/// Rules folded into EC2's permissions: one per protocol and port range,
/// its peers listed by kind, in the order the rules came.
pub fn permissions(rules: &[Rule], s: &Scope) -> Value {
    let mut out: Vec<(Protocol, i32, i32, Value)> = Vec::new();
    for r in rules {
        let i = match out
            .iter()
            .position(|(p, f, t, _)| (*p, *f, *t) == (r.protocol, r.from_port, r.to_port))
        {
            Some(i) => i,
            None => {
                let mut perm = object([
                    ("IpProtocol", r.protocol.aws().into()),
                    ("IpRanges", Value::Array(vec![])),
                    ("Ipv6Ranges", Value::Array(vec![])),
                    ("PrefixListIds", Value::Array(vec![])),
                    ("UserIdGroupPairs", Value::Array(vec![])),
                ]);
                if has_ports(r.protocol) {
                    perm["FromPort"] = r.from_port.into();
                    perm["ToPort"] = r.to_port.into();
                }
                out.push((r.protocol, r.from_port, r.to_port, perm));
                out.len() - 1
            }
        };
        let perm = &mut out[i].3;
        let (list, mut peer) = match &r.peer {
            Peer::Cidr(n) if n.addr().is_ipv4() => ("IpRanges", json!({"CidrIp": n.to_string()})),
            Peer::Cidr(n) => ("Ipv6Ranges", json!({"CidrIpv6": n.to_string()})),
            Peer::PrefixList(id) => ("PrefixListIds", json!({"PrefixListId": id})),
            Peer::Group {
                id,
                vpc,
                peering,
                stale,
            } => {
                let mut p = json!({"GroupId": id, "UserId": s.account});
                if peering.is_some() || *stale {
                    p["VpcId"] = vpc.clone().into();
                    p["VpcPeeringConnectionId"] = peering.clone().into();
                    p["PeeringStatus"] = if *stale { "deleted" } else { "active" }.into();
                }
                ("UserIdGroupPairs", p)
            }
        };
        if let Some(d) = &r.description {
            peer["Description"] = d.clone().into();
        }
        perm[list].as_array_mut().expect("a list").push(peer);
    }
    Value::Array(out.into_iter().map(|(.., v)| v).collect())
}

/// One rule as `describe-security-group-rules` shows it.
pub fn rule(r: &Rule, g: &Group, egress: bool, s: &Scope) -> Value {
    let mut v = object([
        ("SecurityGroupRuleId", r.id.clone().into()),
        ("GroupId", g.id.clone().into()),
        ("GroupOwnerId", s.account.clone().into()),
        ("IsEgress", egress.into()),
        ("IpProtocol", r.protocol.aws().into()),
        ("FromPort", r.from_port.into()),
        ("ToPort", r.to_port.into()),
        ("Tags", tags(&r.tags)),
        (
            "SecurityGroupRuleArn",
            s.arn("security-group-rule", &r.id).into(),
        ),
    ]);
    match &r.peer {
        Peer::Cidr(n) if n.addr().is_ipv4() => v["CidrIpv4"] = n.to_string().into(),
        Peer::Cidr(n) => v["CidrIpv6"] = n.to_string().into(),
        Peer::PrefixList(id) => v["PrefixListId"] = id.clone().into(),
        Peer::Group {
            id, vpc, peering, ..
        } => {
            let mut info = json!({"GroupId": id, "UserId": s.account});
            if peering.is_some() || *vpc != g.vpc {
                info["VpcId"] = vpc.clone().into();
                info["VpcPeeringConnectionId"] = peering.clone().into();
            }
            v["ReferencedGroupInfo"] = info;
        }
    }
    if let Some(d) = &r.description {
        v["Description"] = d.clone().into();
    }
    v
}

/// A rule as revoke answers it.
pub fn revoked(r: &Rule, g: &Group, egress: bool) -> Value {
    let mut v = json!({
        "SecurityGroupRuleId": r.id, "GroupId": g.id, "IsEgress": egress,
        "IpProtocol": r.protocol.aws(), "FromPort": r.from_port, "ToPort": r.to_port,
    });
    match &r.peer {
        Peer::Cidr(n) if n.addr().is_ipv4() => v["CidrIpv4"] = n.to_string().into(),
        Peer::Cidr(n) => v["CidrIpv6"] = n.to_string().into(),
        Peer::PrefixList(id) => v["PrefixListId"] = id.clone().into(),
        Peer::Group { id, .. } => v["ReferencedGroupId"] = id.clone().into(),
    }
    if let Some(d) = &r.description {
        v["Description"] = d.clone().into();
    }
    v
}

/// The default VPC: the one named `default` (the implicit VPC of a file
/// that declares none).
pub fn is_default_vpc(v: &Vpc) -> bool {
    v.name == "default"
}

pub fn vpc(v: &Vpc, s: &Scope) -> Value {
    let assoc = |kind: &str, i: usize| make_id(kind, &[&v.id, &i.to_string()]);
    json!({
        "VpcId": v.id,
        "OwnerId": s.account,
        "State": "available",
        "CidrBlock": v.ipv4.first().map(|n| n.to_string()),
        "CidrBlockAssociationSet": v.ipv4.iter().enumerate().map(|(i, n)| json!({
            "AssociationId": assoc("vpc-cidr-assoc", i), "CidrBlock": n.to_string(),
            "CidrBlockState": {"State": "associated"},
        })).collect::<Vec<_>>(),
        "Ipv6CidrBlockAssociationSet": v.ipv6.iter().enumerate().map(|(i, n)| json!({
            "AssociationId": assoc("vpc-cidr-assoc", 1000 + i), "Ipv6CidrBlock": n.to_string(),
            "Ipv6CidrBlockState": {"State": "associated"}, "NetworkBorderGroup": s.region,
            "Ipv6Pool": "Amazon",
        })).collect::<Vec<_>>(),
        "DhcpOptionsId": "default",
        "InstanceTenancy": "default",
        "IsDefault": is_default_vpc(v),
        "Tags": tags(&v.tags),
    })
}

/// A VPC attribute as set, or EC2's default for it.
pub fn vpc_attribute(v: &Vpc, name: &str) -> bool {
    v.attributes.get(name).copied().unwrap_or(match name {
        "enableDnsSupport" => true,
        "enableDnsHostnames" => is_default_vpc(v),
        _ => false,
    })
}

/// The main route table every VPC has: its local routes, nothing else
/// (sg routes nothing; clients such as Terraform read it for every VPC).
pub fn route_table(v: &Vpc, s: &Scope) -> Value {
    let id = make_id("rtb", &[&v.id]);
    let mut routes: Vec<Value> = v
        .ipv4
        .iter()
        .map(|n| json!({"DestinationCidrBlock": n.to_string(), "GatewayId": "local", "State": "active", "Origin": "CreateRouteTable"}))
        .collect();
    routes.extend(v.ipv6.iter().map(|n| json!({"DestinationIpv6CidrBlock": n.to_string(), "GatewayId": "local", "State": "active", "Origin": "CreateRouteTable"})));
    json!({
        "RouteTableId": id,
        "VpcId": v.id,
        "OwnerId": s.account,
        "Routes": routes,
        "Associations": [{
            "Main": true, "RouteTableId": id,
            "RouteTableAssociationId": make_id("rtbassoc", &[&v.id]),
            "AssociationState": {"State": "associated"},
        }],
        "PropagatingVgws": [],
        "Tags": [],
    })
}

/// The default network ACL every VPC has: allow all, both ways.
pub fn network_acl(v: &Vpc, s: &Scope) -> Value {
    let entry = |egress: bool, n: i64, action: &str| {
        json!({
            "RuleNumber": n, "Protocol": "-1", "RuleAction": action, "Egress": egress, "CidrBlock": "0.0.0.0/0",
        })
    };
    json!({
        "NetworkAclId": make_id("acl", &[&v.id]),
        "VpcId": v.id,
        "OwnerId": s.account,
        "IsDefault": true,
        "Entries": [entry(false, 100, "allow"), entry(false, 32767, "deny"), entry(true, 100, "allow"), entry(true, 32767, "deny")],
        "Associations": [],
        "Tags": [],
    })
}

pub fn prefix_list(p: &PrefixList, s: &Scope) -> Value {
    json!({
        "PrefixListId": p.id,
        "PrefixListName": p.name,
        "AddressFamily": if p.ipv6 { "IPv6" } else { "IPv4" },
        "MaxEntries": p.max_entries,
        "Version": p.version,
        "State": if p.version > 1 { "modify-complete" } else { "create-complete" },
        "PrefixListArn": s.arn("prefix-list", &p.id),
        "OwnerId": s.account,
        "Tags": tags(&p.tags),
    })
}

/// The tag that binds an interface object to its Linux interface (sg's own;
/// docs/api.md, "Interfaces").
pub const IFACE_TAG: &str = "sg:interface";

/// The host that enforces an interface, and its last heartbeat, as tags.
pub const HOST_TAG: &str = "sg:host";
pub const HEARTBEAT_TAG: &str = "sg:heartbeat";

pub fn network_interface(
    i: &Interface,
    d: &Desired,
    (status, beat): (&str, Option<String>),
    s: &Scope,
) -> Value {
    let mut t = i.tags.clone();
    t.insert(IFACE_TAG.into(), i.name.clone());
    if let Some(h) = &i.host {
        t.insert(HOST_TAG.into(), h.clone());
    }
    if let Some(b) = beat {
        t.insert(HEARTBEAT_TAG.into(), b);
    }
    json!({
        "NetworkInterfaceId": i.id,
        "VpcId": i.vpc,
        "OwnerId": s.account,
        "Description": format!("Linux interface {}", i.name),
        "InterfaceType": "interface",
        "Status": status,
        "RequesterManaged": false,
        "SourceDestCheck": true,
        "PrivateIpAddress": i.ipv4.first().map(|a| a.to_string()),
        "PrivateIpAddresses": i.ipv4.iter().enumerate().map(|(n, a)| json!({"PrivateIpAddress": a.to_string(), "Primary": n == 0})).collect::<Vec<_>>(),
        "Ipv6Addresses": i.ipv6.iter().map(|a| json!({"Ipv6Address": a.to_string()})).collect::<Vec<_>>(),
        "Groups": i.groups.iter().map(|g| json!({"GroupId": g, "GroupName": d.group(g).map(|g| g.name.clone())})).collect::<Vec<_>>(),
        "ConnectionTrackingConfiguration": {
            "TcpEstablishedTimeout": i.timeouts.tcp_established,
            "UdpStreamTimeout": i.timeouts.udp_stream,
            "UdpTimeout": i.timeouts.udp,
        },
        "TagSet": tags(&t),
    })
}
