//! Tags on groups, rules, prefix lists, VPCs and interfaces.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{member, state};
use crate::{
    api::{
        Snapshot, Txn,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        views::{IFACE_TAG, Scope},
    },
    model::{
        Desired,
        input::{RawConfig, RawGroup, RawRule},
    },
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: Option<String>,
    pub value: Option<String>,
}

/// EC2's limits on a tag.
pub fn check(t: &Tag) -> ApiResult<()> {
    let key = t
        .key
        .as_deref()
        .ok_or_else(|| ApiError::missing("Tag.N.Key"))?;
    if key.is_empty() || key.chars().count() > 128 {
        return Err(ApiError::invalid(format!(
            "Tag key {key:?} must be 1-128 characters"
        )));
    }
    if key.starts_with("aws:") {
        return Err(ApiError::invalid(format!(
            "Tag keys starting with 'aws:' are reserved for internal use ({key:?})"
        )));
    }
    if t.value.as_deref().is_some_and(|v| v.chars().count() > 256) {
        return Err(ApiError::invalid(format!(
            "The value of tag {key:?} is longer than 256 characters"
        )));
    }
    Ok(())
}

/// `CreateTags` of `sg:interface=NAME` on an interface: binds it to the
/// Linux interface NAME (sg's own; docs/api.md). The interface it was bound
/// to keeps its last policy, as one that leaves a file does.
fn rebind(raw: &mut RawConfig, id: &str, name: &str) -> ApiResult<()> {
    if !id.starts_with("eni-") {
        return Err(ApiError::invalid(format!(
            "the {IFACE_TAG} tag belongs on network interfaces, not {id}"
        )));
    }
    // Linux's own bound on interface names (IFNAMSIZ less the NUL).
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(ApiError::invalid(format!(
            "{name:?} is not a Linux interface name (1-15 characters, no '/', ':' or spaces)"
        )));
    }
    let i = raw
        .network_interfaces
        .iter_mut()
        .find(|i| i.id.as_deref() == Some(id))
        .ok_or_else(|| {
            ApiError::client(
                "InvalidNetworkInterfaceID.NotFound",
                format!("The network interface ID '{id}' does not exist"),
            )
        })?;
    i.interface = name.to_string();
    Ok(())
}

/// Most tags a resource may have.
const MAX_TAGS: usize = 50;

/// The tags of resource `id` in the input form, or AWS's not-found error.
fn tags_of<'r>(raw: &'r mut RawConfig, id: &str) -> ApiResult<&'r mut BTreeMap<String, String>> {
    let (code, kind) = match id.split('-').next().unwrap_or_default() {
        "sg" => ("InvalidGroup.NotFound", "security group"),
        "sgr" => ("InvalidSecurityGroupRuleId.NotFound", "security group rule"),
        "pl" => ("InvalidPrefixListID.NotFound", "prefix list"),
        "vpc" => ("InvalidVpcID.NotFound", "VPC"),
        "eni" => ("InvalidNetworkInterfaceID.NotFound", "network interface"),
        _ => {
            return Err(ApiError::client(
                "InvalidID",
                format!("The ID '{id}' is not valid"),
            ));
        }
    };
    let found = match kind {
        "security group" => raw
            .security_groups
            .iter_mut()
            .find(|g| g.id.as_deref() == Some(id))
            .map(|g| &mut g.tags),
        "security group rule" => raw
            .security_groups
            .iter_mut()
            .flat_map(RawGroup::rules_mut)
            .flat_map(RawRule::peers_mut)
            .find(|p| p.rule_id.as_deref() == Some(id))
            .map(|p| &mut p.tags),
        "prefix list" => raw
            .prefix_lists
            .iter_mut()
            .find(|p| p.id.as_deref() == Some(id))
            .map(|p| &mut p.tags),
        "VPC" => raw
            .vpcs
            .iter_mut()
            .find(|v| v.id.as_deref() == Some(id))
            .map(|v| &mut v.tags),
        _ => raw
            .network_interfaces
            .iter_mut()
            .find(|i| i.id.as_deref() == Some(id))
            .map(|i| &mut i.tags),
    };
    found.ok_or_else(|| ApiError::client(code, format!("The {kind} ID '{id}' does not exist")))
}

pub fn create(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let resources: Vec<String> = member(p, "Resources")?;
    let tags: Vec<Tag> = member(p, "Tags")?;
    for t in &tags {
        check(t)?;
    }
    let (binding, tags): (Vec<Tag>, Vec<Tag>) = tags
        .into_iter()
        .partition(|t| t.key.as_deref() == Some(IFACE_TAG));
    for id in &resources {
        if let Some(name) = binding.last().map(|t| t.value.clone().unwrap_or_default()) {
            rebind(&mut txn.raw, id, &name)?;
        }
        let have = tags_of(&mut txn.raw, id)?;
        for t in &tags {
            have.insert(
                t.key.clone().unwrap_or_default(),
                t.value.clone().unwrap_or_default(),
            );
        }
        if have.len() > MAX_TAGS {
            return Err(ApiError::client(
                "TagLimitExceeded",
                format!(
                    "{id} would have {} tags; the limit is {MAX_TAGS}",
                    have.len()
                ),
            ));
        }
    }
    txn.resources.extend(resources);
    Ok((json!({}), txn.validate()?))
}

pub fn delete(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let resources: Vec<String> = member(p, "Resources")?;
    let tags: Vec<Tag> = member(p, "Tags")?;
    if tags.iter().any(|t| t.key.as_deref() == Some(IFACE_TAG)) {
        return Err(ApiError::invalid(format!(
            "the {IFACE_TAG} tag binds an interface to its Linux interface and cannot be deleted: tag it again to rebind it"
        )));
    }
    for id in &resources {
        let have = tags_of(&mut txn.raw, id)?;
        if tags.is_empty() {
            have.clear();
        }
        for t in &tags {
            let key = t.key.clone().unwrap_or_default();
            // With a value, only a tag holding that value goes.
            if t.value.is_none() || have.get(&key) == t.value.as_ref() {
                have.remove(&key);
            }
        }
    }
    txn.resources.extend(resources);
    Ok((json!({}), txn.validate()?))
}

struct T {
    id: String,
    kind: &'static str,
    key: String,
    value: String,
    tags: BTreeMap<String, String>,
}

impl Filterable for T {
    const NAMES: &'static [&'static str] = &["key", "value", "resource-id", "resource-type"];
    fn values(&self, name: &str) -> Vec<String> {
        vec![match name {
            "key" => self.key.clone(),
            "value" => self.value.clone(),
            "resource-id" => self.id.clone(),
            _ => self.kind.to_string(),
        }]
    }
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
}

pub fn describe(s: &Snapshot, p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let mut all: Vec<(String, &'static str, &BTreeMap<String, String>)> = Vec::new();
    for g in &d.groups {
        all.push((g.id.clone(), "security-group", &g.tags));
        for r in g.ingress.iter().chain(g.egress.iter()) {
            all.push((r.id.clone(), "security-group-rule", &r.tags));
        }
    }
    all.extend(
        d.prefix_lists
            .iter()
            .map(|x| (x.id.clone(), "prefix-list", &x.tags)),
    );
    all.extend(d.vpcs.iter().map(|x| (x.id.clone(), "vpc", &x.tags)));
    all.extend(
        d.interfaces
            .iter()
            .map(|x| (x.id.clone(), "network-interface", &x.tags)),
    );
    let rows: Vec<T> = all
        .into_iter()
        .flat_map(|(id, kind, tags)| {
            tags.iter().map(move |(k, v)| T {
                id: id.clone(),
                kind,
                key: k.clone(),
                value: v.clone(),
                tags: tags.clone(),
            })
        })
        .collect();
    let kept = filters::apply(rows.iter().collect(), &filters::of(p)?)?;
    let (page, next) = filters::page(kept, p, (5, 1000))?;
    Ok(json!({
        "Tags": page.iter().map(|t| json!({"ResourceId": t.id, "ResourceType": t.kind, "Key": t.key, "Value": t.value})).collect::<Vec<_>>(),
        "NextToken": next,
    }))
}
