//! `cargo xtask demo`: four hosts around a router namespace, sg-agent guarding
//! the web and database servers, real probes, and a table of what happened.
//!
//! ```text
//!   internet 203.0.113.10 / 2001:db8:f::10 ─┐
//!   admin    198.51.100.10 ─────────────────┤ fabric (routes; runs sg-agent)
//!   web      10.0.1.10 / fd00:1::10 ────────┤   f-web: group "web"
//!   db       10.0.2.10 ─────────────────────┘   f-db:  group "db"
//! ```

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use sg_tests::{Agent, Netns, Seen, tcp_echo_server, tcp_probe, udp_echo_server, udp_probe, veth};

const CONFIG: &str = include_str!("demo.yaml");
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Set by the Ctrl-C handler: the main thread stops reporting, since the
/// handler is tearing its topology down under it and will exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

enum Kind {
    Tcp(u16),
    Udp(u16),
    Ping,
}

struct Probe {
    from: &'static str,
    to: &'static str,
    /// Destination address.
    addr: &'static str,
    kind: Kind,
    expect: Seen,
    why: &'static str,
}

const PROBES: &[Probe] = &[
    Probe {
        from: "internet",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Tcp(80),
        expect: Seen::Pass,
        why: "HTTP open to 0.0.0.0/0",
    },
    Probe {
        from: "internet",
        to: "web",
        addr: "fd00:1::10",
        kind: Kind::Tcp(443),
        expect: Seen::Pass,
        why: "HTTPS open to ::/0",
    },
    Probe {
        from: "internet",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Tcp(22),
        expect: Seen::Dropped,
        why: "SSH only from admin",
    },
    Probe {
        from: "admin",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Tcp(22),
        expect: Seen::Pass,
        why: "SSH from prefix list admin-networks",
    },
    Probe {
        from: "admin",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Ping,
        expect: Seen::Pass,
        why: "echo request from admin",
    },
    Probe {
        from: "internet",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Ping,
        expect: Seen::Dropped,
        why: "no ICMP rule for the internet",
    },
    Probe {
        from: "admin",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Udp(161),
        expect: Seen::Pass,
        why: "SNMP from 198.51.100.10/32",
    },
    Probe {
        from: "internet",
        to: "web",
        addr: "10.0.1.10",
        kind: Kind::Udp(161),
        expect: Seen::Dropped,
        why: "SNMP only from the admin host",
    },
    Probe {
        from: "web",
        to: "db",
        addr: "10.0.2.10",
        kind: Kind::Tcp(5432),
        expect: Seen::Pass,
        why: "PostgreSQL from members of group web",
    },
    Probe {
        from: "internet",
        to: "db",
        addr: "10.0.2.10",
        kind: Kind::Tcp(5432),
        expect: Seen::Dropped,
        why: "db is not on the internet",
    },
    Probe {
        from: "admin",
        to: "db",
        addr: "10.0.2.10",
        kind: Kind::Tcp(22),
        expect: Seen::Pass,
        why: "SSH from admin",
    },
    Probe {
        from: "web",
        to: "db",
        addr: "10.0.2.10",
        kind: Kind::Udp(5432),
        expect: Seen::Dropped,
        why: "no UDP rule on db",
    },
    Probe {
        from: "web",
        to: "internet",
        addr: "203.0.113.10",
        kind: Kind::Tcp(8080),
        expect: Seen::Pass,
        why: "outbound allowed, replies tracked",
    },
    Probe {
        from: "db",
        to: "internet",
        addr: "203.0.113.10",
        kind: Kind::Ping,
        expect: Seen::Pass,
        why: "outbound ping, reply tracked",
    },
];

struct Topology {
    hosts: Vec<(&'static str, Netns)>,
    fabric: Netns,
}

impl Topology {
    fn host(&self, name: &str) -> &Netns {
        &self
            .hosts
            .iter()
            .find(|(n, _)| *n == name)
            .expect("known host")
            .1
    }
}

fn build() -> Result<Topology> {
    let fabric = Netns::new("demo-fabric")?;
    let mut hosts = Vec::new();
    // (host, fabric-side device, host addresses, fabric addresses, gateways)
    let links: [(&str, &str, &str, &str, &str, &str); 4] = [
        (
            "internet",
            "f-inet",
            "203.0.113.10/24,2001:db8:f::10/64",
            "203.0.113.1/24,2001:db8:f::1/64",
            "203.0.113.1",
            "2001:db8:f::1",
        ),
        (
            "admin",
            "f-admin",
            "198.51.100.10/24",
            "198.51.100.1/24",
            "198.51.100.1",
            "",
        ),
        (
            "web",
            "f-web",
            "10.0.1.10/24,fd00:1::10/64",
            "10.0.1.1/24,fd00:1::1/64",
            "10.0.1.1",
            "fd00:1::1",
        ),
        ("db", "f-db", "10.0.2.10/24", "10.0.2.1/24", "10.0.2.1", ""),
    ];
    for (name, fdev, addrs, faddrs, gw4, gw6) in links {
        let ns = Netns::new(&format!("demo-{name}"))?;
        veth(&ns, "eth0", addrs, &fabric, fdev, faddrs)?;
        ns.ip(&["route", "add", "default", "via", gw4])?;
        if !gw6.is_empty() {
            ns.ip(&["-6", "route", "add", "default", "via", gw6])?;
        }
        hosts.push((name, ns));
    }
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        sg_tests::sh(fabric.command("sysctl").args(["-q", "-w", key]))?;
    }
    Ok(Topology { hosts, fabric })
}

fn servers(t: &Topology) -> Result<()> {
    let any = |port: u16| -> SocketAddr { format!("[::]:{port}").parse().expect("addr") };
    for port in [80, 443, 22] {
        tcp_echo_server(t.host("web"), any(port))?;
    }
    udp_echo_server(t.host("web"), any(161))?;
    for port in [5432, 22] {
        tcp_echo_server(t.host("db"), any(port))?;
    }
    udp_echo_server(t.host("db"), any(5432))?;
    tcp_echo_server(t.host("internet"), any(8080))?;
    Ok(())
}

fn probe(t: &Topology, p: &Probe) -> Result<Seen> {
    let from = t.host(p.from);
    let ip: std::net::IpAddr = p.addr.parse()?;
    Ok(match p.kind {
        Kind::Tcp(port) => tcp_probe(from, SocketAddr::new(ip, port), TIMEOUT)?,
        Kind::Udp(port) => udp_probe(from, SocketAddr::new(ip, port), TIMEOUT)?,
        Kind::Ping => {
            if from.ping(p.addr, 1, 56) {
                Seen::Pass
            } else {
                Seen::Dropped
            }
        }
    })
}

fn label(p: &Probe) -> String {
    let what = match p.kind {
        Kind::Tcp(port) => format!("tcp/{port}"),
        Kind::Udp(port) => format!("udp/{port}"),
        Kind::Ping => "ping".into(),
    };
    format!("{} -> {} {what} ({})", p.from, p.to, p.addr)
}

/// Ctrl-C: the handler stops every process in this run's namespaces (the
/// agents, etcd, servers) and removes the namespaces, since the main
/// thread's destructors will not run.
pub fn on_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let me = format!("-{}-", std::process::id());
    let ours: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sg-demo") && n.contains(&me))
        .collect();
    for name in &ours {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for name in &ours {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .status();
    }
    eprintln!("\ndemo: interrupted; namespaces and agents removed");
    std::process::exit(130);
}

pub fn run(agent_bin: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    // SAFETY of the test helpers: they read SG_AGENT_BIN to find the agent.
    // Set before any thread starts.
    unsafe { std::env::set_var("SG_AGENT_BIN", agent_bin) };
    ctrlc::set_handler(on_interrupt).context("installing the Ctrl-C handler")?;

    println!("demo: building the topology (internet, admin, web, db around a fabric router)");
    let topo = build()?;
    servers(&topo)?;
    println!("demo: starting sg-agent on the fabric with the embedded web/db configuration");
    let mut agent = Agent::start(&topo.fabric, CONFIG)?;

    let mut rows = Vec::new();
    for p in PROBES {
        let seen = probe(&topo, p);
        if INTERRUPTED.load(Ordering::SeqCst) {
            // The handler owns the teardown and the exit from here on.
            loop {
                std::thread::park();
            }
        }
        let seen = seen.with_context(|| label(p))?;
        rows.push((label(p), p.expect, seen, p.why));
    }
    print_table(&rows);

    agent.stop_with(nix::sys::signal::Signal::SIGTERM)?;
    for line in agent.log().lines().filter(|l| l.contains("accepted /")) {
        println!(
            "demo: counters: {}",
            line.split("] ").nth(1).unwrap_or(line)
        );
    }
    drop(topo);
    verdict(&rows)
}

/// A probe's row: what, expected, observed, why.
pub type Row<'a> = (String, Seen, Seen, &'a str);

/// Prints `probe | expected | observed | why`, marking mismatches.
pub fn print_table(rows: &[Row]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(5).max(5);
    println!();
    println!("| {:<w$} | expected | observed | why", "probe");
    println!("|-{:-<w$}-|----------|----------|----", "");
    for (name, expect, seen, why) in rows {
        let mark = if expect == seen {
            ""
        } else {
            "   <-- MISMATCH"
        };
        println!(
            "| {name:<w$} | {:<8} | {:<8} | {why}{mark}",
            expect.to_string(),
            seen.to_string()
        );
    }
    println!();
}

/// Fails when a probe saw other than expected; says so otherwise.
pub fn verdict(rows: &[Row]) -> Result<()> {
    let failures = rows.iter().filter(|r| r.1 != r.2).count();
    if failures > 0 {
        bail!(
            "{failures} of {} probe(s) differ from the expectation",
            rows.len()
        );
    }
    println!(
        "demo: all {} probes as expected; topology removed",
        rows.len()
    );
    Ok(())
}
