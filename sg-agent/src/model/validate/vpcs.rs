//! VPCs and peerings: declared, named by imported groups, or one implicit VPC
//! holding every address.

use std::collections::BTreeSet;

use ipnet::{Ipv4Net, Ipv6Net};

use super::ids::{make_id, object_id, parse_v4, parse_v6, valid_id};
use crate::model::{Collector, INVALID, Vpc, input::RawConfig};

/// The VPCs, and whether they are the one implicit VPC.
pub struct Vpcs {
    pub list: Vec<Vpc>,
    pub implicit: bool,
}

pub fn resolve(v: &mut Collector, raw: &RawConfig) -> Vpcs {
    // VPCs: declared, or one implicit VPC that holds every address.
    let mut vpcs: Vec<Vpc> = Vec::new();
    for (i, r) in raw.vpcs.iter().enumerate() {
        let path = format!("vpcs[{i}]");
        let name = r.name.clone().or_else(|| r.id.clone()).unwrap_or_default();
        let obj = format!("VPC {name:?}");
        if name.is_empty() {
            v.err(0, &path, "VPC", INVALID, "a VPC needs a name or an id");
            continue;
        }
        let Some(id) = object_id(v, &r.id, "vpc", &[&name], 0, &path, &obj) else {
            continue;
        };
        if vpcs.iter().any(|x| x.id == id || x.name == name) {
            v.err(
                0,
                &path,
                &obj,
                INVALID,
                format!("VPC {name:?} ({id}) is declared twice"),
            );
            continue;
        }
        let mut ipv4 = Vec::new();
        for (j, c) in r.cidr_blocks.iter().enumerate() {
            match parse_v4(c) {
                Some(n) => ipv4.push(n),
                None => v.err(
                    0,
                    &format!("{path}.cidr_blocks[{j}]"),
                    &obj,
                    INVALID,
                    format!("invalid IPv4 CIDR {c:?}"),
                ),
            }
        }
        let mut ipv6 = Vec::new();
        for (j, c) in r.ipv6_cidr_blocks.iter().enumerate() {
            match parse_v6(c) {
                Some(n) => ipv6.push(n),
                None => v.err(
                    0,
                    &format!("{path}.ipv6_cidr_blocks[{j}]"),
                    &obj,
                    INVALID,
                    format!("invalid IPv6 CIDR {c:?}"),
                ),
            }
        }
        vpcs.push(Vpc {
            id,
            name,
            ipv4,
            ipv6,
            peers: BTreeSet::new(),
            tags: r.tags.clone(),
            attributes: r.attributes.clone(),
        });
    }
    for (i, r) in raw.vpcs.iter().enumerate() {
        let Some(me) = vpcs
            .iter()
            .position(|x| Some(&x.name) == r.name.as_ref() || Some(&x.id) == r.id.as_ref())
        else {
            continue;
        };
        for (j, p) in r.peerings.iter().enumerate() {
            match vpcs.iter().position(|x| &x.name == p || &x.id == p) {
                Some(other) if other != me => {
                    let (a, b) = (vpcs[me].id.clone(), vpcs[other].id.clone());
                    vpcs[me].peers.insert(b);
                    vpcs[other].peers.insert(a);
                }
                _ => v.err(
                    0,
                    &format!("vpcs[{i}].peerings[{j}]"),
                    &format!("VPC {:?}", vpcs[me].name),
                    "InvalidVpcID.NotFound",
                    format!("no other VPC {p:?} to peer with"),
                ),
            }
        }
    }
    let implicit = vpcs.is_empty();
    if implicit {
        vpcs.push(Vpc {
            id: make_id("vpc", &["default"]),
            name: "default".into(),
            ipv4: vec![Ipv4Net::default()],
            ipv6: vec![Ipv6Net::default()],
            peers: BTreeSet::new(),
            tags: Default::default(),
            attributes: Default::default(),
        });
    }
    // Imported groups may name VPCs the file does not declare.
    for g in &raw.aws_security_groups {
        if let Some(id) = &g.vpc
            && !implicit
            && !vpcs.iter().any(|x| &x.id == id || &x.name == id)
            && valid_id("vpc", id)
        {
            vpcs.push(Vpc {
                id: id.clone(),
                name: id.clone(),
                ipv4: vec![],
                ipv6: vec![],
                peers: BTreeSet::new(),
                tags: Default::default(),
                attributes: Default::default(),
            });
        }
    }
    Vpcs {
        list: vpcs,
        implicit,
    }
}

impl Vpcs {
    /// The id of the VPC an object names (or the only one), reporting it
    /// when it names none.
    pub fn resolve(
        &self,
        v: &mut Collector,
        given: &Option<String>,
        doc: usize,
        path: &str,
        obj: &str,
    ) -> Option<String> {
        let (vpcs, implicit) = (&self.list, self.implicit);
        match given {
            Some(x) if implicit => {
                // Without declared VPCs everything shares the implicit one.
                let _ = x;
                Some(vpcs[0].id.clone())
            }
            Some(x) => match vpcs.iter().find(|vp| &vp.id == x || &vp.name == x) {
                Some(vp) => Some(vp.id.clone()),
                None => {
                    v.err(
                        doc,
                        path,
                        obj,
                        "InvalidVpcID.NotFound",
                        format!("no VPC {x:?}"),
                    );
                    None
                }
            },
            None if vpcs.len() == 1 => Some(vpcs[0].id.clone()),
            None => {
                v.err(
                    doc,
                    path,
                    obj,
                    INVALID,
                    "there are several VPCs: name this one's `vpc`",
                );
                None
            }
        }
    }
}
