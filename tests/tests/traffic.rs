//! Traffic tests between namespaces for each class of the datapath's
//! behaviour: ICMP both families, fragments, untracked versus tracked flows
//! under rule removal, idle timeouts, related ICMP, and the host-side attach
//! mode.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use sg_tests::*;

const T: Duration = Duration::from_secs(2);

fn config(ingress: &str, extra: &str) -> String {
    format!(
        "security_groups:\n  - name: app\n    ingress:\n{ingress}\nnetwork_interfaces:\n  - interface: eth0\n    groups: [app]\n{extra}"
    )
}

const PING_RULES: &str =
    "      - {ip_protocol: icmp, from_port: 8, to_port: -1, ip_ranges: [10.77.0.0/24]}
      - {ip_protocol: icmpv6, from_port: 128, to_port: -1, ipv6_ranges: [\"fd77::/64\"]}";

#[test]
fn ping_and_ping6() {
    if !kernel_available("ping_and_ping6") {
        return;
    }
    let pair = Pair::new("ping").unwrap();
    let agent = Agent::start(&pair.server, &config(PING_RULES, "")).unwrap();
    assert!(pair.client.ping(SERVER_V4, 2, 56), "ping allowed");
    assert!(
        pair.client.ping(SERVER_V6, 2, 56),
        "ping6 allowed (and neighbour discovery passes)"
    );
    // Only IPv4 echo: ping6 is dropped, ping still passes.
    let v4_only =
        "      - {ip_protocol: icmp, from_port: 8, to_port: -1, ip_ranges: [10.77.0.0/24]}";
    assert!(agent.reload(&config(v4_only, "")).unwrap());
    assert!(pair.client.ping(SERVER_V4, 1, 56));
    assert!(!pair.client.ping(SERVER_V6, 1, 56), "no ICMPv6 rule");
    // The workload pings out in both families; the replies are tracked.
    assert!(pair.server.ping(CLIENT_V4, 1, 56));
    assert!(pair.server.ping(CLIENT_V6, 1, 56));
}

#[test]
fn large_pings_fragment() {
    if !kernel_available("large_pings_fragment") {
        return;
    }
    let pair = Pair::new("frag").unwrap();
    let agent = Agent::start(&pair.server, &config(PING_RULES, "")).unwrap();
    // 4000-byte echoes cross the 1500-byte veth as three fragments each way.
    assert!(pair.client.ping(SERVER_V4, 2, 4000), "allowed large ping");
    assert!(pair.client.ping(SERVER_V6, 2, 4000), "allowed large ping6");
    // Out and back: the replies' later fragments follow their first one.
    assert!(pair.server.ping(CLIENT_V4, 2, 4000));
    assert!(pair.server.ping(CLIENT_V6, 2, 4000));
    let other = "      - {ip_protocol: tcp, from_port: 22, to_port: 22, ip_ranges: [10.77.0.0/24]}";
    assert!(agent.reload(&config(other, "")).unwrap());
    let before = agent.counter("eth0", "inbound/drops/fragment");
    assert!(!pair.client.ping(SERVER_V4, 2, 4000), "denied large ping");
    assert!(!pair.client.ping(SERVER_V6, 2, 4000), "denied large ping6");
    // The first fragments find no rule; the later ones no first fragment.
    assert!(agent.counter("eth0", "inbound/drops/fragment") >= before + 4);
    assert!(agent.counter("eth0", "inbound/drops/no_rule") >= 4);
}

/// A connected TCP client that echoes through the server.
struct Conn(TcpStream);

impl Conn {
    fn open(ns: &Netns, dst: SocketAddr) -> Conn {
        let s = ns
            .run(move || TcpStream::connect_timeout(&dst, T))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        Conn(s)
    }

    fn echoes(&mut self) -> bool {
        if self.0.write_all(b"ping").is_err() {
            return false;
        }
        let mut b = [0u8; 4];
        self.0.read_exact(&mut b).is_ok() && &b == b"ping"
    }
}

#[test]
fn untracked_flow_stops_at_rule_removal_tracked_one_continues() {
    if !kernel_available("untracked_flow_stops_at_rule_removal_tracked_one_continues") {
        return;
    }
    let pair = Pair::new("untr").unwrap();
    // 8080 from 0.0.0.0/0 with the default all-outbound rule: untracked.
    // 9090 from the client's subnet only: tracked.
    let rules = "      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [0.0.0.0/0]}
      - {ip_protocol: tcp, from_port: 9090, to_port: 9090, ip_ranges: [10.77.0.0/24]}";
    let untracked = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let tracked = tcp_echo_server(&pair.server, addr(SERVER_V4, 9090)).unwrap();
    let agent = Agent::start(&pair.server, &config(rules, "")).unwrap();
    let mut u = Conn::open(&pair.client, untracked);
    let mut t = Conn::open(&pair.client, tracked);
    assert!(u.echoes() && t.echoes());
    // Remove both rules (an unrelated one stays so the group is not empty).
    let after = "      - {ip_protocol: udp, from_port: 53, to_port: 53, ip_ranges: [10.77.0.0/24]}";
    assert!(agent.reload(&config(after, "")).unwrap());
    assert!(
        t.echoes(),
        "a tracked flow outlives the rule that allowed it"
    );
    assert!(t.echoes());
    assert!(!u.echoes(), "an untracked flow stops at once");
    // And neither port takes new connections.
    assert_eq!(tcp_probe(&pair.client, tracked, T).unwrap(), Seen::Dropped);
    assert_eq!(
        tcp_probe(&pair.client, untracked, T).unwrap(),
        Seen::Dropped
    );
}

#[test]
fn udp_flow_ends_after_its_idle_timeout() {
    if !kernel_available("udp_flow_ends_after_its_idle_timeout") {
        return;
    }
    let pair = Pair::new("udpto").unwrap();
    // udp: 30 s, AWS's minimum. Nothing is allowed inbound.
    let rules = "      - {ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [192.0.2.0/24]}";
    let extra = "    conntrack: {udp: 30, udp_stream: 60}\n";
    let _agent = Agent::start(&pair.server, &config(rules, extra)).unwrap();
    // The workload sends from two sockets; the peer answers each at once and
    // then again after 20 s (inside the timeout) and 33 s (past it).
    let peer = pair
        .client
        .run(|| UdpSocket::bind("10.77.0.1:6000"))
        .unwrap()
        .unwrap();
    let mk = || {
        let s = pair
            .server
            .run(|| UdpSocket::bind("10.77.0.2:0"))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.send_to(b"hello", "10.77.0.1:6000").unwrap();
        s
    };
    let (early, late) = (mk(), mk());
    let mut buf = [0u8; 16];
    let mut from = Vec::new();
    for _ in 0..2 {
        let (_, f) = peer.recv_from(&mut buf).unwrap();
        from.push(f);
    }
    let answered = |s: &UdpSocket| {
        let mut b = [0u8; 16];
        s.recv_from(&mut b).is_ok()
    };
    let addr_of = |s: &UdpSocket| s.local_addr().unwrap();
    peer.send_to(b"reply", addr_of(&early)).unwrap();
    assert!(answered(&early), "the reply passes");
    std::thread::sleep(Duration::from_secs(20));
    peer.send_to(b"reply", addr_of(&early)).unwrap();
    assert!(answered(&early), "within the 30 s udp timeout");
    std::thread::sleep(Duration::from_secs(13));
    peer.send_to(b"reply", addr_of(&late)).unwrap();
    assert!(
        !answered(&late),
        "33 s idle: the flow is gone, no inbound rule"
    );
    assert!(from.len() == 2);
}

#[test]
fn related_icmp_errors_are_optional() {
    if !kernel_available("related_icmp_errors_are_optional") {
        return;
    }
    let pair = Pair::new("rel").unwrap();
    let rules = "      - {ip_protocol: tcp, from_port: 1, to_port: 1, ip_ranges: [192.0.2.0/24]}";
    // The workload sends to a closed UDP port of the peer, whose kernel
    // answers "port unreachable"; a connected socket sees it as a refusal.
    let refused = |pair: &Pair| {
        pair.server
            .run(|| {
                let s = UdpSocket::bind("10.77.0.2:0").unwrap();
                s.connect("10.77.0.1:9").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut b = [0u8; 8];
                (0..3).any(|_| {
                    let _ = s.send(b"x");
                    matches!(s.recv(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                })
            })
            .unwrap()
    };
    let agent = Agent::start(&pair.server, &config(rules, "")).unwrap();
    assert!(
        !refused(&pair),
        "AWS does not let ICMP errors in without a rule"
    );
    assert!(
        agent
            .reload(&config(rules, "    related_icmp: true\n"))
            .unwrap()
    );
    assert!(
        refused(&pair),
        "related_icmp lets the error about a tracked flow in"
    );
}

#[test]
fn host_side_attach_mode() {
    if !kernel_available("host_side_attach_mode") {
        return;
    }
    // The "client" namespace plays the host: the agent attaches to its end of
    // the veth, whose peer (the "server" namespace) is the workload.
    let pair = Pair::new("host").unwrap();
    let rules =
        "      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}";
    let extra = "    attach: host\n";
    let ok = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let no = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let out = tcp_echo_server(&pair.client, addr(CLIENT_V4, 7000)).unwrap();
    let _agent = Agent::start(&pair.client, &config(rules, extra)).unwrap();
    assert_eq!(tcp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(tcp_probe(&pair.client, no, T).unwrap(), Seen::Dropped);
    assert_eq!(
        tcp_probe(&pair.server, out, T).unwrap(),
        Seen::Pass,
        "the workload's outbound flow and its replies"
    );
    assert!(!pair.client.ping(SERVER_V4, 1, 56));
    assert!(pair.server.ping(CLIENT_V4, 1, 56));
}

#[test]
fn full_table_refuses_new_flows_and_keeps_established_ones() {
    if !kernel_available("full_table_refuses_new_flows_and_keeps_established_ones") {
        return;
    }
    let pair = Pair::new("full").unwrap();
    let rules =
        "      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}";
    let srv = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let cfg = format!("{}conntrack: {{max_flows: 4}}\n", config(rules, ""));
    let agent = Agent::start(&pair.server, &cfg).unwrap();
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(&pair.client, srv)).collect();
    assert!(conns.iter_mut().all(|c| c.echoes()));
    assert_eq!(agent.counter("eth0", "flows_in_use"), 4);
    // A fifth flow is refused: its SYN is dropped and counted.
    assert_eq!(tcp_probe(&pair.client, srv, T).unwrap(), Seen::Dropped);
    assert!(agent.counter("eth0", "inbound/flows_refused") >= 1);
    assert!(agent.counter("eth0", "inbound/drops/table_full") >= 1);
    // The established ones are not evicted to make room.
    assert!(
        conns.iter_mut().all(|c| c.echoes()),
        "established flows keep going"
    );
    assert_eq!(agent.counter("eth0", "flows_in_use"), 4);
    // Flushing frees the table (and cuts those flows, as asked).
    sg_tests::sh(
        pair.server
            .command(agent_bin())
            .args(["flush", "--interface", "eth0"]),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || tcp_probe(
        &pair.client,
        srv,
        T
    )
    .unwrap()
        == Seen::Pass));
}

#[test]
fn flush_cuts_exactly_the_matching_tracked_flows() {
    if !kernel_available("flush_cuts_exactly_the_matching_tracked_flows") {
        return;
    }
    let pair = Pair::new("flush").unwrap();
    let rules =
        "      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}
      - {ip_protocol: tcp, from_port: 9090, to_port: 9090, ip_ranges: [10.77.0.0/24]}";
    let a = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let b = tcp_echo_server(&pair.server, addr(SERVER_V4, 9090)).unwrap();
    let agent = Agent::start(&pair.server, &config(rules, "")).unwrap();
    let (mut ca, mut cb) = (Conn::open(&pair.client, a), Conn::open(&pair.client, b));
    assert!(ca.echoes() && cb.echoes());
    // Rules gone: both flows live on, tracked.
    let none = "      - {ip_protocol: udp, from_port: 53, to_port: 53, ip_ranges: [192.0.2.0/24]}";
    assert!(agent.reload(&config(none, "")).unwrap());
    assert!(ca.echoes() && cb.echoes());
    let out = sh(pair.server.command(agent_bin()).args([
        "flush",
        "--interface",
        "eth0",
        "--peer",
        "10.77.0.0/24",
        "--protocol",
        "tcp",
        "--port",
        "9090",
    ]))
    .unwrap();
    assert!(out.contains("flushed 1 tracked flow"), "{out}");
    assert!(
        !cb.echoes(),
        "the flushed flow is cut: no rule admits it again"
    );
    assert!(ca.echoes(), "the other flow keeps going");
}

#[test]
fn xdp_ingress_hook() {
    if !kernel_available("xdp_ingress_hook") {
        return;
    }
    // Inbound judged at XDP on the workload's own interface, outbound at tcx.
    let pair = Pair::new("xdp").unwrap();
    let rules =
        "      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}";
    let ok = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let no = tcp_echo_server(&pair.server, addr(SERVER_V4, 8081)).unwrap();
    let out = tcp_echo_server(&pair.client, addr(CLIENT_V4, 7000)).unwrap();
    let agent = Agent::start(&pair.server, &config(rules, "    ingress_hook: xdp\n")).unwrap();
    assert!(agent.log().contains("ingress at Xdp"), "{}", agent.log());
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(pair.server.path()).unwrap().ino();
    let ifindex = pair.server.ifindex("eth0").unwrap();
    let links = format!(
        "/sys/fs/bpf/sg/v{}/net-{ino}/links",
        sg_common::LAYOUT_VERSION
    );
    let pinned = |kind: &str| std::path::Path::new(&format!("{links}/{ifindex}-{kind}")).exists();
    assert!(
        pinned("xdp") && pinned("egress") && !pinned("ingress"),
        "XDP in, tcx out"
    );
    assert_eq!(tcp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(tcp_probe(&pair.client, no, T).unwrap(), Seen::Dropped);
    assert_eq!(
        tcp_probe(&pair.server, out, T).unwrap(),
        Seen::Pass,
        "replies of an outbound flow come in at XDP"
    );
    assert!(
        !pair.client.ping(SERVER_V4, 1, 4000),
        "no ICMP rule, also for fragments"
    );
    assert!(agent.counter("eth0", "inbound/drops/no_rule") >= 1);
    // Back to tcx while running: the new hook goes in before the old comes out.
    assert!(agent.reload(&config(rules, "")).unwrap());
    assert!(
        !pinned("xdp") && pinned("egress") && pinned("ingress"),
        "tcx both ways"
    );
    assert_eq!(tcp_probe(&pair.client, ok, T).unwrap(), Seen::Pass);
    assert_eq!(tcp_probe(&pair.client, no, T).unwrap(), Seen::Dropped);
}
