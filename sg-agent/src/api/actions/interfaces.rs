//! Network interfaces: the Linux interfaces sg enforces on, each bound to
//! its Linux name (shown as the `sg:interface` tag); their groups and
//! connection-tracking timeouts can be changed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{member, required, state};
use crate::{
    api::{
        Snapshot, Txn,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        views::{self, IFACE_TAG, Scope},
    },
    model::{Desired, Interface, input::RawTimeouts},
};

fn not_found(id: &str) -> ApiError {
    ApiError::client(
        "InvalidNetworkInterfaceID.NotFound",
        format!("The networkInterface ID '{id}' does not exist"),
    )
}

struct I<'a>(&'a Interface, &'a Desired, BTreeMap<String, String>);

impl Filterable for I<'_> {
    const NAMES: &'static [&'static str] = &[
        "network-interface-id",
        "vpc-id",
        "group-id",
        "group-name",
        "private-ip-address",
        "addresses.private-ip-address",
        "status",
        "owner-id",
        "description",
    ];
    fn values(&self, name: &str) -> Vec<String> {
        let i = self.0;
        match name {
            "network-interface-id" => vec![i.id.clone()],
            "vpc-id" => vec![i.vpc.clone()],
            "group-id" => i.groups.clone(),
            "group-name" => i
                .groups
                .iter()
                .filter_map(|g| self.1.group(g))
                .map(|g| g.name.clone())
                .collect(),
            "private-ip-address" | "addresses.private-ip-address" => {
                i.ipv4.iter().map(|a| a.to_string()).collect()
            }
            "description" => vec![format!("Linux interface {}", i.name)],
            _ => vec![],
        }
    }
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.2
    }
}

pub fn describe(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let ids: Vec<String> = member(p, "NetworkInterfaceIds")?;
    for id in &ids {
        if !d.interfaces.iter().any(|i| i.id == *id) {
            return Err(not_found(id));
        }
    }
    let all: Vec<I> = d
        .interfaces
        .iter()
        .filter(|i| ids.is_empty() || ids.contains(&i.id))
        .map(|i| {
            let mut t = i.tags.clone();
            t.insert(IFACE_TAG.into(), i.name.clone());
            I(i, d, t)
        })
        .collect();
    let mut kept = filters::apply(all.iter().collect(), &filters::of(p)?)?;
    let status = filters::of(p)?
        .into_iter()
        .find(|f| f.name.as_deref() == Some("status"));
    if let Some(f) = status {
        kept.retain(|i| {
            let st = s.status(i.0).0;
            f.values.iter().any(|v| v == st)
        });
    }
    let (page, next) = filters::page(kept, p, (5, 1000))?;
    Ok(json!({
        "NetworkInterfaces": page.iter().map(|i| views::network_interface(i.0, d, s.status(i.0), scope)).collect::<Vec<_>>(),
        "NextToken": next,
    }))
}

pub fn modify(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    let id = required(p, "NetworkInterfaceId")?;
    let groups: Vec<String> = member(p, "Groups")?;
    let ct = p.get("ConnectionTrackingSpecification").cloned();
    if groups.is_empty() && ct.is_none() {
        return Err(ApiError::missing("SecurityGroupId.1"));
    }
    let raw = txn
        .raw
        .network_interfaces
        .iter_mut()
        .find(|i| i.id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| not_found(&id))?;
    if !groups.is_empty() {
        raw.groups = Some(groups);
    }
    if let Some(ct) = ct {
        let t: RawTimeouts = serde_json::from_value(ct)
            .map_err(|e| ApiError::invalid(format!("ConnectionTrackingSpecification: {e}")))?;
        let keep = |new: Option<i64>, old: Option<i64>| new.or(old);
        raw.conntrack = RawTimeouts {
            tcp_established: keep(t.tcp_established, raw.conntrack.tcp_established),
            udp_stream: keep(t.udp_stream, raw.conntrack.udp_stream),
            udp: keep(t.udp, raw.conntrack.udp),
        };
    }
    txn.resources.push(id);
    Ok((json!({}), txn.validate()?))
}
