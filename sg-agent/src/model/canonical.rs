//! The validated model written back as input: every id explicit, every
//! default materialised, one peer per rule. A managed state is stored in
//! this form, and the API changes it and validates it again, so that the
//! file and the API share one validation. `validate(canonical(d)) == d`.

use super::{
    Desired, Group, Interface, Peer, PrefixList, Rule, Vpc,
    input::{
        RawConfig, RawGroup, RawIface, RawPeer, RawPlEntry, RawPrefixList, RawRule, RawTimeouts,
        RawVpc,
    },
};

pub fn canonical(d: &Desired) -> RawConfig {
    RawConfig {
        account_id: Some(d.account_id.clone()),
        vpcs: d.vpcs.iter().map(vpc).collect(),
        prefix_lists: d.prefix_lists.iter().map(prefix_list).collect(),
        security_groups: d.groups.iter().map(group).collect(),
        network_interfaces: d.interfaces.iter().map(interface).collect(),
        conntrack: d.conntrack,
        quotas: d.quotas,
        import: vec![],
        aws_security_groups: vec![],
    }
}

pub fn vpc(v: &Vpc) -> RawVpc {
    RawVpc {
        id: Some(v.id.clone()),
        name: Some(v.name.clone()),
        cidr_blocks: v.ipv4.iter().map(|n| n.to_string()).collect(),
        ipv6_cidr_blocks: v.ipv6.iter().map(|n| n.to_string()).collect(),
        // Each peering once: validation makes it mutual.
        peerings: v.peers.iter().filter(|p| **p > v.id).cloned().collect(),
        tags: v.tags.clone(),
        attributes: v.attributes.clone(),
    }
}

pub fn prefix_list(p: &PrefixList) -> RawPrefixList {
    RawPrefixList {
        id: Some(p.id.clone()),
        name: p.name.clone(),
        address_family: if p.ipv6 { "IPv6" } else { "IPv4" }.into(),
        max_entries: p.max_entries,
        entries: p
            .entries
            .iter()
            .map(|(cidr, description)| RawPlEntry {
                cidr: cidr.to_string(),
                description: description.clone(),
            })
            .collect(),
        version: Some(p.version),
        tags: p.tags.clone(),
    }
}

pub fn group(g: &Group) -> RawGroup {
    RawGroup {
        id: Some(g.id.clone()),
        name: g.name.clone(),
        description: Some(g.description.clone()),
        vpc: Some(g.vpc.clone()),
        owner_id: Some(g.owner.clone()),
        _arn: None,
        tags: g.tags.clone(),
        ingress: g.ingress.iter().map(rule).collect(),
        egress: Some(g.egress.iter().map(rule).collect()),
        origin: Default::default(),
    }
}

/// One rule as one permission with one peer, keeping its id.
pub fn rule(r: &Rule) -> RawRule {
    let mut peer = RawPeer {
        description: r.description.clone(),
        rule_id: Some(r.id.clone()),
        tags: r.tags.clone(),
        ..Default::default()
    };
    let mut out = RawRule {
        ip_protocol: r.protocol.aws(),
        from_port: Some(r.from_port.into()),
        to_port: Some(r.to_port.into()),
        ..Default::default()
    };
    match &r.peer {
        Peer::Cidr(n) => {
            peer.value = n.to_string();
            if n.addr().is_ipv4() {
                out.ip_ranges.push(peer);
            } else {
                out.ipv6_ranges.push(peer);
            }
        }
        Peer::PrefixList(id) => {
            peer.value = id.clone();
            out.prefix_list_ids.push(peer);
        }
        Peer::Group {
            id, vpc, peering, ..
        } => {
            peer.value = id.clone();
            peer.vpc = Some(vpc.clone());
            peer.peering = peering.clone();
            out.user_id_group_pairs.push(peer);
        }
    }
    out
}

pub fn interface(i: &Interface) -> RawIface {
    RawIface {
        interface: i.name.clone(),
        host: i.host.clone(),
        id: Some(i.id.clone()),
        vpc: Some(i.vpc.clone()),
        private_ipv4: i.ipv4.iter().map(|a| a.to_string()).collect(),
        private_ipv6: i.ipv6.iter().map(|a| a.to_string()).collect(),
        groups: Some(i.groups.clone()),
        attach: i.attach,
        ingress_hook: i.ingress_hook,
        conntrack: RawTimeouts {
            tcp_established: Some(i.timeouts.tcp_established.into()),
            udp_stream: Some(i.timeouts.udp_stream.into()),
            udp: Some(i.timeouts.udp.into()),
        },
        related_icmp: i.related_icmp,
        optional: i.optional,
        detached: i.detached,
        tags: i.tags.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Nowhere, validate},
        source,
    };

    /// Every construct of the file format survives the trip through the
    /// canonical form unchanged: ids, defaults, references, lists, tags.
    #[test]
    fn canonical_form_validates_to_the_same_state() {
        let text = r#"
account_id: "123456789012"
vpcs:
  - {name: main, cidr_blocks: [10.0.0.0/16], ipv6_cidr_blocks: ["fd00:1::/56"], peerings: [other], tags: {Name: m}}
  - {name: other, cidr_blocks: [10.1.0.0/16]}
prefix_lists:
  - {name: office, max_entries: 5, entries: [{cidr: 192.0.2.0/24, description: hq}], tags: {team: net}}
security_groups:
  - name: web
    vpc: main
    tags: {Name: web}
    ingress:
      - {ip_protocol: tcp, from_port: 80, to_port: 81, ip_ranges: [10.0.0.0/8, {cidr_ip: 10.9.0.0/16, description: x}], ipv6_ranges: ["::/0"]}
      - {ip_protocol: icmp, from_port: 8, to_port: -1, prefix_list_ids: [office]}
      - {ip_protocol: "-1", user_id_group_pairs: [db, {group_id: far, vpc_id: other}]}
  - {name: db, vpc: main, egress: []}
  - {name: far, vpc: other}
network_interfaces:
  - {interface: veth-a, vpc: main, private_ipv4: [10.0.0.5], groups: [web, db], conntrack: {tcp_established: 3600}, tags: {Name: a}}
"#;
        let d = source::file::parse("t.yaml", text, None, None).unwrap_or_else(|e| panic!("{e}"));
        let raw = canonical(&d);
        let again = validate(&raw, &Nowhere, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, d);
        // And through JSON, as a managed state stores it.
        let json = serde_json::to_string(&raw).unwrap();
        let back: RawConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(validate(&back, &Nowhere, None).unwrap(), d);
    }
}
