//! Managed prefix lists: one family, within their maximum size, entries
//! canonical and distinct.

use ipnet::IpNet;

use super::ids::{object_id, parse_v4, parse_v6};
use crate::model::{Collector, INVALID, PrefixList, input::RawConfig};

pub fn resolve(v: &mut Collector, raw: &RawConfig) -> Vec<PrefixList> {
    let q = raw.quotas;
    // Prefix lists.
    let mut pls: Vec<PrefixList> = Vec::new();
    for (i, r) in raw.prefix_lists.iter().enumerate() {
        let path = format!("prefix_lists[{i}]");
        let obj = format!("prefix list {:?}", r.name);
        let Some(id) = object_id(v, &r.id, "pl", &[&r.name], 0, &path, &obj) else {
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
            version: r.version.unwrap_or(1),
            tags: r.tags.clone(),
        });
    }

    pls
}
