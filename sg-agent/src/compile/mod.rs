//! Compiles the rules of an interface's groups into the datapath's two-stage
//! lookup: an address trie that maps the peer to a *class* (the set of rules
//! whose CIDRs contain it), and a port trie that maps (class, protocol, port)
//! to allow flags. Both are one lookup whatever the number of rules.
//!
//! A peer address's rules are those of the longest CIDR containing it plus
//! those of every shorter CIDR containing that one (CIDRs that share an
//! address are nested), so each distinct CIDR gets the class of itself and its
//! ancestors, and the trie's longest match finds it.

//!
//! This module is the one owner of "model to kernel bytes": rules to
//! entries here, port ranges to aligned blocks in `ports`, entries and
//! settings to map keys and `IfaceCfg` in `keys`. The datapath allocates
//! ids and writes what it is given.

mod keys;
mod ports;

pub use keys::AddrKeys;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FAMILY_V6, IFACE_HOST_SIDE, IFACE_RELATED_ICMP, IfaceCfg,
    PROTO_TCP, PROTO_UDP, all_response_bit,
};

pub use ports::blocks;
use ports::port_entries;

use crate::model::{AttachMode, Desired, Interface, Peer, Protocol, Timeouts};

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
                let span = port_span(r.protocol, r.from_port, r.to_port);
                for net in peer_nets(d, &r.peer) {
                    out.insert(Flat {
                        net,
                        protocol: r.protocol,
                        lo: span.0,
                        hi: span.1,
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

/// A rule's ports over the 16-bit space the datapath matches: TCP and UDP
/// their range; ICMP and ICMPv6 the type in the high byte and the code in the
/// low one (`-1` for all of either); every other protocol all ports.
pub fn port_span(protocol: Protocol, from_port: i32, to_port: i32) -> (u16, u16) {
    match (protocol, from_port, to_port) {
        (Protocol::Number(PROTO_TCP | PROTO_UDP), from, to) => (from as u16, to as u16),
        (Protocol::Number(1 | 58), -1, _) => (0, u16::MAX),
        (Protocol::Number(1 | 58), t, -1) => ((t as u16) << 8, (t as u16) << 8 | 0xff),
        (Protocol::Number(1 | 58), t, c) => {
            let v = (t as u16) << 8 | c as u16;
            (v, v)
        }
        _ => (0, u16::MAX),
    }
}

/// What of an interface, beside its rules, the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub attach: AttachMode,
    pub timeouts: Timeouts,
    pub related_icmp: bool,
}

impl Settings {
    pub fn of(iface: &Interface) -> Settings {
        Settings {
            attach: iface.attach,
            timeouts: iface.timeouts,
            related_icmp: iface.related_icmp,
        }
    }

    fn cfg(&self) -> IfaceCfg {
        let mut flags = 0;
        if self.attach == AttachMode::Host {
            flags |= IFACE_HOST_SIDE;
        }
        if self.related_icmp {
            flags |= IFACE_RELATED_ICMP;
        }
        IfaceCfg {
            flags,
            tcp_established: self.timeouts.tcp_established,
            udp_stream: self.timeouts.udp_stream,
            udp: self.timeouts.udp,
            ..IfaceCfg::default()
        }
    }
}

/// The compiled policy of an interface of `d`.
pub fn compile_interface(d: &Desired, iface: &Interface) -> Compiled {
    let (inbound, outbound) = interface_rules(d, iface);
    compile(&inbound, &outbound, &Settings::of(iface))
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
    /// The interface's kernel configuration (its `all_response` bits too), but for what the datapath
    /// allocates (`policy` ids and the `stats_slot`).
    pub cfg: IfaceCfg,
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

/// Compiles an interface's inbound and outbound rules, with its settings.
pub fn compile(inbound: &[Flat], outbound: &[Flat], settings: &Settings) -> Compiled {
    let mut out = Compiled {
        cfg: settings.cfg(),
        ..Compiled::default()
    };
    let by_dir = [(DIR_INBOUND, inbound), (DIR_OUTBOUND, outbound)];
    // Which (dir, family, tcp/udp) allow all responses: a /0 rule of the
    // protocol (or of all protocols) on all ports (docs/contract.md §3).
    for (dir, rules) in by_dir {
        for r in rules {
            if is_default_route(&r.net) && r.lo == 0 && r.hi == u16::MAX {
                for p in [PROTO_TCP, PROTO_UDP] {
                    if r.protocol == Protocol::All || r.protocol == Protocol::Number(p) {
                        out.cfg.all_response |= all_response_bit(dir, family_of(&r.net), p);
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
                |proto: u8| out.cfg.all_response & all_response_bit(other, family, proto) != 0;
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

#[cfg(test)]
mod tests;
