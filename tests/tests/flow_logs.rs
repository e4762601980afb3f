//! Flow logs between namespaces: the records that TCP (counted at its end,
//! though its entry is flushed at once), UDP, ping and a denied probe
//! produce, field by field in the default and a custom format; windows that close on time and carry only their own packets; and
//! a reject flood that the rate limit absorbs (allowed traffic flows on,
//! the skipped records surface as SKIPDATA).

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use sg_tests::*;

const CONFIG: &str = "account_id: '123456789012'
security_groups:
  - name: app
    ingress:
      - ip_protocol: tcp
        from_port: 8080
        to_port: 8080
        ip_ranges: [10.77.0.0/24]
      - ip_protocol: udp
        from_port: 5353
        to_port: 5353
        ip_ranges: [10.77.0.0/24]
      - ip_protocol: icmp
        from_port: -1
        to_port: -1
        ip_ranges: [10.77.0.0/24]
network_interfaces:
  - interface: eth0
    id: eni-0f10a000000000001
    groups: [app]
";

const CUSTOM: &str = "${version} ${vpc-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${flow-direction} ${traffic-path} ${action} ${log-status}";

/// Sends `n` datagrams of `size` bytes from CLIENT:`sport` to the server's
/// udp/5353 echo and waits for each echo.
fn udp_exchange(ns: &Netns, sport: u16, n: usize, size: usize) {
    let dst = addr(SERVER_V4, 5353);
    ns.run(move || {
        let s = UdpSocket::bind(addr(CLIENT_V4, sport)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; size];
        for _ in 0..n {
            s.send_to(&vec![7u8; size], dst).unwrap();
            let (got, _) = s.recv_from(&mut buf).expect("echo");
            assert_eq!(got, size);
        }
    })
    .unwrap();
}

fn records(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

fn settings(dir: &Path, interval: u64, extra: &str) -> std::path::PathBuf {
    let path = dir.join("flow-logs.yaml");
    std::fs::write(
        &path,
        format!(
            "{extra}flow_logs:
  - destination: {d}/default.log
    max_aggregation_interval: {interval}
  - destination: {d}/custom.log
    interfaces: [eni-0f10a000000000001]
    max_aggregation_interval: {interval}
    log_format: '{CUSTOM}'
",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

fn start(pair: &Pair, dir: &TempDir, flow_logs: &Path) -> Agent {
    udp_echo_server(&pair.server, addr(SERVER_V4, 5353)).unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let f = flow_logs.display().to_string();
    let _ = dir;
    Agent::start_with(&pair.server, CONFIG, &["--flow-logs", &f]).unwrap()
}

/// The one record of `rows` whose fields at `at` are `want`.
fn one<'a>(rows: &'a [Vec<String>], at: &[(usize, &str)]) -> &'a Vec<String> {
    let hits: Vec<_> = rows
        .iter()
        .filter(|r| {
            at.iter()
                .all(|(i, v)| r.get(*i).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "records matching {at:?}: {hits:?}\nall: {rows:#?}"
    );
    hits[0]
}

#[test]
fn traffic_makes_the_records_it_should_and_windows_close_on_time() {
    if !kernel_available("flow_logs") {
        return;
    }
    let pair = Pair::new("fl").unwrap();
    let dir = TempDir::new().unwrap();
    // Windows end on the minute: the first window's traffic needs the
    // minute's first seconds, not its last (or it falls in two windows).
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if into_minute > 30.0 {
        std::thread::sleep(Duration::from_secs_f64(60.5 - into_minute));
    }
    let mut agent = start(&pair, &dir, &settings(&dir.0, 60, ""));
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The first window: a TCP echo whose entry is flushed as soon as it has
    // closed (its counts come from its end event, not from a walk of the
    // table), 5 datagrams of 100 bytes each way, a ping of 3, and a probe
    // of the denied tcp/9000.
    assert_eq!(probe_server(&pair, 8080), Seen::Pass);
    std::thread::sleep(Duration::from_millis(100));
    let flushed = sh(pair.server.command(agent_bin()).arg("flush")).unwrap();
    assert_eq!(flushed.trim(), "flushed 1 tracked flow(s)");
    udp_exchange(&pair.client, 40001, 5, 100);
    assert!(pair.client.ping(SERVER_V4, 3, 56));
    assert_eq!(
        tcp_probe(
            &pair.client,
            addr(SERVER_V4, 9000),
            Duration::from_millis(300)
        )
        .unwrap(),
        Seen::Dropped
    );
    // The window closes at the next minute: its records appear without a
    // stop.
    let default = dir.0.join("default.log");
    assert!(
        wait_until(Duration::from_secs(75), || !records(&default).is_empty()),
        "no records after a 60 s window:\n{}",
        agent.log()
    );
    let first = records(&default);
    // The second window: the same UDP flow again, 2 more datagrams.
    udp_exchange(&pair.client, 40001, 2, 100);
    agent.stop_with(Signal::SIGTERM).unwrap();

    // Default format: 14 fields, version 2, AWS's order.
    let eni = "eni-0f10a000000000001";
    for r in &first {
        assert_eq!(r.len(), 14, "{r:?}");
        assert_eq!(&r[..3], ["2", "123456789012", eni]);
        let (start, end): (u64, u64) = (r[10].parse().unwrap(), r[11].parse().unwrap());
        assert!(
            start >= began - 1 && start <= end && end <= began + 61,
            "{r:?}"
        );
        assert_eq!(r[13], "OK", "{r:?}");
    }
    // UDP: one record per direction, exact counts (IP bytes: 20 + 8 + 100).
    let udp_in = one(
        &first,
        &[
            (3, CLIENT_V4),
            (4, SERVER_V4),
            (5, "40001"),
            (6, "5353"),
            (7, "17"),
        ],
    );
    assert_eq!(
        (&*udp_in[8], &*udp_in[9], &*udp_in[12]),
        ("5", "640", "ACCEPT")
    );
    let udp_out = one(
        &first,
        &[
            (3, SERVER_V4),
            (4, CLIENT_V4),
            (5, "5353"),
            (6, "40001"),
            (7, "17"),
        ],
    );
    assert_eq!((&*udp_out[8], &*udp_out[9]), ("5", "640"));
    // TCP to 8080, both directions accepted; ICMP: ports 0, 3 each way.
    let tcp_in = one(
        &first,
        &[(4, SERVER_V4), (6, "8080"), (7, "6"), (12, "ACCEPT")],
    );
    assert!(tcp_in[8].parse::<u64>().unwrap() >= 4, "{tcp_in:?}");
    one(
        &first,
        &[(3, SERVER_V4), (5, "8080"), (7, "6"), (12, "ACCEPT")],
    );
    let ping_in = one(&first, &[(3, CLIENT_V4), (7, "1")]);
    assert_eq!(
        (&*ping_in[5], &*ping_in[6], &*ping_in[8], &*ping_in[9]),
        ("0", "0", "3", "252")
    );
    one(&first, &[(3, SERVER_V4), (7, "1"), (8, "3")]);
    // The denied probe: REJECT, its SYN (and any retransmission) counted.
    let rej = one(&first, &[(4, SERVER_V4), (6, "9000"), (12, "REJECT")]);
    assert!(rej[8].parse::<u64>().unwrap() >= 1, "{rej:?}");

    // The second window (written at the stop) carries only its own packets.
    let all = records(&default);
    let second = &all[first.len()..];
    let udp2 = one(second, &[(3, CLIENT_V4), (5, "40001"), (6, "5353")]);
    assert_eq!((&*udp2[8], &*udp2[9]), ("2", "256"));
    assert!(udp2[10].parse::<u64>().unwrap() >= first[0][11].parse::<u64>().unwrap());

    // The custom format: version 5 (flow-direction), the fields that apply.
    let custom = records(&dir.0.join("custom.log"));
    let c = one(&custom, &[(3, CLIENT_V4), (5, "40001"), (8, "5")]);
    assert_eq!(c.len(), 18);
    assert_eq!(
        c.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "5",
            "vpc-bb9a03f3423c2a644",
            eni,
            CLIENT_V4,
            SERVER_V4,
            "40001",
            "5353",
            "17",
            "5",
            "640",
            "0",
            "IPv4",
            CLIENT_V4,
            SERVER_V4,
            "ingress",
            "-",
            "ACCEPT",
            "OK"
        ]
    );
    let syn = one(&custom, &[(4, SERVER_V4), (6, "8080"), (7, "6")]);
    // From the client: SYN and FIN; from the server: SYN-ACK and FIN.
    assert_eq!(syn[10].parse::<u8>().unwrap() & 3, 3, "{syn:?}");
    let synack = one(&custom, &[(3, SERVER_V4), (5, "8080"), (7, "6")]);
    assert_eq!(synack[10].parse::<u8>().unwrap() & 18, 18, "{synack:?}");
    assert_eq!(synack[14], "egress");
}

#[test]
fn a_reject_flood_is_rate_limited_and_reported_as_skipdata() {
    if !kernel_available("flow_logs") {
        return;
    }
    let pair = Pair::new("fr").unwrap();
    let dir = TempDir::new().unwrap();
    let flow_logs = settings(
        &dir.0,
        600,
        "reject_events_per_second: 50\nreject_burst: 50\n",
    );
    let mut agent = start(&pair, &dir, &flow_logs);
    let stream = Stream::start(&pair.client, addr(SERVER_V4, 8080)).unwrap();
    // Two seconds of datagrams to a denied port, as fast as one core sends.
    let flood_for = Duration::from_secs(2);
    let sent = pair
        .client
        .run(move || {
            let s = UdpSocket::bind(addr(CLIENT_V4, 0)).unwrap();
            let dst: SocketAddr = addr(SERVER_V4, 7777);
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < flood_for {
                if s.send_to(&[0u8; 32], dst).is_ok() {
                    n += 1;
                }
            }
            n
        })
        .unwrap();
    // The host stayed responsive and allowed traffic kept flowing.
    let before = stream.echoed();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        stream.echoed() > before,
        "the allowed stream stalled after the flood"
    );
    assert!(pair.client.ping(SERVER_V4, 2, 56));
    stream
        .finish()
        .expect("the allowed stream broke during the flood");
    let skipped = agent.counter("eth0", "inbound/events_skipped");
    agent.stop_with(Signal::SIGTERM).unwrap();

    let rows = records(&dir.0.join("default.log"));
    let rejects: u64 = rows
        .iter()
        .filter(|r| r[6] == "7777" && r[12] == "REJECT")
        .map(|r| r[8].parse::<u64>().unwrap())
        .sum();
    // Per CPU: the burst, then 50/s for the flood's seconds (plus slack).
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(sent > 10_000, "the flood sent only {sent}");
    assert!(
        rejects >= 1 && rejects <= cpus * (50 + 50 * 4),
        "{rejects} reject events of {sent} rejected packets"
    );
    assert!(skipped > sent / 2, "skipped {skipped} of {sent}");
    assert!(
        rows.iter()
            .any(|r| r[2] == "eni-0f10a000000000001" && r[13] == "SKIPDATA" && r[3] == "-"),
        "no SKIPDATA record: {rows:?}"
    );
}
