use sg_common::PORT_UNTRACKED;

use super::*;

fn flat(net: &str, proto: Protocol, lo: u16, hi: u16) -> Flat {
    Flat {
        net: net.parse().unwrap(),
        protocol: proto,
        lo,
        hi,
    }
}
const TCP: Protocol = Protocol::Number(6);

/// The flags the datapath would find for `addr`: the longest block's
/// atoms in the address map, then the policy's segments for them.
fn lookup(c: &Compiled, dir: u8, addr: &str, proto: u8, port: u16) -> Option<u32> {
    lookup_with(c, &Members::default(), dir, addr, proto, port)
}

fn lookup_with(
    c: &Compiled,
    members: &Members,
    dir: u8,
    addr: &str,
    proto: u8,
    port: u16,
) -> Option<u32> {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    let map = address_map(c.dirs.iter().flat_map(|d| d.atoms()), members);
    let (_, atoms) = map
        .iter()
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())?;
    let index = PolicyIndex::new(&c.dirs[dir as usize]);
    let segs = index.segments(atoms);
    let find = |p: u8| {
        segs.iter()
            .find(|(q, _)| *q == p)
            .and_then(|(_, ss)| ss.iter().find(|s| s.lo <= port && port <= s.hi))
            .map(|s| s.flags)
    };
    find(proto).or_else(|| find(0))
}

#[test]
fn nested_cidrs_union_their_rules() {
    let inbound = vec![
        flat("10.0.0.0/8", TCP, 22, 22),
        flat("10.1.0.0/16", TCP, 80, 80),
        flat("10.1.2.3/32", Protocol::Number(17), 53, 53),
    ];
    let c = compile(&inbound, &[], &Settings::default());
    let v4 = DIR_INBOUND;
    assert!(lookup(&c, v4, "10.1.2.3", 6, 22).is_some());
    assert!(lookup(&c, v4, "10.1.2.3", 6, 80).is_some());
    assert!(lookup(&c, v4, "10.1.2.3", 17, 53).is_some());
    assert!(lookup(&c, v4, "10.1.9.9", 17, 53).is_none());
    assert!(lookup(&c, v4, "10.2.0.1", 6, 80).is_none());
    assert!(lookup(&c, v4, "10.2.0.1", 6, 22).is_some());
    assert!(lookup(&c, v4, "11.0.0.1", 6, 22).is_none());
    assert!(lookup(&c, v4, "10.1.2.3", 6, 23).is_none());
}

#[test]
fn untracked_needs_slash0_and_all_response() {
    let inbound = vec![
        flat("0.0.0.0/0", TCP, 22, 22),
        flat("10.0.0.0/8", TCP, 80, 80),
    ];
    let outbound = vec![flat("0.0.0.0/0", Protocol::All, 0, 65535)];
    let c = compile(&inbound, &outbound, &Settings::default());
    let v4 = DIR_INBOUND;
    let f = lookup(&c, v4, "10.0.0.1", 6, 22).unwrap();
    assert_ne!(f & PORT_UNTRACKED, 0);
    let f = lookup(&c, v4, "10.0.0.1", 6, 80).unwrap();
    assert_eq!(f & PORT_UNTRACKED, 0);
    // Without the all-outbound rule, everything is tracked.
    let c = compile(
        &inbound,
        &[flat("0.0.0.0/0", TCP, 443, 443)],
        &Settings::default(),
    );
    let f = lookup(&c, v4, "10.0.0.1", 6, 22).unwrap();
    assert_eq!(f & PORT_UNTRACKED, 0);
    assert_eq!(c.cfg.all_response, 0);
}

#[test]
fn all_protocols_and_fragment_entry() {
    let inbound = vec![
        flat("10.0.0.0/8", Protocol::All, 0, 65535),
        flat("0.0.0.0/0", TCP, 80, 80),
    ];
    let outbound = vec![flat("0.0.0.0/0", Protocol::All, 0, 65535)];
    let c = compile(&inbound, &outbound, &Settings::default());
    let v4 = DIR_INBOUND;
    assert!(lookup(&c, v4, "10.9.9.9", 47, 0).is_some());
    assert!(lookup(&c, v4, "10.9.9.9", 6, 1234).is_some());
    assert_ne!(
        lookup(&c, v4, "10.9.9.9", 6, 80).unwrap() & PORT_UNTRACKED,
        0
    );
    assert!(lookup(&c, v4, "11.0.0.1", 6, 1234).is_none());
    // TCP from 10/8 covers all ports in two segments (80 untracked): a
    // later fragment, which has no port, finds "all ports" in the value.
    let entries = policy_entries(
        1,
        1,
        &PolicyIndex::new(&c.dirs[0]).segments(&[
            Atom::Net("0.0.0.0/0".parse().unwrap()),
            Atom::Net("10.0.0.0/8".parse().unwrap()),
        ]),
    )
    .unwrap();
    let tcp = entries.iter().find(|(k, _)| k.proto == 6).unwrap();
    assert!(tcp.1.n > 1);
    assert_eq!(tcp.1.all_ports, sg_common::PORT_ALLOW);
}

#[test]
fn a_group_reference_is_one_atom_its_members_carry() {
    let d = crate::source::file::parse(
        "t.yaml",
        "vpcs: [{name: v, cidr_blocks: [10.0.0.0/16]}]\nsecurity_groups:\n  - {name: web}\n  - name: db\n    ingress: [{ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [{group_name: web}]}, {ip_protocol: tcp, from_port: 22, to_port: 22, ip_ranges: [10.0.0.0/24]}]\nnetwork_interfaces:\n  - {interface: a, private_ipv4: [10.0.0.5], groups: [web]}\n  - {interface: b, private_ipv4: [10.0.1.6], groups: [web]}\n  - {interface: c, private_ipv4: [10.0.0.9], groups: [db]}\n",
        None,
        None,
    )
    .unwrap();
    let c = compile_interface(&d, &d.interfaces[2]);
    assert_eq!(c.dirs[0].rules.len(), 2);
    let m = members(&d);
    assert_eq!(m.values().map(Vec::len).sum::<usize>(), 3);
    // 10.0.0.5 is a member inside the /24: both rules; 10.0.1.6 only the reference.
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.0.5", 6, 5432).is_some());
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.0.5", 6, 22).is_some());
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.1.6", 6, 5432).is_some());
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.1.6", 6, 22).is_none());
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.0.7", 6, 5432).is_none());
    assert!(lookup_with(&c, &m, DIR_INBOUND, "10.0.0.7", 6, 22).is_some());
}

#[test]
fn too_many_port_ranges_for_one_peer_are_refused() {
    let inbound: Vec<Flat> = (0..1100)
        .map(|i| flat("10.0.0.0/8", TCP, 2 * i, 2 * i))
        .collect();
    let c = compile(&inbound, &[], &Settings::default());
    let segs = PolicyIndex::new(&c.dirs[0]).segments(&[Atom::Net("10.0.0.0/8".parse().unwrap())]);
    let err = policy_entries(1, 1, &segs).unwrap_err().to_string();
    assert!(err.contains("1100 disjoint port ranges"), "{err}");
}
