//! The desired state, as the operator writes it in YAML.
//!
//! Rules are spelled the way AWS spells them (`ip_protocol`, `from_port`,
//! `to_port`, `ip_ranges`, `ipv6_ranges`), so an AWS user reads a file without
//! the docs. Field values are validated while they are parsed, so that a bad
//! value is reported with the line serde_yaml was at.

use std::{collections::HashSet, fmt, path::Path};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, de};

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub conntrack: ConntrackTable,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Inbound rules. A new group has none.
    #[serde(default, alias = "inbound")]
    pub ingress: Vec<Rule>,
    /// Outbound rules. Absent means AWS's default for a new group: all traffic
    /// to `0.0.0.0/0` and `::/0`. An empty list allows no outbound traffic.
    #[serde(default, alias = "outbound")]
    pub egress: Option<Vec<Rule>>,
}

/// One AWS `IpPermission`: a protocol and port range, and its peers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    pub protocol: Protocol,
    /// Inclusive range of destination ports (tcp/udp), or of ICMP
    /// `type << 8 | code` values; the whole space for other protocols.
    pub ports: (u16, u16),
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
}

/// `-1` (all) or an IANA protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    All,
    Number(u8),
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "-1" | "all" => Protocol::All,
            "tcp" => Protocol::Number(6),
            "udp" => Protocol::Number(17),
            "icmp" => Protocol::Number(1),
            "icmpv6" => Protocol::Number(58),
            other => match other.parse::<u8>() {
                Ok(n) => Protocol::Number(n),
                Err(_) => {
                    return Err(format!(
                        "invalid ip_protocol {s:?}: expected tcp, udp, icmp, icmpv6, -1 or a number 0-255"
                    ));
                }
            },
        })
    }

    /// Protocols whose rules carry a port range (or an ICMP type and code).
    fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(1 | 6 | 17 | 58))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(alias = "IpProtocol", alias = "protocol")]
    ip_protocol: ProtoField,
    #[serde(default, alias = "FromPort")]
    from_port: Option<i32>,
    #[serde(default, alias = "ToPort")]
    to_port: Option<i32>,
    #[serde(default, alias = "IpRanges")]
    ip_ranges: Vec<Range<Ipv4Net>>,
    #[serde(default, alias = "Ipv6Ranges")]
    ipv6_ranges: Vec<Range<Ipv6Net>>,
}

/// A protocol written as a string or as a bare number.
struct ProtoField(Protocol);

impl<'de> Deserialize<'de> for ProtoField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            S(String),
        }
        let s = match Either::deserialize(d)? {
            Either::N(n) => n.to_string(),
            Either::S(s) => s,
        };
        Protocol::parse(&s)
            .map(ProtoField)
            .map_err(de::Error::custom)
    }
}

/// A CIDR written bare (`10.0.0.0/8`) or as AWS writes it
/// (`{cidr_ip: 10.0.0.0/8, description: ...}`). Stored canonical, as AWS does:
/// `100.68.0.18/18` becomes `100.68.0.0/18`; a bare address is a /32 or /128.
struct Range<N>(N);

trait Cidr: Sized {
    const FAMILY: &'static str;
    fn parse_canonical(s: &str) -> Option<Self>;
}

impl Cidr for Ipv4Net {
    const FAMILY: &'static str = "IPv4";
    fn parse_canonical(s: &str) -> Option<Self> {
        s.parse::<Ipv4Net>()
            .or_else(|_| s.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
            .ok()
            .map(|n| n.trunc())
    }
}

impl Cidr for Ipv6Net {
    const FAMILY: &'static str = "IPv6";
    fn parse_canonical(s: &str) -> Option<Self> {
        s.parse::<Ipv6Net>()
            .or_else(|_| s.parse::<std::net::Ipv6Addr>().map(Ipv6Net::from))
            .ok()
            .map(|n| n.trunc())
    }
}

impl<'de, N: Cidr> Deserialize<'de> for Range<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bare(String),
            Aws {
                #[serde(
                    alias = "cidr_ip",
                    alias = "CidrIp",
                    alias = "cidr_ipv6",
                    alias = "CidrIpv6"
                )]
                cidr: String,
                #[serde(default, alias = "Description")]
                #[expect(
                    dead_code,
                    reason = "accepted for AWS compatibility; rule descriptions are not enforced"
                )]
                description: Option<String>,
            },
        }
        let s = match Either::deserialize(d)? {
            Either::Bare(s) | Either::Aws { cidr: s, .. } => s,
        };
        N::parse_canonical(s.trim())
            .map(Range)
            .ok_or_else(|| de::Error::custom(format!("invalid {} CIDR {s:?}", N::FAMILY)))
    }
}

impl TryFrom<RawRule> for Rule {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Self, String> {
        let protocol = r.ip_protocol.0;
        let ports = match protocol {
            Protocol::Number(6 | 17) => {
                let (Some(from), Some(to)) = (r.from_port, r.to_port) else {
                    return Err(format!("{protocol} rule needs from_port and to_port"));
                };
                let ok = |p: i32| (0..=65535).contains(&p);
                if !ok(from) || !ok(to) {
                    return Err(format!("invalid port range {from}-{to}: ports are 0-65535"));
                }
                if from > to {
                    return Err(format!(
                        "invalid port range {from}-{to}: from_port is greater than to_port"
                    ));
                }
                (from as u16, to as u16)
            }
            Protocol::Number(1 | 58) => {
                // from_port is the ICMP type, to_port the code; -1 is "all".
                let t = r.from_port.unwrap_or(-1);
                let c = r.to_port.unwrap_or(-1);
                let ok = |v: i32| (-1..=255).contains(&v);
                if !ok(t) || !ok(c) {
                    return Err(format!(
                        "invalid ICMP type {t} / code {c}: each is -1 (all) or 0-255"
                    ));
                }
                match (t, c) {
                    (-1, -1) => (0, u16::MAX),
                    (-1, _) => {
                        return Err(format!(
                            "invalid ICMP code {c} with type -1: the code must be -1 when the type is -1"
                        ));
                    }
                    (t, -1) => ((t as u16) << 8, (t as u16) << 8 | 0xff),
                    (t, c) => {
                        let v = (t as u16) << 8 | c as u16;
                        (v, v)
                    }
                }
            }
            // All ports, whatever range is given (SEMANTICS §2).
            _ => (0, u16::MAX),
        };
        debug_assert!(protocol.has_ports() || ports == (0, u16::MAX));
        if r.ip_ranges.is_empty() && r.ipv6_ranges.is_empty() {
            return Err("rule names no peer: give ip_ranges or ipv6_ranges".into());
        }
        Ok(Rule {
            protocol,
            ports,
            ipv4: r.ip_ranges.into_iter().map(|r| r.0).collect(),
            ipv6: r.ipv6_ranges.into_iter().map(|r| r.0).collect(),
        })
    }
}

/// Which side of the interface the workload is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// The workload's own interface: inbound is its ingress.
    #[default]
    Workload,
    /// The host side of a veth (or a tap) whose peer is the workload: inbound
    /// is the host side's egress.
    Host,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Linux interface name.
    pub interface: String,
    pub groups: Vec<String>,
    #[serde(default)]
    pub attach: AttachMode,
    #[serde(default)]
    pub conntrack: Timeouts,
    /// Let ICMP errors about a tracked flow through (Linux's RELATED). Off by
    /// default, as on AWS, where "fragmentation needed" needs a rule.
    #[serde(default)]
    pub related_icmp: bool,
}

/// AWS `ConnectionTrackingSpecification`, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, try_from = "RawTimeouts")]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default, alias = "TcpEstablishedTimeout")]
    tcp_established: Option<u32>,
    #[serde(default, alias = "UdpStreamTimeout")]
    udp_stream: Option<u32>,
    #[serde(default, alias = "UdpTimeout")]
    udp: Option<u32>,
}

impl TryFrom<RawTimeouts> for Timeouts {
    type Error = String;
    fn try_from(r: RawTimeouts) -> Result<Self, String> {
        let d = Timeouts::default();
        let pick = |name: &str, v: Option<u32>, def: u32, min: u32, max: u32| match v {
            None => Ok(def),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) => Err(format!(
                "{name} timeout {v} s is out of range {min}-{max} s"
            )),
        };
        Ok(Timeouts {
            tcp_established: pick(
                "tcp_established",
                r.tcp_established,
                d.tcp_established,
                60,
                432_000,
            )?,
            udp_stream: pick("udp_stream", r.udp_stream, d.udp_stream, 60, 180)?,
            udp: pick("udp", r.udp, d.udp, 30, 60)?,
        })
    }
}

/// Host-wide settings of the tracking table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// A configuration error: the file, the place in it, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {place}: {what}")]
pub struct ConfigError {
    pub file: String,
    pub place: String,
    pub what: String,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Ok(Config::parse(&path.display().to_string(), &text)?)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            place: match e.location() {
                Some(l) => format!("line {} column {}", l.line(), l.column()),
                None => "document".into(),
            },
            what: strip_location(&e.to_string()),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |place: String, what: String| ConfigError {
            file: file.into(),
            place,
            what,
        };
        let mut names = HashSet::new();
        for (i, g) in self.security_groups.iter().enumerate() {
            let place = format!("security_groups[{i}] ({:?})", g.name);
            if g.name.trim_end().is_empty() {
                return Err(err(place, "a group needs a name".into()));
            }
            if !names.insert(g.name.trim_end()) {
                return Err(err(place, format!("duplicate group name {:?}", g.name)));
            }
        }
        let mut ifaces = HashSet::new();
        for (i, n) in self.network_interfaces.iter().enumerate() {
            let place = format!("network_interfaces[{i}] ({:?})", n.interface);
            if n.interface.is_empty() || n.interface.len() > 15 {
                return Err(err(place, "interface names are 1-15 characters".into()));
            }
            if !ifaces.insert(&n.interface) {
                return Err(err(
                    place,
                    format!("interface {:?} is listed twice", n.interface),
                ));
            }
            if n.groups.is_empty() {
                return Err(err(place, "an interface needs at least one group".into()));
            }
            for g in &n.groups {
                if !names.contains(g.trim_end()) {
                    return Err(err(place, format!("unknown security group {g:?}")));
                }
            }
        }
        if self.conntrack.max_flows == 0 {
            return Err(err(
                "conntrack.max_flows".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn group(&self, name: &str) -> Option<&SecurityGroup> {
        self.security_groups
            .iter()
            .find(|g| g.name.trim_end() == name.trim_end())
    }
}

impl SecurityGroup {
    /// Outbound rules in force: the explicit list, or AWS's default.
    pub fn egress_rules(&self) -> Vec<Rule> {
        match &self.egress {
            Some(rules) => rules.clone(),
            None => vec![Rule {
                protocol: Protocol::All,
                ports: (0, u16::MAX),
                ipv4: vec![Ipv4Net::default()],
                ipv6: vec![Ipv6Net::default()],
            }],
        }
    }
}

/// serde_yaml appends " at line L column C"; the place is reported apart.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("t.yaml", text)
    }

    const OK: &str = r#"
security_groups:
  - name: web
    ingress:
      - ip_protocol: tcp
        from_port: 80
        to_port: 80
        ip_ranges: [0.0.0.0/0]
      - IpProtocol: "6"
        FromPort: 443
        ToPort: 443
        IpRanges: [{CidrIp: 100.68.0.18/18, Description: office}]
      - ip_protocol: icmp
        from_port: 8
        to_port: -1
        ip_ranges: [10.0.0.1]
network_interfaces:
  - interface: veth0
    groups: [web]
"#;

    #[test]
    fn parses_aws_spellings_and_canonicalises() {
        let c = parse(OK).unwrap();
        let g = &c.security_groups[0];
        assert_eq!(g.ingress[0].protocol, Protocol::Number(6));
        assert_eq!(g.ingress[0].ports, (80, 80));
        assert_eq!(g.ingress[1].protocol, Protocol::Number(6));
        assert_eq!(g.ingress[1].ipv4[0].to_string(), "100.68.0.0/18");
        assert_eq!(g.ingress[2].ports, (8 << 8, 8 << 8 | 0xff));
        assert_eq!(g.ingress[2].ipv4[0].to_string(), "10.0.0.1/32");
        // Default egress: everything to both families.
        let e = g.egress_rules();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].protocol, Protocol::All);
        assert_eq!(c.network_interfaces[0].conntrack, Timeouts::default());
    }

    fn expect_err(text: &str, line: Option<usize>, what: &str) {
        let e = parse(text).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.yaml: "), "{s}");
        assert!(s.contains(what), "{s:?} should mention {what:?}");
        if let Some(l) = line {
            assert!(
                e.place.starts_with(&format!("line {l} ")),
                "{s:?} should be at line {l}"
            );
        }
    }

    #[test]
    fn rejects_bad_values_with_place() {
        let rule =
            |body: &str| format!("security_groups:\n  - name: a\n    ingress:\n      - {body}\n");
        expect_err(
            &rule("{ip_protocol: tcp, from_port: 80, to_port: 80, ip_ranges: [10.0.0.300/8]}"),
            Some(4),
            "invalid IPv4 CIDR \"10.0.0.300/8\"",
        );
        expect_err(
            &rule("{ip_protocol: tcp, from_port: 80, to_port: 70000, ip_ranges: [0.0.0.0/0]}"),
            Some(4),
            "ports are 0-65535",
        );
        expect_err(
            &rule("{ip_protocol: tcp, from_port: 90, to_port: 80, ip_ranges: [0.0.0.0/0]}"),
            Some(4),
            "from_port is greater than to_port",
        );
        expect_err(
            &rule("{ip_protocol: tcp, ip_ranges: [0.0.0.0/0]}"),
            Some(4),
            "needs from_port and to_port",
        );
        expect_err(
            &rule("{ip_protocol: tcpx, from_port: 1, to_port: 1, ip_ranges: [0.0.0.0/0]}"),
            Some(4),
            "invalid ip_protocol",
        );
        expect_err(
            &rule("{ip_protocol: icmp, from_port: -1, to_port: 3, ip_ranges: [0.0.0.0/0]}"),
            Some(4),
            "the code must be -1",
        );
        expect_err(
            &rule("{ip_protocol: udp, from_port: 1, to_port: 1, ipv6_ranges: [\"10.0.0.0/8\"]}"),
            Some(4),
            "invalid IPv6 CIDR",
        );
        expect_err(
            &rule("{ip_protocol: udp, from_port: 1, to_port: 1}"),
            Some(4),
            "names no peer",
        );
        expect_err("security_groups: [", None, "");
        expect_err("bogus: 1\n", Some(1), "unknown field `bogus`");
    }

    #[test]
    fn rejects_bad_references() {
        expect_err(
            "security_groups: [{name: a}]\nnetwork_interfaces: [{interface: v0, groups: [b]}]\n",
            None,
            "network_interfaces[0] (\"v0\"): unknown security group \"b\"",
        );
        expect_err(
            "security_groups: [{name: a}, {name: 'a '}]\n",
            None,
            "security_groups[1] (\"a \"): duplicate group name",
        );
        expect_err(
            "security_groups: [{name: a}]\nnetwork_interfaces: [{interface: v0, groups: [a], conntrack: {udp: 5}}]\n",
            Some(2),
            "udp timeout 5 s is out of range 30-60 s",
        );
    }
}
