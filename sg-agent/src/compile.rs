//! Compiles the rules of an interface's groups into the datapath's two-stage
//! lookup: an address trie that maps the peer to a *class* (the set of rules
//! whose CIDRs contain it), and a port trie that maps (class, protocol, port)
//! to allow flags. Both are one lookup whatever the number of rules.
//!
//! A peer address's rules are those of the longest CIDR containing it plus
//! those of every shorter CIDR containing that one (CIDRs that share an
//! address are nested), so each distinct CIDR gets the class of itself and its
//! ancestors, and the trie's longest match finds it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FAMILY_V6, PORT_ALLOW, PORT_KEY_CLASS_BITS,
    PORT_KEY_PROTO_BITS, PORT_UNTRACKED, PROTO_TCP, PROTO_UDP, all_response_bit,
};

use crate::config::{Desired, Interface, Peer, Protocol};

/// A rule reduced to what the datapath matches: one peer, one protocol, one
/// range over the 16-bit port space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flat {
    pub net: IpNet,
    pub protocol: Protocol,
    pub lo: u16,
    pub hi: u16,
}

/// The rules in force on `iface`, one entry per peer address block: CIDRs as
/// written, prefix lists expanded to their entries, group references to the
/// private addresses of every interface in the group (both families). Stale
/// references match nothing.
pub fn interface_rules(d: &Desired, iface: &Interface) -> (Vec<Flat>, Vec<Flat>) {
    let mut inbound = BTreeSet::new();
    let mut outbound = BTreeSet::new();
    for gid in &iface.groups {
        let Some(g) = d.group(gid) else { continue };
        for (rules, out) in [(&g.ingress, &mut inbound), (&g.egress, &mut outbound)] {
            for r in rules {
                for net in peer_nets(d, &r.peer) {
                    out.insert(Flat {
                        net,
                        protocol: r.protocol,
                        lo: r.ports.0,
                        hi: r.ports.1,
                    });
                }
            }
        }
    }
    (
        inbound.into_iter().collect(),
        outbound.into_iter().collect(),
    )
}

/// The address blocks a peer stands for now.
pub fn peer_nets(d: &Desired, peer: &Peer) -> Vec<IpNet> {
    match peer {
        Peer::Cidr(n) => vec![*n],
        Peer::PrefixList(id) => d
            .prefix_list(id)
            .map(|p| p.entries.iter().map(|e| e.0).collect())
            .unwrap_or_default(),
        Peer::Group { stale: true, .. } => vec![],
        Peer::Group { id, .. } => d
            .interfaces
            .iter()
            .filter(|i| i.groups.contains(id))
            .flat_map(|i| {
                i.ipv4
                    .iter()
                    .map(|a| IpNet::V4(Ipv4Net::from(*a)))
                    .chain(i.ipv6.iter().map(|a| IpNet::V6(Ipv6Net::from(*a))))
            })
            .collect(),
    }
}

/// One entry of the port trie: `prefix_len` bits of (class, proto, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEntry {
    pub prefix_len: u32,
    pub proto: u8,
    pub port: u16,
    pub flags: u32,
}

/// One entry of an address trie: a CIDR and the index of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrEntry {
    pub net: IpNet,
    pub class: usize,
}

/// The compiled policy of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Address entries per `policy_index(dir, family)`.
    pub addrs: [Vec<AddrEntry>; 4],
    /// Port-trie entries of each class, deduplicated across the interface.
    pub classes: Vec<Vec<PortEntry>>,
    /// `all_response_bit`s.
    pub all_response: u32,
}

fn family_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}

fn is_default_route(net: &IpNet) -> bool {
    net.prefix_len() == 0
}

/// Compiles an interface's inbound and outbound rules.
pub fn compile(inbound: &[Flat], outbound: &[Flat]) -> Compiled {
    let mut out = Compiled::default();
    let by_dir = [(DIR_INBOUND, inbound), (DIR_OUTBOUND, outbound)];
    // Which (dir, family, tcp/udp) allow all responses: a /0 rule of the
    // protocol (or of all protocols) on all ports (docs/contract.md §3).
    for (dir, rules) in by_dir {
        for r in rules {
            if is_default_route(&r.net) && r.lo == 0 && r.hi == u16::MAX {
                for p in [PROTO_TCP, PROTO_UDP] {
                    if r.protocol == Protocol::All || r.protocol == Protocol::Number(p) {
                        out.all_response |= all_response_bit(dir, family_of(&r.net), p);
                    }
                }
            }
        }
    }
    let mut class_ids: HashMap<Vec<PortEntry>, usize> = HashMap::new();
    for (dir, rules) in by_dir {
        let other = if dir == DIR_INBOUND {
            DIR_OUTBOUND
        } else {
            DIR_INBOUND
        };
        for family in [FAMILY_V4, FAMILY_V6] {
            let rules: Vec<&Flat> = rules
                .iter()
                .filter(|r| family_of(&r.net) == family)
                .collect();
            let mut by_net: BTreeMap<IpNet, Vec<&Flat>> = BTreeMap::new();
            for r in &rules {
                by_net.entry(r.net).or_default().push(r);
            }
            let untracked_ok =
                |proto: u8| out.all_response & all_response_bit(other, family, proto) != 0;
            let idx = sg_common::policy_index(dir, family);
            for net in by_net.keys() {
                // The rules of this CIDR and of every CIDR that contains it.
                let mut applicable: Vec<&Flat> = Vec::new();
                for len in 0..=net.prefix_len() {
                    let anc = truncate(net, len);
                    if let Some(rs) = by_net.get(&anc) {
                        applicable.extend(rs.iter().copied());
                    }
                }
                let entries = port_entries(&applicable, &untracked_ok);
                let next = class_ids.len();
                let class = *class_ids.entry(entries.clone()).or_insert_with(|| {
                    out.classes.push(entries);
                    next
                });
                out.addrs[idx].push(AddrEntry { net: *net, class });
            }
        }
    }
    out
}

fn truncate(net: &IpNet, len: u8) -> IpNet {
    match net {
        IpNet::V4(n) => IpNet::V4(
            Ipv4Net::new(n.network(), len)
                .expect("len within family")
                .trunc(),
        ),
        IpNet::V6(n) => IpNet::V6(
            Ipv6Net::new(n.network(), len)
                .expect("len within family")
                .trunc(),
        ),
    }
}

/// Port-trie entries for a set of rules that all apply to one peer.
fn port_entries(rules: &[&Flat], untracked_ok: &dyn Fn(u8) -> bool) -> Vec<PortEntry> {
    let mut entries = Vec::new();
    let all: Vec<&&Flat> = rules
        .iter()
        .filter(|r| r.protocol == Protocol::All)
        .collect();
    let mut protos: BTreeSet<u8> = rules
        .iter()
        .filter_map(|r| match r.protocol {
            Protocol::Number(n) => Some(n),
            Protocol::All => None,
        })
        .collect();
    if !all.is_empty() {
        // Other protocols fall through to the class-wide entry. TCP and UDP
        // get entries of their own so that they can carry the untracked flag.
        entries.push(PortEntry {
            prefix_len: PORT_KEY_CLASS_BITS,
            proto: 0,
            port: 0,
            flags: PORT_ALLOW,
        });
        protos.insert(PROTO_TCP);
        protos.insert(PROTO_UDP);
    }
    for proto in protos {
        // (lo, hi, untracked) intervals of this protocol.
        let ivs: Vec<(u16, u16, bool)> = rules
            .iter()
            .filter(|r| r.protocol == Protocol::All || r.protocol == Protocol::Number(proto))
            .map(|r| {
                let untracked = (proto == PROTO_TCP || proto == PROTO_UDP)
                    && is_default_route(&r.net)
                    && untracked_ok(proto);
                (r.lo, r.hi, untracked)
            })
            .collect();
        let segments = partition(&ivs);
        let covers_all = segments.first().is_some_and(|s| s.0 == 0)
            && segments.last().is_some_and(|s| s.1 == u16::MAX)
            && segments
                .windows(2)
                .all(|w| w[0].1 as u32 + 1 == w[1].0 as u32);
        let whole = segments.len() == 1 && covers_all;
        if covers_all && !whole {
            // Lets a non-first fragment (no ports) find "all ports allowed".
            entries.push(PortEntry {
                prefix_len: PORT_KEY_PROTO_BITS,
                proto,
                port: 0,
                flags: PORT_ALLOW,
            });
        }
        for (lo, hi, untracked) in segments {
            let flags = PORT_ALLOW | if untracked { PORT_UNTRACKED } else { 0 };
            for (port, bits) in blocks(lo, hi) {
                entries.push(PortEntry {
                    prefix_len: PORT_KEY_PROTO_BITS + bits,
                    proto,
                    port,
                    flags,
                });
            }
        }
    }
    entries.sort();
    entries
}

/// Disjoint, maximal segments covered by `ivs`; a segment is untracked when
/// any interval covering it is.
fn partition(ivs: &[(u16, u16, bool)]) -> Vec<(u16, u16, bool)> {
    let mut cuts: BTreeSet<u32> = BTreeSet::new();
    for &(lo, hi, _) in ivs {
        cuts.insert(lo as u32);
        cuts.insert(hi as u32 + 1);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<(u16, u16, bool)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let covering = ivs
            .iter()
            .filter(|iv| iv.0 as u32 <= lo && hi <= iv.1 as u32);
        let mut covered = false;
        let mut untracked = false;
        for iv in covering {
            covered = true;
            untracked |= iv.2;
        }
        if !covered {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 as u32 + 1 == lo && last.2 == untracked => last.1 = hi as u16,
            _ => out.push((lo as u16, hi as u16, untracked)),
        }
    }
    out
}

/// Splits `lo..=hi` into aligned power-of-two blocks: `(start, prefix bits)`.
pub fn blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
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
        let c = compile(&inbound, &[]);
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
        let c = compile(&inbound, &outbound);
        let v4 = sg_common::policy_index(DIR_INBOUND, FAMILY_V4);
        let f = lookup(&c, v4, "10.0.0.1", 6, 22).unwrap();
        assert_ne!(f & PORT_UNTRACKED, 0);
        let f = lookup(&c, v4, "10.0.0.1", 6, 80).unwrap();
        assert_eq!(f & PORT_UNTRACKED, 0);
        // Without the all-outbound rule, everything is tracked.
        let c = compile(&inbound, &[flat("0.0.0.0/0", TCP, 443, 443)]);
        let f = lookup(&c, v4, "10.0.0.1", 6, 22).unwrap();
        assert_eq!(f & PORT_UNTRACKED, 0);
        assert_eq!(c.all_response, 0);
    }

    #[test]
    fn all_protocols_and_fragment_entry() {
        let inbound = vec![
            flat("10.0.0.0/8", Protocol::All, 0, 65535),
            flat("0.0.0.0/0", TCP, 80, 80),
        ];
        let outbound = vec![flat("0.0.0.0/0", Protocol::All, 0, 65535)];
        let c = compile(&inbound, &outbound);
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
}
