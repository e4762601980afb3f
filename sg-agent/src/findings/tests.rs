//! Each class of finding on a crafted state (`dirty.yaml`), and none on a
//! clean one.

use super::*;
use crate::source::file::parse;

fn load(text: &str) -> Desired {
    parse("test.yaml", text, None, None).unwrap_or_else(|e| panic!("{e}"))
}

fn group_id(d: &Desired, name: &str) -> String {
    d.groups.iter().find(|g| g.name == name).unwrap().id.clone()
}

/// The findings of `kind` as (resource's group name or resource, guardrail).
fn of(d: &Desired, found: &[Finding], kind: Kind) -> Vec<(String, Option<String>, String)> {
    let name = |id: &str| {
        d.groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.name.clone())
            .or_else(|| {
                d.prefix_lists
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.name.clone())
            })
            .or_else(|| {
                d.interfaces
                    .iter()
                    .find(|i| i.id == id)
                    .map(|i| i.name.clone())
            })
            .unwrap_or(id.to_string())
    };
    found
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| {
            let at = f.group_id.as_deref().unwrap_or(&f.resource);
            (name(at), f.guardrail.clone(), f.detail.clone())
        })
        .collect()
}

#[test]
fn every_class_is_found_on_a_crafted_state() {
    let d = load(include_str!("dirty.yaml"));
    let found = audit(&d, &Guardrails::default());
    let unused: Vec<_> = of(&d, &found, Kind::UnusedGroup)
        .into_iter()
        .map(|f| f.0)
        .collect();
    // The VPCs' default groups are unused too, but cannot be deleted.
    assert_eq!(unused, ["lonely", "db"]);
    let pls: Vec<_> = of(&d, &found, Kind::UnusedPrefixList)
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(pls, ["nobody"]);

    let redundant = of(&d, &found, Kind::RedundantRule);
    assert_eq!(redundant.len(), 2, "{redundant:#?}");
    // Within the group: 443 from 10.0.1.0/24 under 443 from 10.0.0.0/16.
    assert!(redundant.iter().any(|f| f.0 == "web"
        && f.2.contains("tcp 443 from 10.0.1.0/24")
        && f.2.contains("in the same group")));
    // Across groups: web's 8080 from the admins list is under base's
    // 8000-9000 from 198.51.0.0/16, and every interface with web has base.
    let base = group_id(&d, "base");
    assert!(
        redundant
            .iter()
            .any(|f| f.0 == "web" && f.2.contains("tcp 8080 from pl-") && f.2.contains(&base))
    );

    let rails: Vec<_> = of(&d, &found, Kind::Guardrail)
        .into_iter()
        .map(|f| (f.0, f.1.unwrap()))
        .collect();
    let want = [
        ("lonely", "all-protocols-from-anywhere"),
        ("lonely", "all-tcp-ports-from-anywhere"),
        ("lonely", "all-udp-ports-from-anywhere"),
        ("lonely", "rdp-from-anywhere"),
        ("lonely", "ssh-from-anywhere"),
        ("web", "ssh-from-anywhere"),
    ];
    let mut got = rails.clone();
    got.sort();
    assert_eq!(
        got,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    assert!(
        found
            .iter()
            .filter(|f| f.kind == Kind::Guardrail)
            .all(|f| f.severity == Severity::Critical)
    );

    let stale = of(&d, &found, Kind::StaleReference);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].0, "refs");
    assert!(stale[0].2.contains("not peered"), "{}", stale[0].2);

    let quota = of(&d, &found, Kind::Quota);
    assert_eq!(quota.len(), 1, "{quota:?}");
    assert_eq!(quota[0].0, "w1");
    assert!(quota[0].2.contains("at quota: 3 of 3 security groups"));
    // Most severe first.
    assert!(found.windows(2).all(|w| w[0].severity >= w[1].severity));
}

#[test]
fn a_clean_state_has_no_findings() {
    let d = load(
        "vpcs: [{name: prod, cidr_blocks: [10.0.0.0/16]}]
prefix_lists:
  - {name: admins, address_family: IPv4, max_entries: 5, entries: [{cidr: 198.51.100.0/24}]}
security_groups:
  - name: web
    ingress:
      - {ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [0.0.0.0/0]}
      - {ip_protocol: tcp, from_port: 22, to_port: 22, prefix_list_ids: [admins]}
      - {ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web]}
network_interfaces:
  - {interface: w1, private_ipv4: [10.0.1.10], groups: [web]}
",
    );
    let found = audit(&d, &Guardrails::default());
    assert!(found.is_empty(), "{}", table(&found));
    assert_eq!(table(&found), "no findings\n");
}

#[test]
fn a_prefix_list_with_anywhere_breaks_a_guardrail_and_near_quota_is_info() {
    let d = load(
        "prefix_lists:
  - {name: all, address_family: IPv4, max_entries: 48, entries: [{cidr: 0.0.0.0/0}]}
security_groups:
  - name: web
    ingress:
      - {ip_protocol: tcp, from_port: 3380, to_port: 3390, prefix_list_ids: [all]}
network_interfaces:
  - {interface: w1, groups: [web]}
",
    );
    let found = audit(&d, &Guardrails::default());
    let rails: Vec<_> = found
        .iter()
        .filter_map(|f| f.guardrail.as_deref())
        .collect();
    assert_eq!(rails, ["rdp-from-anywhere"]);
    // 48 of 60 inbound IPv4 rules: the list weighs its max entries.
    let q = found.iter().find(|f| f.kind == Kind::Quota).unwrap();
    assert_eq!(q.severity, Severity::Info);
    assert!(
        q.detail.contains("near quota: 48 of 60 inbound IPv4 rules"),
        "{}",
        q.detail
    );
}

#[test]
fn guardrails_of_ones_own_replace_the_defaults() {
    let dir = std::env::temp_dir().join(format!("sg-guardrails-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.yaml");
    std::fs::write(
        &path,
        "guardrails:
  - {name: no-db-from-the-vpc, severity: warning, protocol: tcp, ports: 5432, sources: [10.0.0.0/8]}
",
    )
    .unwrap();
    let rails = Guardrails::load(&path).unwrap();
    let d = load(
        "security_groups:
  - name: db
    ingress:
      - {ip_protocol: tcp, from_port: 5432, to_port: 5432, ip_ranges: [10.0.0.0/8]}
      - {ip_protocol: tcp, from_port: 22, to_port: 22, ip_ranges: [0.0.0.0/0]}
network_interfaces:
  - {interface: w1, groups: [db]}
",
    );
    let found = audit(&d, &rails);
    let names: Vec<_> = found
        .iter()
        .filter_map(|f| f.guardrail.as_deref())
        .collect();
    assert_eq!(names, ["no-db-from-the-vpc"]);
    assert_eq!(found[0].severity, Severity::Warning);
    // Bad guardrails are refused with where and why.
    std::fs::write(&path, "guardrails: [{name: x, ports: 90-80}]\n").unwrap();
    let e = Guardrails::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("guardrails[0] (x): ports: \"90-80\" runs backwards"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
