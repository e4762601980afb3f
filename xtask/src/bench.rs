//! `cargo xtask bench`: sg side by side with no filter, nftables and
//! iptables, alternating the contenders so that the machine's drift hits all
//! of them alike; then the datapath micro-benchmarks (`sg-bench micro`).
//! Writes `target/bench/bench.{md,json,png}`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sg_tests::{Netns, Pair, SERVER_V4, sh};

const CONTENDERS: [&str; 4] = ["none", "sg", "nftables", "iptables"];

struct Settings {
    rule_counts: Vec<usize>,
    rounds: usize,
    seconds: u64,
}

/// A filter in force on the server, removed on drop.
enum Filter<'a> {
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

fn apply<'a>(contender: &str, server: &'a Netns, bench: &Path, rules: usize) -> Result<Filter<'a>> {
    Ok(match contender {
        "none" => Filter::None,
        "sg" => {
            let mut child = server
                .command(bench)
                .args([
                    "enforce",
                    "--interface",
                    "eth0",
                    "--rules",
                    &rules.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
            if !line.starts_with("ready") {
                bail!("sg-bench enforce did not start: {line}");
            }
            Filter::Sg(child)
        }
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

/// Datagrams the server's UDP layer took in (delivered, or dropped for a full
/// socket buffer): what got through the filter.
fn udp_in(ns: &Netns) -> Result<u64> {
    let snmp = sh(ns.command("cat").arg("/proc/net/snmp"))?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("Udp header")?,
        udp.next().context("Udp values")?,
    );
    let m: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    Ok(m.get("InDatagrams").copied().unwrap_or(0) + m.get("RcvbufErrors").copied().unwrap_or(0))
}

fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])?)?;
    Ok(v[0]["address"].as_str().context("no MAC")?.to_string())
}

/// Small UDP packets from one trafgen process for `seconds`: packets per
/// second received by the server's UDP layer.
fn udp_rate(pair: &Pair, conf: &Path, seconds: u64) -> Result<f64> {
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

fn tcp_throughput(pair: &Pair, seconds: u64) -> Result<f64> {
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

/// New TCP connections per second through the policy (each a new flow).
fn connection_rate(pair: &Pair, seconds: u64) -> Result<f64> {
    let listener = pair.server.run(|| TcpListener::bind((SERVER_V4, 8000)))??;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    listener.set_nonblocking(true)?;
    let acceptor = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let dst: SocketAddr = format!("{SERVER_V4}:8000").parse()?;
    let n = pair.client.run(move || {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(seconds) {
            if let Ok(s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                // Reset rather than TIME_WAIT, so ports do not run out.
                let zero = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &zero);
                n += 1;
            }
        }
        n as f64 / t.elapsed().as_secs_f64()
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    Ok(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
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
    let conf = out_dir.join("udp.trafgen");
    std::fs::write(
        &conf,
        format!(
            "{{ eth(da={}, sa={}, type=0x0800), ipv4(saddr=10.77.0.1, daddr={SERVER_V4}, ttl=64), udp(sport=40000, dport=5353), fill(0x41, 18) }}\n",
            mac(&pair.server, "eth0")?,
            mac(&pair.client, "eth0")?
        ),
    )?;
    // Warm ARP so that trafgen's frames meet a resolved neighbour both ways.
    pair.client.ping(SERVER_V4, 1, 56);

    // samples[metric][rules][contender] = values over rounds
    let mut samples: BTreeMap<&str, BTreeMap<usize, BTreeMap<&str, Vec<f64>>>> = BTreeMap::new();
    for &rules in &s.rule_counts {
        for round in 0..s.rounds {
            for contender in CONTENDERS {
                let _filter = apply(contender, &pair.server, bench, rules)?;
                let udp = udp_rate(&pair, &conf, s.seconds)?;
                let tcp = tcp_throughput(&pair, s.seconds)?;
                let conn = connection_rate(&pair, s.seconds.min(2))?;
                eprintln!(
                    "bench: {rules:>5} rules, round {round}, {contender:<8}: UDP {:>8.0} pps, TCP {:>6.2} Gbit/s, {:>6.0} conn/s",
                    udp,
                    tcp / 1e9,
                    conn
                );
                for (metric, v) in [("udp_pps", udp), ("tcp_bps", tcp), ("conn_per_s", conn)] {
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

    let mut e2e = json!({});
    for (metric, by_rules) in &samples {
        for (rules, by_c) in by_rules {
            for (c, v) in by_c {
                e2e[metric][rules.to_string()][c] = json!(median(v.clone()));
            }
        }
    }
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
    eprintln!("bench: the EC2 API (sg-api-bench)");
    let api = crate::bench_api::run(&release.join("sg-api-bench"), quick)?;
    let all = json!({"meta": meta, "end_to_end": e2e, "datapath": micro, "api": api});
    let json_path = out_dir.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)?)?;
    let md = markdown(&all, &s.rule_counts) + &crate::bench_api::markdown(&all["api"]);
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

fn markdown(all: &Value, counts: &[usize]) -> String {
    let e = &all["end_to_end"];
    let m = &all["meta"];
    let mut s = format!(
        "Measured {} on {} ({} vCPU, {}), Linux {}; median of {} round(s), {} s per test{}.\n\n",
        m["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["cpus"],
        "shared",
        m["kernel"].as_str().unwrap_or(""),
        m["rounds"],
        m["seconds_per_test"],
        if m["quick"].as_bool() == Some(true) {
            ", --quick"
        } else {
            ""
        }
    );
    s.push_str(
        "End to end, across a veth pair between two namespaces, the same policy four ways:\n\n",
    );
    s.push_str("| metric | rules | no filter | sg | nftables | iptables | sg / none | sg / nft | sg / ipt |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let fmt = |metric: &str, v: f64| match metric {
        "udp_pps" => format!("{:.0} kpps", v / 1e3),
        "tcp_bps" => format!("{:.2} Gbit/s", v / 1e9),
        _ => format!("{v:.0} /s"),
    };
    for (metric, name) in [
        ("udp_pps", "UDP 64 B packets received"),
        ("tcp_bps", "TCP throughput (iperf3)"),
        ("conn_per_s", "new TCP connections"),
    ] {
        for n in counts {
            let g = |c: &str| e[metric][n.to_string()][c].as_f64().unwrap_or(0.0);
            let (none, sg, nft, ipt) = (g("none"), g("sg"), g("nftables"), g("iptables"));
            let r = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            s.push_str(&format!(
                "| {name} | {n} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(metric, none),
                fmt(metric, sg),
                fmt(metric, nft),
                fmt(metric, ipt),
                r(sg, none),
                r(sg, nft),
                r(sg, ipt)
            ));
        }
    }
    let d = &all["datapath"];
    s.push_str("\nDatapath, `BPF_PROG_TEST_RUN`, ns per packet over the pass-everything program (cold: each run a different flow, one run per system call; warm: 64 runs of the same flow):\n\n| case | sg | empty program | sg over empty |\n|---|---:|---:|---:|\n");
    for x in d["established"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| established flow, {} flows, cold | {:.0} | {:.0} | **{:.0}** |\n| established flow, {} flows, warm | {:.0} | {:.0} | **{:.0}** |\n",
            x["flows"], x["sg_ns"].as_f64().unwrap_or(0.0), x["empty_ns"].as_f64().unwrap_or(0.0), x["over_empty_ns"].as_f64().unwrap_or(0.0),
            x["flows"], x["warm_sg_ns"].as_f64().unwrap_or(0.0), x["warm_empty_ns"].as_f64().unwrap_or(0.0), x["warm_over_empty_ns"].as_f64().unwrap_or(0.0),
        ));
    }
    let first = d["new_flow"][0]["sg_ns"].as_f64().unwrap_or(1.0);
    let first_denied = d["new_flow"][0]["denied_ns"].as_f64().unwrap_or(1.0);
    for x in d["new_flow"].as_array().into_iter().flatten() {
        let sg = x["sg_ns"].as_f64().unwrap_or(0.0);
        let den = x["denied_ns"].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| new flow allowed (decision + creation), {} rules | {sg:.0} | {:.0} | **{:.0}** ({:.2}x 1 rule) |\n| new flow denied (decision), {} rules | {den:.0} | {:.0} | **{:.0}** ({:.2}x 1 rule) |\n",
            x["rules"], x["empty_ns"].as_f64().unwrap_or(0.0), x["over_empty_ns"].as_f64().unwrap_or(0.0), sg / first,
            x["rules"], x["empty_ns"].as_f64().unwrap_or(0.0), x["denied_over_empty_ns"].as_f64().unwrap_or(0.0), den / first_denied,
        ));
    }
    let u = &d["update"];
    s.push_str(&format!(
        "\nPolicy update, 10,000 rules: compiled in {:.1} ms, written and swapped in {:.1} ms (change to enforcement {:.1} ms); {} probe packets during the swap, {} judged by a mix (atomic: {}). Old entries removed {:.1} ms later. Parsing and validating a 10,000-rule file: {:.1} ms.\n",
        u["compile_ms"].as_f64().unwrap_or(0.0),
        u["install_and_swap_ms"].as_f64().unwrap_or(0.0),
        u["change_to_enforcement_ms"].as_f64().unwrap_or(0.0),
        u["probe_packets"],
        u["probes_judged_wrong"],
        u["atomic"],
        u["retire_old_ms"].as_f64().unwrap_or(0.0),
        d["config_10000_rules_parse_validate_ms"].as_f64().unwrap_or(0.0),
    ));
    let mem = &d["memory"];
    s.push_str(&format!(
        "\nMemory (kernel map accounting): {:.0} bytes per tracked-flow table entry; {:.0} bytes per flow of allowance at {} flows on {} CPUs (the table is a preallocated hash of allowance + 2 x CPUs entries: memory grows with the allowance, not with the CPU count); {:.0} bytes per rule (address and port tries, 10,000 rules).\n",
        mem["bytes_per_table_entry"].as_f64().unwrap_or(0.0),
        mem["bytes_per_allowed_flow"].as_f64().unwrap_or(0.0),
        mem["ct_entries"].as_u64().unwrap_or(0) - 2 * mem["cpus"].as_u64().unwrap_or(0),
        mem["cpus"],
        mem["bytes_per_rule"].as_f64().unwrap_or(0.0),
    ));
    s
}

fn plot(all: &Value, counts: &[usize], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let font: &'static [u8] = Box::leak(
        std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .context("reading DejaVuSans (Debian fonts-dejavu-core)")?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("font"))?;
    let e = &all["end_to_end"]["udp_pps"];
    // Cost per packet in ns, from the received rate.
    let series = |c: &str| -> Vec<(f64, f64)> {
        counts
            .iter()
            .filter_map(|n| {
                e[n.to_string()][c]
                    .as_f64()
                    .filter(|v| *v > 0.0)
                    .map(|v| ((*n as f64).log10(), 1e9 / v))
            })
            .collect()
    };
    let max = CONTENDERS
        .iter()
        .flat_map(|c| series(c))
        .map(|p| p.1)
        .fold(0.0, f64::max)
        * 1.5;
    let min = CONTENDERS
        .iter()
        .flat_map(|c| series(c))
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        / 1.5;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost per small UDP packet vs rule count (lower is better)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.8f64..4.2f64, (min.max(1.0)..max.max(10.0)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("rules (log10)")
        .y_desc("ns per packet, all-in (log)")
        .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
        .draw()?;
    let colors = [BLACK, BLUE, GREEN, RED];
    for (c, color) in CONTENDERS.iter().zip(colors) {
        let pts = series(c);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*c)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
