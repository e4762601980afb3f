//! A bad configuration is refused with the file, the place and the problem,
//! and nothing is attached.

use std::process::Command;

use sg_tests::*;

fn run_agent(ns: &Netns, config: &str) -> (bool, String) {
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("bad.yaml");
    std::fs::write(&path, config).unwrap();
    let out = ns
        .command(agent_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.success(), text)
}

/// Programs attached with tcx to the namespace's `eth0`, both directions.
fn attached(ns: &Netns) -> usize {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    ns.run(|| {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| {
                SchedClassifier::query_tcx("eth0", t)
                    .expect("query tcx")
                    .1
                    .len()
            })
            .sum()
    })
    .unwrap()
}

#[test]
fn bad_configs_are_refused_and_nothing_is_attached() {
    if !kernel_available("bad_configs_are_refused_and_nothing_is_attached") {
        return;
    }
    let pair = Pair::new("badcfg").unwrap();
    let group = "security_groups:\n  - name: a\n    ingress:\n";
    let cases = [
        (
            "security_groups: [\n",
            "FILE:2: InvalidParameterValue: did not find expected node content",
        ),
        (
            &*format!(
                "{group}      - {{ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [10.0.0.0/33]}}\nnetwork_interfaces: [{{interface: eth0, groups: [a]}}]\n"
            ),
            "FILE:4: security group \"a\" (sg-786bd221e522d70a3): InvalidParameterValue: invalid IPv4 CIDR \"10.0.0.0/33\"",
        ),
        (
            &*format!(
                "{group}      - {{ip_protocol: udp, from_port: 0, to_port: 65536, ip_ranges: [10.0.0.0/8]}}\nnetwork_interfaces: [{{interface: eth0, groups: [a]}}]\n"
            ),
            "FILE:4: security group \"a\" (sg-786bd221e522d70a3): InvalidParameterValue: invalid port range 0-65536: ports are 0-65535",
        ),
        (
            "security_groups: [{name: a}]\nnetwork_interfaces: [{interface: eth0, groups: [a]}, {interface: nope0, groups: [a]}]\n",
            "FILE: network interface \"nope0\": no such interface here",
        ),
    ];
    for (config, want) in cases {
        let (ok, err) = run_agent(&pair.server, config);
        assert!(!ok, "accepted: {config}");
        assert!(err.contains(want), "error {err:?} should contain {want:?}");
        assert_eq!(
            attached(&pair.server),
            0,
            "attached after refusing {config}"
        );
    }
    // The check can see an attachment: a valid configuration makes two.
    let agent = Agent::start(
        &pair.server,
        "security_groups: [{name: a}]\nnetwork_interfaces: [{interface: eth0, groups: [a]}]\n",
    )
    .unwrap();
    assert_eq!(attached(&pair.server), 2);
    drop(agent);
    assert_eq!(attached(&pair.server), 0, "a clean stop detaches");
    // `check` agrees, without a kernel.
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("bad.yaml");
    std::fs::write(
        &path,
        "security_groups: [{name: a, ingress: [{ip_protocol: tcp}]}]\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs from_port and to_port"));
}

fn cli(args: &[&str], config: &str) -> (bool, String, String) {
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("sg.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(agent_bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let f = path.display().to_string();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).replace(&f, "FILE"),
        String::from_utf8_lossy(&out.stderr).replace(&f, "FILE"),
    )
}

#[test]
fn check_lists_every_error_or_summarises() {
    let broken = "security_groups:
  - name: sg-web
  - name: db
    ingress:
      - {ip_protocol: tcp, from_port: 5432, to_port: 5431, ip_ranges: [10.0.0.0/8]}
      - {ip_protocol: tcp, from_port: 1, to_port: 1, user_id_group_pairs: [ghost]}
network_interfaces: [{interface: eth0, groups: [db, nope]}]
";
    let (ok, _, err) = cli(&["check"], broken);
    assert!(!ok);
    for want in [
        "4 error(s) in the configuration",
        "FILE:2: security group \"sg-web\": InvalidParameterValue: a group name may not start with sg-",
        "FILE:5: security group \"db\"",
        "from_port is greater than to_port",
        "FILE:6: security group \"db\"",
        "InvalidGroup.NotFound: no security group \"ghost\"",
        "FILE:7: network interface \"eth0\": InvalidGroup.NotFound: no security group \"nope\"",
    ] {
        assert!(err.contains(want), "{err}\nshould contain {want:?}");
    }
    let (ok, out, err) = cli(
        &["check"],
        "security_groups: [{name: web}]\nnetwork_interfaces: [{interface: eth0, groups: [web]}]\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("FILE: valid: 1 VPC(s), 2 security group(s)"),
        "{out}"
    );
}

#[test]
fn describe_prints_aws_shapes() {
    let config = "security_groups:
  - name: web
    tags: {team: edge}
    ingress:
      - {ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [{cidr_ip: 0.0.0.0/0, description: HTTPS}], user_id_group_pairs: [web]}
";
    let (ok, out, err) = cli(&["describe-security-groups"], config);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web = v["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["GroupName"] == "web")
        .unwrap();
    assert!(web["GroupId"].as_str().unwrap().starts_with("sg-"));
    assert_eq!(web["OwnerId"], "000000000000");
    assert_eq!(web["Tags"][0]["Key"], "team");
    let p = &web["IpPermissions"][0];
    assert_eq!(
        (
            p["IpProtocol"].as_str(),
            p["FromPort"].as_i64(),
            p["ToPort"].as_i64()
        ),
        (Some("tcp"), Some(443), Some(443))
    );
    assert_eq!(p["IpRanges"][0]["CidrIp"], "0.0.0.0/0");
    assert_eq!(p["IpRanges"][0]["Description"], "HTTPS");
    assert_eq!(p["UserIdGroupPairs"][0]["GroupId"], web["GroupId"]);
    assert_eq!(
        web["IpPermissionsEgress"][0]["IpProtocol"], "-1",
        "default egress"
    );
    let (ok, out, _) = cli(&["describe-security-group-rules"], config);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules = v["SecurityGroupRules"].as_array().unwrap();
    assert!(rules.iter().all(|r| {
        r["SecurityGroupRuleId"]
            .as_str()
            .unwrap()
            .starts_with("sgr-")
    }));
    assert!(
        rules
            .iter()
            .any(|r| r["CidrIpv4"] == "0.0.0.0/0" && r["IsEgress"] == false)
    );
    assert!(
        rules
            .iter()
            .any(|r| r["ReferencedGroupInfo"]["GroupId"] == web["GroupId"])
    );
    let (ok, out, _) = cli(
        &["describe-security-group-rules", "--output", "yaml"],
        config,
    );
    assert!(ok && out.contains("SecurityGroupRules:"));
    let (ok, out, _) = cli(&["describe-security-groups", "--output", "table"], config);
    assert!(ok && out.contains("web") && out.contains("443"));
}

#[test]
fn cleanup_removes_every_trace() {
    if !kernel_available("cleanup_removes_every_trace") {
        return;
    }
    let pair = Pair::new("clean").unwrap();
    let srv = tcp_echo_server(&pair.server, "10.77.0.2:8081".parse().unwrap()).unwrap();
    let mut agent = Agent::start(
        &pair.server,
        "security_groups: [{name: a}]\nnetwork_interfaces: [{interface: eth0, groups: [a]}]\n",
    )
    .unwrap();
    agent.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    // Killed: still enforcing from its pins.
    assert_eq!(
        tcp_probe(&pair.client, srv, std::time::Duration::from_secs(2)).unwrap(),
        Seen::Dropped
    );
    // Only this agent's pins: other sg instances on the machine stay.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(pair.server.path()).unwrap().ino();
    let dir = format!("/sys/fs/bpf/sg/v{}/net-{ino}", sg_common::LAYOUT_VERSION);
    assert!(
        std::path::Path::new(&dir)
            .join(sg_common::names::CT)
            .exists(),
        "pinned at {dir}"
    );
    sh(pair
        .server
        .command(agent_bin())
        .args(["--pin-dir", &dir, "cleanup"]))
    .unwrap();
    assert_eq!(
        tcp_probe(&pair.client, srv, std::time::Duration::from_secs(2)).unwrap(),
        Seen::Pass
    );
    assert!(
        !std::path::Path::new(&dir).exists(),
        "pins left under {dir}"
    );
}
