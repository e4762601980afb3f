//! The desired state as written, before validation: what a file
//! deserializes into (AWS's spellings accepted as aliases) and what the API
//! will build from a request. [`super::validate`] turns it into the model.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AttachMode, ConntrackTable, IngressHook, Quotas};

/// The whole file, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import: Vec<String>,
    /// `describe-security-groups` output pasted inline.
    #[serde(
        default,
        rename = "SecurityGroups",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub aws_security_groups: Vec<RawGroup>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, alias = "Tags", deserialize_with = "tags")]
    pub tags: BTreeMap<String, String>,
    /// `enableDnsSupport`, `enableDnsHostnames`, ...: kept and reported, as
    /// EC2 clients read them; they change nothing sg enforces.
    #[serde(default)]
    pub attributes: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
    /// Bumped by every change of the entries (`CurrentVersion`).
    #[serde(default, alias = "Version")]
    pub version: Option<u64>,
    #[serde(default, alias = "Tags", deserialize_with = "tags")]
    pub tags: BTreeMap<String, String>,
}

fn ipv4() -> String {
    "IPv4".into()
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlEntry {
    #[serde(alias = "Cidr")]
    pub cidr: String,
    #[serde(default, alias = "Description")]
    pub description: Option<String>,
}

/// A security group, in YAML or as `describe-security-groups` prints it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, alias = "SecurityGroupArn", skip_serializing)]
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
        deserialize_with = "present_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress: Option<Vec<RawRule>>,
    /// Where it came from, for error messages: set by the loader.
    #[serde(skip)]
    pub origin: Origin,
}

/// The document and path an object was read from.
#[derive(Debug, Clone, Default, PartialEq)]
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

/// Tags as a map or as AWS's `[{Key, Value}]`, whatever the format. A key
/// given twice is an error, as it is for AWS, rather than the last one
/// silently winning.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::{Error, MapAccess, SeqAccess, Visitor};
    #[derive(Deserialize)]
    struct Kv {
        #[serde(rename = "Key", alias = "key")]
        key: String,
        #[serde(default, rename = "Value", alias = "value")]
        value: String,
    }
    fn insert<E: Error>(out: &mut BTreeMap<String, String>, k: String, v: String) -> Result<(), E> {
        match out.insert(k.clone(), v) {
            Some(_) => Err(E::custom(format!("duplicate tag key {k:?}"))),
            None => Ok(()),
        }
    }
    struct Tags;
    impl<'de> Visitor<'de> for Tags {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of tags, or a list of {Key, Value}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                insert(&mut out, k, v)?;
            }
            Ok(out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(kv) = s.next_element::<Kv>()? {
                insert(&mut out, kv.key, kv.value)?;
            }
            Ok(out)
        }
    }
    d.deserialize_any(Tags)
}

/// One AWS `IpPermission`: a protocol and port range, and its peers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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

impl RawGroup {
    /// A copy without rules (none either way, not AWS's default egress).
    pub fn without_rules(&self) -> RawGroup {
        let RawGroup {
            id,
            name,
            description,
            vpc,
            owner_id,
            _arn,
            tags,
            ingress: _,
            egress: _,
            origin,
        } = self;
        RawGroup {
            id: id.clone(),
            name: name.clone(),
            description: description.clone(),
            vpc: vpc.clone(),
            owner_id: owner_id.clone(),
            _arn: _arn.clone(),
            tags: tags.clone(),
            ingress: vec![],
            egress: Some(vec![]),
            origin: origin.clone(),
        }
    }

    /// Its permissions, inbound then outbound.
    pub fn rules_mut(&mut self) -> impl Iterator<Item = &mut RawRule> {
        self.ingress
            .iter_mut()
            .chain(self.egress.iter_mut().flatten())
    }
}

impl RawRule {
    /// Its peers, of every kind.
    pub fn peers(&self) -> impl Iterator<Item = &RawPeer> {
        self.ip_ranges
            .iter()
            .chain(&self.ipv6_ranges)
            .chain(&self.prefix_list_ids)
            .chain(&self.user_id_group_pairs)
    }

    pub fn peers_mut(&mut self) -> impl Iterator<Item = &mut RawPeer> {
        self.ip_ranges
            .iter_mut()
            .chain(self.ipv6_ranges.iter_mut())
            .chain(self.prefix_list_ids.iter_mut())
            .chain(self.user_id_group_pairs.iter_mut())
    }

    /// Keeps the peers `keep` says, of every kind.
    pub fn retain_peers(&mut self, mut keep: impl FnMut(&RawPeer) -> bool) {
        for list in [
            &mut self.ip_ranges,
            &mut self.ipv6_ranges,
            &mut self.prefix_list_ids,
            &mut self.user_id_group_pairs,
        ] {
            list.retain(|p| keep(p));
        }
    }
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawPeer {
    /// The CIDR, prefix-list id/name or group id/name.
    pub value: String,
    pub description: Option<String>,
    /// Group pairs: the referenced group's VPC and the peering, when another VPC.
    pub vpc: Option<String>,
    pub peering: Option<String>,
    /// `SecurityGroupRuleId`: kept from the API or a managed state, so that a
    /// rule keeps its id when it is modified; generated when absent.
    pub rule_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Serialize for RawPeer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Full<'a> {
            value: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            description: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            vpc: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            peering: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rule_id: &'a Option<String>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            tags: &'a BTreeMap<String, String>,
        }
        Full {
            value: &self.value,
            description: &self.description,
            vpc: &self.vpc,
            peering: &self.peering,
            rule_id: &self.rule_id,
            tags: &self.tags,
        }
        .serialize(s)
    }
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
            #[serde(default, alias = "SecurityGroupRuleId")]
            rule_id: Option<String>,
            #[serde(default, alias = "Tags", deserialize_with = "tags")]
            tags: BTreeMap<String, String>,
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
                rule_id: f.rule_id,
                tags: f.tags,
            },
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default, alias = "TcpEstablishedTimeout")]
    pub tcp_established: Option<i64>,
    #[serde(default, alias = "UdpStreamTimeout")]
    pub udp_stream: Option<i64>,
    #[serde(default, alias = "UdpTimeout")]
    pub udp: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIface {
    /// Linux interface name.
    pub interface: String,
    /// The host whose agent enforces it (its `--host-id`); absent, every
    /// agent that reads this state and has the interface. A fleet names it
    /// (docs/fleet.md): the other hosts count its addresses as members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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
    #[serde(default, alias = "Tags", deserialize_with = "tags")]
    pub tags: BTreeMap<String, String>,
}
