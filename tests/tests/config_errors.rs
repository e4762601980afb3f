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

fn nothing_attached(ns: &Netns) -> bool {
    let out = ns
        .command("bpftool")
        .args(["net", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    !String::from_utf8_lossy(&out.stdout).contains("sg_tc_")
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
        assert!(
            nothing_attached(&pair.server),
            "attached after refusing {config}"
        );
    }
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
