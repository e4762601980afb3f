//! Security groups: create, delete, describe; stale groups and references.

use serde_json::{Value, json};

use super::{find_group, member, new_id, required, state, string, tag_specs};
use crate::{
    api::{
        Snapshot, Txn, codec,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        views::{self, Scope, is_default_vpc},
    },
    model::{Desired, Group, Peer, Rule, input::RawGroup},
};

pub fn create(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let name = required(p, "GroupName")?;
    let description = required(p, "Description")?;
    let vpc = match string(p, "VpcId") {
        Some(v) => {
            if !txn.before.vpcs.iter().any(|x| x.id == v) {
                return Err(ApiError::client(
                    "InvalidVpcID.NotFound",
                    format!("The vpc ID '{v}' does not exist"),
                ));
            }
            v
        }
        None => txn
            .before
            .vpcs
            .iter()
            .find(|v| is_default_vpc(v))
            .map(|v| v.id.clone())
            .ok_or_else(|| ApiError::client("VPCIdNotSpecified", "No default VPC for this user"))?,
    };
    let tags = tag_specs(p, "security-group")?;
    let id = new_id("sg");
    txn.raw.security_groups.push(RawGroup {
        id: Some(id.clone()),
        name,
        description: Some(description),
        vpc: Some(vpc),
        owner_id: Some(txn.scope.account.clone()),
        tags: tags.clone(),
        // Absent: AWS's default egress (all traffic out).
        egress: None,
        ..Default::default()
    });
    let after = txn.validate()?;
    txn.resources.push(id.clone());
    Ok((
        json!({"GroupId": id, "SecurityGroupArn": txn.scope.arn("security-group", &id), "Tags": views::tags(&tags)}),
        after,
    ))
}

pub fn delete(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let g = find_group(txn.before, p)?;
    let id = g.id.clone();
    if g.is_default {
        return Err(ApiError::client(
            "CannotDelete",
            format!(
                "the default security group {id} of {} cannot be deleted",
                g.vpc
            ),
        ));
    }
    if let Some(i) = txn
        .before
        .interfaces
        .iter()
        .find(|i| i.groups.contains(&id))
    {
        return Err(ApiError::client(
            "DependencyViolation",
            format!(
                "resource {id} has a dependent object: network interface {} ({})",
                i.id, i.name
            ),
        ));
    }
    if let Some(other) = txn.before.groups.iter().find(|o| {
        o.id != id
            && o.vpc == g.vpc
            && o.ingress
                .iter()
                .chain(o.egress.iter())
                .any(|r| matches!(&r.peer, Peer::Group { id: x, .. } if *x == id))
    }) {
        return Err(ApiError::client(
            "DependencyViolation",
            format!(
                "resource {id} has a dependent object: it is referenced by {} ({})",
                other.id, other.name
            ),
        ));
    }
    txn.raw
        .security_groups
        .retain(|g| g.id.as_deref() != Some(id.as_str()));
    let after = txn.validate()?;
    txn.resources.push(id.clone());
    Ok((json!({"Return": true, "GroupId": id}), after))
}

/// Filter names of `describe-security-groups`.
struct G<'a>(&'a Group, &'a Desired);

fn rule_values(rules: &[Rule], d: &Desired, name: &str) -> Vec<String> {
    let each = |f: &dyn Fn(&Rule) -> Option<String>| rules.iter().filter_map(f).collect();
    match name {
        "protocol" => each(&|r| Some(r.protocol.aws())),
        "from-port" => each(&|r| Some(r.from_port.to_string())),
        "to-port" => each(&|r| Some(r.to_port.to_string())),
        "cidr" => each(&|r| match &r.peer {
            Peer::Cidr(n) if n.addr().is_ipv4() => Some(n.to_string()),
            _ => None,
        }),
        "ipv6-cidr" => each(&|r| match &r.peer {
            Peer::Cidr(n) if n.addr().is_ipv6() => Some(n.to_string()),
            _ => None,
        }),
        "prefix-list-id" => each(&|r| match &r.peer {
            Peer::PrefixList(id) => Some(id.clone()),
            _ => None,
        }),
        "group-id" => each(&|r| match &r.peer {
            Peer::Group { id, .. } => Some(id.clone()),
            _ => None,
        }),
        "group-name" => each(&|r| match &r.peer {
            Peer::Group { id, .. } => d.group(id).map(|g| g.name.clone()),
            _ => None,
        }),
        "user-id" => each(&|r| matches!(r.peer, Peer::Group { .. }).then(|| d.account_id.clone())),
        _ => vec![],
    }
}

impl Filterable for G<'_> {
    const NAMES: &'static [&'static str] = &[
        "group-id",
        "group-name",
        "description",
        "vpc-id",
        "owner-id",
        "ip-permission.protocol",
        "ip-permission.from-port",
        "ip-permission.to-port",
        "ip-permission.cidr",
        "ip-permission.ipv6-cidr",
        "ip-permission.prefix-list-id",
        "ip-permission.group-id",
        "ip-permission.group-name",
        "ip-permission.user-id",
        "egress.ip-permission.protocol",
        "egress.ip-permission.from-port",
        "egress.ip-permission.to-port",
        "egress.ip-permission.cidr",
        "egress.ip-permission.ipv6-cidr",
        "egress.ip-permission.prefix-list-id",
        "egress.ip-permission.group-id",
        "egress.ip-permission.group-name",
        "egress.ip-permission.user-id",
    ];
    fn values(&self, name: &str) -> Vec<String> {
        let g = self.0;
        let one = |s: &str| vec![s.to_string()];
        match name {
            "group-id" => one(&g.id),
            "group-name" => one(&g.name),
            "description" => one(&g.description),
            "vpc-id" => one(&g.vpc),
            "owner-id" => one(&self.1.account_id),
            _ => {
                if let Some(rest) = name.strip_prefix("egress.ip-permission.") {
                    rule_values(&g.egress, self.1, rest)
                } else if let Some(rest) = name.strip_prefix("ip-permission.") {
                    rule_values(&g.ingress, self.1, rest)
                } else {
                    vec![]
                }
            }
        }
    }
    fn tags(&self) -> &std::collections::BTreeMap<String, String> {
        &self.0.tags
    }
}

/// `DescribeSecurityGroups`: each group's item is made once per state.
pub fn describe(
    s: &Snapshot,
    p: &Value,
    scope: &Scope,
) -> ApiResult<(&'static str, Vec<std::sync::Arc<str>>, Value)> {
    let d = state(s);
    let ids: Vec<String> = member(p, "GroupIds")?;
    let names: Vec<String> = member(p, "GroupNames")?;
    let mut picked: Vec<&Group> = Vec::new();
    for id in &ids {
        picked.push(d.group(id).ok_or_else(|| super::group_not_found(id))?);
    }
    for n in &names {
        let g = d
            .groups
            .iter()
            .find(|g| g.name == *n && d.vpcs.iter().any(|v| v.id == g.vpc && is_default_vpc(v)))
            .ok_or_else(|| {
                ApiError::client(
                    "InvalidGroup.NotFound",
                    format!("The security group '{n}' does not exist in default VPC"),
                )
            })?;
        picked.push(g);
    }
    if ids.is_empty() && names.is_empty() {
        picked = d.groups.iter().collect();
    }
    let wrapped: Vec<G> = picked.into_iter().map(|g| G(g, d)).collect();
    let kept = filters::apply(wrapped.iter().collect(), &filters::of(p)?)?;
    let (page, next) = filters::page(kept, p, (5, 1000))?;
    let mut cache = s.group_xml.lock().unwrap_or_else(|e| e.into_inner());
    let items = page
        .iter()
        .map(|g| {
            let key = (g.0.id.clone(), scope.region.clone());
            if let Some(x) = cache.get(&key) {
                return Ok(x.clone());
            }
            let x: std::sync::Arc<str> =
                codec::fragment("item", "SecurityGroup", &views::group(g.0, scope))?.into();
            // Bounded: a signed client choosing many regions cannot grow it.
            if cache.len() < 4 * d.groups.len() {
                cache.insert(key, x.clone());
            }
            Ok(x)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((
        "SecurityGroups",
        items,
        views::object([("NextToken", next.into())]),
    ))
}

/// Groups of a VPC with rules that reference a group that is gone or a
/// peering that is not there.
pub fn stale(s: &Snapshot, p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let vpc = required(p, "VpcId")?;
    if !d.vpcs.iter().any(|v| v.id == vpc) {
        return Err(ApiError::client(
            "InvalidVpcID.NotFound",
            format!("The vpc ID '{vpc}' does not exist"),
        ));
    }
    let stale_perms = |rules: &[Rule]| -> Vec<Value> {
        rules
            .iter()
            .filter_map(|r| match &r.peer {
                Peer::Group { id, vpc, peering, stale: true } => Some(json!({
                    "IpProtocol": r.protocol.aws(), "FromPort": r.from_port, "ToPort": r.to_port,
                    "UserIdGroupPairs": [{"GroupId": id, "VpcId": vpc, "VpcPeeringConnectionId": peering, "UserId": d.account_id, "PeeringStatus": "deleted"}],
                })),
                _ => None,
            })
            .collect()
    };
    let out: Vec<Value> = d
        .groups
        .iter()
        .filter(|g| g.vpc == vpc)
        .filter_map(|g| {
            let (i, e) = (stale_perms(&g.ingress), stale_perms(&g.egress));
            (!i.is_empty() || !e.is_empty()).then(|| json!({
                "GroupId": g.id, "GroupName": g.name, "Description": g.description, "VpcId": g.vpc,
                "StaleIpPermissions": i, "StaleIpPermissionsEgress": e,
            }))
        })
        .collect();
    Ok(json!({"StaleSecurityGroupSet": out}))
}

/// The VPCs (other than the group's own) whose groups reference each group.
pub fn references(s: &Snapshot, p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let ids: Vec<String> = member(p, "GroupId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("GroupId.1"));
    }
    let mut out = Vec::new();
    for id in &ids {
        let g = d.group(id).ok_or_else(|| super::group_not_found(id))?;
        for other in d.groups.iter().filter(|o| o.vpc != g.vpc) {
            if let Some(Peer::Group { peering, .. }) = other
                .ingress
                .iter()
                .chain(other.egress.iter())
                .map(|r| &r.peer)
                .find(|peer| matches!(peer, Peer::Group { id: x, .. } if x == id))
            {
                out.push(json!({"GroupId": id, "ReferencingVpcId": other.vpc, "VpcPeeringConnectionId": peering}));
            }
        }
    }
    Ok(json!({"SecurityGroupReferenceSet": out}))
}
