//! Flow logs' part of `cargo xtask bench`: sg at 10,000 rules with flow logs
//! off and on (the reporting programs and the agent's worker reading the
//! ring buffer and walking the table), alternated within each round, and a
//! flood of rejected packets with the kernel's token bucket wide open, so
//! that what the ring buffer loses shows.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sg_tests::{Netns, Pair, SERVER_V4, agent_bin, sh};

use crate::{
    bench::enforce,
    bench_api::{median, spread},
    bench_traffic::{connection_rate, udp_conf, udp_rate},
};

const RULES: usize = 10_000;
const PIN_DIR: &str = "/sys/fs/bpf/sg-bench-enforce";

/// A flow-log settings file under `dir`.
fn settings(dir: &Path, name: &str, rate: u64) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "reject_events_per_second: {rate}\nreject_burst: {rate}\nflow_logs:\n  - destination: {}\n    max_aggregation_interval: 60\n",
            dir.join(format!("{name}.log")).display()
        ),
    )?;
    Ok(path)
}

/// The inbound counters of sg-bench's interface.
fn counters(server: &Netns) -> Result<Value> {
    let out = sh(server
        .command(agent_bin())
        .args(["--pin-dir", PIN_DIR, "stats", "--json"]))?;
    let v: Value = serde_json::from_str(&out)?;
    v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["interface"] == "eth0"))
        .map(|i| i["inbound"].clone())
        .context("no eth0 in sg-agent stats")
}

/// Datagrams to a denied port, as fast as one sender goes, for `seconds`.
fn flood(client: &Netns, seconds: u64) -> Result<u64> {
    client.run(move || {
        let s = UdpSocket::bind("10.77.0.1:0")?;
        let dst: SocketAddr = (SERVER_V4.parse::<std::net::IpAddr>()?, 7777).into();
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(seconds) {
            if s.send_to(&[0u8; 32], dst).is_ok() {
                n += 1;
            }
        }
        anyhow::Ok(n)
    })?
}

pub fn run(release: &Path, quick: bool) -> Result<Value> {
    let bench = &release.join("sg-bench");
    let (rounds, seconds) = if quick { (2, 2) } else { (5, 3) };
    let dir = crate::workspace_root().join("target/bench/flow-logs");
    std::fs::create_dir_all(&dir)?;
    let pair = Pair::new("benchfl")?;
    let _sink = pair.server.run(|| UdpSocket::bind((SERVER_V4, 5353)))??;
    let (conf, conf_flows) = (dir.join("udp.trafgen"), dir.join("udp-64k.trafgen"));
    std::fs::write(&conf, udp_conf(&pair, false)?)?;
    std::fs::write(&conf_flows, udp_conf(&pair, true)?)?;
    pair.client.ping(SERVER_V4, 1, 56);
    let on = settings(&dir, "on", 1000)?;

    let mut runs = Vec::new();
    for round in 0..rounds {
        let mut r = json!({});
        for (mode, logs) in [("off", None), ("on", Some(on.as_path()))] {
            let _sg = enforce(&pair.server, bench, RULES, logs)?;
            let udp = udp_rate(&pair, &conf, seconds)?;
            let flows = udp_rate(&pair, &conf_flows, seconds)?;
            let (conn, retrans) = connection_rate(&pair, seconds)?;
            eprintln!(
                "bench: flow logs {mode:<3}, round {round}: UDP {udp:>8.0} pps (64k flows {flows:>8.0}), {conn:>6.0} conn/s ({retrans} SYN retransmissions)"
            );
            r[mode] = json!({"udp_pps": udp, "udp_pps_64k_flows": flows, "conn_per_s": conn});
        }
        for m in ["udp_pps", "udp_pps_64k_flows", "conn_per_s"] {
            let (off, on) = (r["off"][m].as_f64(), r["on"][m].as_f64());
            if let (Some(off), Some(on)) = (off, on)
                && off > 0.0
            {
                r["ratio"][m] = json!(on / off);
            }
        }
        runs.push(r);
    }

    // The flood: every reject tries the ring (the bucket never runs dry).
    let open = settings(&dir, "flood", 1_000_000_000)?;
    let flood_s = if quick { 2 } else { 5 };
    let mut floods = Vec::new();
    for (bucket, file) in [("open", &open), ("default (1,000/s per CPU)", &on)] {
        let _sg = enforce(&pair.server, bench, RULES, Some(file))?;
        let before = counters(&pair.server)?;
        let sent = flood(&pair.client, flood_s)?;
        std::thread::sleep(Duration::from_millis(200));
        let after = counters(&pair.server)?;
        let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        let (rejected, skipped) = (delta("rejected_packets"), delta("events_skipped"));
        eprintln!(
            "bench: reject flood, bucket {bucket}: {sent} sent, {rejected} rejected, {skipped} events not written"
        );
        floods.push(json!({
            "bucket": bucket,
            "sent": sent,
            "rejected": rejected,
            "events_written": rejected - skipped,
            "events_skipped": skipped,
            "loss": if rejected > 0 { skipped as f64 / rejected as f64 } else { 0.0 },
            "seconds": flood_s,
        }));
    }
    // The cost itself, which the rates above swing more than.
    let cost = sh(std::process::Command::new(bench).arg("flow-log-cost"))
        .context("sg-bench flow-log-cost")?;
    let cost: Value = serde_json::from_str(cost.trim())?;
    eprintln!("bench: flow logs' cost per packet: {cost}");
    Ok(json!({"rules": RULES, "seconds": seconds, "rounds": runs, "flood": floods, "cost": cost}))
}

pub fn markdown(fl: &Value) -> String {
    let runs = fl["rounds"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut md = format!(
        "\nFlow logs at {} rules, off and on within each round (on: the reporting programs and the agent's worker; median (range) over {} rounds):\n\n| | off | on | on / off | target |\n|---|---:|---:|---:|---:|\n",
        fl["rules"],
        runs.len()
    );
    for (m, label, target) in [
        ("udp_pps", "UDP pps, one established flow", "≥ 0.97"),
        (
            "udp_pps_64k_flows",
            "UDP pps, 64,512 flows (new, then established)",
            "",
        ),
        ("conn_per_s", "new TCP connections/s", "≥ 0.90"),
    ] {
        md.push_str(&format!(
            "| {label} | {} | {} | {} | {target} |\n",
            spread(runs, |r| r["off"][m].as_f64()),
            spread(runs, |r| r["on"][m].as_f64()),
            spread(runs, |r| r["ratio"][m].as_f64().map(|x| x * 100.0)) + " %",
        ));
    }
    md.push_str(&cost_markdown(fl, runs));
    md.push_str("\nA flood of rejected packets with flow logs on (one sender, as fast as it goes; with the bucket open every reject tries the ring buffer, so what is not written is the ring's loss):\n\n| token bucket | rejected | events written | not written (SKIPDATA) | share not written |\n|---|---:|---:|---:|---:|\n");
    for f in fl["flood"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % |\n",
            f["bucket"].as_str().unwrap_or_default(),
            f["rejected"],
            f["events_written"],
            f["events_skipped"],
            f["loss"].as_f64().unwrap_or(0.0) * 100.0
        ));
    }
    md
}

/// What the reporting programs add per packet (`sg-bench flow-log-cost`),
/// and what that added time is of a packet's time at off's median rate: the
/// packet rate that this cost alone leaves, `1 / (1 + share)`.
fn cost_markdown(fl: &Value, runs: &[Value]) -> String {
    let c = &fl["cost"];
    let off_pps = median(runs, |r| r["off"]["udp_pps"].as_f64()).unwrap_or(0.0);
    let mut md = format!(
        "\nWhat the reporting programs add, per packet, through `BPF_PROG_TEST_RUN` at {} rules (the plain and the reporting program on the same maps, alternated over {} rounds; added: median, p10-p90 of the rounds):\n\n| packet | plain ns | reporting ns | added ns | of a packet's time at off's {off_pps:.0} pps |\n|---|---:|---:|---:|---:|\n",
        c["rules"], c["established"]["rounds"]
    );
    for (k, label) in [
        ("established", "an established flow's"),
        ("new_flow", "a new flow's first"),
    ] {
        let a = &c[k]["added_ns"];
        let share = match k {
            "established" => {
                let s = a["median"].as_f64().unwrap_or(0.0) * off_pps / 1e9;
                format!("{:.1} % (on/off ≥ {:.1} %)", s * 100.0, 100.0 / (1.0 + s))
            }
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {label} | {} | {} | {} ({}-{}) | {share} |\n",
            c[k]["plain_ns"], c[k]["reporting_ns"], a["median"], a["lo"], a["hi"]
        ));
    }
    md
}

/// `cargo xtask bench --flow-logs`: this part alone, written to
/// `target/bench/flow-logs.json` and printed as its tables.
pub fn only(release: &Path, quick: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the bench creates network namespaces and loads eBPF: run it as root");
    }
    let fl = run(release, quick)?;
    let dir = crate::workspace_root().join("target/bench");
    std::fs::write(
        dir.join("flow-logs.json"),
        serde_json::to_string_pretty(&fl)?,
    )?;
    println!("{}", markdown(&fl));
    Ok(())
}
