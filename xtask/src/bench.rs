//! `cargo xtask bench`: sg side by side with no filter, nftables and
//! iptables, alternating the contenders so that the machine's drift hits all
//! of them alike; then the datapath micro-benchmarks (`sg-bench micro`).
//! Writes `target/bench/bench.{md,json,png}`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sg_tests::{Netns, Pair, SERVER_V4, sh};

use crate::{
    bench_report::{markdown, plot},
    bench_traffic::{connection_rate, tcp_throughput, udp_conf, udp_rate},
};

/// Values over rounds, by metric, rule count and contender.
pub type Samples = BTreeMap<&'static str, BTreeMap<usize, BTreeMap<&'static str, Vec<f64>>>>;

pub const CONTENDERS: [&str; 4] = ["none", "sg", "nftables", "iptables"];

struct Settings {
    rule_counts: Vec<usize>,
    rounds: usize,
    seconds: u64,
}

/// A filter in force on the server, removed on drop.
pub(crate) enum Filter<'a> {
    None,
    Sg(Child),
    Nft(&'a Netns),
    Ipt(&'a Netns),
}

impl Drop for Filter<'_> {
    fn drop(&mut self) {
        match self {
            Filter::None => {}
            Filter::Sg(child) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
            }
            Filter::Nft(ns) => {
                let _ = ns
                    .command("nft")
                    .args(["delete", "table", "inet", "sgbench"])
                    .status();
            }
            Filter::Ipt(ns) => {
                for t in ["iptables-legacy", "ip6tables-legacy"] {
                    let _ = ns.command(t).args(["-F", "INPUT"]).status();
                    let _ = ns.command(t).args(["-P", "INPUT", "ACCEPT"]).status();
                }
            }
        }
    }
}

fn render(bench: &Path, rules: usize, format: &str) -> Result<String> {
    sh(Command::new(bench).args(["render", "--rules", &rules.to_string(), "--format", format]))
}

fn pipe(mut cmd: Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// sg on the server's eth0 with `rules` rules (`sg-bench enforce`), with
/// flow logs as `flow_logs` says if given.
pub(crate) fn enforce<'a>(
    server: &Netns,
    bench: &Path,
    rules: usize,
    flow_logs: Option<&Path>,
) -> Result<Filter<'a>> {
    let mut cmd = server.command(bench);
    cmd.args([
        "enforce",
        "--interface",
        "eth0",
        "--rules",
        &rules.to_string(),
    ]);
    if let Some(f) = flow_logs {
        cmd.arg("--flow-logs").arg(f);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!("sg-bench enforce did not start: {line}");
    }
    Ok(Filter::Sg(child))
}

fn apply<'a>(contender: &str, server: &'a Netns, bench: &Path, rules: usize) -> Result<Filter<'a>> {
    Ok(match contender {
        "none" => Filter::None,
        "sg" => enforce(server, bench, rules, None)?,
        "nftables" => {
            // The table, then each batch of set elements in its own
            // transaction: one transaction of 10,000 overflows netlink.
            let text = render(bench, rules, "nft")?;
            let (table, elements): (Vec<&str>, Vec<&str>) =
                text.lines().partition(|l| !l.starts_with("add element"));
            for part in
                std::iter::once(table.join("\n")).chain(elements.iter().map(|l| l.to_string()))
            {
                let mut nft = server.command("nft");
                nft.args(["-f", "-"]);
                pipe(nft, &part)?;
            }
            Filter::Nft(server)
        }
        _ => {
            pipe(
                server.command("iptables-legacy-restore"),
                &render(bench, rules, "iptables")?,
            )?;
            pipe(
                server.command("ip6tables-legacy-restore"),
                &render(bench, rules, "ip6tables")?,
            )?;
            Filter::Ipt(server)
        }
    })
}

pub fn run(release: &Path, quick: bool) -> Result<()> {
    let bench = &release.join("sg-bench");
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench creates network namespaces and loads eBPF: run it as root");
    }
    let s = if quick {
        Settings {
            rule_counts: vec![10, 10_000],
            rounds: 1,
            seconds: 2,
        }
    } else {
        Settings {
            rule_counts: vec![10, 1_000, 10_000],
            rounds: 3,
            seconds: 3,
        }
    };
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let started = Instant::now();

    let pair = Pair::new("bench")?;
    // A socket to count into (never read: a full buffer still counts).
    let _sink = pair.server.run(|| UdpSocket::bind((SERVER_V4, 5353)))??;
    let (conf, conf_flows) = (out_dir.join("udp.trafgen"), out_dir.join("udp-64k.trafgen"));
    std::fs::write(&conf, udp_conf(&pair, false)?)?;
    std::fs::write(&conf_flows, udp_conf(&pair, true)?)?;
    // Warm ARP so that trafgen's frames meet a resolved neighbour both ways.
    pair.client.ping(SERVER_V4, 1, 56);

    // samples[metric][rules][contender] = values over rounds
    let mut samples: Samples = BTreeMap::new();
    for &rules in &s.rule_counts {
        for round in 0..s.rounds {
            for contender in CONTENDERS {
                let _filter = apply(contender, &pair.server, bench, rules)?;
                let udp = udp_rate(&pair, &conf, s.seconds)?;
                let flows = udp_rate(&pair, &conf_flows, s.seconds)?;
                let tcp = tcp_throughput(&pair, s.seconds)?;
                let (conn, retrans) = connection_rate(&pair, s.seconds)?;
                eprintln!(
                    "bench: {rules:>5} rules, round {round}, {contender:<8}: UDP {udp:>8.0} pps (64k flows {flows:>8.0}), TCP {:>6.2} Gbit/s, {conn:>6.0} conn/s ({retrans} SYN retransmissions)",
                    tcp / 1e9,
                );
                for (metric, v) in [
                    ("udp_pps", udp),
                    ("udp_pps_64k_flows", flows),
                    ("tcp_bps", tcp),
                    ("conn_per_s", conn),
                    ("syn_retransmissions", retrans as f64),
                ] {
                    samples
                        .entry(metric)
                        .or_default()
                        .entry(rules)
                        .or_default()
                        .entry(contender)
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    drop(pair);

    eprintln!("bench: datapath micro-benchmarks (sg-bench micro)");
    let mut cmd = Command::new(bench);
    cmd.arg("micro");
    if quick {
        cmd.arg("--quick");
    }
    let micro: Value = serde_json::from_str(&sh(cmd.stderr(Stdio::inherit()))?)
        .context("sg-bench micro output")?;

    let e2e = crate::bench_report::summarize(&samples);
    let meta = json!({
        "date": sh(Command::new("date").args(["-u", "+%Y-%m-%d"]))?.trim(),
        "kernel": sh(Command::new("uname").arg("-r"))?.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": sh(Command::new("sh").args(["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]))?.trim(),
        "quick": quick,
        "rounds": s.rounds,
        "seconds_per_test": s.seconds,
        "duration_s": started.elapsed().as_secs(),
        "iptables": "iptables-legacy (xtables), one rule per entry, conntrack first",
        "nftables": "inet table, concatenated interval sets, ct state first",
    });
    eprintln!("bench: flow logs off and on");
    let flow_logs = crate::bench_flowlogs::run(release, quick)?;
    eprintln!("bench: the EC2 API (sg-api-bench)");
    let api = crate::bench_api::run(&release.join("sg-api-bench"), quick)?;
    eprintln!("bench: the fleet (etcd, agents)");
    let fleet = crate::bench_fleet::run(quick)?;
    let all = json!({"meta": meta, "end_to_end": e2e, "datapath": micro, "flow_logs": flow_logs, "api": api, "fleet": fleet});
    let json_path = out_dir.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)?)?;
    let md = markdown(&all, &s.rule_counts)
        + &crate::bench_flowlogs::markdown(&all["flow_logs"])
        + &crate::bench_api::markdown(&all["api"])
        + &crate::bench_fleet::markdown(&all["fleet"]);
    let md_path = out_dir.join("bench.md");
    std::fs::write(&md_path, &md)?;
    let png_path = out_dir.join("bench.png");
    plot(&all, &s.rule_counts, &png_path)?;
    println!("{md}");
    println!(
        "bench: wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        png_path.display()
    );
    Ok(())
}
