use sg_common::{PORT_KEY_CLASS_BITS, PORT_KEY_PROTO_BITS, PORT_UNTRACKED};

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

#[test]
fn blocks_cover_exactly() {
    for (lo, hi) in [
        (0u16, 65535u16),
        (80, 80),
        (1, 65535),
        (1000, 2000),
        (0, 0),
        (65535, 65535),
    ] {
        let bs = blocks(lo, hi);
        let mut next = lo as u32;
        for (start, bits) in bs {
            assert_eq!(start as u32, next);
            let size = 1u32 << (16 - bits);
            assert_eq!(start as u32 % size, 0, "aligned");
            next += size;
        }
        assert_eq!(next, hi as u32 + 1);
    }
    assert_eq!(blocks(0, 65535), vec![(0, 0)]);
    assert!(blocks(1, 65535).len() <= 16);
}

/// The class of the longest CIDR containing `addr`, as the trie finds it.
fn lookup(c: &Compiled, idx: usize, addr: &str, proto: u8, port: u16) -> Option<u32> {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    let e = c.addrs[idx]
        .iter()
        .filter(|e| e.net.contains(&addr))
        .max_by_key(|e| e.net.prefix_len())?;
    let class = &c.classes[e.class];
    class
        .iter()
        .filter(|p| {
            let bits = p.prefix_len;
            bits == PORT_KEY_CLASS_BITS
                || (p.proto == proto
                    && (bits == PORT_KEY_PROTO_BITS
                        || (port ^ p.port) >> (16 - (bits - PORT_KEY_PROTO_BITS)) == 0))
        })
        .max_by_key(|p| p.prefix_len)
        .map(|p| p.flags)
}

#[test]
fn nested_cidrs_union_their_rules() {
    let inbound = vec![
        flat("10.0.0.0/8", TCP, 22, 22),
        flat("10.1.0.0/16", TCP, 80, 80),
        flat("10.1.2.3/32", Protocol::Number(17), 53, 53),
    ];
    let c = compile(&inbound, &[], &Settings::default());
    let v4 = sg_common::policy_index(DIR_INBOUND, FAMILY_V4);
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
    let v4 = sg_common::policy_index(DIR_INBOUND, FAMILY_V4);
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
    let v4 = sg_common::policy_index(DIR_INBOUND, FAMILY_V4);
    assert!(lookup(&c, v4, "10.9.9.9", 47, 0).is_some());
    assert!(lookup(&c, v4, "10.9.9.9", 6, 1234).is_some());
    assert_ne!(
        lookup(&c, v4, "10.9.9.9", 6, 80).unwrap() & PORT_UNTRACKED,
        0
    );
    assert!(lookup(&c, v4, "11.0.0.1", 6, 1234).is_none());
    // TCP from 10/8 covers all ports in two kinds of segment: a /40 entry
    // answers the fragment query.
    let class = &c.classes[c.addrs[v4]
        .iter()
        .find(|e| e.net.prefix_len() == 8)
        .unwrap()
        .class];
    assert!(
        class
            .iter()
            .any(|p| p.proto == 6 && p.prefix_len == PORT_KEY_PROTO_BITS)
    );
}
