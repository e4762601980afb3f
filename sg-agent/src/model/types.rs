//! The domain model: the desired state once validated, whatever its source
//! (a file today, EC2 API calls next). Ids are resolved, CIDRs canonical,
//! default groups and default egress present, one peer per rule.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::Issue;

/// `-1` (all) or an IANA protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    All,
    Number(u8),
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        // Case-blind without a lowered copy: every rule of a state is
        // parsed at each validation.
        let t = s.trim();
        let named = [
            ("-1", Protocol::All),
            ("all", Protocol::All),
            ("tcp", Protocol::Number(6)),
            ("udp", Protocol::Number(17)),
            ("icmp", Protocol::Number(1)),
            ("icmpv6", Protocol::Number(58)),
        ];
        if let Some((_, p)) = named.iter().find(|(n, _)| t.eq_ignore_ascii_case(n)) {
            return Ok(*p);
        }
        t.parse::<u8>().map(Protocol::Number).map_err(|_| {
            format!(
                "invalid ip_protocol {s:?}: expected tcp, udp, icmp, icmpv6, -1 or a number 0-255"
            )
        })
    }

    /// The AWS API spelling: `tcp`, `udp`, `icmp`, `icmpv6`, `-1` or a number.
    pub fn aws(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("-1"),
            Protocol::Number(6) => f.write_str("tcp"),
            Protocol::Number(17) => f.write_str("udp"),
            Protocol::Number(1) => f.write_str("icmp"),
            Protocol::Number(58) => f.write_str("icmpv6"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Which side of the interface the workload is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// The workload's own interface: inbound is its ingress.
    #[default]
    Workload,
    /// The host side of a veth (or a tap) whose peer is the workload: inbound
    /// is the host side's egress.
    Host,
}

/// Where inbound-side packets (the interface's ingress) are judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressHook {
    /// tcx, like egress: the cheaper hook on veth.
    #[default]
    Tcx,
    /// XDP, before the kernel builds an skb: drops cost least on real NICs.
    Xdp,
}

/// AWS `ConnectionTrackingSpecification`, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: u32,
    pub udp_stream: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: 432_000,
            udp_stream: 180,
            udp: 30,
        }
    }
}

/// Host-wide settings of the tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackTable {
    /// Tracked flows allowed at once, all interfaces together; new flows past
    /// it are refused and counted, established ones are never evicted.
    pub max_flows: u32,
}

impl Default for ConntrackTable {
    fn default() -> Self {
        ConntrackTable { max_flows: 262_144 }
    }
}

/// AWS's quotas, with its defaults; configurable as on AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub groups_per_interface: u32,
    /// Inbound, and apart outbound, rules per group; IPv4 and IPv6 apart.
    pub rules_per_group: u32,
    pub groups_per_vpc: u32,
    pub prefix_list_max_entries: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            groups_per_interface: 5,
            rules_per_group: 60,
            groups_per_vpc: 2500,
            prefix_list_max_entries: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
    pub peers: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
    /// EC2's VPC attributes (`enableDnsSupport`, ...), as set.
    pub attributes: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList {
    pub id: String,
    pub name: String,
    pub ipv6: bool,
    pub max_entries: u32,
    pub entries: Vec<(IpNet, Option<String>)>,
    pub version: u64,
    pub tags: BTreeMap<String, String>,
}

/// A rule's one peer (docs/contract.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Cidr(IpNet),
    PrefixList(String),
    Group {
        id: String,
        vpc: String,
        peering: Option<String>,
        /// The group or the peering is gone: kept, reported, matches nothing.
        stale: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub protocol: Protocol,
    /// As AWS reports them: port range, or ICMP type and code; -1 for all.
    pub from_port: i32,
    pub to_port: i32,
    pub peer: Peer,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc: String,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    /// Shared, as `Desired::interfaces`, with the state before when the
    /// group's rules did not change.
    pub ingress: Arc<[Rule]>,
    pub egress: Arc<[Rule]>,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// The host that enforces it; `None`: any host that has it.
    pub host: Option<String>,
    pub id: String,
    pub vpc: String,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Group ids.
    pub groups: Vec<String>,
    pub attach: AttachMode,
    pub ingress_hook: IngressHook,
    pub timeouts: Timeouts,
    pub related_icmp: bool,
    pub optional: bool,
    /// The operator's explicit "stop enforcing here": removing an interface
    /// from the file never detaches it (README, "How reloads are taken").
    pub detached: bool,
    pub tags: BTreeMap<String, String>,
}

/// The validated desired state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub account_id: String,
    pub vpcs: Vec<Vpc>,
    pub prefix_lists: Vec<PrefixList>,
    pub groups: Vec<Group>,
    /// Shared between a state and the next when no interface changed (a
    /// fleet's state holds tens of thousands, and every change makes a new
    /// state; an `Arc` compares equal to itself at once).
    pub interfaces: Arc<[Interface]>,
    pub conntrack: ConntrackTable,
    pub quotas: Quotas,
    /// Problems that do not stop the configuration (stale references).
    pub warnings: Vec<Issue>,
}

impl Desired {
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    pub fn prefix_list(&self, id: &str) -> Option<&PrefixList> {
        self.prefix_lists.iter().find(|p| p.id == id)
    }
}
