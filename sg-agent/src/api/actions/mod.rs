//! One handler per action: reads answer from a snapshot of the state;
//! changes edit the canonical input form and validate it again (the
//! validation files go through), in the agent's loop.

mod findings;
mod groups;
mod interfaces;
mod prefix_lists;
mod rules;
mod tags;
mod vpcs;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    Snapshot, Txn,
    error::{ApiError, ApiResult},
    views::Scope,
};
use crate::model::{Desired, Group, input::RawGroup};

pub type Read = fn(&Snapshot, &Value, &Scope) -> ApiResult<Value>;
pub type Write = fn(&mut Txn, &Value) -> ApiResult<(Value, Desired)>;
/// A read whose answer is a list of XML items (made once per state) and
/// the other members.
pub type ReadItems =
    fn(&Snapshot, &Value, &Scope) -> ApiResult<(&'static str, Vec<std::sync::Arc<str>>, Value)>;

pub enum Handler {
    Read(Reader),
    Write(Write),
}

pub enum Reader {
    Value(Read),
    Items(ReadItems),
}

/// A read's answer, before it is written as XML.
pub enum Answer {
    Value(Value),
    /// The list member `list` of pre-made XML items, and the other members.
    Items(&'static str, Vec<std::sync::Arc<str>>, Value),
}

impl Reader {
    pub fn answer(&self, s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Answer> {
        match self {
            Reader::Value(f) => f(s, p, scope).map(Answer::Value),
            Reader::Items(f) => {
                f(s, p, scope).map(|(list, items, rest)| Answer::Items(list, items, rest))
            }
        }
    }
}

impl Answer {
    pub fn encode(&self, action: &str, request_id: &str) -> ApiResult<String> {
        match self {
            Answer::Value(v) => super::codec::encode(action, v, request_id),
            Answer::Items(list, items, rest) => {
                super::codec::encode_items(action, list, items, rest, request_id)
            }
        }
    }

    /// What the audit trail keeps of it (not the items themselves).
    pub fn summary(&self) -> Value {
        match self {
            Answer::Value(v) => v.clone(),
            Answer::Items(_, items, _) => serde_json::json!({"items": items.len()}),
        }
    }
}

pub fn handler(action: &str) -> Option<Handler> {
    use Handler::Write as W;
    let read = |f: Read| Handler::Read(Reader::Value(f));
    Some(match action {
        "CreateSecurityGroup" => W(groups::create),
        "DeleteSecurityGroup" => W(groups::delete),
        "DescribeSecurityGroups" => Handler::Read(Reader::Items(groups::describe)),
        "DescribeStaleSecurityGroups" => read(groups::stale),
        "DescribeSecurityGroupReferences" => read(groups::references),
        "AuthorizeSecurityGroupIngress" => W(rules::authorize_ingress),
        "AuthorizeSecurityGroupEgress" => W(rules::authorize_egress),
        "RevokeSecurityGroupIngress" => W(rules::revoke_ingress),
        "RevokeSecurityGroupEgress" => W(rules::revoke_egress),
        "DescribeSecurityGroupRules" => read(rules::describe),
        "ModifySecurityGroupRules" => W(rules::modify),
        "UpdateSecurityGroupRuleDescriptionsIngress" => W(rules::describe_ingress),
        "UpdateSecurityGroupRuleDescriptionsEgress" => W(rules::describe_egress),
        "CreateTags" => W(tags::create),
        "DeleteTags" => W(tags::delete),
        "DescribeTags" => read(tags::describe),
        "CreateManagedPrefixList" => W(prefix_lists::create),
        "ModifyManagedPrefixList" => W(prefix_lists::modify),
        "DeleteManagedPrefixList" => W(prefix_lists::delete),
        "DescribeManagedPrefixLists" => read(prefix_lists::describe),
        "GetManagedPrefixListEntries" => read(prefix_lists::entries),
        "CreateVpc" => W(vpcs::create),
        "DeleteVpc" => W(vpcs::delete),
        "DescribeVpcs" => read(vpcs::describe),
        "DescribeVpcAttribute" => read(vpcs::attribute),
        "ModifyVpcAttribute" => W(vpcs::modify_attribute),
        "DescribeRouteTables" => read(vpcs::route_tables),
        "DescribeNetworkAcls" => read(vpcs::network_acls),
        "DescribeNetworkInterfaces" => read(interfaces::describe),
        "ModifyNetworkInterfaceAttribute" => W(interfaces::modify),
        // sg's own (docs/api.md, "sg's own actions").
        "DescribeAuditFindings" => read(findings::describe),
        _ => return None,
    })
}

/// A member of the request, deserialized (with AWS's error when malformed).
pub fn member<T: DeserializeOwned + Default>(params: &Value, name: &str) -> ApiResult<T> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| ApiError::invalid(format!("{name}: {e}")))
        }
    }
}

pub fn string(params: &Value, name: &str) -> Option<String> {
    params.get(name).and_then(Value::as_str).map(String::from)
}

pub fn required(params: &Value, name: &str) -> ApiResult<String> {
    string(params, name).ok_or_else(|| ApiError::missing(name))
}

/// A fresh id as EC2 makes them: the prefix and 17 random hex digits.
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}-{:017x}", n & ((1u128 << 68) - 1))
}

/// The group a call names by `GroupId`, or by `GroupName` (in the default
/// VPC, as EC2 resolves names).
pub fn find_group<'d>(d: &'d Desired, params: &Value) -> ApiResult<&'d Group> {
    if let Some(id) = string(params, "GroupId") {
        return d.group(&id).ok_or_else(|| group_not_found(&id));
    }
    let Some(name) = string(params, "GroupName") else {
        return Err(ApiError::missing("GroupId"));
    };
    d.groups
        .iter()
        .find(|g| {
            g.name == name
                && d.vpcs
                    .iter()
                    .any(|v| v.id == g.vpc && super::views::is_default_vpc(v))
        })
        .ok_or_else(|| group_not_found(&name))
}

pub fn group_not_found(id: &str) -> ApiError {
    if id.starts_with("sg-") && !crate::model::validate::valid_id("sg", id) {
        return ApiError::client(
            "InvalidGroupId.Malformed",
            format!("Invalid id: \"{id}\" (expecting \"sg-...\")"),
        );
    }
    ApiError::client(
        "InvalidGroup.NotFound",
        format!("The security group '{id}' does not exist"),
    )
}

/// The input form of a group of the state.
pub fn raw_group<'r>(txn: &'r mut Txn, id: &str) -> ApiResult<&'r mut RawGroup> {
    txn.raw
        .security_groups
        .iter_mut()
        .find(|g| g.id.as_deref() == Some(id))
        .ok_or_else(|| group_not_found(id))
}

/// Tags given in `TagSpecification.N` for `kind` (`security-group`, ...).
pub fn tag_specs(
    params: &Value,
    kind: &str,
) -> ApiResult<std::collections::BTreeMap<String, String>> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Spec {
        resource_type: Option<String>,
        #[serde(default)]
        tags: Vec<tags::Tag>,
    }
    let specs: Vec<Spec> = member(params, "TagSpecifications")?;
    let mut out = std::collections::BTreeMap::new();
    for s in specs {
        match s.resource_type.as_deref() {
            Some(t) if t == kind => {}
            Some(t) => {
                return Err(ApiError::invalid(format!(
                    "'{t}' is not a valid taggable resource type for this operation (expected {kind})"
                )));
            }
            None => return Err(ApiError::missing("TagSpecification.N.ResourceType")),
        }
        for t in s.tags {
            tags::check(&t)?;
            out.insert(t.key.unwrap_or_default(), t.value.unwrap_or_default());
        }
    }
    Ok(out)
}

/// The snapshot's state, for handlers that only read.
pub fn state(s: &Snapshot) -> &Desired {
    &s.desired
}
