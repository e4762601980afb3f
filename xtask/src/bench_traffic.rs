//! The end-to-end measurements, across a veth pair between two namespaces:
//! UDP packet rate (one flow, or 64k concurrent flows), TCP throughput, and
//! new TCP connections per second with the client's SYN retransmissions.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use sg_tests::{Netns, Pair, SERVER_V4, sh};

/// Concurrent clients of the connection-rate test.
const CLIENTS: usize = 4;

/// A counter of one of the namespace's `/proc/net` tables (`snmp`,
/// `netstat`), by its table's prefix and name.
fn counter(ns: &Netns, file: &str, table: &str, name: &str) -> Result<u64> {
    let text = sh(ns.command("cat").arg(format!("/proc/net/{file}")))?;
    let mut rows = text.lines().filter(|l| l.starts_with(table));
    let (names, values) = (
        rows.next().with_context(|| format!("{table} header"))?,
        rows.next().with_context(|| format!("{table} values"))?,
    );
    let m: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    Ok(m.get(name).copied().unwrap_or(0))
}

/// Datagrams the server's UDP layer took in (delivered, or dropped for a full
/// socket buffer): what got through the filter.
fn udp_in(ns: &Netns) -> Result<u64> {
    Ok(counter(ns, "snmp", "Udp:", "InDatagrams")? + counter(ns, "snmp", "Udp:", "RcvbufErrors")?)
}

pub fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])?)?;
    Ok(v[0]["address"].as_str().context("no MAC")?.to_string())
}

/// The trafgen configuration of small UDP packets to the server's port
/// 5353: one flow, or (with `flows`) a source port counting through
/// 1024-65535, 64,512 concurrent flows.
pub fn udp_conf(pair: &Pair, flows: bool) -> Result<String> {
    let sport = if flows {
        "dinc(1024, 65535)".to_string()
    } else {
        "40000".to_string()
    };
    Ok(format!(
        "{{ eth(da={}, sa={}, type=0x0800), ipv4(saddr=10.77.0.1, daddr={SERVER_V4}, ttl=64), udp(sport={sport}, dport=5353), fill(0x41, 18) }}\n",
        mac(&pair.server, "eth0")?,
        mac(&pair.client, "eth0")?
    ))
}

/// Small UDP packets from one trafgen process for `seconds`: packets per
/// second received by the server's UDP layer.
pub fn udp_rate(pair: &Pair, conf: &Path, seconds: u64) -> Result<f64> {
    let before = udp_in(&pair.server)?;
    let t = Instant::now();
    let _ = pair
        .client
        .command("timeout")
        .args([
            "-s",
            "INT",
            &seconds.to_string(),
            "trafgen",
            "--dev",
            "eth0",
            "--conf",
        ])
        .arg(conf)
        .args(["--cpus", "1", "--no-sock-mem"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = t.elapsed().as_secs_f64();
    // Let the last packets land.
    std::thread::sleep(Duration::from_millis(200));
    Ok((udp_in(&pair.server)? - before) as f64 / elapsed)
}

pub fn tcp_throughput(pair: &Pair, seconds: u64) -> Result<f64> {
    let mut server = pair
        .server
        .command("iperf3")
        .args(["-s", "-1", "-B", SERVER_V4])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = pair
        .client
        .command("iperf3")
        .args(["-c", SERVER_V4, "-t", &seconds.to_string(), "-J"])
        .output()?;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")
}

/// New TCP connections per second through the policy (each a new flow),
/// from `CLIENTS` concurrent clients for `seconds`, and the SYNs the
/// client's stack retransmitted meanwhile. The listener's backlog is large
/// and its accept blocks: a SYN dropped by a full backlog costs a second,
/// and would be the listener's doing, not the filter's.
pub fn connection_rate(pair: &Pair, seconds: u64) -> Result<(f64, u64)> {
    let listener = pair.server.run(|| -> Result<TcpListener> {
        let l = TcpListener::bind((SERVER_V4, 8000))?;
        // std listens with a backlog of 128; a second listen(2) raises it.
        nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(4096)?)?;
        Ok(l)
    })??;
    let dst: SocketAddr = format!("{SERVER_V4}:8000").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    drop(s);
                }
            }
        })
    };
    let retrans = || counter(&pair.client, "netstat", "TcpExt:", "TCPSynRetrans");
    let before = retrans()?;
    let rate = pair.client.run(move || {
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let done = done.clone();
                // Threads started here share the client's namespace.
                std::thread::spawn(move || {
                    while t.elapsed() < Duration::from_secs(seconds) {
                        if let Ok(s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                            // Reset rather than TIME_WAIT, so ports do not run out.
                            let zero = nix::libc::linger {
                                l_onoff: 1,
                                l_linger: 0,
                            };
                            let _ = nix::sys::socket::setsockopt(
                                &s,
                                nix::sys::socket::sockopt::Linger,
                                &zero,
                            );
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            let _ = c.join();
        }
        done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
    })?;
    let retransmitted = retrans()? - before;
    stop.store(true, Ordering::Relaxed);
    // Wake the blocked accept.
    let _ = pair
        .client
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(1)));
    let _ = acceptor.join();
    Ok((rate, retransmitted))
}
