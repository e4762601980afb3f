//! The EC2 API driven by the AWS CLI against an agent enforcing between two
//! namespaces: each acknowledged change is in the kernel when the call
//! returns; references and prefix lists are followed; file mode only reads;
//! `apply -f` goes through the same validation; a crash loses nothing
//! acknowledged.

use std::time::Duration;

use sg_tests::*;

const T: Duration = Duration::from_secs(2);

#[test]
fn aws_cli_changes_are_in_the_kernel_when_the_call_returns() {
    if !kernel_available("aws_cli_changes_are_in_the_kernel_when_the_call_returns") {
        return;
    }
    let pair = Pair::new("apicli").unwrap();
    for port in [8080, 9090] {
        tcp_echo_server(&pair.server, addr(SERVER_V4, port)).unwrap();
    }
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let ns = &pair.server;
    let (app, clients) = (group_id(ns, "app"), group_id(ns, "clients"));
    assert_eq!(probe_server(&pair, 8080), Seen::Dropped, "no rule yet");

    // Authorize: the answer comes once the kernel enforces it.
    let r = aws(ns, ADMIN, &["authorize-security-group-ingress", "--group-id", &app, "--ip-permissions", "IpProtocol=tcp,FromPort=8080,ToPort=8080,IpRanges=[{CidrIp=10.77.0.0/24,Description=lan}]"]).ok();
    let rule = r["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r["SecurityGroupRules"][0]["CidrIpv4"], "10.77.0.0/24");
    assert_eq!(
        probe_server(&pair, 8080),
        Seen::Pass,
        "allowed as soon as the call returned"
    );

    // Revoke by rule id: new connections denied, a tracked one goes on.
    let stream = Stream::start(&pair.client, addr(SERVER_V4, 8080)).unwrap();
    aws(
        ns,
        ADMIN,
        &[
            "revoke-security-group-ingress",
            "--group-id",
            &app,
            "--security-group-rule-ids",
            &rule,
        ],
    )
    .ok();
    assert_eq!(
        probe_server(&pair, 8080),
        Seen::Dropped,
        "denied as soon as the revoke returned"
    );
    let before = stream.echoed();
    assert!(
        wait_until(T, || stream.echoed() > before + 65536),
        "the tracked flow continues"
    );
    stream.finish().expect("the tracked flow is not cut");

    // A group reference follows its members.
    aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--ip-permissions",
            &format!(
                "IpProtocol=tcp,FromPort=8080,ToPort=8080,UserIdGroupPairs=[{{GroupId={clients}}}]"
            ),
        ],
    )
    .ok();
    assert_eq!(
        probe_server(&pair, 8080),
        Seen::Pass,
        "the client is a member of clients"
    );
    let default = group_id(ns, "default");
    aws(
        ns,
        ADMIN,
        &[
            "modify-network-interface-attribute",
            "--network-interface-id",
            "eni-00000000000000c11",
            "--groups",
            &default,
        ],
    )
    .ok();
    assert_eq!(
        probe_server(&pair, 8080),
        Seen::Dropped,
        "no longer a member"
    );

    // A prefix list follows its entries; its version guards changes.
    let pl = aws(
        ns,
        ADMIN,
        &[
            "create-managed-prefix-list",
            "--prefix-list-name",
            "callers",
            "--max-entries",
            "5",
            "--address-family",
            "IPv4",
            "--entries",
            "Cidr=10.77.0.1/32,Description=client",
        ],
    )
    .ok();
    let pl = pl["PrefixList"]["PrefixListId"]
        .as_str()
        .unwrap()
        .to_string();
    aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--ip-permissions",
            &format!(
                "IpProtocol=tcp,FromPort=9090,ToPort=9090,PrefixListIds=[{{PrefixListId={pl}}}]"
            ),
        ],
    )
    .ok();
    assert_eq!(probe_server(&pair, 9090), Seen::Pass);
    let m = aws(
        ns,
        ADMIN,
        &[
            "modify-managed-prefix-list",
            "--prefix-list-id",
            &pl,
            "--current-version",
            "1",
            "--remove-entries",
            "Cidr=10.77.0.1/32",
        ],
    )
    .ok();
    assert_eq!(m["PrefixList"]["Version"], 2);
    assert_eq!(
        probe_server(&pair, 9090),
        Seen::Dropped,
        "the entry is gone"
    );
    let stale = aws(
        ns,
        ADMIN,
        &[
            "modify-managed-prefix-list",
            "--prefix-list-id",
            &pl,
            "--current-version",
            "1",
            "--add-entries",
            "Cidr=0.0.0.0/0",
        ],
    );
    assert_eq!(stale.code(), "PrefixListVersionMismatch");
    assert_eq!(
        probe_server(&pair, 9090),
        Seen::Dropped,
        "a refused change changes nothing"
    );

    // The audit trail has every change, who made it, what it answered.
    let ev = lookup_events(
        &agent.state,
        &["--event-name", "AuthorizeSecurityGroupIngress"],
    );
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| e["userIdentity"]["accessKeyId"] == ADMIN.id
                && e["eventSource"] == "ec2.amazonaws.com")
    );
    assert_eq!(
        ev[0]["responseElements"]["SecurityGroupRules"][0]["SecurityGroupRuleId"],
        rule.as_str()
    );
    let by_rule = lookup_events(&agent.state, &["--resource", &rule]);
    assert_eq!(by_rule.len(), 2, "authorized, then revoked: {by_rule:?}");
    let refused = lookup_events(&agent.state, &["--event-name", "ModifyManagedPrefixList"]);
    assert_eq!(
        refused.last().unwrap()["errorCode"],
        "PrefixListVersionMismatch"
    );
}

#[test]
fn file_mode_serves_reads_and_refuses_changes() {
    if !kernel_available("file_mode_serves_reads_and_refuses_changes") {
        return;
    }
    let pair = Pair::new("apifile").unwrap();
    let dir = TempDir::new().unwrap();
    let creds = write_credentials(&dir.0).unwrap().display().to_string();
    let agent = Agent::start_in(
        &pair.server,
        dir,
        API_SEED,
        &["--api", "127.0.0.1:8733", "--api-credentials", &creds],
    )
    .unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    let r = aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "0.0.0.0/0",
        ],
    );
    assert_eq!(r.code(), "UnsupportedOperation");
    assert_eq!(probe_server(&pair, 22), Seen::Dropped);
    // A reload taken is a record of the trail, saying what changed.
    let grown = API_SEED.replace(
        "{name: clients, description: who may call}",
        "{name: clients, description: who may call}\n  - {name: extra, description: new}",
    );
    assert!(agent.reload(&grown).unwrap());
    let ev = lookup_events(&agent.state, &["--event-name", "ApplyConfiguration"]);
    let extra = group_id(ns, "extra");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0]["responseElements"]["changed"]["security_groups"]["added"],
        serde_json::json!([extra])
    );
    let refused = lookup_events(
        &agent.state,
        &["--event-name", "AuthorizeSecurityGroupIngress"],
    );
    assert_eq!(refused[0]["errorCode"], "UnsupportedOperation");
}

#[test]
fn apply_f_replaces_the_managed_state_through_the_same_validation() {
    if !kernel_available("apply_f_replaces_the_managed_state_through_the_same_validation") {
        return;
    }
    let pair = Pair::new("apiapply").unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let ns = &pair.server;
    let apply = |text: &str| {
        let f = state.0.join("apply.yaml");
        std::fs::write(&f, text).unwrap();
        ns.command(agent_bin())
            .args(["apply", "-f"])
            .arg(&f)
            .output()
            .unwrap()
    };
    let app_with = |cidr: &str| {
        API_SEED.replace(
            "{name: app, description: the server}",
            &format!("{{name: app, description: the server, ingress: [{{ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [{cidr}]}}]}}"),
        )
    };
    // A broken file is refused whole; the state in force stays.
    let bad = apply(&app_with("10.77.0.0/33"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid IPv4 CIDR"),
        "{bad:?}"
    );
    assert_eq!(probe_server(&pair, 8080), Seen::Dropped);
    let good = apply(&app_with("10.77.0.0/24"));
    assert!(good.status.success(), "{good:?}");
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("security_groups changed"),
        "{good:?}"
    );
    assert_eq!(
        probe_server(&pair, 8080),
        Seen::Pass,
        "enforced when apply returns"
    );
    let app = group_id(ns, "app");
    let rules = aws(
        ns,
        READER,
        &[
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={app}"),
        ],
    )
    .ok();
    assert!(
        rules["SecurityGroupRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["FromPort"] == 8080),
        "{rules}"
    );
    assert_eq!(
        lookup_events(&state.0, &["--event-name", "ApplyConfiguration"]).len(),
        2,
        "the seed, then the apply"
    );
}

#[test]
fn a_crash_in_a_burst_of_changes_loses_nothing_acknowledged() {
    if !kernel_available("a_crash_in_a_burst_of_changes_loses_nothing_acknowledged") {
        return;
    }
    let pair = Pair::new("apicrash").unwrap();
    let state = TempDir::new().unwrap();
    let mut agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    // Four clients authorize ports 20000.. as fast as they are answered,
    // printing each acknowledged port at once.
    let script = format!(
        r#"
import threading, sys
out = threading.Lock()
def worker(t):
    c = ec2()
    for i in range(t, 4000, 4):
        p = 20000 + i
        try:
            c.authorize_security_group_ingress(GroupId={app:?}, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': p, 'ToPort': p, 'IpRanges': [{{'CidrIp': '10.77.0.0/24'}}]}}])
        except Exception:
            return
        # One line per answer, whole: print() from threads can interleave.
        with out:
            sys.stdout.write(f"{{p}}\n")
            sys.stdout.flush()
ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print('null')
"#
    );
    let mut burst = boto3_command(ns, ADMIN, &script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the agent once the burst is under way (a few calls answered),
    // however long the clients took to start on a loaded machine.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = burst.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut acked: Vec<u16> = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(p) = line.parse() {
                acked.push(p);
                let _ = tx.send(acked.len());
            }
        }
        acked
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rx
        .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        .is_ok_and(|n| n < 8)
    {}
    agent.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = burst.wait();
    let acked = reader.join().unwrap();
    assert!(
        acked.len() >= 4,
        "the burst was under way when the agent died ({} acknowledged)",
        acked.len()
    );

    let _again = Agent::start_managed(ns, &state.0, API_SEED).unwrap();
    let rules = aws(
        ns,
        READER,
        &[
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={app}"),
        ],
    )
    .ok();
    let stored: std::collections::BTreeSet<u16> = rules["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsEgress"] == false)
        .filter_map(|r| r["FromPort"].as_u64().map(|p| p as u16))
        .collect();
    for p in &acked {
        assert!(stored.contains(p), "acknowledged port {p} was lost");
    }
    // At most one change per client was committed and not yet answered.
    let unacked: Vec<&u16> = stored.iter().filter(|p| !acked.contains(p)).collect();
    assert!(
        unacked.len() <= 4,
        "committed but never acknowledged: {unacked:?}"
    );
    // Every stored change has its record, made in the same transaction.
    let ok = lookup_events(
        &state.0,
        &[
            "--event-name",
            "AuthorizeSecurityGroupIngress",
            "--max-results",
            "10000",
        ],
    )
    .into_iter()
    .filter(|e| e["errorCode"].is_null())
    .count();
    assert_eq!(ok, stored.len(), "one audit record per committed change");
    // The kernel enforces exactly the stored state.
    let last = *stored.iter().max().unwrap();
    let never = last + 1;
    for (port, want) in [
        (acked[0], Seen::Pass),
        (last, Seen::Pass),
        (never, Seen::Dropped),
    ] {
        tcp_echo_server(ns, addr(SERVER_V4, port)).unwrap();
        assert_eq!(
            probe_server(&pair, port),
            want,
            "port {port} after the restart"
        );
    }
}
