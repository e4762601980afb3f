//! Three hosts, each with its own agent and workload, one state in a
//! 3-member etcd cluster with authentication on (docs/fleet.md): the API
//! served by `sg-agent api`, which enforces nothing; each agent as an etcd
//! user that reads the state and writes only its own heartbeat.

use std::time::{Duration, Instant};

use sg_tests::*;

const T: Duration = Duration::from_secs(2);
/// How long a change may take to reach another host.
const PROPAGATION: Duration = Duration::from_secs(5);

#[test]
fn three_hosts_share_one_state_with_least_privilege_and_survive_a_restart_while_etcd_is_down() {
    if !kernel_available(
        "three_hosts_share_one_state_with_least_privilege_and_survive_a_restart_while_etcd_is_down",
    ) {
        return;
    }
    let mut dc = Datacenter::new("dc").unwrap();
    dc.etcd.enable_auth(&HOSTS).unwrap();
    let [wa, wb, wc] = [0, 1, 2].map(|i| &dc.workloads[i]);
    let c_ip = Datacenter::workload_v4(2);
    let db = tcp_echo_server(wc, addr(&c_ip, 5432)).unwrap();
    let other = tcp_echo_server(wc, addr(&c_ip, 8080)).unwrap();
    // DATACENTER_STATE: the web member on host-a reaches the db on host-c
    // through a group reference; host-b's workload starts in the default
    // group. The API on host-a, as the one etcd user that may write, seeds.
    let api = dc.api(0, "sg-api", DATACENTER_STATE).unwrap();
    let apins = &dc.hosts[0];
    let _a = dc.agent(0, DATACENTER_STATE).unwrap();
    let _b = dc.agent(1, DATACENTER_STATE).unwrap();
    let mut c = dc.agent(2, DATACENTER_STATE).unwrap();
    assert_eq!(
        tcp_probe(wa, db, T).unwrap(),
        Seen::Pass,
        "web on host-a reaches db on host-c"
    );
    assert_eq!(tcp_probe(wa, other, T).unwrap(), Seen::Dropped);
    assert_eq!(
        tcp_probe(wb, db, T).unwrap(),
        Seen::Dropped,
        "host-b's workload is not in web"
    );

    // host-b's workload joins web through the API: host-c admits it once
    // the call returned and the change propagated.
    let web = group_id(apins, "web");
    set_groups(apins, &eni_of(apins, "host-b"), &[&web]);
    let returned = Instant::now();
    // `from` reaches `to` within the propagation delay.
    let admitted = |from: &Netns, to| {
        wait_until(PROPAGATION, || {
            tcp_probe(from, to, Duration::from_millis(200)).unwrap() == Seen::Pass
        })
    };
    assert!(
        admitted(wb, db),
        "the member added on host-b is allowed on host-c:\n{}",
        c.log()
    );
    eprintln!(
        "propagation (API call returned → allowed on host-c, probed): {:?}",
        returned.elapsed()
    );
    assert!(api.log().contains("API change committed"), "{}", api.log());

    // A compromised host: its etcd user cannot change the state, another
    // host's heartbeat, or the audit trail; only its own heartbeat.
    let b = Some(format!("host-b:{}", etcd_password("host-b")));
    let as_b = |args: &[&str]| etcdctl_as(&dc.etcd, b.as_deref(), args);
    for key in [
        "/sg/v1/objects/interface/x",
        "/sg/v1/settings",
        "/sg/v1/generation",
        "/sg/v1/beats/host-c",
        "/sg/v1/events/x",
    ] {
        let e = as_b(&["put", key, "{}"]).unwrap_err().to_string();
        assert!(e.contains("permission denied"), "host-b writing {key}: {e}");
    }
    assert!(
        as_b(&["del", "--prefix", "/sg/v1/objects/"])
            .unwrap_err()
            .to_string()
            .contains("permission denied")
    );
    as_b(&["put", "/sg/v1/beats/host-b", "2026-01-01T00:00:00Z"]).unwrap();
    assert!(
        as_b(&["get", "--prefix", "--keys-only", "/sg/v1/objects/"])
            .unwrap()
            .contains("/sg/v1/objects/"),
        "it reads the state"
    );
    assert_eq!(tcp_probe(wb, db, T).unwrap(), Seen::Pass, "nothing changed");

    // host-c's agent killed, etcd entirely down, the agent started again:
    // it enforces what its pins hold (not a moment open), and takes the
    // store's state when etcd is back, without a restart.
    let denied = ProbeLoop::start(wa, other).unwrap();
    c.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    for i in 0..3 {
        dc.etcd.kill_member(i);
    }
    let c = dc.agent(2, DATACENTER_STATE).unwrap();
    assert!(
        c.log().contains("enforcing what the pins hold"),
        "{}",
        c.log()
    );
    assert_eq!(
        tcp_probe(wa, db, T).unwrap(),
        Seen::Pass,
        "the pinned policy holds"
    );
    assert_eq!(tcp_probe(wb, db, T).unwrap(), Seen::Pass);
    let (tries, passed) = denied.finish();
    assert!(tries > 10, "{tries} probes");
    assert_eq!(
        passed, 0,
        "tcp/8080 got through {passed} of {tries} times while host-c restarted"
    );
    for i in 0..3 {
        dc.etcd.start_member(i).unwrap();
    }
    assert!(wait_until(Duration::from_secs(20), || dc.etcd.healthy()));
    let db_id = group_id(apins, "db");
    let allow = [
        "authorize-security-group-ingress",
        "--group-id",
        &db_id,
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--source-group",
        &web,
    ];
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            aws(apins, ADMIN, &allow),
            Answer::Ok(_)
        )),
        "the API takes changes again once etcd is back:\n{}",
        api.log()
    );
    assert!(
        admitted(wa, other),
        "host-c's agent took the state once etcd answered:\n{}",
        c.log()
    );
}
