//! Network interfaces: a Linux name, a VPC, private addresses inside it, one
//! to five groups of that VPC, idle timeouts within AWS's ranges.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::{ids::object_id, vpcs::Vpcs};
use crate::model::{
    Collector, Group, INVALID, Interface, Timeouts,
    input::{RawConfig, RawTimeouts},
};

pub fn resolve(
    v: &mut Collector,
    raw: &RawConfig,
    vpcs: &Vpcs,
    groups: &[Group],
) -> Vec<Interface> {
    let q = raw.quotas;
    // Groups by VPC and id, by VPC and name, and each VPC's default: a
    // fleet's state has thousands of interfaces and groups.
    let (mut by_id, mut by_name, mut default) = (HashMap::new(), HashMap::new(), HashMap::new());
    for (i, g) in groups.iter().enumerate().rev() {
        by_id.insert((g.vpc.as_str(), g.id.as_str()), i);
        by_name.insert((g.vpc.as_str(), g.name.as_str()), i);
        if g.is_default {
            default.insert(g.vpc.as_str(), i);
        }
    }
    // The first group of `vpc` whose id or name `name` is.
    let find = |vpc: &str, name: &str| {
        let hits = [
            by_id.get(&(vpc, name)),
            by_name.get(&(vpc, name.trim_end())),
        ];
        hits.into_iter().flatten().min().map(|&i| &groups[i])
    };
    let mut listed: HashSet<(&str, Option<&str>)> = HashSet::new();
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
        if listed.contains(&(r.interface.as_str(), r.host.as_deref())) {
            let on = r.host.as_ref().map(|h| format!(" on host {h:?}"));
            v.err(
                0,
                &path,
                &obj,
                INVALID,
                format!(
                    "interface {:?}{} is listed twice",
                    r.interface,
                    on.unwrap_or_default()
                ),
            );
            continue;
        }
        if r.host.as_ref().is_some_and(|h| !valid_host(h)) {
            v.err(
                0,
                &format!("{path}.host"),
                &obj,
                INVALID,
                "a host id is 1-253 characters of a-z A-Z 0-9 . _ -",
            );
            continue;
        }
        let Some(vpc_id) = vpcs.resolve(v, &r.vpc, 0, &format!("{path}.vpc"), &obj) else {
            continue;
        };
        let vpc = vpcs.list.iter().find(|x| x.id == vpc_id).expect("resolved");
        // The same Linux name on two hosts is two interfaces.
        let seed: Vec<&str> = r
            .host
            .iter()
            .map(String::as_str)
            .chain([r.interface.as_str()])
            .collect();
        let Some(id) = object_id(v, &r.id, "eni", &seed, 0, &path, &obj) else {
            continue;
        };
        // Without IPv4 blocks (a VPC known only by id) any IPv4 address goes.
        let ipv4 = private_addrs(
            v,
            &r.private_ipv4,
            &format!("{path}.private_ipv4"),
            &obj,
            "IPv4",
            |ip: &Ipv4Addr| vpc.ipv4.is_empty() || vpc.ipv4.iter().any(|n| n.contains(ip)),
        );
        let ipv6 = private_addrs(
            v,
            &r.private_ipv6,
            &format!("{path}.private_ipv6"),
            &obj,
            "IPv6",
            |ip: &Ipv6Addr| vpc.ipv6.iter().any(|n| n.contains(ip)),
        );
        let mut gids = Vec::new();
        match &r.groups {
            None => gids.push(groups[default[vpc_id.as_str()]].id.clone()),
            Some(list) => {
                if list.is_empty() {
                    v.err(0, &format!("{path}.groups"), &obj, INVALID, "an interface needs at least one group (omit `groups` for the VPC's default group)");
                }
                for (j, name) in list.iter().enumerate() {
                    match find(&vpc_id, name) {
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
        let timeouts = timeouts(v, &r.conntrack, &format!("{path}.conntrack"), &obj);
        listed.insert((r.interface.as_str(), r.host.as_deref()));
        ifaces.push(Interface {
            name: r.interface.clone(),
            host: r.host.clone(),
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
            tags: r.tags.clone(),
        });
    }

    ifaces
}

/// A host id as `--host-id` takes it: a hostname's characters.
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// An interface's private addresses of one family, each inside the VPC.
fn private_addrs<A: std::str::FromStr + fmt::Display>(
    v: &mut Collector,
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

fn timeouts(v: &mut Collector, r: &RawTimeouts, path: &str, obj: &str) -> Timeouts {
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
