//! Importing `aws ec2 describe-security-groups` output: from a file, inline,
//! with every member botocore's model defines; errors placed in the
//! imported file.

use crate::{compile::interface_rules, model::Desired, source};

fn parse(text: &str) -> Result<Desired, crate::model::Issues> {
    source::file::parse("t.yaml", text, None, None)
}

/// `aws ec2 describe-security-groups` output, as the CLI prints it.
const AWS_JSON: &str = r#"{
    "SecurityGroups": [
        {
            "Description": "web tier",
            "GroupName": "web",
            "IpPermissions": [
                {
                    "FromPort": 443,
                    "IpProtocol": "tcp",
                    "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "HTTPS"}],
                    "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
                    "PrefixListIds": [],
                    "ToPort": 443,
                    "UserIdGroupPairs": []
                },
                {
                    "FromPort": 22,
                    "IpProtocol": "tcp",
                    "IpRanges": [],
                    "Ipv6Ranges": [],
                    "PrefixListIds": [],
                    "ToPort": 22,
                    "UserIdGroupPairs": [{"GroupId": "sg-0aaaaaaaaaaaaaaa1", "UserId": "123456789012"}]
                }
            ],
            "OwnerId": "123456789012",
            "GroupId": "sg-0bbbbbbbbbbbbbbb2",
            "IpPermissionsEgress": [
                {
                    "IpProtocol": "-1",
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                    "Ipv6Ranges": [],
                    "PrefixListIds": [],
                    "UserIdGroupPairs": []
                }
            ],
            "Tags": [{"Key": "Name", "Value": "web"}],
            "VpcId": "vpc-0123456789abcdef0"
        },
        {
            "Description": "bastion",
            "GroupName": "bastion",
            "IpPermissions": [],
            "OwnerId": "123456789012",
            "GroupId": "sg-0aaaaaaaaaaaaaaa1",
            "IpPermissionsEgress": [],
            "Tags": [],
            "VpcId": "vpc-0123456789abcdef0"
        }
    ]
}"#;

#[test]
fn imports_describe_security_groups_output() {
    let dir = std::env::temp_dir().join(format!("sg-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("aws.json"), AWS_JSON).unwrap();
    let yaml = "vpcs: [{id: vpc-0123456789abcdef0, name: prod, cidr_blocks: [10.0.0.0/16]}]\nimport: [aws.json]\nnetwork_interfaces:\n  - {interface: e0, vpc: prod, private_ipv4: [10.0.0.7], groups: [sg-0bbbbbbbbbbbbbbb2]}\n  - {interface: e1, vpc: prod, private_ipv4: [10.0.0.8], groups: [bastion]}\n";
    let path = dir.join("sg.yaml");
    std::fs::write(&path, yaml).unwrap();
    let d = source::file::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let web = d.group("sg-0bbbbbbbbbbbbbbb2").expect("ids kept");
    assert_eq!(web.name, "web");
    assert_eq!(web.owner, "123456789012");
    assert_eq!(web.tags.get("Name").map(String::as_str), Some("web"));
    assert_eq!(web.ingress.len(), 3, "two CIDRs and a group pair");
    assert_eq!(web.ingress[0].description.as_deref(), Some("HTTPS"));
    assert_eq!(web.egress.len(), 1);
    // The group reference expands to the bastion interface's address.
    let (inbound, _) = interface_rules(&d, &d.interfaces[0]);
    assert!(
        inbound
            .iter()
            .any(|f| f.net.to_string() == "10.0.0.8/32" && f.lo == 22)
    );
    // The same output inline in the YAML.
    let start = AWS_JSON.find('[').unwrap();
    let end = AWS_JSON.rfind(']').unwrap();
    let inline = format!(
        "vpcs: [{{id: vpc-0123456789abcdef0, cidr_blocks: [10.0.0.0/16]}}]\nSecurityGroups: {}\n",
        &AWS_JSON[start..=end]
    );
    let d2 = parse(&inline).unwrap_or_else(|e| panic!("{e}"));
    assert!(d2.group("sg-0aaaaaaaaaaaaaaa1").is_some());
    // An error in the imported file names that file and its line.
    std::fs::write(
        dir.join("aws.json"),
        AWS_JSON.replace("\"FromPort\": 22", "\"FromPort\": 99999"),
    )
    .unwrap();
    let e = source::file::load(&path, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("aws.json:16: security group \"web\""),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `describe-security-groups` output as AWS prints it today, with every
/// member botocore's service model defines for the shapes sg imports
/// (`SecurityGroup`, `IpPermission`, `IpRange`, `Ipv6Range`, `PrefixListId`,
/// `UserIdGroupPair`, `Tag`) and the result's `NextToken`.
const AWS_EVERY_MEMBER: &str = r#"{
    "SecurityGroups": [
        {
            "GroupId": "sg-0ccccccccccccccc3",
            "GroupName": "full",
            "Description": "every member",
            "OwnerId": "123456789012",
            "VpcId": "vpc-0123456789abcdef0",
            "SecurityGroupArn": "arn:aws:ec2:eu-west-1:123456789012:security-group/sg-0ccccccccccccccc3",
            "Tags": [{"Key": "team", "Value": "edge"}],
            "IpPermissions": [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 443,
                    "ToPort": 443,
                    "IpRanges": [{"CidrIp": "192.0.2.0/24", "Description": "v4"}],
                    "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32", "Description": "v6"}],
                    "PrefixListIds": [{"PrefixListId": "pl-0123456789abcdef0", "Description": "pl"}],
                    "UserIdGroupPairs": [{
                        "Description": "self",
                        "UserId": "123456789012",
                        "GroupName": "full",
                        "GroupId": "sg-0ccccccccccccccc3",
                        "VpcId": "vpc-0123456789abcdef0",
                        "VpcPeeringConnectionId": "pcx-0123456789abcdef0",
                        "PeeringStatus": "active"
                    }]
                }
            ],
            "IpPermissionsEgress": [
                {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [],
                 "PrefixListIds": [], "UserIdGroupPairs": []}
            ]
        }
    ],
    "NextToken": "eyJ2IjoxfQ=="
}"#;

#[test]
fn every_botocore_member_of_the_imported_shapes_is_read() {
    let dir = std::env::temp_dir().join(format!("sg-import-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("aws.json"), AWS_EVERY_MEMBER).unwrap();
    let yaml = "vpcs: [{id: vpc-0123456789abcdef0, cidr_blocks: [10.0.0.0/16], ipv6_cidr_blocks: [\"fd00::/56\"]}]
prefix_lists: [{id: pl-0123456789abcdef0, name: office, max_entries: 2, entries: [{cidr: 198.51.100.0/24}]}]
import: [aws.json]
";
    let path = dir.join("sg.yaml");
    std::fs::write(&path, yaml).unwrap();
    let d = source::file::load(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let g = d.group("sg-0ccccccccccccccc3").expect("imported");
    assert_eq!(
        (g.name.as_str(), g.owner.as_str()),
        ("full", "123456789012")
    );
    assert_eq!(g.tags.get("team").map(String::as_str), Some("edge"));
    assert_eq!(
        g.ingress.len(),
        4,
        "a CIDR, an IPv6 CIDR, a prefix list, a pair"
    );
    let descs: Vec<_> = g
        .ingress
        .iter()
        .filter_map(|r| r.description.as_deref())
        .collect();
    assert_eq!(descs, ["v4", "v6", "pl", "self"]);
    // The same members inline in the YAML, and the ARN alone is no error.
    let start = AWS_EVERY_MEMBER.find('[').unwrap();
    let end = AWS_EVERY_MEMBER.rfind(']').unwrap();
    let inline = format!(
        "{}SecurityGroups: {}\n",
        &yaml[..yaml.find("import").unwrap()],
        &AWS_EVERY_MEMBER[start..=end]
    );
    parse(&inline).unwrap_or_else(|e| panic!("{e}"));
    // sg's own spelling still refuses a typo, in a group and in a rule.
    assert!(
        parse("security_groups: [{name: a, descriptoin: x}]\n")
            .unwrap_err()
            .to_string()
            .contains("unknown field `descriptoin`")
    );
    assert!(
        parse("security_groups: [{name: a, ingress: [{ip_protocol: tcp, from_port: 1, to_port: 1, ip_range: [10.0.0.0/8]}]}]\n")
            .unwrap_err()
            .to_string()
            .contains("unknown field `ip_range`")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
