//! The agent under change: live reloads, group membership, interfaces that
//! come and go, and restarts (also after `kill -9`), with traffic running.

use std::{thread, time::Duration};

use nix::sys::signal::Signal;
use sg_tests::*;

const T: Duration = Duration::from_secs(2);

fn server_config(extra_rule: &str) -> String {
    format!(
        "security_groups:
  - name: app
    ingress:
      - {{ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}}
      - {{ip_protocol: icmp, from_port: 8, to_port: -1, ip_ranges: [10.77.0.0/24]}}
      # The peer's own multicast listener reports, which no probe here sends.
      - {{ip_protocol: icmpv6, ipv6_ranges: [\"fe80::/10\"]}}
{extra_rule}network_interfaces:
  - {{interface: eth0, groups: [app]}}
"
    )
}

/// Runs a ping flood and a TCP stream from the client while `during` runs,
/// and checks that not one packet of either was lost: every ping answered,
/// the stream never broke, and sg rejected nothing but the packets `during`
/// says it had rejected on purpose.
fn no_loss_while(pair: &Pair, during: impl FnOnce() -> u64) {
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let stream = Stream::start(&pair.client, srv).unwrap();
    let rejected_before = rejected(&pair.server);
    let client = pair.client.path();
    let pinger = thread::spawn(move || {
        let ns = Netns::adopt(client);
        ping_flood(&ns, SERVER_V4, 2500, 20)
    });
    thread::sleep(Duration::from_millis(500));
    let on_purpose = during();
    let (sent, received) = pinger.join().unwrap();
    let echoed = stream.finish().expect("the TCP stream kept going");
    assert!(sent >= 2500, "ping sent {sent}");
    assert_eq!(
        received,
        sent,
        "ping flood lost {} of {sent}",
        sent - received
    );
    assert!(echoed > 1 << 20, "the stream moved only {echoed} bytes");
    let stats = sg_tests::sh(pair.server.command(agent_bin()).args(["stats"])).unwrap_or_default();
    assert_eq!(
        rejected(&pair.server) - rejected_before,
        on_purpose,
        "sg dropped packets of the flood or the stream:\n{stats}"
    );
}

#[test]
fn unrelated_rule_changes_lose_nothing() {
    if !kernel_available("unrelated_rule_changes_lose_nothing") {
        return;
    }
    let pair = Pair::new("calm").unwrap();
    let agent = Agent::start(&pair.server, &server_config("")).unwrap();
    let udp = "      - {ip_protocol: udp, from_port: 53, to_port: 53, ip_ranges: [192.0.2.0/24]}\n";
    no_loss_while(&pair, || {
        for i in 0..6 {
            let cfg = if i % 2 == 0 {
                server_config(udp)
            } else {
                server_config("")
            };
            assert!(agent.reload(&cfg).unwrap(), "{}", agent.log());
            thread::sleep(Duration::from_millis(300));
        }
        0
    });
}

#[test]
fn invalid_reload_keeps_the_policy_in_force() {
    if !kernel_available("invalid_reload_keeps_the_policy_in_force") {
        return;
    }
    let pair = Pair::new("bad").unwrap();
    let ok = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let no = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let agent = Agent::start(&pair.server, &server_config("")).unwrap();
    let broken = server_config(
        "      - {ip_protocol: tcp, from_port: 8081, to_port: 8081, ip_ranges: [10.77.0.0/33]}\n",
    );
    assert!(!agent.reload(&broken).unwrap(), "a broken file is refused");
    assert!(
        agent.log().contains("invalid IPv4 CIDR \"10.77.0.0/33\""),
        "{}",
        agent.log()
    );
    assert_eq!(tcp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(
        tcp_probe(&pair.client, no, T).unwrap(),
        Seen::Dropped,
        "nothing of the broken file applied"
    );
}

#[test]
fn kill_9_and_restart_lose_nothing_and_keep_enforcing() {
    if !kernel_available("kill_9_and_restart_lose_nothing_and_keep_enforcing") {
        return;
    }
    let pair = Pair::new("kill").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let mut first = Agent::start(&pair.server, &server_config("")).unwrap();
    let mut second = None;
    no_loss_while(&pair, || {
        first.stop_with(Signal::SIGKILL).unwrap();
        // Down: the pinned programs and maps keep enforcing.
        let before = rejected(&pair.server);
        assert_eq!(
            tcp_probe(&pair.client, denied, T).unwrap(),
            Seen::Dropped,
            "denied while the agent is down"
        );
        let probe_drops = rejected(&pair.server) - before;
        assert!(probe_drops > 0);
        let a = Agent::start(&pair.server, &server_config("")).unwrap();
        assert!(a.log().contains("adopted the pinned"), "{}", a.log());
        second = Some(a);
        thread::sleep(Duration::from_millis(500));
        probe_drops
    });
    assert_eq!(
        tcp_probe(&pair.client, denied, T).unwrap(),
        Seen::Dropped,
        "denied after the restart"
    );
    assert!(pair.client.ping(SERVER_V4, 1, 56));
    drop(second);
    assert_eq!(
        tcp_probe(&pair.client, denied, T).unwrap(),
        Seen::Pass,
        "a clean stop detaches"
    );
}

#[test]
fn joining_a_referenced_group_opens_exactly_what_the_reference_allows() {
    if !kernel_available("joining_a_referenced_group_opens_exactly_what_the_reference_allows") {
        return;
    }
    // db (host 0) allows 5432 from the members of "app". Host 1 joins app;
    // host 2 never does.
    let star = Star::new("ref", 3).unwrap();
    let config = |w1_groups: &str| {
        format!(
            "security_groups:
  - name: db
    ingress:
      - {{ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [app]}}
  - name: app
  - name: misc
network_interfaces:
  - {{interface: w0, attach: host, private_ipv4: [10.80.0.2], private_ipv6: [\"fd80:0::2\"], groups: [db]}}
  - {{interface: w1, attach: host, private_ipv4: [10.80.1.2], private_ipv6: [\"fd80:1::2\"], groups: [{w1_groups}]}}
  - {{interface: w2, attach: host, private_ipv4: [10.80.2.2], groups: [misc]}}
"
        )
    };
    let db4 = tcp_echo_server(&star.hosts[0], addr(&Star::v4(0), 5432)).unwrap();
    let db6 = tcp_echo_server(&star.hosts[0], addr("fd80:0::2", 5432)).unwrap();
    let other = tcp_echo_server(&star.hosts[0], addr(&Star::v4(0), 5433)).unwrap();
    let agent = Agent::start(&star.router, &config("misc")).unwrap();
    assert_eq!(
        tcp_probe(&star.hosts[1], db4, T).unwrap(),
        Seen::Dropped,
        "not a member yet"
    );
    assert!(
        agent.reload(&config("misc, app")).unwrap(),
        "{}",
        agent.log()
    );
    assert_eq!(
        tcp_probe(&star.hosts[1], db4, T).unwrap(),
        Seen::Pass,
        "a member, IPv4"
    );
    assert_eq!(
        tcp_probe(&star.hosts[1], db6, T).unwrap(),
        Seen::Pass,
        "a member, IPv6"
    );
    assert_eq!(
        tcp_probe(&star.hosts[1], other, T).unwrap(),
        Seen::Dropped,
        "only the referenced port"
    );
    assert_eq!(
        tcp_probe(&star.hosts[2], db4, T).unwrap(),
        Seen::Dropped,
        "not a member"
    );
    // Leaving the group closes it again for new connections.
    assert!(agent.reload(&config("misc")).unwrap());
    assert_eq!(tcp_probe(&star.hosts[1], db4, T).unwrap(), Seen::Dropped);
}

#[test]
fn an_interface_is_enforced_when_it_appears_and_forgotten_when_it_goes() {
    if !kernel_available("an_interface_is_enforced_when_it_appears_and_forgotten_when_it_goes") {
        return;
    }
    let pair = Pair::new("late").unwrap();
    let config = "security_groups:
  - name: app
    ingress:
      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.78.0.0/24]}
network_interfaces:
  - {interface: eth0, groups: [app]}
  - {interface: late0, groups: [app], optional: true}
";
    let agent = Agent::start(&pair.server, config).unwrap();
    assert!(
        agent.log().contains("late0"),
        "the absent interface is reported: {}",
        agent.log()
    );
    let other = Netns::new("latec").unwrap();
    // Listening on every address: late0's does not exist yet.
    tcp_echo_server(&pair.server, addr("0.0.0.0", 8080)).unwrap();
    tcp_echo_server(&pair.server, addr("0.0.0.0", 8081)).unwrap();
    let (srv_ok, srv_no) = (addr("10.78.0.2", 8080), addr("10.78.0.2", 8081));
    for round in 0..2 {
        veth(
            &other,
            "eth0",
            "10.78.0.1/24",
            &pair.server,
            "late0",
            "10.78.0.2/24",
        )
        .unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || agent
                .log()
                .matches("enforcing on late0")
                .count()
                > round),
            "{}",
            agent.log()
        );
        assert_eq!(tcp_probe(&other, srv_ok, T).unwrap(), Seen::Pass);
        assert_eq!(
            tcp_probe(&other, srv_no, T).unwrap(),
            Seen::Dropped,
            "round {round}: {}",
            agent.log()
        );
        other.ip(&["link", "del", "eth0"]).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || agent
                .log()
                .matches("no longer enforcing")
                .count()
                > round),
            "{}",
            agent.log()
        );
    }
}

#[test]
fn a_changed_file_is_followed_without_a_signal() {
    if !kernel_available("a_changed_file_is_followed_without_a_signal") {
        return;
    }
    let pair = Pair::new("watch").unwrap();
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let agent = Agent::start(&pair.server, &server_config("")).unwrap();
    assert_eq!(tcp_probe(&pair.client, srv, T).unwrap(), Seen::Dropped);
    let open = server_config(
        "      - {ip_protocol: tcp, from_port: 8081, to_port: 8081, ip_ranges: [10.77.0.0/24]}\n",
    );
    let tmp = agent.config.with_extension("new");
    std::fs::write(&tmp, open).unwrap();
    std::fs::rename(&tmp, &agent.config).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || tcp_probe(&pair.client, srv, T)
            .unwrap()
            == Seen::Pass),
        "{}",
        agent.log()
    );
}

#[test]
fn keep_on_exit_hands_over_without_a_gap() {
    if !kernel_available("keep_on_exit_hands_over_without_a_gap") {
        return;
    }
    let pair = Pair::new("keep").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let mut first =
        Agent::start_with(&pair.server, &server_config(""), &["--keep-on-exit"]).unwrap();
    let mut second = None;
    no_loss_while(&pair, || {
        let status = first.stop_with(Signal::SIGTERM).unwrap();
        assert!(status.success(), "{}", first.log());
        assert!(
            first.log().contains("leaving the datapath enforcing"),
            "{}",
            first.log()
        );
        let before = rejected(&pair.server);
        assert_eq!(
            tcp_probe(&pair.client, denied, T).unwrap(),
            Seen::Dropped,
            "still enforcing between agents"
        );
        let probe_drops = rejected(&pair.server) - before;
        let a = Agent::start(&pair.server, &server_config("")).unwrap();
        assert!(a.log().contains("adopted the pinned"), "{}", a.log());
        second = Some(a);
        probe_drops
    });
    drop(second);
    assert_eq!(
        tcp_probe(&pair.client, denied, T).unwrap(),
        Seen::Pass,
        "a plain stop detaches"
    );
}
