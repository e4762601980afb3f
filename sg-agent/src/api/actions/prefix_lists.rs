//! Managed prefix lists: create, modify (guarded by `CurrentVersion`),
//! delete, describe, and their entries.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{member, new_id, required, state, string, tag_specs};
use crate::{
    api::{
        Snapshot, Txn,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        views::{self, Scope},
    },
    model::{
        Desired, Peer, PrefixList,
        input::{RawPlEntry, RawPrefixList},
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    cidr: String,
    description: Option<String>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::client(
        "InvalidPrefixListID.NotFound",
        format!("The prefix list ID '{id}' does not exist"),
    )
}

fn find<'d>(d: &'d Desired, id: &str) -> ApiResult<&'d PrefixList> {
    d.prefix_list(id).ok_or_else(|| not_found(id))
}

fn answer(txn: &mut Txn, id: String, after: Desired) -> ApiResult<(Value, Desired)> {
    let v = views::prefix_list(find(&after, &id)?, &txn.scope);
    txn.resources.push(id);
    Ok((json!({"PrefixList": v}), after))
}

pub fn create(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let entries: Vec<Entry> = member(p, "Entries")?;
    let max_entries = p
        .get("MaxEntries")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::missing("MaxEntries"))?;
    let id = new_id("pl");
    txn.raw.prefix_lists.push(RawPrefixList {
        id: Some(id.clone()),
        name: required(p, "PrefixListName")?,
        address_family: required(p, "AddressFamily")?,
        max_entries: u32::try_from(max_entries)
            .map_err(|_| ApiError::invalid(format!("MaxEntries {max_entries} is invalid")))?,
        entries: entries
            .into_iter()
            .map(|e| RawPlEntry {
                cidr: e.cidr,
                description: e.description,
            })
            .collect(),
        version: Some(1),
        tags: tag_specs(p, "prefix-list")?,
    });
    let after = txn.validate()?;
    answer(txn, id, after)
}

pub fn modify(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Remove {
        cidr: String,
    }
    let id = required(p, "PrefixListId")?;
    let before = find(txn.before, &id)?.clone();
    if let Some(v) = p.get("CurrentVersion").and_then(Value::as_i64)
        && v as u64 != before.version
    {
        return Err(ApiError::client(
            "PrefixListVersionMismatch",
            format!(
                "The prefix list {id} is at version {}, not {v}",
                before.version
            ),
        ));
    }
    let add: Vec<Entry> = member(p, "AddEntries")?;
    let remove: Vec<Remove> = member(p, "RemoveEntries")?;
    let raw = txn
        .raw
        .prefix_lists
        .iter_mut()
        .find(|x| x.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| not_found(&id))?;
    for r in &remove {
        let canon = r
            .cidr
            .parse::<ipnet::IpNet>()
            .map(|n| n.trunc().to_string())
            .unwrap_or(r.cidr.clone());
        let n = raw.entries.len();
        raw.entries.retain(|e| e.cidr != canon && e.cidr != r.cidr);
        if raw.entries.len() == n {
            return Err(ApiError::client(
                "InvalidPrefixListModification",
                format!("{} is not an entry of {id}", r.cidr),
            ));
        }
    }
    for a in add {
        raw.entries.retain(|e| e.cidr != a.cidr);
        raw.entries.push(RawPlEntry {
            cidr: a.cidr,
            description: a.description,
        });
    }
    if let Some(name) = string(p, "PrefixListName") {
        raw.name = name;
    }
    if let Some(m) = p.get("MaxEntries").and_then(Value::as_i64) {
        raw.max_entries = u32::try_from(m)
            .map_err(|_| ApiError::invalid(format!("MaxEntries {m} is invalid")))?;
    }
    if !remove.is_empty() || p.get("AddEntries").is_some() {
        raw.version = Some(before.version + 1);
    }
    let after = txn.validate()?;
    answer(txn, id, after)
}

pub fn delete(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let id = required(p, "PrefixListId")?;
    let pl = find(txn.before, &id)?.clone();
    if let Some(g) = txn.before.groups.iter().find(|g| {
        g.ingress
            .iter()
            .chain(g.egress.iter())
            .any(|r| r.peer == Peer::PrefixList(id.clone()))
    }) {
        return Err(ApiError::client(
            "DependencyViolation",
            format!(
                "The prefix list {id} is referenced by security group {} ({})",
                g.id, g.name
            ),
        ));
    }
    txn.raw
        .prefix_lists
        .retain(|x| x.id.as_deref() != Some(id.as_str()));
    let after = txn.validate()?;
    let mut v = views::prefix_list(&pl, &txn.scope);
    v["State"] = "delete-complete".into();
    txn.resources.push(id);
    Ok((json!({"PrefixList": v}), after))
}

struct P<'a>(&'a PrefixList);

impl Filterable for P<'_> {
    const NAMES: &'static [&'static str] = &["prefix-list-id", "prefix-list-name", "owner-id"];
    fn values(&self, name: &str) -> Vec<String> {
        match name {
            "prefix-list-id" => vec![self.0.id.clone()],
            "prefix-list-name" => vec![self.0.name.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.0.tags
    }
}

pub fn describe(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let ids: Vec<String> = member(p, "PrefixListIds")?;
    for id in &ids {
        find(d, id)?;
    }
    let all: Vec<P> = d
        .prefix_lists
        .iter()
        .filter(|x| ids.is_empty() || ids.contains(&x.id))
        .map(P)
        .collect();
    let kept = filters::apply(all.iter().collect(), &filters::of(p)?)?;
    let (page, next) = filters::page(kept, p, (1, 100))?;
    Ok(
        json!({"PrefixLists": page.iter().map(|x| views::prefix_list(x.0, scope)).collect::<Vec<_>>(), "NextToken": next}),
    )
}

pub fn entries(s: &Snapshot, p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let pl = find(state(s), &required(p, "PrefixListId")?)?;
    if let Some(v) = p.get("TargetVersion").and_then(Value::as_i64)
        && v as u64 != pl.version
    {
        return Err(ApiError::invalid(format!(
            "sg keeps the current version of {} only ({}), not {v}",
            pl.id, pl.version
        )));
    }
    let all: Vec<Value> = pl
        .entries
        .iter()
        .map(|(c, d)| json!({"Cidr": c.to_string(), "Description": d}))
        .collect();
    let (page, next) = filters::page(all, p, (1, 100))?;
    Ok(json!({"Entries": page, "NextToken": next}))
}
