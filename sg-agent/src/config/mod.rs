//! The desired state as the operator writes it: YAML (or the JSON that
//! `aws ec2 describe-security-groups` prints), parsed leniently here and then
//! validated as a whole by [`validate`], which reports every problem at once
//! with its file, line and object.
//!
//! Rules are spelled the way AWS spells them (`ip_protocol`, `from_port`,
//! `to_port`, `ip_ranges`, `ipv6_ranges`, `prefix_list_ids`,
//! `user_id_group_pairs`, or `IpProtocol`, `FromPort`, ...), so an AWS user
//! reads a file without the docs.

mod limits;
pub mod lines;
#[cfg(test)]
mod robust_tests;
pub mod validate;

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, Deserializer};

pub use validate::{Desired, Group, Interface, Issue, Peer, PrefixList, Rule, Vpc};

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

/// Where inbound-side packets (the interface's ingress) are judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
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

/// AWS's quotas, with its defaults; configurable as on AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// The whole file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The `OwnerId` that `describe-security-groups` prints.
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub vpcs: Vec<RawVpc>,
    #[serde(default)]
    pub prefix_lists: Vec<RawPrefixList>,
    #[serde(default)]
    pub security_groups: Vec<RawGroup>,
    #[serde(default)]
    pub network_interfaces: Vec<RawIface>,
    #[serde(default)]
    pub conntrack: ConntrackTable,
    #[serde(default)]
    pub quotas: Quotas,
    /// Files holding `aws ec2 describe-security-groups` output, relative to
    /// this file.
    #[serde(default)]
    pub import: Vec<String>,
    /// `describe-security-groups` output pasted inline.
    #[serde(default, rename = "SecurityGroups")]
    pub aws_security_groups: Vec<RawGroup>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVpc {
    #[serde(default, alias = "VpcId")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, alias = "CidrBlocks")]
    pub cidr_blocks: Vec<String>,
    #[serde(default, alias = "Ipv6CidrBlocks")]
    pub ipv6_cidr_blocks: Vec<String>,
    /// Names or ids of peered VPCs.
    #[serde(default)]
    pub peerings: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefixList {
    #[serde(default, alias = "PrefixListId")]
    pub id: Option<String>,
    #[serde(alias = "PrefixListName")]
    pub name: String,
    #[serde(default = "ipv4", alias = "AddressFamily")]
    pub address_family: String,
    #[serde(alias = "MaxEntries")]
    pub max_entries: u32,
    #[serde(default, alias = "Entries")]
    pub entries: Vec<RawPlEntry>,
}

fn ipv4() -> String {
    "IPv4".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlEntry {
    #[serde(alias = "Cidr")]
    pub cidr: String,
    #[serde(default, alias = "Description")]
    pub description: Option<String>,
}

/// A security group, in YAML or as `describe-security-groups` prints it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    #[serde(default, alias = "GroupId")]
    pub id: Option<String>,
    #[serde(default, alias = "GroupName")]
    pub name: String,
    #[serde(default, alias = "Description")]
    pub description: Option<String>,
    #[serde(default, alias = "VpcId")]
    pub vpc: Option<String>,
    #[serde(default, alias = "OwnerId")]
    pub owner_id: Option<String>,
    /// AWS's ARN of the group (`arn:aws:ec2:REGION:ACCOUNT:security-group/sg-…`):
    /// accepted so that current `describe-security-groups` output imports,
    /// and ignored, since it restates the account and the id.
    #[serde(default, alias = "SecurityGroupArn")]
    pub _arn: Option<String>,
    #[serde(default, alias = "Tags", deserialize_with = "tags")]
    pub tags: BTreeMap<String, String>,
    /// Inbound rules. A new group has none.
    #[serde(default, alias = "inbound", alias = "IpPermissions")]
    pub ingress: Vec<RawRule>,
    /// Outbound rules. Absent: AWS's default for a new group, all traffic to
    /// `0.0.0.0/0` (and `::/0` when the VPC has IPv6). Empty: none.
    #[serde(
        default,
        alias = "outbound",
        alias = "IpPermissionsEgress",
        deserialize_with = "present_list"
    )]
    pub egress: Option<Vec<RawRule>>,
    /// Where it came from, for error messages: set by the loader.
    #[serde(skip)]
    pub origin: Origin,
}

/// The document and path an object was read from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub doc: usize,
    pub path: String,
}

/// A list that, when present, must be a list: `egress:` with nothing after
/// it (null) is refused rather than read as "absent", which would mean AWS's
/// allow-all default. A file cut just after the key looks exactly like that.
fn present_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawRule>>, D::Error> {
    match Option::<Vec<RawRule>>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom(
            "egress is empty (null): write [] for no outbound rules, or leave the key out for AWS's default (all outbound traffic)",
        )),
    }
}

/// Tags as a YAML map or as AWS's `[{Key, Value}]`. A key given twice is an
/// error, as it is for AWS, rather than the last one silently winning.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    struct Kv {
        #[serde(rename = "Key", alias = "key")]
        key: String,
        #[serde(default, rename = "Value", alias = "value")]
        value: String,
    }
    // Not an untagged enum: its "did not match any variant" would hide the
    // reason (a duplicate key, which a `Mapping` refuses itself).
    let pairs: Vec<(String, String)> = match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::Mapping(m) => m
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (serde_yaml::Value::String(k), serde_yaml::Value::String(v)) => Ok((k, v)),
                _ => Err(D::Error::custom("tag keys and values are strings")),
            })
            .collect::<Result<_, _>>()?,
        v @ serde_yaml::Value::Sequence(_) => serde_yaml::from_value::<Vec<Kv>>(v)
            .map_err(D::Error::custom)?
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        _ => {
            return Err(D::Error::custom(
                "tags are a map, or a list of {Key, Value}",
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v).is_some() {
            return Err(D::Error::custom(format!("duplicate tag key {k:?}")));
        }
    }
    Ok(out)
}

/// One AWS `IpPermission`: a protocol and port range, and its peers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(
        alias = "IpProtocol",
        alias = "protocol",
        deserialize_with = "string_or_number"
    )]
    pub ip_protocol: String,
    #[serde(default, alias = "FromPort")]
    pub from_port: Option<i64>,
    #[serde(default, alias = "ToPort")]
    pub to_port: Option<i64>,
    #[serde(default, alias = "IpRanges")]
    pub ip_ranges: Vec<RawPeer>,
    #[serde(default, alias = "Ipv6Ranges")]
    pub ipv6_ranges: Vec<RawPeer>,
    #[serde(default, alias = "PrefixListIds")]
    pub prefix_list_ids: Vec<RawPeer>,
    #[serde(default, alias = "UserIdGroupPairs")]
    pub user_id_group_pairs: Vec<RawPeer>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(i64),
        S(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::N(n) => n.to_string(),
        Either::S(s) => s,
    })
}

/// A peer written bare (`10.0.0.0/8`, `pl-…`, `web`) or as AWS writes it.
#[derive(Debug, Clone, Default)]
pub struct RawPeer {
    /// The CIDR, prefix-list id/name or group id/name.
    pub value: String,
    pub description: Option<String>,
    /// Group pairs: the referenced group's VPC and the peering, when another VPC.
    pub vpc: Option<String>,
    pub peering: Option<String>,
}

impl<'de> Deserialize<'de> for RawPeer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(
                default,
                alias = "cidr_ip",
                alias = "CidrIp",
                alias = "cidr_ipv6",
                alias = "CidrIpv6",
                alias = "prefix_list_id",
                alias = "PrefixListId",
                alias = "group_id",
                alias = "GroupId"
            )]
            value: Option<String>,
            #[serde(default, alias = "group_name", alias = "GroupName")]
            name: Option<String>,
            #[serde(default, alias = "Description")]
            description: Option<String>,
            #[serde(default, alias = "vpc_id", alias = "VpcId")]
            vpc: Option<String>,
            #[serde(
                default,
                alias = "vpc_peering_connection_id",
                alias = "VpcPeeringConnectionId"
            )]
            peering: Option<String>,
            #[serde(default, alias = "user_id", alias = "UserId")]
            _user_id: Option<String>,
            #[serde(default, alias = "peering_status", alias = "PeeringStatus")]
            _peering_status: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bare(String),
            Full(Full),
        }
        Ok(match Either::deserialize(d)? {
            Either::Bare(value) => RawPeer {
                value,
                ..Default::default()
            },
            Either::Full(f) => RawPeer {
                value: f.value.or(f.name).unwrap_or_default(),
                description: f.description,
                vpc: f.vpc,
                peering: f.peering,
            },
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default, alias = "TcpEstablishedTimeout")]
    pub tcp_established: Option<i64>,
    #[serde(default, alias = "UdpStreamTimeout")]
    pub udp_stream: Option<i64>,
    #[serde(default, alias = "UdpTimeout")]
    pub udp: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIface {
    /// Linux interface name.
    pub interface: String,
    /// The ENI id; generated from the interface name when absent.
    #[serde(default, alias = "NetworkInterfaceId")]
    pub id: Option<String>,
    #[serde(default, alias = "VpcId")]
    pub vpc: Option<String>,
    #[serde(default)]
    pub private_ipv4: Vec<String>,
    #[serde(default)]
    pub private_ipv6: Vec<String>,
    /// Group names or ids; absent means the VPC's default group.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub attach: AttachMode,
    #[serde(default)]
    pub ingress_hook: IngressHook,
    #[serde(default, alias = "ConnectionTrackingSpecification")]
    pub conntrack: RawTimeouts,
    /// Let ICMP errors about a tracked flow through (Linux's RELATED). Off by
    /// default, as on AWS, where "fragmentation needed" needs a rule.
    #[serde(default)]
    pub related_icmp: bool,
    /// The interface may be absent at start; it is enforced whenever it exists.
    #[serde(default)]
    pub optional: bool,
    /// Stop enforcing on this interface (and forget its policy). Leaving an
    /// interface out of the file keeps its last policy instead.
    #[serde(default)]
    pub detached: bool,
}

/// `describe-security-groups` output (botocore's `DescribeSecurityGroupsResult`).
/// Members beside `SecurityGroups` (`NextToken`, boto3's `ResponseMetadata`)
/// say nothing about the groups and are ignored; inside a group every member
/// is named (see [`RawGroup`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AwsGroups {
    #[serde(rename = "SecurityGroups")]
    pub security_groups: Vec<RawGroup>,
}

/// A document read: the configuration or an imported file.
pub struct Doc {
    pub file: String,
    pub lines: lines::LineIndex,
}

/// Reads `path` and the files it imports, then validates the whole.
/// `previous` is the state in force, if any (deleting a group still in use is
/// a `DependencyViolation` rather than a `NotFound`).
pub fn load(path: &Path, previous: Option<&Desired>) -> Result<Desired, Issues> {
    let text = crate::file::read_config_text(path)
        .map_err(|e| Issues::single(&path.display().to_string(), e))?;
    parse(&path.display().to_string(), &text, path.parent(), previous)
}

/// Parses and validates `text` (named `file`); imports resolve against `dir`.
pub fn parse(
    file: &str,
    text: &str,
    dir: Option<&Path>,
    previous: Option<&Desired>,
) -> Result<Desired, Issues> {
    limits::check_nesting(file, text)?;
    // serde_yaml first: it bounds nesting (and alias expansion), so the line
    // index, whose cost grows with depth, only ever sees a shallow document.
    let mut raw: RawConfig = serde_yaml::from_str(text).map_err(|e| Issues::from_yaml(file, &e))?;
    let mut docs = vec![Doc {
        file: file.into(),
        lines: lines::LineIndex::new(text),
    }];
    for (i, g) in raw.security_groups.iter_mut().enumerate() {
        g.origin = Origin {
            doc: 0,
            path: format!("security_groups[{i}]"),
        };
    }
    for (i, g) in raw.aws_security_groups.iter_mut().enumerate() {
        g.origin = Origin {
            doc: 0,
            path: format!("SecurityGroups[{i}]"),
        };
    }
    let mut imported = Vec::new();
    for name in raw.import.clone() {
        let p = dir.map_or_else(|| Path::new(&name).to_path_buf(), |d| d.join(&name));
        let shown = p.display().to_string();
        let text = crate::file::read_config_text(&p)
            .map_err(|e| Issues::single(file, format!("import {shown}: {e}")))?;
        limits::check_nesting(&shown, &text)?;
        let aws: AwsGroups =
            serde_yaml::from_str(&text).map_err(|e| Issues::from_yaml(&shown, &e))?;
        let doc = docs.len();
        docs.push(Doc {
            file: shown,
            lines: lines::LineIndex::new(&text),
        });
        for (i, mut g) in aws.security_groups.into_iter().enumerate() {
            g.origin = Origin {
                doc,
                path: format!("SecurityGroups[{i}]"),
            };
            imported.push(g);
        }
    }
    raw.aws_security_groups.extend(imported);
    validate::validate(&raw, &docs, previous)
}

/// Every problem found in a configuration, each with its place.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub(crate) fn single(file: &str, message: String) -> Issues {
        Issues(vec![Issue {
            file: file.into(),
            line: None,
            object: String::new(),
            code: "InvalidParameterValue",
            message,
            warning: false,
        }])
    }

    fn from_yaml(file: &str, e: &serde_yaml::Error) -> Issues {
        let msg = e.to_string();
        // serde_yaml appends " at line L column C"; the place is reported apart.
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        Issues(vec![Issue {
            file: file.into(),
            line: e.location().map(|l| l.line()),
            object: String::new(),
            code: "InvalidParameterValue",
            message: msg,
            warning: false,
        }])
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<&Issue> = self.0.iter().filter(|i| !i.warning).collect();
        writeln!(f, "{} error(s) in the configuration:", errors.len())?;
        for i in errors {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}
