//! Compiles the rules of an interface's groups into what the datapath
//! matches (docs/datapath.md, "The lookup path"):
//!
//! - each rule peer becomes an *atom*: an address block (a CIDR, or a prefix
//!   list's entry), or a group, which stands for its members' addresses;
//! - the shared address map gives every address block an *identity*: the set
//!   of atoms that contain it (its own and those of every shorter block
//!   containing it, since blocks that share an address are nested), so the
//!   longest match finds all of them — one entry per address, whatever the
//!   number of interfaces (`addresses`);
//! - an interface's policy maps (identity, protocol) to the port segments
//!   its rules allow that identity (`ports`).
//!
//! This module is the one owner of "model to kernel bytes": rules to atoms
//! and segments here, port ranges to segments in `ports`, keys and values in
//! `keys`. The datapath allocates ids and writes what it is given.

mod addresses;
mod kept;
mod keys;
mod ports;

pub use addresses::{Members, address_map, covering, members, prefix_lengths};
pub use kept::Compiler;
pub use keys::{AddrKey, addr_key, lens_value, policy_entries};
use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FAMILY_V6, IFACE_HOST_SIDE, IFACE_RELATED_ICMP, IfaceCfg,
    PROTO_TCP, PROTO_UDP, all_response_bit,
};

pub use ports::{PolicyIndex, Segments};

use crate::model::{self, AttachMode, Desired, Interface, Peer, Protocol, Timeouts};

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
    let mut dirs = [BTreeSet::new(), BTreeSet::new()];
    for (dir, r) in rules_of(d, iface) {
        let (lo, hi) = port_span(r.protocol, r.from_port, r.to_port);
        for net in peer_nets(d, &r.peer) {
            dirs[dir].insert(Flat {
                net,
                protocol: r.protocol,
                lo,
                hi,
            });
        }
    }
    let [inbound, outbound] = dirs.map(|d| d.into_iter().collect());
    (inbound, outbound)
}

/// The rules of `iface`'s groups, each with its direction (0: inbound).
fn rules_of<'a>(
    d: &'a Desired,
    iface: &'a Interface,
) -> impl Iterator<Item = (usize, &'a model::Rule)> {
    iface
        .groups
        .iter()
        .filter_map(|gid| d.group(gid))
        .flat_map(|g| {
            let inbound = g.ingress.iter().map(|r| (0, r));
            inbound.chain(g.egress.iter().map(|r| (1, r)))
        })
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
            .flat_map(addresses::of)
            .map(IpNet::from)
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

/// A rule peer as the datapath matches it: an address block, or the
/// members of a group (whose addresses the shared address map carries, so
/// that a member joining is one map write).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    Net(IpNet),
    Group(String),
    /// A block that an earlier agent's policy, still in force on an
    /// interface this agent keeps as it was, knows by identity `.1`: kept in
    /// the address map so that policy keeps judging it as it did. No rule
    /// names it.
    Kept(IpNet, u32),
}

/// A rule reduced to what the datapath matches: one atom, one protocol, one
/// range over the 16-bit port space.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub atom: Atom,
    pub protocol: Protocol,
    pub lo: u16,
    pub hi: u16,
}

/// What one direction of an interface's policy is made of: its rules, and
/// which `/0` rules may leave flows untracked (the other direction allows
/// all responses, by family and TCP/UDP). Interfaces whose directions are
/// equal share one policy in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DirPolicy {
    pub rules: Vec<Rule>,
    /// Indexed by `family_index * 2 + (proto == UDP)`.
    pub untracked_ok: [bool; 4],
}

impl DirPolicy {
    pub fn atoms(&self) -> impl Iterator<Item = &Atom> {
        self.rules.iter().map(|r| &r.atom)
    }
}

/// The compiled policy of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Inbound and outbound, indexed by direction.
    pub dirs: [DirPolicy; 2],
    /// The interface's kernel configuration (its `all_response` bits too),
    /// but for what the datapath allocates (`policy` ids and the
    /// `stats_slot`).
    pub cfg: IfaceCfg,
}

impl Compiled {
    /// The interface's configuration with the ids the datapath allocated.
    pub fn iface_cfg(&self, policy: [u32; 2], stats_slot: u32) -> IfaceCfg {
        IfaceCfg {
            policy,
            stats_slot,
            ..self.cfg
        }
    }
}

/// The compiled policy of an interface of `d`: group references stay
/// groups (their members are `members(d)`), prefix lists become their
/// entries, stale references match nothing.
pub fn compile_interface(d: &Desired, iface: &Interface) -> Compiled {
    let mut dirs = [BTreeSet::new(), BTreeSet::new()];
    for (dir, r) in rules_of(d, iface) {
        let (lo, hi) = port_span(r.protocol, r.from_port, r.to_port);
        let atoms: Vec<Atom> = match &r.peer {
            Peer::Group { stale: true, .. } => vec![],
            Peer::Group { id, .. } => vec![Atom::Group(id.clone())],
            other => peer_nets(d, other).into_iter().map(Atom::Net).collect(),
        };
        for atom in atoms {
            dirs[dir].insert(Rule {
                atom,
                protocol: r.protocol,
                lo,
                hi,
            });
        }
    }
    let [inbound, outbound] = dirs;
    build(inbound, outbound, &Settings::of(iface))
}

/// Compiles inbound and outbound rules given as address blocks, with the
/// interface's settings (tests and benchmarks).
pub fn compile(inbound: &[Flat], outbound: &[Flat], settings: &Settings) -> Compiled {
    let rules = |fs: &[Flat]| {
        fs.iter()
            .map(|f| Rule {
                atom: Atom::Net(f.net),
                protocol: f.protocol,
                lo: f.lo,
                hi: f.hi,
            })
            .collect::<Vec<_>>()
    };
    compile_rules(rules(inbound), rules(outbound), settings)
}

/// Compiles rules given as atoms (benchmarks: group references without a
/// model around them).
pub fn compile_rules(
    inbound: impl IntoIterator<Item = Rule>,
    outbound: impl IntoIterator<Item = Rule>,
    settings: &Settings,
) -> Compiled {
    build(
        inbound.into_iter().collect(),
        outbound.into_iter().collect(),
        settings,
    )
}

fn family_of(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}

fn is_default_route(atom: &Atom) -> Option<u8> {
    match atom {
        Atom::Net(n) if n.prefix_len() == 0 => Some(family_of(n)),
        _ => None,
    }
}

fn build(inbound: BTreeSet<Rule>, outbound: BTreeSet<Rule>, settings: &Settings) -> Compiled {
    let mut cfg = settings.cfg();
    let by_dir = [(DIR_INBOUND, &inbound), (DIR_OUTBOUND, &outbound)];
    // Which (dir, family, tcp/udp) allow all responses: a /0 rule of the
    // protocol (or of all protocols) on all ports (docs/contract.md §3).
    for (dir, rules) in by_dir {
        for r in rules.iter() {
            if let Some(family) = is_default_route(&r.atom)
                && r.lo == 0
                && r.hi == u16::MAX
            {
                for p in [PROTO_TCP, PROTO_UDP] {
                    if r.protocol == Protocol::All || r.protocol == Protocol::Number(p) {
                        cfg.all_response |= all_response_bit(dir, family, p);
                    }
                }
            }
        }
    }
    let dir_policy = |dir: u8, rules: &BTreeSet<Rule>| {
        let other = if dir == DIR_INBOUND {
            DIR_OUTBOUND
        } else {
            DIR_INBOUND
        };
        let mut untracked_ok = [false; 4];
        for (i, ok) in untracked_ok.iter_mut().enumerate() {
            let family = if i / 2 == 0 { FAMILY_V4 } else { FAMILY_V6 };
            let proto = if i % 2 == 0 { PROTO_TCP } else { PROTO_UDP };
            *ok = cfg.all_response & all_response_bit(other, family, proto) != 0;
        }
        DirPolicy {
            rules: rules.iter().cloned().collect(),
            untracked_ok,
        }
    };
    Compiled {
        dirs: [
            dir_policy(DIR_INBOUND, &inbound),
            dir_policy(DIR_OUTBOUND, &outbound),
        ],
        cfg,
    }
}

/// `net` cut to its first `len` bits.
pub(crate) fn truncate(net: &IpNet, len: u8) -> IpNet {
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
