//! Who owns the datapath's state, and what stops enforcement: one agent per
//! pin directory; no pins on a bpffs that dies with the agent; an interface
//! left out of the file keeps its policy until explicitly detached, also
//! across restarts; `cleanup` touches only this namespace's agent, and
//! never a running one's.

use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// tcp/8080 allowed from the client's subnet, tcp/9000 denied.
fn config(ifaces: &str) -> String {
    format!(
        "security_groups:
  - name: app
    ingress:
      - {{ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}}
network_interfaces:
{ifaces}"
    )
}

const ETH0: &str = "  - {interface: eth0, groups: [app]}\n";
/// A valid file that does not list eth0.
const ELSEWHERE: &str = "  - {interface: nothere0, groups: [app], optional: true}\n";

fn cli(ns: &Netns, args: &[&str]) -> (bool, String, String) {
    let out = ns.command(agent_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_enforcing() {
    if !kernel_available("a_second_agent_is_refused_and_the_first_keeps_enforcing") {
        return;
    }
    let pair = Pair::new("second").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let mut first = Agent::start(&pair.server, &config(ETH0)).unwrap();
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    let open = config(ETH0).replace("8080, to_port: 8080", "8080, to_port: 9000");
    let err = Agent::start(&pair.server, &open).err().expect("refused");
    assert!(
        err.to_string().contains(&format!(
            "another sg-agent (PID {}) already owns",
            first.pid()
        )),
        "{err}"
    );
    // Nor may cleanup pull the running agent's pins from under it.
    let (ok, _, stderr) = cli(&pair.server, &["cleanup"]);
    assert!(!ok && stderr.contains("already owns"), "{stderr}");
    let (tries, passed) = probes.finish();
    assert_eq!(passed, 0, "{passed} of {tries} got through");
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Dropped);
    // The owner's stop is the one that ends enforcement.
    first.stop_with(Signal::SIGTERM).unwrap();
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Pass);
}

#[test]
fn ip_netns_exec_is_refused_and_nsenter_survives_kill_9() {
    if !kernel_available("ip_netns_exec_is_refused_and_nsenter_survives_kill_9") {
        return;
    }
    let pair = Pair::new("nsexec").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("sg.yaml");
    std::fs::write(&path, config(ETH0)).unwrap();
    let bin = agent_bin();
    let run = format!("{} run --config {}", bin.display(), path.display());
    for (how, want) in [
        (
            run.clone(),
            "is not on bpffs, and this process runs in a mount namespace of its own",
        ),
        (
            format!("mount -t bpf bpf /sys/fs/bpf && exec {run}"),
            "is mounted only in this process's own mount namespace",
        ),
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &pair.server.name, "sh", "-c", &how])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{how}: accepted");
        assert!(
            stderr.contains(want) && stderr.contains("nsenter --net"),
            "{how}: {stderr}"
        );
        // Refused before touching anything: the port is open, unfiltered.
        assert_eq!(
            tcp_probe(&pair.client, denied, T).unwrap(),
            Seen::Pass,
            "{how}"
        );
    }
    // The documented way keeps enforcing after kill -9.
    let mut agent = Agent::start(&pair.server, &config(ETH0)).unwrap();
    agent.stop_with(Signal::SIGKILL).unwrap();
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (tries, passed) = probes.finish();
    assert_eq!(passed, 0, "{passed} of {tries} got through after kill -9");
    let (ok, out, err) = cli(&pair.server, &["cleanup"]);
    assert!(ok, "{out}{err}");
}

#[test]
fn leaving_the_file_keeps_the_policy_until_detached_also_across_restarts() {
    if !kernel_available("leaving_the_file_keeps_the_policy_until_detached_also_across_restarts") {
        return;
    }
    let pair = Pair::new("keep").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let allowed = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let mut agent = Agent::start(&pair.server, &config(ETH0)).unwrap();
    let (ok, _, err) = cli(&pair.server, &["detach", "eth0"]);
    assert!(!ok && err.contains("is listed in"), "{err}");
    // Gone from the file: still enforced, and said so.
    assert!(agent.reload(&config(ELSEWHERE)).unwrap(), "{}", agent.log());
    assert!(
        agent
            .log()
            .contains("kept enforcing with their last policy: eth0")
    );
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Dropped);
    assert_eq!(tcp_probe(&pair.client, allowed, T).unwrap(), Seen::Pass);
    // `check` says what a file would widen against the policy in force.
    let wider = agent.config.with_extension("wider.yaml");
    std::fs::write(&wider, config(ETH0).replace("10.77.0.0/24", "10.77.0.0/3")).unwrap();
    let (ok, out, err) = cli(
        &pair.server,
        &["check", "--config", wider.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("would widen what passes")
            && out.contains("eth0: inbound tcp 8080 from 0.0.0.0/3"),
        "{out}"
    );
    // A restart with the same file keeps it too.
    agent.stop_with(Signal::SIGKILL).unwrap();
    let mut agent = Agent::start(&pair.server, &config(ELSEWHERE)).unwrap();
    assert!(
        agent
            .log()
            .contains("kept enforcing with their last policy: eth0"),
        "{}",
        agent.log()
    );
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Dropped);
    assert_eq!(tcp_probe(&pair.client, allowed, T).unwrap(), Seen::Pass);
    // Detached on request: now unfiltered.
    let (ok, out, err) = cli(&pair.server, &["detach", "eth0"]);
    assert!(ok, "{out}{err}");
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Pass);
    // Listed again, enforced again; then detached by the file's marker.
    assert!(agent.reload(&config(ETH0)).unwrap());
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Dropped);
    assert!(
        agent
            .reload(&config("  - {interface: eth0, detached: true}\n"))
            .unwrap()
    );
    assert!(agent.log().contains("detached eth0"), "{}", agent.log());
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Pass);
    agent.stop_with(Signal::SIGTERM).unwrap();
}

#[test]
fn cleanup_removes_only_this_namespaces_pins() {
    if !kernel_available("cleanup_removes_only_this_namespaces_pins") {
        return;
    }
    let a = Pair::new("cla").unwrap();
    let b = Pair::new("clb").unwrap();
    let da = tcp_echo_server(&a.server, addr(SERVER_V4, 9000)).unwrap();
    let db = tcp_echo_server(&b.server, addr(SERVER_V4, 9000)).unwrap();
    for p in [&a, &b] {
        Agent::start(&p.server, &config(ETH0))
            .unwrap()
            .stop_with(Signal::SIGKILL)
            .unwrap();
    }
    let (ok, out, err) = cli(&a.server, &["cleanup"]);
    assert!(ok && out.contains("removed the pins"), "{out}{err}");
    assert_eq!(tcp_probe(&a.client, da, T).unwrap(), Seen::Pass);
    assert_eq!(
        tcp_probe(&b.client, db, T).unwrap(),
        Seen::Dropped,
        "the other namespace's agent's pins stay"
    );
    let (ok, _, err) = cli(&a.server, &["cleanup", "--all", "--pin-dir", "/tmp/x"]);
    assert!(!ok && err.contains("not both"), "{err}");
    let (ok, out, err) = cli(&b.server, &["cleanup"]);
    assert!(ok, "{out}{err}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    if !kernel_available("output_into_a_closed_pipe_ends_quietly") {
        return;
    }
    // Enough output to fill a pipe: 40 groups of 50 rules.
    let mut text = String::from("security_groups:\n");
    for g in 0..40 {
        text.push_str(&format!("  - name: g{g}\n    ingress:\n"));
        for r in 0..50 {
            text.push_str(&format!(
                "      - {{ip_protocol: tcp, from_port: {p}, to_port: {p}, ip_ranges: [10.{g}.{r}.0/24]}}\n",
                p = 1000 + r
            ));
        }
    }
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("big.yaml");
    std::fs::write(&path, text).unwrap();
    let bin = agent_bin();
    for cmd in [
        format!("describe-security-group-rules --config {}", path.display()),
        format!(
            "describe-security-groups --output table --config {}",
            path.display()
        ),
        "completions bash".to_string(),
        "man".to_string(),
    ] {
        let out = Command::new("sh")
            .args(["-c", &format!("{} {cmd} | head -c 10", bin.display())])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd}: {stderr}");
        assert!(stderr.is_empty(), "{cmd}: {stderr}");
    }
}

#[test]
fn bad_cli_arguments_get_a_clear_error() {
    if !kernel_available("bad_cli_arguments_get_a_clear_error") {
        return;
    }
    for (args, want) in [
        (
            &["flush", "--peer", "10.0.0.0/33"][..],
            "invalid value '10.0.0.0/33' for '--peer",
        ),
        (
            &["flush", "--peer", "garbage"],
            "invalid value 'garbage' for '--peer",
        ),
        (
            &["flush", "--port", "70000"],
            "invalid value '70000' for '--port",
        ),
        (&["flush", "--port", "-1"], "unexpected argument '-1'"),
        (
            &["flush", "--protocol", "256"],
            "invalid ip_protocol \"256\"",
        ),
        (&["flush", "--protocol", "-1"], "give one protocol"),
        (
            &["flush", "--interface", "nope0"],
            "no network interface \"nope0\"",
        ),
        (
            &["--pin-dir", "/sys/fs/bpf/sg-none", "stats"],
            "is sg-agent running here",
        ),
        (&["detach"], "required"),
        (
            &["run", "--config", "/nonexistent/sg.yaml"],
            "/nonexistent/sg.yaml: cannot read",
        ),
        (&["check", "--config", "/dev/zero"], "character device"),
        (&["completions", "tcsh"], "invalid value 'tcsh'"),
    ] {
        let out = Command::new(agent_bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_restart_does_not_take_a_cut_file() {
    if !kernel_available("a_restart_does_not_take_a_cut_file") {
        return;
    }
    let pair = Pair::new("recut").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    Agent::start(&pair.server, &config(ETH0))
        .unwrap()
        .stop_with(Signal::SIGKILL)
        .unwrap();
    // A file without its final newline, as a writer that crashed midway
    // leaves one (here a wider one: 8080-9000).
    let cut = config(ETH0).replace(
        "to_port: 8080, ip_ranges: [10.77.0.0/24]}",
        "to_port: 9000, ip_ranges: [10.77.0.0/24]}",
    );
    let cut = cut.trim_end();
    let dir = TempDir::new().unwrap();
    let path = dir.0.join("sg.yaml");
    std::fs::write(&path, cut).unwrap();
    let out = pair
        .server
        .command(agent_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cut file was taken at restart");
    assert!(stderr.contains("at a restart"), "{stderr}");
    assert_eq!(
        tcp_probe(&pair.client, denied, T).unwrap(),
        Seen::Dropped,
        "the pins keep enforcing"
    );
    // Whole (ending with its newline), it is taken.
    let mut agent = Agent::start(&pair.server, &format!("{cut}\n")).unwrap();
    assert_eq!(tcp_probe(&pair.client, denied, T).unwrap(), Seen::Pass);
    agent.stop_with(Signal::SIGTERM).unwrap();
}
