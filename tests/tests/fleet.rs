//! One state for many hosts (docs/fleet.md): an interface that names a host
//! is enforced by that host's agent only, and its addresses are members of
//! its groups on every host.

use std::time::Duration;

use serde_json::Value;
use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// The db on host "db-host" (this namespace's eth0) admits the web group;
/// the web member is an interface of host "web-host", which has an eth0 of
/// its own: the client's address.
const FLEET: &str = r#"
security_groups:
  - name: web
    description: web tier
  - name: db
    description: db tier
    ingress:
      - {ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web]}
network_interfaces:
  - {interface: eth0, host: db-host, private_ipv4: [10.77.0.2], groups: [db]}
  - {interface: eth0, host: web-host, private_ipv4: [10.77.0.1], groups: [web]}
"#;

#[test]
fn a_member_on_another_host_is_allowed_and_only_this_hosts_interfaces_are_enforced() {
    if !kernel_available(
        "a_member_on_another_host_is_allowed_and_only_this_hosts_interfaces_are_enforced",
    ) {
        return;
    }
    let pair = Pair::new("fleet").unwrap();
    let db = tcp_echo_server(&pair.server, addr(SERVER_V4, 5432)).unwrap();
    let other = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    {
        let agent = Agent::start_with(&pair.server, FLEET, &["--host-id", "db-host"]).unwrap();
        // The web member lives on web-host: its address is in the group.
        assert_eq!(tcp_probe(&pair.client, db, T).unwrap(), Seen::Pass);
        assert_eq!(tcp_probe(&pair.client, other, T).unwrap(), Seen::Dropped);
        let log = agent.log();
        assert!(
            log.contains("enforcing on 1 interface(s)")
                || log.contains("running with 1 interface(s)"),
            "one of the two eth0s is this host's:\n{log}"
        );
        assert!(
            !log.contains("not here"),
            "web-host's eth0 is not missing here:\n{log}"
        );
    }
    // The same state read as web-host: this eth0 is web-host's, whose group
    // admits nothing; db-host's policy (5432 from web) is not taken here.
    let _agent = Agent::start_with(&pair.server, FLEET, &["--host-id", "web-host"]).unwrap();
    assert_eq!(tcp_probe(&pair.client, db, T).unwrap(), Seen::Dropped);
    assert_eq!(tcp_probe(&pair.client, other, T).unwrap(), Seen::Dropped);
}

/// Two hosts, one state in a 3-member etcd cluster: the db on host "db-host"
/// (the server) admits the web group; the client is host "web-host", whose
/// eth0 starts in the default group.
const SEED: &str = r#"
quotas: {rules_per_group: 200, groups_per_interface: 5}
security_groups:
  - name: web
    description: web tier
  - name: db
    description: db tier
    ingress:
      - {ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web]}
network_interfaces:
  - {interface: eth0, host: db-host, private_ipv4: [10.77.0.2], groups: [db]}
  - {interface: eth0, host: web-host, private_ipv4: [10.77.0.1]}
"#;

/// How long a change may take to reach another host.
const PROPAGATION: Duration = Duration::from_secs(5);

#[test]
fn a_change_through_one_hosts_api_reaches_the_other_host_and_survives_etcd_failures() {
    if !kernel_available(
        "a_change_through_one_hosts_api_reaches_the_other_host_and_survives_etcd_failures",
    ) {
        return;
    }
    let mut fleet = Fleet::new("flt").unwrap();
    let (web, dbh) = (&fleet.hosts.client, &fleet.hosts.server);
    let db = tcp_echo_server(dbh, addr(SERVER_V4, 5432)).unwrap();
    let a = fleet.agent(dbh, "db-host", SEED).unwrap();
    let _b = fleet.agent(web, "web-host", SEED).unwrap();
    let pass = |want: Seen| wait_until(PROPAGATION, || tcp_probe(web, db, T).unwrap() == want);
    assert_eq!(
        tcp_probe(web, db, T).unwrap(),
        Seen::Dropped,
        "web-host is not in web yet"
    );

    // web-host's own API puts its interface in web: db-host admits it.
    let enis = aws(web, ADMIN, &["describe-network-interfaces"]).ok();
    let eni = enis["NetworkInterfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["PrivateIpAddress"] == CLIENT_V4)
        .unwrap_or_else(|| panic!("web-host's eth0 in {enis}"))["NetworkInterfaceId"]
        .as_str()
        .unwrap()
        .to_string();
    let web_id = group_id(web, "web");
    aws(
        web,
        ADMIN,
        &[
            "modify-network-interface-attribute",
            "--network-interface-id",
            &eni,
            "--groups",
            &web_id,
        ],
    )
    .ok();
    assert!(
        pass(Seen::Pass),
        "the member added on web-host is allowed on db-host"
    );
    // The fleet's audit trail is in etcd, readable from any host.
    let trail = sh(dbh.command(agent_bin()).args([
        "lookup-events",
        "--state",
        &fleet.etcd.url(),
        "--event-name",
        "ModifyNetworkInterfaceAttribute",
    ]))
    .unwrap();
    assert!(trail.contains(&eni), "the change is in the trail: {trail}");
    // Both hosts' APIs answer from the one state.
    assert_eq!(group_id(dbh, "web"), web_id);

    // One member down: the cluster serves, a change still goes through.
    fleet.etcd.kill_member(0);
    let db_id = group_id(dbh, "db");
    let revoke = [
        "revoke-security-group-ingress",
        "--group-id",
        &db_id,
        "--ip-permissions",
        &format!(
            "IpProtocol=tcp,FromPort=5432,ToPort=5432,UserIdGroupPairs=[{{GroupId={web_id}}}]"
        ),
    ];
    aws(web, ADMIN, &revoke).ok();
    assert!(
        pass(Seen::Dropped),
        "the revoke made on web-host reached db-host"
    );
    let allow = [
        "authorize-security-group-ingress",
        "--group-id",
        &db_id,
        "--protocol",
        "tcp",
        "--port",
        "5432",
        "--source-group",
        &web_id,
    ];
    aws(web, ADMIN, &allow).ok();
    assert!(pass(Seen::Pass), "with a member down:\n{}", a.log());

    // Every member down: enforcement stays as it was, changes are refused.
    fleet.etcd.kill_member(1);
    fleet.etcd.kill_member(2);
    assert_eq!(aws(web, ADMIN, &revoke).code(), "Unavailable");
    assert_eq!(
        tcp_probe(web, db, T).unwrap(),
        Seen::Pass,
        "the state in force stays"
    );
    assert_eq!(
        group_id(dbh, "db"),
        db_id,
        "reads answer from the state in force"
    );

    // etcd back: the agents catch up without a restart, and a change made
    // then reaches the other host.
    for i in 0..3 {
        fleet.etcd.start_member(i).unwrap();
    }
    assert!(wait_until(Duration::from_secs(20), || fleet.etcd.healthy()));
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            aws(web, ADMIN, &revoke),
            Answer::Ok(_)
        )),
        "changes are taken again once etcd is back"
    );
    assert!(
        pass(Seen::Dropped),
        "the change made after the outage reached db-host:\n{}",
        a.log()
    );
}

/// Each host's API, from eight boto3 threads at once, authorizes its own
/// ports in one group; prints `{port: code}`.
fn burst(ns: &Netns, group: &str, ports: std::ops::Range<u16>) -> std::thread::JoinHandle<Value> {
    let script = format!(
        r#"
import concurrent.futures
c = ec2()
def one(p):
    return p, code(lambda: c.authorize_security_group_ingress(GroupId={group:?}, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': p, 'ToPort': p, 'IpRanges': [{{'CidrIp': '10.0.0.0/8'}}]}}]))
with concurrent.futures.ThreadPoolExecutor(8) as x:
    print(json.dumps(dict(x.map(one, range({}, {})))))
"#,
        ports.start, ports.end
    );
    let cmd = boto3_command(ns, ADMIN, &script);
    std::thread::spawn(move || {
        let mut cmd = cmd;
        let out = cmd.output().expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    })
}

/// The tcp ports the group's rules name, as `ns`'s API describes them.
fn ports(ns: &Netns, group: &str) -> std::collections::BTreeSet<u64> {
    let v = aws(
        ns,
        ADMIN,
        &["describe-security-groups", "--group-ids", group],
    )
    .ok();
    v["SecurityGroups"][0]["IpPermissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["FromPort"].as_u64())
        .collect()
}

#[test]
fn two_api_servers_racing_on_one_group_apply_or_fail_cleanly_and_lose_nothing() {
    if !kernel_available(
        "two_api_servers_racing_on_one_group_apply_or_fail_cleanly_and_lose_nothing",
    ) {
        return;
    }
    let fleet = Fleet::new("race").unwrap();
    let (web, dbh) = (&fleet.hosts.client, &fleet.hosts.server);
    let _a = fleet.agent(dbh, "db-host", SEED).unwrap();
    let mut b = fleet.agent(web, "web-host", SEED).unwrap();
    // Each host's interface is shown with its host and its heartbeat.
    let beat = |host: &str| {
        let v = aws(dbh, ADMIN, &["describe-network-interfaces"]).ok();
        let i = v["NetworkInterfaces"].as_array().unwrap().iter().find(|i| {
            i["TagSet"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["Key"] == "sg:host" && t["Value"] == host)
        });
        let i = i
            .unwrap_or_else(|| panic!("{host}'s interface in {v}"))
            .clone();
        let tag = i["TagSet"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["Key"] == "sg:heartbeat")
            .map(|t| t["Value"].clone());
        (i["Status"].as_str().unwrap().to_string(), tag)
    };
    assert!(
        wait_until(PROPAGATION, || beat("web-host").0 == "in-use"
            && beat("web-host").1.is_some()),
        "web-host beats: {:?}",
        beat("web-host")
    );
    let group = group_id(web, "web");
    let (x, y) = (
        burst(web, &group, 3000..3040),
        burst(dbh, &group, 4000..4040),
    );
    let mut ok = std::collections::BTreeSet::new();
    let mut refused = 0;
    for answers in [x.join().unwrap(), y.join().unwrap()] {
        for (port, code) in answers.as_object().unwrap() {
            match code.as_str().unwrap() {
                "OK" => {
                    ok.insert(port.parse::<u64>().unwrap());
                }
                "Unavailable" => refused += 1,
                other => panic!("port {port}: {other}, neither applied nor refused cleanly"),
            }
        }
    }
    assert!(
        ok.iter().any(|p| *p < 4000) && ok.iter().any(|p| *p >= 4000),
        "both API servers made changes: {ok:?}"
    );
    eprintln!("{} acknowledged, {refused} refused (races lost)", ok.len());
    // Every acknowledged rule is there, on both hosts, and nothing else.
    assert!(
        wait_until(PROPAGATION, || ports(web, &group) == ok
            && ports(dbh, &group) == ok),
        "{} acknowledged, {refused} refused; web-host sees {:?}, db-host {:?}",
        ok.len(),
        ports(web, &group),
        ports(dbh, &group)
    );
    // web-host goes away: its interface stays (as on AWS), no longer in use,
    // with its last heartbeat.
    b.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || beat("web-host").0
            == "available"),
        "web-host's lease expires: {:?}",
        beat("web-host")
    );
    assert!(
        beat("web-host").1.is_some(),
        "its last heartbeat is still shown"
    );
}

#[test]
fn an_agent_killed_during_a_burst_of_changes_converges_to_the_store_on_restart() {
    if !kernel_available(
        "an_agent_killed_during_a_burst_of_changes_converges_to_the_store_on_restart",
    ) {
        return;
    }
    let fleet = Fleet::new("kill").unwrap();
    let (web, dbh) = (&fleet.hosts.client, &fleet.hosts.server);
    let last = tcp_echo_server(dbh, addr(SERVER_V4, 5149)).unwrap();
    let denied = tcp_echo_server(dbh, addr(SERVER_V4, 8080)).unwrap();
    let mut a = fleet.agent(dbh, "db-host", SEED).unwrap();
    let _b = fleet.agent(web, "web-host", SEED).unwrap();
    let db = group_id(web, "db");
    assert_eq!(tcp_probe(web, last, T).unwrap(), Seen::Dropped);
    // Changes to db-host's group through web-host's API, while db-host's
    // agent is killed and started again.
    let changes = burst(web, &db, 5000..5150);
    std::thread::sleep(Duration::from_millis(200));
    a.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(
        tcp_probe(web, denied, T).unwrap(),
        Seen::Dropped,
        "the pinned datapath holds while no agent runs"
    );
    let _a = fleet.agent(dbh, "db-host", SEED).unwrap();
    let answers = changes.join().unwrap();
    assert!(
        answers.as_object().unwrap().values().all(|c| c == "OK"),
        "{answers}"
    );
    // The restarted agent enforces the store's state: the last rule too.
    assert!(
        wait_until(PROPAGATION, || tcp_probe(web, last, T).unwrap()
            == Seen::Pass),
        "db-host enforces the burst's last change after its restart"
    );
    assert_eq!(ports(dbh, &db), ports(web, &db));
}
