//! VPC Flow Logs' record formats: the default (version 2) and custom
//! formats of `${field}`s, rendered as AWS writes them — space-separated,
//! `-` where a field does not apply (docs/observe.md).

use std::net::IpAddr;

use thiserror::Error;

/// A field of a flow log record, by AWS's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Version,
    AccountId,
    InterfaceId,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
    VpcId,
    SubnetId,
    InstanceId,
    TcpFlags,
    Type,
    PktSrcAddr,
    PktDstAddr,
    Region,
    AzId,
    SublocationType,
    SublocationId,
    PktSrcAwsService,
    PktDstAwsService,
    FlowDirection,
    TrafficPath,
}

/// Every field: its name and the record version that introduced it.
const FIELDS: [(&str, Field, u8); 29] = [
    ("version", Field::Version, 2),
    ("account-id", Field::AccountId, 2),
    ("interface-id", Field::InterfaceId, 2),
    ("srcaddr", Field::SrcAddr, 2),
    ("dstaddr", Field::DstAddr, 2),
    ("srcport", Field::SrcPort, 2),
    ("dstport", Field::DstPort, 2),
    ("protocol", Field::Protocol, 2),
    ("packets", Field::Packets, 2),
    ("bytes", Field::Bytes, 2),
    ("start", Field::Start, 2),
    ("end", Field::End, 2),
    ("action", Field::Action, 2),
    ("log-status", Field::LogStatus, 2),
    ("vpc-id", Field::VpcId, 3),
    ("subnet-id", Field::SubnetId, 3),
    ("instance-id", Field::InstanceId, 3),
    ("tcp-flags", Field::TcpFlags, 3),
    ("type", Field::Type, 3),
    ("pkt-srcaddr", Field::PktSrcAddr, 3),
    ("pkt-dstaddr", Field::PktDstAddr, 3),
    ("region", Field::Region, 4),
    ("az-id", Field::AzId, 4),
    ("sublocation-type", Field::SublocationType, 4),
    ("sublocation-id", Field::SublocationId, 4),
    ("pkt-src-aws-service", Field::PktSrcAwsService, 5),
    ("pkt-dst-aws-service", Field::PktDstAwsService, 5),
    ("flow-direction", Field::FlowDirection, 5),
    ("traffic-path", Field::TrafficPath, 5),
];

/// The default format: version 2's fields in AWS's order.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("log_format: {0:?} is not a field (fields are written ${{name}}, separated by spaces)")]
    NotAField(String),
    #[error("log_format: unknown field ${{{0}}}")]
    Unknown(String),
    #[error("log_format: no fields")]
    Empty,
}

/// A parsed format: its fields, and the version its records carry (the
/// highest version of any field used, as AWS sets it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
    pub version: u8,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, FormatError> {
        let mut fields = Vec::new();
        let mut version = 2;
        for word in s.split_whitespace() {
            let name = word
                .strip_prefix("${")
                .and_then(|w| w.strip_suffix('}'))
                .ok_or_else(|| FormatError::NotAField(word.to_string()))?;
            let (_, f, v) = FIELDS
                .iter()
                .find(|(n, _, _)| *n == name)
                .ok_or_else(|| FormatError::Unknown(name.to_string()))?;
            fields.push(*f);
            version = version.max(*v);
        }
        if fields.is_empty() {
            return Err(FormatError::Empty);
        }
        Ok(Format { fields, version })
    }

    /// The header line AWS's S3 delivery writes: the field names.
    pub fn header(&self) -> String {
        self.fields
            .iter()
            .map(|f| FIELDS.iter().find(|(_, g, _)| g == f).map_or("", |e| e.0))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn render(&self, r: &Record) -> String {
        let mut out = String::new();
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&r.field(*f, self.version));
        }
        out
    }
}

/// Whether a record's packets were let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Reject,
}

/// `log-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    NoData,
    SkipData,
}

/// What one record says: a flow's packets in one direction over one
/// window, or an interface's NODATA/SKIPDATA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    pub account_id: String,
    pub interface_id: String,
    pub vpc_id: String,
    pub status: Status,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    /// The flow's part; `None` for NODATA and SKIPDATA.
    pub flow: Option<FlowPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowPart {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 0 for protocols without ports (ICMP, as AWS writes them).
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub action: Action,
    /// AWS's bitmask: FIN 1, SYN 2, RST 4, SYN-ACK 18.
    pub tcp_flags: u8,
    /// The packets entered the interface (towards its workload).
    pub ingress: bool,
}

impl Record {
    fn field(&self, f: Field, version: u8) -> String {
        let dash = || "-".to_string();
        let flow = self.flow.as_ref();
        match f {
            Field::Version => version.to_string(),
            Field::AccountId => self.account_id.clone(),
            Field::InterfaceId => self.interface_id.clone(),
            Field::VpcId => self.vpc_id.clone(),
            Field::Start => self.start.to_string(),
            Field::End => self.end.to_string(),
            Field::LogStatus => match self.status {
                Status::Ok => "OK",
                Status::NoData => "NODATA",
                Status::SkipData => "SKIPDATA",
            }
            .to_string(),
            Field::SrcAddr | Field::PktSrcAddr => flow.map_or_else(dash, |p| p.src.to_string()),
            Field::DstAddr | Field::PktDstAddr => flow.map_or_else(dash, |p| p.dst.to_string()),
            Field::SrcPort => flow.map_or_else(dash, |p| p.sport.to_string()),
            Field::DstPort => flow.map_or_else(dash, |p| p.dport.to_string()),
            Field::Protocol => flow.map_or_else(dash, |p| p.protocol.to_string()),
            Field::Packets => flow.map_or_else(dash, |p| p.packets.to_string()),
            Field::Bytes => flow.map_or_else(dash, |p| p.bytes.to_string()),
            Field::Action => flow.map_or_else(dash, |p| match p.action {
                Action::Accept => "ACCEPT".to_string(),
                Action::Reject => "REJECT".to_string(),
            }),
            Field::TcpFlags => flow.map_or_else(dash, |p| p.tcp_flags.to_string()),
            Field::Type => flow.map_or_else(dash, |p| {
                if p.src.is_ipv4() { "IPv4" } else { "IPv6" }.to_string()
            }),
            Field::FlowDirection => flow.map_or_else(dash, |p| {
                if p.ingress { "ingress" } else { "egress" }.to_string()
            }),
            // Traffic stays on the host's own links: no AWS path applies.
            Field::TrafficPath
            | Field::SubnetId
            | Field::InstanceId
            | Field::Region
            | Field::AzId
            | Field::SublocationType
            | Field::SublocationId
            | Field::PktSrcAwsService
            | Field::PktDstAwsService => dash(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Record {
        Record {
            account_id: "123456789012".into(),
            interface_id: "eni-0a1b2c3d4e5f60718".into(),
            vpc_id: "vpc-1".into(),
            status: Status::Ok,
            start: 1_700_000_000,
            end: 1_700_000_060,
            flow: Some(FlowPart {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                sport: 40000,
                dport: 443,
                protocol: 6,
                packets: 10,
                bytes: 840,
                action: Action::Accept,
                tcp_flags: 3,
                ingress: true,
            }),
        }
    }

    #[test]
    fn default_format_is_version_2_in_aws_order() {
        let f = Format::parse(DEFAULT_FORMAT).unwrap();
        assert_eq!(f.version, 2);
        assert_eq!(
            f.render(&accepted()),
            "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.0.1 10.0.0.2 40000 443 6 10 840 1700000000 1700000060 ACCEPT OK"
        );
        assert_eq!(f.header().split(' ').count(), 14);
    }

    #[test]
    fn nodata_and_skipdata_dash_the_flow_fields() {
        let f = Format::parse(DEFAULT_FORMAT).unwrap();
        let mut r = accepted();
        r.flow = None;
        r.status = Status::SkipData;
        assert_eq!(
            f.render(&r),
            "2 123456789012 eni-0a1b2c3d4e5f60718 - - - - - - - 1700000000 1700000060 - SKIPDATA"
        );
    }

    #[test]
    fn custom_formats_take_the_highest_version_and_refuse_unknown_fields() {
        let f = Format::parse(
            "${version} ${vpc-id} ${tcp-flags} ${type} ${flow-direction} ${traffic-path}",
        )
        .unwrap();
        assert_eq!(f.version, 5);
        assert_eq!(f.render(&accepted()), "5 vpc-1 3 IPv4 ingress -");
        assert_eq!(
            Format::parse("${version} ${color}"),
            Err(FormatError::Unknown("color".into()))
        );
        assert_eq!(
            Format::parse("version"),
            Err(FormatError::NotAField("version".into()))
        );
        assert_eq!(Format::parse("  "), Err(FormatError::Empty));
    }
}
