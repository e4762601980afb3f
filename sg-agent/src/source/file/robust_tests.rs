//! Bad input, systematically: hostile and broken documents never panic, stay
//! within bounded time, and get a clear error; and no prefix of a file (what
//! a writer that truncates first, or a full disk, leaves) is ever taken in a
//! way that widens what passes.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    model,
    reload::{self, Trigger},
    source,
    widen::{self, Enforced},
};

fn parse(text: &str) -> Result<model::Desired, String> {
    source::file::parse("t.yaml", text, None, None).map_err(|e| e.to_string())
}

/// Parses within a time bound, and returns the error text.
fn refused(text: &str) -> String {
    let start = Instant::now();
    let r = parse(text);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}: {}",
        start.elapsed(),
        &text[..text.len().min(80)]
    );
    r.expect_err("must be refused")
}

#[test]
fn hostile_documents_are_refused_quickly() {
    // Billion laughs: every level repeats the one before nine times.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("security_groups: [{name: x, tags: {k: *i}}]\n");
    assert!(!refused(&bomb).is_empty());
    let deep = format!(
        "security_groups: {}{}\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let e = refused(&deep);
    assert!(
        e.contains("t.yaml:1: InvalidParameterValue: nested deeper than 64"),
        "{e}"
    );
    let quoted = format!("security_groups: [{{name: \"{}\"}}]\n", "[".repeat(100));
    assert!(parse(&quoted).is_ok(), "brackets in quotes are text");
    let huge = format!(
        "# {}\nsecurity_groups: {}{}\n",
        "[".repeat(100),
        "[".repeat(3_000_000),
        "]".repeat(3_000_000)
    );
    assert!(refused(&huge).contains("nested deeper"));
    let dup = "security_groups: []\nsecurity_groups: [{name: a}]\n";
    assert!(refused(dup).contains("duplicate"), "{}", refused(dup));
    let dup_tag = "security_groups: [{name: a, tags: {k: a, k: b}}]\n";
    assert!(
        refused(dup_tag).contains("duplicate"),
        "{}",
        refused(dup_tag)
    );
    for n in [
        "99999999999999999999999",
        "-9223372036854775809",
        "1e400",
        "-1e400",
        ".nan",
        "0x7fffffffffffffffff",
    ] {
        let text = format!(
            "security_groups: [{{name: a, ingress: [{{ip_protocol: tcp, from_port: {n}, to_port: 1, ip_ranges: [10.0.0.0/8]}}]}}]\n"
        );
        let e = refused(&text);
        assert!(e.contains("t.yaml"), "{n}: {e}");
    }
    let e = refused("conntrack: {max_flows: 99999999999}\n");
    assert!(e.contains("max_flows"), "{e}");
    let e = refused("quotas: {rules_per_group: -5}\n");
    assert!(e.contains("rules_per_group"), "{e}");
}

const CONFIGS: [&str; 2] = [
    "vpcs:
  - name: prod
    cidr_blocks: [10.9.0.0/16]
security_groups:
  - name: app
    ingress:
      - ip_protocol: tcp
        from_port: 8080
        to_port: 8080
        ip_ranges:
          - 10.9.0.100/32
          - 10.9.0.200/32
    egress:
      - ip_protocol: udp
        from_port: 53
        to_port: 53
        ip_ranges:
          - 10.9.0.53/32
network_interfaces:
  - interface: eth0
    private_ipv4: [10.9.0.2]
    groups: [app]
  - interface: eth1
    private_ipv4: [10.9.0.3]
    groups: [app]
",
    r#"{"SecurityGroups": [{"GroupName": "web", "GroupId": "sg-0aaaaaaaaaaaaaaa1",
  "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
    "IpRanges": [{"CidrIp": "192.0.2.10/32"}]}],
  "IpPermissionsEgress": []}],
 "network_interfaces": [{"interface": "eth0", "groups": ["web"]}]}
"#,
];

/// Mutations of valid configurations: flips, cuts, deletions and insertions
/// of the characters YAML gives meaning to.
#[test]
fn mutated_documents_never_panic() {
    let seed: u64 = std::env::var("SG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let alphabet = b"{}[]:-,&*!|>'\"#%@` \n\t0123456789./e";
    let start = Instant::now();
    for _ in 0..3000 {
        let base = CONFIGS[rng.random_range(0..CONFIGS.len())].as_bytes();
        let mut b = base.to_vec();
        for _ in 0..rng.random_range(1..6) {
            if b.is_empty() {
                break;
            }
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..4) {
                0 => b[at] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    b.remove(at);
                }
                2 => b.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                _ => b.truncate(at.max(1)),
            }
        }
        // What the agent reads: text, or a clear refusal of bytes that are not.
        let Ok(text) = crate::file::utf8(b) else {
            continue;
        };
        let _ = reload::take(Trigger::Apply, "t.yaml", &text, None, None, None);
    }
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "seed {seed}: {:?}",
        start.elapsed()
    );
}

fn enforced(text: &str) -> Enforced {
    widen::after(
        &Enforced::new(),
        &parse(text).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// For every byte offset, the file cut there (written in place, or renamed
/// in when the cut falls inside a line) is never taken in a way that lets
/// more through than what was enforced before; sealed, only the whole file
/// is taken.
#[test]
fn no_prefix_of_a_file_widens_what_passes() {
    let other = "security_groups: [{name: app}]\nnetwork_interfaces: [{interface: eth0, groups: [app]}, {interface: eth1, groups: [app]}]\n";
    for full in CONFIGS {
        for sealed in [false, true] {
            let text = if sealed {
                reload::seal(full)
            } else {
                full.to_string()
            };
            // Before: this very file in force, or a narrower one.
            for before in [enforced(full), enforced(other)] {
                for cut in 0..=text.len() {
                    if !text.is_char_boundary(cut) {
                        continue;
                    }
                    let prefix = &text[..cut];
                    let mut triggers = vec![Trigger::InPlace];
                    if !prefix.ends_with('\n') {
                        triggers.push(Trigger::Renamed);
                    }
                    for t in triggers {
                        let Ok(d) = reload::take(t, "t.yaml", prefix, None, None, Some(&before))
                        else {
                            continue;
                        };
                        // Sealed, the whole file with or without its last
                        // newline, which the seal does not cover.
                        assert!(
                            sealed && cut + 1 >= text.len(),
                            "a prefix of {cut} of {} bytes was taken ({t:?}, sealed {sealed})",
                            text.len()
                        );
                        let after = widen::after(&before, &d);
                        if before == enforced(full) {
                            assert!(widen::widenings(&before, &after).is_empty());
                        }
                    }
                }
            }
        }
    }
}
