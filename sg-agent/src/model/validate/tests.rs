use crate::{
    compile::{interface_rules, port_span},
    model::{Desired, Issues, Peer, Protocol, validate::peer_text},
    source,
};

fn parse(text: &str) -> Result<Desired, Issues> {
    source::file::parse("t.yaml", text, None, None)
}

fn ok(text: &str) -> Desired {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The codes of the errors, in order.
fn codes(text: &str) -> Vec<&'static str> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(Issues(all)) => all.iter().filter(|i| !i.warning).map(|i| i.code).collect(),
    }
}

fn one(text: &str, code: &str, words: &str) {
    let e = parse(text).expect_err("must be refused");
    let hit =
        e.0.iter()
            .find(|i| i.code == code)
            .unwrap_or_else(|| panic!("no {code} in {e}"));
    assert!(hit.message.contains(words), "{hit} should say {words:?}");
    assert!(hit.line.is_some(), "{hit} has no line");
}

const VPC: &str =
    "vpcs:\n  - {name: main, cidr_blocks: [10.0.0.0/16], ipv6_cidr_blocks: [\"fd00:1::/56\"]}\n";

fn group(body: &str) -> String {
    format!("{VPC}security_groups:\n  - name: g\n    ingress:\n      - {body}\n")
}

#[test]
fn names_and_descriptions() {
    one(
        &format!("{VPC}security_groups: [{{name: sg-x}}]\n"),
        "InvalidParameterValue",
        "may not start with sg-",
    );
    one(
        &format!("{VPC}security_groups: [{{name: \"a|b\"}}]\n"),
        "InvalidParameterValue",
        "may hold only",
    );
    one(
        &format!("{VPC}security_groups: [{{name: \"\"}}]\n"),
        "InvalidParameterValue",
        "1-255",
    );
    let long = "x".repeat(256);
    one(
        &format!("{VPC}security_groups: [{{name: {long}}}]\n"),
        "InvalidParameterValue",
        "1-255",
    );
    one(
        &format!("{VPC}security_groups: [{{name: a, description: \"\"}}]\n"),
        "InvalidParameterValue",
        "description",
    );
    one(
        &format!("{VPC}security_groups: [{{name: a, description: \"tab\\there\"}}]\n"),
        "InvalidParameterValue",
        "description",
    );
    // Trailing spaces of a name are trimmed, so these two collide.
    one(
        &format!("{VPC}security_groups: [{{name: a}}, {{name: \"a  \"}}]\n"),
        "InvalidGroup.Duplicate",
        "already exists",
    );
    // ... but equal names in different VPCs do not.
    ok(
        "vpcs: [{name: a, cidr_blocks: [10.0.0.0/16]}, {name: b, cidr_blocks: [10.1.0.0/16]}]\nsecurity_groups: [{name: web, vpc: a}, {name: web, vpc: b}]\n",
    );
    one(
        &group(
            "{ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [{cidr_ip: 10.0.0.0/8, description: \"no|pipes\"}]}",
        ),
        "InvalidParameterValue",
        "rule description",
    );
}

#[test]
fn protocols_ports_and_icmp() {
    one(
        &group("{ip_protocol: tcpx, from_port: 1, to_port: 1, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "invalid ip_protocol",
    );
    one(
        &group("{ip_protocol: 256, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "invalid ip_protocol",
    );
    one(
        &group("{ip_protocol: tcp, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "needs from_port and to_port",
    );
    one(
        &group("{ip_protocol: udp, from_port: 9, to_port: 8, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "greater than",
    );
    one(
        &group("{ip_protocol: udp, from_port: -1, to_port: 8, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "0-65535",
    );
    one(
        &group("{ip_protocol: icmp, from_port: -1, to_port: 0, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "code must be -1",
    );
    one(
        &group("{ip_protocol: icmp, from_port: 300, to_port: 0, ip_ranges: [0.0.0.0/0]}"),
        "InvalidParameterValue",
        "ICMP type",
    );
    one(
        &group("{ip_protocol: tcp, from_port: 1, to_port: 1}"),
        "InvalidParameterValue",
        "needs a peer",
    );
    // Other protocols take all ports whatever is written; 6 is tcp.
    let d = ok(&group(
        "{ip_protocol: 47, from_port: 5, to_port: 6, ip_ranges: [0.0.0.0/0]}",
    ));
    let g = d.groups.iter().find(|g| g.name == "g").unwrap();
    let r = &g.ingress[0];
    assert_eq!(port_span(r.protocol, r.from_port, r.to_port), (0, u16::MAX));
    let d = ok(&group(
        "{ip_protocol: \"6\", from_port: 80, to_port: 80, ip_ranges: [0.0.0.0/0]}",
    ));
    let g = d.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!(g.ingress[0].protocol, Protocol::Number(6));
}

#[test]
fn cidrs_are_canonical_and_duplicates_refused() {
    let d = ok(&group(
        "{ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [100.68.0.18/18, 10.1.2.3], ipv6_ranges: [\"fd00::1\"]}",
    ));
    let g = d.groups.iter().find(|g| g.name == "g").unwrap();
    let peers: Vec<String> = g.ingress.iter().map(|r| peer_text(&r.peer)).collect();
    assert_eq!(peers, ["100.68.0.0/18", "10.1.2.3/32", "fd00::1/128"]);
    one(
        &group("{ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [10.0.0.0/33]}"),
        "InvalidParameterValue",
        "invalid IPv4 CIDR",
    );
    one(
        &group("{ip_protocol: tcp, from_port: 1, to_port: 1, ipv6_ranges: [10.0.0.0/8]}"),
        "InvalidParameterValue",
        "invalid IPv6 CIDR",
    );
    // Equal after canonicalising, and tcp == 6: a duplicate.
    let dup = format!(
        "{VPC}security_groups:\n  - name: g\n    ingress:\n      - {{ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [10.0.0.0/8]}}\n      - {{ip_protocol: \"6\", from_port: 1, to_port: 1, ip_ranges: [10.9.9.9/8]}}\n"
    );
    one(&dup, "InvalidPermission.Duplicate", "already there");
}

#[test]
fn default_group_and_default_egress() {
    let d = ok(&format!(
        "{VPC}security_groups: [{{name: web}}]\nnetwork_interfaces: [{{interface: e0, private_ipv4: [10.0.0.5]}}]\n"
    ));
    let def = d
        .groups
        .iter()
        .find(|g| g.is_default)
        .expect("default group created");
    assert_eq!(def.name, "default");
    // Inbound: all from itself. Outbound: everything, both families (the VPC has IPv6).
    assert!(matches!(&def.ingress[0].peer, Peer::Group { id, .. } if *id == def.id));
    assert_eq!(def.egress.len(), 2);
    assert_eq!(
        d.interfaces[0].groups,
        vec![def.id.clone()],
        "no groups: the default group"
    );
    let web = d.groups.iter().find(|g| g.name == "web").unwrap();
    assert!(web.ingress.is_empty(), "a new group has no inbound rules");
    assert_eq!(web.egress.len(), 2);
    // Without IPv6 in the VPC, default egress is IPv4 only.
    let d = ok("vpcs: [{name: v4, cidr_blocks: [10.0.0.0/16]}]\nsecurity_groups: [{name: web}]\n");
    assert_eq!(
        d.groups
            .iter()
            .find(|g| g.name == "web")
            .unwrap()
            .egress
            .len(),
        1
    );
    // The default group's rules can be edited; an empty egress list is none.
    let d = ok(&format!(
        "{VPC}security_groups: [{{name: default, egress: []}}]\n"
    ));
    let def = d.groups.iter().find(|g| g.is_default).unwrap();
    assert!(def.ingress.is_empty() && def.egress.is_empty());
}

#[test]
fn ids_are_stable_and_checked() {
    let text = format!("{VPC}security_groups: [{{name: web}}]\n");
    assert_eq!(ok(&text), ok(&text), "same input, same ids");
    let g = ok(&text)
        .groups
        .into_iter()
        .find(|g| g.name == "web")
        .unwrap();
    assert!(g.id.starts_with("sg-") && g.id.len() == 20);
    let given = ok(&format!(
        "{VPC}security_groups: [{{name: web, id: sg-0123456789abcdef0}}]\n"
    ));
    assert!(given.groups.iter().any(|g| g.id == "sg-0123456789abcdef0"));
    one(
        &format!("{VPC}security_groups: [{{name: web, id: sg-XYZ}}]\n"),
        "InvalidGroupId.Malformed",
        "is not sg-",
    );
}

#[test]
fn references_resolve_or_are_reported() {
    one(
        &group("{ip_protocol: tcp, from_port: 1, to_port: 1, user_id_group_pairs: [ghost]}"),
        "InvalidGroup.NotFound",
        "ghost",
    );
    one(
        &group(
            "{ip_protocol: tcp, from_port: 1, to_port: 1, prefix_list_ids: [pl-0123456789abcdef0]}",
        ),
        "InvalidPrefixListID.NotFound",
        "pl-0123456789abcdef0",
    );
    let two = "vpcs:\n  - {name: a, cidr_blocks: [10.0.0.0/16], peerings: [b]}\n  - {name: b, cidr_blocks: [10.1.0.0/16]}\n  - {name: c, cidr_blocks: [10.2.0.0/16]}\nsecurity_groups:\n  - {name: api, vpc: b}\n  - {name: cache, vpc: c}\n  - name: web\n    vpc: a\n    ingress:\n      - {ip_protocol: tcp, from_port: 1, to_port: 1, user_id_group_pairs: [{group_name: api, vpc_id: b, vpc_peering_connection_id: pcx-1}]}\n      - {ip_protocol: tcp, from_port: 2, to_port: 2, user_id_group_pairs: [{group_name: cache, vpc_id: c}]}\n";
    let d = ok(two);
    let web = d.groups.iter().find(|g| g.name == "web").unwrap();
    assert!(
        matches!(&web.ingress[0].peer, Peer::Group { stale: false, .. }),
        "peered: resolves"
    );
    assert!(
        matches!(&web.ingress[1].peer, Peer::Group { stale: true, .. }),
        "not peered: stale"
    );
    assert_eq!(d.warnings.len(), 1);
    assert_eq!(d.warnings[0].code, "StaleSecurityGroupReference");
    // A group referenced before and gone now: a dependency violation.
    let before = ok(&format!(
        "{VPC}security_groups:\n  - name: api\n  - name: web\n    ingress:\n      - {{ip_protocol: tcp, from_port: 1, to_port: 1, user_id_group_pairs: [api]}}\n"
    ));
    let api = before
        .groups
        .iter()
        .find(|g| g.name == "api")
        .unwrap()
        .id
        .clone();
    let after = format!(
        "{VPC}security_groups:\n  - name: web\n    ingress:\n      - {{ip_protocol: tcp, from_port: 1, to_port: 1, user_id_group_pairs: [{api}]}}\n"
    );
    let e = source::file::parse("t.yaml", &after, None, Some(&before)).unwrap_err();
    assert_eq!(e.0[0].code, "DependencyViolation", "{e}");
}

#[test]
fn quotas() {
    let rules: String = (0..61).map(|i| format!("      - {{ip_protocol: tcp, from_port: {i}, to_port: {i}, ip_ranges: [10.0.0.0/8]}}\n")).collect();
    let text = format!("{VPC}security_groups:\n  - name: g\n    ingress:\n{rules}");
    assert_eq!(codes(&text), ["RulesPerSecurityGroupLimitExceeded"]);
    // IPv4 and IPv6 are counted apart: 60 + 60 is within the quota.
    let rules: String = (0..60)
        .map(|i| format!("      - {{ip_protocol: tcp, from_port: {i}, to_port: {i}, ip_ranges: [10.0.0.0/8], ipv6_ranges: [\"fd00::/8\"]}}\n"))
        .collect();
    ok(&format!(
        "{VPC}security_groups:\n  - name: g\n    ingress:\n{rules}"
    ));
    // A prefix list weighs its max entries.
    let pl = format!("{VPC}prefix_lists: [{{name: big, max_entries: 61, entries: []}}]\n");
    let text = format!(
        "{pl}security_groups:\n  - name: g\n    ingress:\n      - {{ip_protocol: tcp, from_port: 1, to_port: 1, prefix_list_ids: [big]}}\n"
    );
    assert_eq!(codes(&text), ["RulesPerSecurityGroupLimitExceeded"]);
    // Groups per interface: 5 by default, configurable up to 16.
    let six: String = (0..6).map(|i| format!("  - {{name: g{i}}}\n")).collect();
    let iface = "network_interfaces: [{interface: e0, groups: [g0, g1, g2, g3, g4, g5]}]\n";
    let text = format!("{VPC}security_groups:\n{six}{iface}");
    assert_eq!(codes(&text), ["SecurityGroupsPerInterfaceLimitExceeded"]);
    ok(&format!("quotas: {{groups_per_interface: 6}}\n{text}"));
    assert_eq!(
        codes(&format!("quotas: {{groups_per_interface: 17}}\n{text}"))[0],
        "InvalidParameterValue"
    );
    // Rules per group x groups per interface may not pass 1000.
    assert_eq!(
        codes("quotas: {groups_per_interface: 16, rules_per_group: 63}\n"),
        ["InvalidParameterValue"]
    );
    assert_eq!(
        codes(&format!(
            "quotas: {{groups_per_vpc: 2}}\n{VPC}security_groups: [{{name: a}}, {{name: b}}]\n"
        )),
        ["SecurityGroupLimitExceeded"]
    );
    // Prefix lists hold at most their max entries, at most 1000.
    let text = format!(
        "{VPC}prefix_lists: [{{name: p, max_entries: 1, entries: [{{cidr: 10.0.0.0/8}}, {{cidr: 11.0.0.0/8}}]}}]\n"
    );
    assert_eq!(codes(&text), ["PrefixListMaxEntriesExceeded"]);
    assert_eq!(
        codes(&format!(
            "{VPC}prefix_lists: [{{name: p, max_entries: 1001}}]\n"
        )),
        ["InvalidParameterValue"]
    );
}

#[test]
fn interfaces_and_timeouts() {
    one(
        &format!("{VPC}network_interfaces: [{{interface: e0, private_ipv4: [192.168.0.1]}}]\n"),
        "InvalidParameterValue",
        "outside the VPC",
    );
    one(
        &format!("{VPC}network_interfaces: [{{interface: e0, conntrack: {{udp: 5}}}}]\n"),
        "InvalidParameterValue",
        "udp timeout 5 s is out of range 30-60 s",
    );
    one(
        &format!(
            "{VPC}network_interfaces: [{{interface: e0, conntrack: {{tcp_established: 59}}}}]\n"
        ),
        "InvalidParameterValue",
        "60-432000",
    );
    one(
        &format!("{VPC}network_interfaces: [{{interface: e0, groups: [nope]}}]\n"),
        "InvalidGroup.NotFound",
        "nope",
    );
    one(
        &format!("{VPC}network_interfaces: [{{interface: e0}}, {{interface: e0}}]\n"),
        "InvalidParameterValue",
        "listed twice",
    );
    one(
        &format!("{VPC}network_interfaces: [{{interface: averyveryverylongname}}]\n"),
        "InvalidParameterValue",
        "1-15",
    );
    one(
        &format!(
            "{VPC}network_interfaces: [{{interface: e0, host: a}}, {{interface: e0, host: a}}]\n"
        ),
        "InvalidParameterValue",
        "e0\" on host \"a\" is listed twice",
    );
    one(
        &format!("{VPC}network_interfaces: [{{interface: e0, host: \"a b\"}}]\n"),
        "InvalidParameterValue",
        "host id",
    );
}

#[test]
fn one_linux_name_on_two_hosts_is_two_interfaces() {
    let d = ok(&format!(
        "{VPC}network_interfaces: [{{interface: e0, host: a}}, {{interface: e0, host: b}}, {{interface: e0}}]\n"
    ));
    let ids: std::collections::BTreeSet<&str> =
        d.interfaces.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "distinct ids: {ids:?}");
}

#[test]
fn every_error_at_once_with_its_line() {
    let text = format!(
        "{VPC}security_groups:\n  - name: sg-a\n  - name: b\n    ingress:\n      - {{ip_protocol: tcp, ip_ranges: [0.0.0.0/0]}}\n      - {{ip_protocol: udp, from_port: 1, to_port: 1, ip_ranges: [1.2.3.4/40]}}\nnetwork_interfaces: [{{interface: e0, groups: [zz]}}]\n"
    );
    let e = parse(&text).unwrap_err();
    let got: Vec<(Option<usize>, &str)> = e.0.iter().map(|i| (i.line, i.code)).collect();
    assert_eq!(
        got,
        [
            (Some(4), "InvalidParameterValue"),
            (Some(7), "InvalidParameterValue"),
            (Some(8), "InvalidParameterValue"),
            (Some(9), "InvalidGroup.NotFound"),
        ],
        "{e}"
    );
    assert!(
        e.to_string().contains("t.yaml:8: security group \"b\""),
        "{e}"
    );
}

#[test]
fn references_and_prefix_lists_expand() {
    let text = format!(
        "{VPC}prefix_lists: [{{name: office, address_family: IPv6, max_entries: 3, entries: [{{cidr: \"fd00:9::/48\"}}, {{cidr: \"fd00:8::/48\"}}]}}]
security_groups:
  - name: app
  - name: db
    ingress:
      - {{ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [app]}}
      - {{ip_protocol: tcp, from_port: 22, to_port: 22, prefix_list_ids: [office]}}
network_interfaces:
  - {{interface: a1, private_ipv4: [10.0.0.1], private_ipv6: [\"fd00:1::1\"], groups: [app]}}
  - {{interface: a2, private_ipv4: [10.0.0.2, 10.0.0.3], groups: [app]}}
  - {{interface: d1, private_ipv4: [10.0.0.9], groups: [db]}}
"
    );
    let d = ok(&text);
    let db = d.interfaces.iter().find(|i| i.name == "d1").unwrap();
    let (inbound, _) = interface_rules(&d, db);
    let on = |port: u16| -> Vec<String> {
        inbound
            .iter()
            .filter(|f| f.lo == port)
            .map(|f| f.net.to_string())
            .collect()
    };
    assert_eq!(
        on(5432),
        ["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd00:1::1/128"]
    );
    assert_eq!(on(22), ["fd00:8::/48", "fd00:9::/48"]);
    // Membership moves: d1 joins app too; now its own address is a peer of 5432.
    let moved = text.replace(
        "private_ipv4: [10.0.0.9], groups: [db]",
        "private_ipv4: [10.0.0.9], groups: [db, app]",
    );
    let d = ok(&moved);
    let db = d.interfaces.iter().find(|i| i.name == "d1").unwrap();
    let (inbound, _) = interface_rules(&d, db);
    assert!(
        inbound
            .iter()
            .any(|f| f.lo == 5432 && f.net.to_string() == "10.0.0.9/32")
    );
}

/// Validating from a prior state takes its unchanged parts: every edit
/// gives what validating the whole state gives, issues and warnings
/// included, and the parts taken are the prior's (a prior whose unchanged
/// group was tampered with shows through, which proves they were taken).
#[test]
fn validating_from_a_prior_state_gives_what_validating_gives() {
    use crate::model::{
        Desired, Nowhere, Prior, Since, Touched, canonical::canonical, input::RawConfig,
        validate_from,
    };
    let text = "vpcs:\n  - {name: main, cidr_blocks: [10.0.0.0/16]}\n  - {name: other, cidr_blocks: [10.1.0.0/16]}\n\
prefix_lists:\n  - {name: office, max_entries: 5, entries: [{cidr: 192.0.2.0/24}]}\n\
security_groups:\n\
  - {name: web, vpc: main, ingress: [{ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [0.0.0.0/0]}]}\n\
  - {name: db, vpc: main, ingress: [{ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web], prefix_list_ids: [office]}]}\n\
  - {name: far, vpc: main, ingress: [{ip_protocol: tcp, from_port: 22, to_port: 22, user_id_group_pairs: [{group_name: ops, vpc_id: other}]}]}\n\
  - {name: ops, vpc: other, ingress: []}\n\
network_interfaces:\n\
  - {interface: w0, vpc: main, private_ipv4: [10.0.0.2], groups: [web]}\n\
  - {interface: d0, vpc: main, private_ipv4: [10.0.0.3], groups: [db, far]}\n";
    let whole = |raw: &RawConfig| crate::model::validate(raw, &Nowhere, None);
    let from = |raw: &RawConfig, prior_raw: &RawConfig, prior: &Desired| {
        validate_from(
            raw,
            &Nowhere,
            None,
            Some(Prior {
                desired: prior,
                since: Since::Raw(prior_raw),
            }),
        )
    };
    let mut prior_raw = canonical(&ok(text));
    let mut prior = whole(&prior_raw).unwrap();
    type Edit = fn(&mut RawConfig);
    let edits: Vec<(&str, Edit)> = vec![
        ("a rule added", |r| {
            let mut rule = r.security_groups[0].ingress[0].clone();
            rule.from_port = Some(80);
            rule.to_port = Some(80);
            rule.ip_ranges[0].rule_id = None;
            r.security_groups[0].ingress.push(rule);
        }),
        ("a rule removed", |r| {
            r.security_groups[1].ingress.clear();
        }),
        ("a duplicate rule", |r| {
            let rule = r.security_groups[0].ingress[0].clone();
            r.security_groups[0].ingress.push(rule);
        }),
        ("a rule naming a group that is not there", |r| {
            let mut rule = r.security_groups[0].ingress[0].clone();
            rule.ip_ranges.clear();
            rule.user_id_group_pairs = vec![crate::model::input::RawPeer {
                value: "nope".into(),
                ..Default::default()
            }];
            r.security_groups[0].ingress.push(rule);
        }),
        ("a prefix list grown past the quota", |r| {
            r.prefix_lists[0].max_entries = 70;
        }),
        ("a prefix list resized", |r| {
            r.prefix_lists[0].max_entries = 7
        }),
        ("the VPCs peered", |r| {
            r.vpcs[0].peerings = vec!["other".into()];
        }),
        ("a group renamed", |r| {
            r.security_groups[0].name = "front".into()
        }),
        ("a group added", |r| {
            let mut g = r.security_groups[3].clone();
            g.id = None;
            g.name = "new".into();
            r.security_groups.push(g);
        }),
        ("an interface moved", |r| {
            r.network_interfaces[0].groups = Some(vec!["db".into()]);
        }),
        ("an interface outside its VPC", |r| {
            r.network_interfaces[1].private_ipv4 = vec!["10.9.0.1".into()];
        }),
        ("an interface added", |r| {
            let mut i = r.network_interfaces[0].clone();
            i.id = None;
            i.interface = "w1".into();
            i.private_ipv4 = vec!["10.0.0.9".into()];
            r.network_interfaces.push(i);
        }),
        ("quotas changed", |r| r.quotas.rules_per_group = 1),
    ];
    let mut taken_from = 0;
    for (what, edit) in edits {
        let mut raw = prior_raw.clone();
        edit(&mut raw);
        // What a store that tracks its objects would say was touched.
        let touched = touched_between(&prior_raw, &raw);
        let by_objects = validate_from(
            &raw,
            &Nowhere,
            None,
            Some(Prior {
                desired: &prior,
                since: Since::Touched(&touched),
            }),
        );
        match (whole(&raw), from(&raw, &prior_raw, &prior), by_objects) {
            (Ok(a), Ok(b), Ok(c)) => {
                assert_eq!(a, b, "{what}");
                assert_eq!(a, c, "{what}, by objects touched");
                (prior_raw, prior) = (canonical(&b), b);
                taken_from += 1;
            }
            (Err(a), Err(b), Err(c)) => {
                assert_eq!(a.to_string(), b.to_string(), "{what}");
                assert_eq!(a.to_string(), c.to_string(), "{what}, by objects touched");
            }
            (a, b, c) => panic!("{what}: whole {a:?}, from the prior {b:?}, by objects {c:?}"),
        }
    }
    assert!(taken_from >= 8, "only {taken_from} edits were accepted");
    // The parts taken are the prior's own.
    let mut tampered = prior.clone();
    let db = tampered.groups.iter().position(|g| g.name == "db").unwrap();
    tampered.groups[db].ingress = Default::default();
    let mut raw = prior_raw.clone();
    raw.network_interfaces[0].private_ipv4 = vec!["10.0.0.7".into()];
    let taken = from(&raw, &prior_raw, &tampered).unwrap();
    assert!(
        taken.groups[db].ingress.is_empty(),
        "the unchanged group was validated again"
    );
    assert_eq!(taken.interfaces[0].ipv4[0].to_string(), "10.0.0.7");
    // Taken, not copied: an unchanged group's rules and unchanged
    // interfaces are the prior's own, both ways.
    let mut raw = prior_raw.clone();
    raw.security_groups[0].description = Some("new words".into());
    let touched = touched_between(&prior_raw, &raw);
    let by_objects = Prior {
        desired: &prior,
        since: Since::Touched(&touched),
    };
    for taken in [
        from(&raw, &prior_raw, &prior).unwrap(),
        validate_from(&raw, &Nowhere, None, Some(by_objects)).unwrap(),
    ] {
        assert!(std::sync::Arc::ptr_eq(&taken.interfaces, &prior.interfaces));
        assert!(std::sync::Arc::ptr_eq(
            &taken.groups[db].ingress,
            &prior.groups[db].ingress
        ));
    }
    // A group said to be touched is resolved again; one not, taken.
    // The first group, "web" renamed by an edit above.
    let web = 0;
    assert!(!prior.groups[web].ingress.is_empty());
    let mut tampered = prior.clone();
    tampered.groups[web].ingress = Default::default();
    for (touched, resolved) in [(true, true), (false, false)] {
        let t = Touched {
            groups: touched
                .then(|| prior.groups[web].id.clone())
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let prior = Prior {
            desired: &tampered,
            since: Since::Touched(&t),
        };
        let again = validate_from(&prior_raw, &Nowhere, None, Some(prior)).unwrap();
        assert_eq!(!again.groups[web].ingress.is_empty(), resolved);
    }
}

/// The objects that differ between two inputs, as a store tracking its
/// objects would report them.
pub(crate) fn touched_between(
    a: &crate::model::input::RawConfig,
    b: &crate::model::input::RawConfig,
) -> crate::model::Touched {
    use crate::model::input::RawGroup;
    let key = |g: &RawGroup| g.id.clone().unwrap_or_else(|| g.name.clone());
    let of = |r: &crate::model::input::RawConfig| -> std::collections::HashMap<String, RawGroup> {
        r.security_groups
            .iter()
            .map(|g| (key(g), g.clone()))
            .collect()
    };
    let (ga, gb) = (of(a), of(b));
    let groups = ga
        .keys()
        .chain(gb.keys())
        .filter(|k| ga.get(*k) != gb.get(*k))
        .cloned()
        .collect();
    crate::model::Touched {
        context: a.vpcs != b.vpcs
            || a.prefix_lists != b.prefix_lists
            || a.quotas != b.quotas
            || a.account_id != b.account_id,
        groups,
        interfaces: a.network_interfaces != b.network_interfaces,
    }
}
