//! First enforcement tests: real packets between two namespaces, filtered by
//! the agent attached to the server's interface.

use std::time::Duration;

use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// The server allows TCP 8080 and UDP 5353 from the client's subnet, nothing
/// else inbound; outbound is the default allow-all.
const POLICY: &str = r#"
security_groups:
  - name: app
    description: the server
    ingress:
      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}
      - {ip_protocol: udp, from_port: 5353, to_port: 5353, ip_ranges: [10.77.0.0/24]}
network_interfaces:
  - interface: eth0
    groups: [app]
"#;

#[test]
fn allowed_tcp_port_connects_and_carries_data() {
    if !kernel_available("allowed_tcp_port_connects_and_carries_data") {
        return;
    }
    let pair = Pair::new("tcpok").unwrap();
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let _agent = Agent::start(&pair.server, POLICY).unwrap();
    assert_eq!(tcp_probe(&pair.client, srv, T).unwrap(), Seen::Pass);
    // A bulk transfer, to see more than a handshake pass.
    let got = pair
        .client
        .run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&srv, T).unwrap();
            let data = vec![0x5au8; 1 << 20];
            let mut w = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
            let mut back = vec![0u8; 1 << 20];
            s.read_exact(&mut back).unwrap();
            writer.join().unwrap();
            back.iter().all(|b| *b == 0x5a)
        })
        .unwrap();
    assert!(got, "1 MiB echoed intact");
}

#[test]
fn port_without_rule_drops_the_syn() {
    if !kernel_available("port_without_rule_drops_the_syn") {
        return;
    }
    let pair = Pair::new("tcpno").unwrap();
    // Something listens on 8081, so a refusal could only come from the
    // server's stack: the probe must time out instead.
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    assert_eq!(
        tcp_probe(&pair.client, srv, T).unwrap(),
        Seen::Pass,
        "reachable without sg"
    );
    let _agent = Agent::start(&pair.server, POLICY).unwrap();
    assert_eq!(tcp_probe(&pair.client, srv, T).unwrap(), Seen::Dropped);
    // A closed port without a rule: still silence, not a refusal.
    assert_eq!(
        tcp_probe(&pair.client, addr(SERVER_V4, 9), T).unwrap(),
        Seen::Dropped
    );
}

#[test]
fn udp_allowed_and_denied() {
    if !kernel_available("udp_allowed_and_denied") {
        return;
    }
    let pair = Pair::new("udp").unwrap();
    let ok = udp_echo_server(&pair.server, addr(SERVER_V4, 5353)).unwrap();
    let no = udp_echo_server(&pair.server, addr(SERVER_V4, 5354)).unwrap();
    let _agent = Agent::start(&pair.server, POLICY).unwrap();
    assert_eq!(udp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(udp_probe(&pair.client, no, T).unwrap(), Seen::Dropped);
}

#[test]
fn outbound_connection_gets_its_replies() {
    if !kernel_available("outbound_connection_gets_its_replies") {
        return;
    }
    let pair = Pair::new("out").unwrap();
    // The server (the workload under sg) connects out to the client; no
    // inbound rule allows the client's replies, tracking does.
    let remote = tcp_echo_server(&pair.client, addr(CLIENT_V4, 7000)).unwrap();
    let udp_remote = udp_echo_server(&pair.client, addr(CLIENT_V4, 7001)).unwrap();
    let _agent = Agent::start(&pair.server, POLICY).unwrap();
    assert_eq!(tcp_probe(&pair.server, remote, T).unwrap(), Seen::Pass);
    assert_eq!(udp_probe(&pair.server, udp_remote, T).unwrap(), Seen::Pass);
    assert!(pair.server.ping(CLIENT_V4, 1, 56), "ping out and its reply");
    // ... while the client cannot start anything on those ports itself.
    let back = tcp_echo_server(&pair.server, addr(SERVER_V4, 7000)).unwrap();
    assert_eq!(tcp_probe(&pair.client, back, T).unwrap(), Seen::Dropped);
    assert!(
        !pair.client.ping(SERVER_V4, 1, 56),
        "inbound ping has no rule"
    );
}

#[test]
fn stops_cleanly_and_detaches() {
    if !kernel_available("stops_cleanly_and_detaches") {
        return;
    }
    let pair = Pair::new("stop").unwrap();
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let mut agent = Agent::start(&pair.server, POLICY).unwrap();
        assert_eq!(tcp_probe(&pair.client, srv, T).unwrap(), Seen::Dropped);
        let status = agent.stop_with(sig).unwrap();
        assert!(
            status.success(),
            "exit after {sig}: {status}\n{}",
            agent.log()
        );
        assert!(agent.log().contains("detached"), "{}", agent.log());
        assert_eq!(
            tcp_probe(&pair.client, srv, T).unwrap(),
            Seen::Pass,
            "open again after {sig}"
        );
    }
}

#[test]
fn ipv6_tcp_allowed_and_denied() {
    if !kernel_available("ipv6_tcp_allowed_and_denied") {
        return;
    }
    let pair = Pair::new("v6").unwrap();
    let policy = r#"
security_groups:
  - name: app
    ingress:
      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ipv6_ranges: ["fd77::/64"]}
network_interfaces:
  - {interface: eth0, groups: [app]}
"#;
    let ok = tcp_echo_server(&pair.server, addr(SERVER_V6, 8080)).unwrap();
    let no = tcp_echo_server(&pair.server, addr(SERVER_V6, 8081)).unwrap();
    let v4 = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let _agent = Agent::start(&pair.server, policy).unwrap();
    assert_eq!(tcp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(tcp_probe(&pair.client, no, T).unwrap(), Seen::Dropped);
    // An IPv6 rule says nothing about IPv4.
    assert_eq!(tcp_probe(&pair.client, v4, T).unwrap(), Seen::Dropped);
}
