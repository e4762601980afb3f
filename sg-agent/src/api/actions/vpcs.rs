//! VPCs, their attributes, and the route table and network ACL every VPC
//! implies (read-only: sg routes nothing and filters only by groups).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{member, new_id, required, state, string, tag_specs};
use crate::{
    api::{
        Snapshot, Txn,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        views::{self, Scope, is_default_vpc},
    },
    model::{Desired, Vpc, input::RawVpc, validate::make_id},
};

fn not_found(id: &str) -> ApiError {
    ApiError::client(
        "InvalidVpcID.NotFound",
        format!("The vpc ID '{id}' does not exist"),
    )
}

fn find<'d>(d: &'d Desired, id: &str) -> ApiResult<&'d Vpc> {
    d.vpcs
        .iter()
        .find(|v| v.id == id)
        .ok_or_else(|| not_found(id))
}

pub fn create(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let cidr = required(p, "CidrBlock")?;
    let net: ipnet::Ipv4Net = cidr.parse().map_err(|_| {
        ApiError::invalid(format!(
            "Value ({cidr}) for parameter cidrBlock is invalid. This is not a valid CIDR block."
        ))
    })?;
    if !(16..=28).contains(&net.prefix_len()) {
        return Err(ApiError::client(
            "InvalidVpc.Range",
            format!("The CIDR '{cidr}' is invalid: a VPC's block is /16 to /28"),
        ));
    }
    let mut ipv6 = vec![];
    if let Some(c) = string(p, "Ipv6CidrBlock") {
        ipv6.push(c);
    }
    let id = new_id("vpc");
    txn.raw.vpcs.push(RawVpc {
        id: Some(id.clone()),
        name: Some(id.clone()),
        cidr_blocks: vec![cidr],
        ipv6_cidr_blocks: ipv6,
        peerings: vec![],
        tags: tag_specs(p, "vpc")?,
        attributes: BTreeMap::new(),
    });
    let after = txn.validate()?;
    txn.resources.push(id.clone());
    let v = views::vpc(find(&after, &id)?, &txn.scope);
    Ok((json!({"Vpc": v}), after))
}

pub fn delete(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let id = required(p, "VpcId")?;
    find(txn.before, &id)?;
    let dependent = txn
        .before
        .groups
        .iter()
        .find(|g| g.vpc == id && !g.is_default)
        .map(|g| format!("security group {}", g.id))
        .or_else(|| {
            txn.before
                .interfaces
                .iter()
                .find(|i| i.vpc == id)
                .map(|i| format!("network interface {}", i.id))
        });
    if let Some(what) = dependent {
        return Err(ApiError::client(
            "DependencyViolation",
            format!("The vpc '{id}' has dependencies and cannot be deleted: {what}"),
        ));
    }
    if txn.raw.vpcs.len() == 1 {
        return Err(ApiError::client(
            "DependencyViolation",
            format!("{id} is the only VPC: sg keeps one"),
        ));
    }
    txn.raw
        .vpcs
        .retain(|v| v.id.as_deref() != Some(id.as_str()));
    txn.raw
        .security_groups
        .retain(|g| g.vpc.as_deref() != Some(id.as_str()));
    let after = txn.validate()?;
    txn.resources.push(id);
    Ok((json!({}), after))
}

struct V<'a>(&'a Vpc, String);

impl Filterable for V<'_> {
    const NAMES: &'static [&'static str] = &[
        "vpc-id",
        "cidr",
        "cidr-block-association.cidr-block",
        "ipv6-cidr-block-association.ipv6-cidr-block",
        "is-default",
        "isDefault",
        "owner-id",
        "state",
        "dhcp-options-id",
    ];
    fn values(&self, name: &str) -> Vec<String> {
        let v = self.0;
        match name {
            "vpc-id" => vec![v.id.clone()],
            "cidr" => v.ipv4.first().map(|n| n.to_string()).into_iter().collect(),
            "cidr-block-association.cidr-block" => v.ipv4.iter().map(|n| n.to_string()).collect(),
            "ipv6-cidr-block-association.ipv6-cidr-block" => {
                v.ipv6.iter().map(|n| n.to_string()).collect()
            }
            "is-default" | "isDefault" => vec![is_default_vpc(v).to_string()],
            "owner-id" => vec![self.1.clone()],
            "state" => vec!["available".into()],
            "dhcp-options-id" => vec!["default".into()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.0.tags
    }
}

/// The VPCs a read names (`VpcIds`, or the `vpc-id` filter), filtered.
fn picked<'d>(d: &'d Desired, p: &Value, ids_member: &str) -> ApiResult<Vec<&'d Vpc>> {
    let ids: Vec<String> = member(p, ids_member)?;
    for id in &ids {
        find(d, id)?;
    }
    let all: Vec<V> = d
        .vpcs
        .iter()
        .filter(|v| ids.is_empty() || ids.contains(&v.id))
        .map(|v| V(v, d.account_id.clone()))
        .collect();
    Ok(filters::apply(all.iter().collect(), &filters::of(p)?)?
        .into_iter()
        .map(|v| v.0)
        .collect())
}

pub fn describe(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let vpcs = picked(state(s), p, "VpcIds")?;
    let (page, next) = filters::page(vpcs, p, (5, 1000))?;
    Ok(
        json!({"Vpcs": page.iter().map(|v| views::vpc(v, scope)).collect::<Vec<_>>(), "NextToken": next}),
    )
}

const ATTRIBUTES: [(&str, &str); 3] = [
    ("enableDnsSupport", "EnableDnsSupport"),
    ("enableDnsHostnames", "EnableDnsHostnames"),
    (
        "enableNetworkAddressUsageMetrics",
        "EnableNetworkAddressUsageMetrics",
    ),
];

pub fn attribute(s: &Snapshot, p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let v = find(state(s), &required(p, "VpcId")?)?;
    let name = required(p, "Attribute")?;
    let Some((_, member)) = ATTRIBUTES.iter().find(|(a, _)| *a == name) else {
        return Err(ApiError::invalid(format!(
            "Value ({name}) for parameter attribute is invalid"
        )));
    };
    Ok(json!({"VpcId": v.id, *member: {"Value": views::vpc_attribute(v, &name)}}))
}

pub fn modify_attribute(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let id = required(p, "VpcId")?;
    let given: Vec<(&str, bool)> = ATTRIBUTES
        .iter()
        .filter_map(|(a, m)| p.get(*m).map(|v| (*a, v)))
        .map(|(a, v)| {
            v.get("Value")
                .and_then(Value::as_bool)
                .map(|b| (a, b))
                .ok_or_else(|| ApiError::missing("Value"))
        })
        .collect::<ApiResult<_>>()?;
    if given.len() != 1 {
        return Err(ApiError::invalid(
            "Exactly one attribute is modified per call",
        ));
    }
    let raw = txn
        .raw
        .vpcs
        .iter_mut()
        .find(|v| v.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| not_found(&id))?;
    for (a, b) in given {
        raw.attributes.insert(a.into(), b);
    }
    txn.resources.push(id);
    Ok((json!({}), txn.validate()?))
}

struct Implied(Value, Vec<(&'static str, String)>);

impl Filterable for Implied {
    const NAMES: &'static [&'static str] = &[
        "vpc-id",
        "route-table-id",
        "association.main",
        "network-acl-id",
        "default",
        "owner-id",
    ];
    fn values(&self, name: &str) -> Vec<String> {
        self.1
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn tags(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        &NONE
    }
}

fn implied(
    s: &Snapshot,
    p: &Value,
    ids_member: &str,
    make: impl Fn(&Vpc) -> Implied,
) -> ApiResult<Vec<Value>> {
    let ids: Vec<String> = member(p, ids_member)?;
    let all: Vec<Implied> = state(s).vpcs.iter().map(make).collect();
    let kept = filters::apply(all.iter().collect(), &filters::of(p)?)?;
    Ok(kept
        .into_iter()
        .filter(|x| {
            ids.is_empty()
                || x.1
                    .iter()
                    .any(|(k, v)| k.ends_with("-id") && *k != "vpc-id" && ids.contains(v))
        })
        .map(|x| x.0.clone())
        .collect())
}

pub fn route_tables(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let out = implied(s, p, "RouteTableIds", |v| {
        Implied(
            views::route_table(v, scope),
            vec![
                ("vpc-id", v.id.clone()),
                ("route-table-id", make_id("rtb", &[&v.id])),
                ("association.main", "true".into()),
                ("owner-id", scope.account.clone()),
            ],
        )
    })?;
    Ok(json!({"RouteTables": out}))
}

pub fn network_acls(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let out = implied(s, p, "NetworkAclIds", |v| {
        Implied(
            views::network_acl(v, scope),
            vec![
                ("vpc-id", v.id.clone()),
                ("network-acl-id", make_id("acl", &[&v.id])),
                ("default", "true".into()),
                ("owner-id", scope.account.clone()),
            ],
        )
    })?;
    Ok(json!({"NetworkAcls": out}))
}
