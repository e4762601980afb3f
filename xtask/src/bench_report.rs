//! `cargo xtask bench`'s report: the end-to-end figures summarized over
//! rounds (medians, and the ratios to no filter measured within each round
//! with their spread), the markdown tables and the plot.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::bench::{CONTENDERS, Samples};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Per metric, rule count and contender: the median over rounds, and under
/// `ratio_to_none` the median, lowest and highest of the ratios to no
/// filter, each taken within one round (the machine drifts between rounds).
pub fn summarize(samples: &Samples) -> Value {
    let mut e2e = json!({});
    for (metric, by_rules) in samples {
        for (rules, by_c) in by_rules {
            let none = by_c.get("none").cloned().unwrap_or_default();
            for (c, v) in by_c {
                e2e[metric][rules.to_string()][c] = json!(median(v.clone()));
                let ratios: Vec<f64> = v
                    .iter()
                    .zip(&none)
                    .filter(|(_, n)| **n > 0.0)
                    .map(|(x, n)| x / n)
                    .collect();
                if !ratios.is_empty() {
                    let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
                    let hi = ratios.iter().copied().fold(0.0, f64::max);
                    e2e["ratio_to_none"][metric][rules.to_string()][c] =
                        json!({"median": median(ratios), "min": lo, "max": hi});
                }
            }
        }
    }
    e2e
}

pub fn markdown(all: &Value, counts: &[usize]) -> String {
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
    s.push_str("| metric | rules | no filter | sg | nftables | iptables | sg / none (range over rounds) | sg / nft | sg / ipt |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let fmt = |metric: &str, v: f64| match metric {
        "udp_pps" | "udp_pps_64k_flows" => format!("{:.0} kpps", v / 1e3),
        "tcp_bps" => format!("{:.2} Gbit/s", v / 1e9),
        _ => format!("{v:.0} /s"),
    };
    for (metric, name) in [
        ("udp_pps", "UDP 64 B packets received, one flow"),
        ("udp_pps_64k_flows", "UDP 64 B packets received, 64k flows"),
        ("tcp_bps", "TCP throughput (iperf3)"),
        ("conn_per_s", "new TCP connections (4 clients)"),
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
            let q = &e["ratio_to_none"][metric][n.to_string()]["sg"];
            let spread = format!(
                "{:.2} ({:.2}-{:.2})",
                q["median"].as_f64().unwrap_or(0.0),
                q["min"].as_f64().unwrap_or(0.0),
                q["max"].as_f64().unwrap_or(0.0)
            );
            s.push_str(&format!(
                "| {name} | {n} | {} | {} | {} | {} | {spread} | {} | {} |\n",
                fmt(metric, none),
                fmt(metric, sg),
                fmt(metric, nft),
                fmt(metric, ipt),
                r(sg, nft),
                r(sg, ipt)
            ));
        }
    }
    let syn = &e["syn_retransmissions"];
    s.push_str(&format!(
        "\nSYN retransmissions during the connection tests (median per test, no filter / sg / nftables / iptables), by rule count: {}.\n",
        counts
            .iter()
            .map(|n| {
                let g = |c: &str| syn[n.to_string()][c].as_f64().unwrap_or(0.0);
                format!("{n}: {:.0} / {:.0} / {:.0} / {:.0}", g("none"), g("sg"), g("nftables"), g("iptables"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let d = &all["datapath"];
    s.push_str("\nDatapath, `BPF_PROG_TEST_RUN`, ns per packet over the pass-everything program (cold: each run a different flow, one run per system call; warm: 64 runs of the same flow):\n\n| case | sg | empty program | sg over empty |\n|---|---:|---:|---:|\n");
    for x in d["established"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| established flow, {} flows, cold | {:.0} | {:.0} | **{:.0}** |\n| established flow, {} flows, warm | {:.0} | {:.0} | **{:.0}** |\n",
            x["flows"], x["sg_ns"].as_f64().unwrap_or(0.0), x["empty_ns"].as_f64().unwrap_or(0.0), x["over_empty_ns"].as_f64().unwrap_or(0.0),
            x["flows"], x["warm_sg_ns"].as_f64().unwrap_or(0.0), x["warm_empty_ns"].as_f64().unwrap_or(0.0), x["warm_over_empty_ns"].as_f64().unwrap_or(0.0),
        ));
    }
    s.push_str("\nAn established packet, cold, against the floor (a bare program doing one lookup of the flow's key in the same table) and sg's pipeline stopped after each stage (ns per run, all-in):\n\n| flows | floor | configuration | + parse | + tracking lookup | sg (+ refresh, counters) | sg / floor |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for x in d["established"].as_array().into_iter().flatten() {
        let st = &x["stages_ns"];
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | **{:.2}** |\n",
            x["flows"],
            x["floor_ns"].as_f64().unwrap_or(0.0),
            st["config"].as_f64().unwrap_or(0.0),
            st["config_parse"].as_f64().unwrap_or(0.0),
            st["config_parse_track"].as_f64().unwrap_or(0.0),
            x["sg_ns"].as_f64().unwrap_or(0.0),
            x["over_floor"].as_f64().unwrap_or(0.0),
        ));
    }
    s.push_str("\nNew flows from IPv4 peers (the four policies loaded side by side and measured in turn, 500 frames a round; the ratio is over the empty program, against the 1-rule policy in the same round, median and the middle 80 % of rounds):\n\n| case | sg | empty program | sg over empty | over empty / 1 rule |\n|---|---:|---:|---:|---:|\n");
    for x in d["new_flow"].as_array().into_iter().flatten() {
        let sg = x["sg_ns"].as_f64().unwrap_or(0.0);
        let den = x["denied_ns"].as_f64().unwrap_or(0.0);
        let ratio = |r: &Value| {
            format!(
                "{:.2}x ({:.2}-{:.2})",
                r["median"].as_f64().unwrap_or(0.0),
                r["lo"].as_f64().unwrap_or(0.0),
                r["hi"].as_f64().unwrap_or(0.0)
            )
        };
        s.push_str(&format!(
            "| new flow allowed (decision + creation), {} rules | {sg:.0} | {:.0} | **{:.0}** | {} |\n| new flow denied (decision), {} rules | {den:.0} | {:.0} | **{:.0}** | {} |\n",
            x["rules"], x["empty_ns"].as_f64().unwrap_or(0.0), x["over_empty_ns"].as_f64().unwrap_or(0.0), ratio(&x["ratio_allowed"]),
            x["rules"], x["empty_ns"].as_f64().unwrap_or(0.0), x["denied_over_empty_ns"].as_f64().unwrap_or(0.0), ratio(&x["ratio_denied"]),
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
    let f = &d["fleet"];
    s.push_str(&format!(
        "\nFleet-sized state: {} interfaces with distinct policies, each referencing a group of {} members, plus {} CIDR rules: {} address-map entries and {} policy entries, {:.1} MB of kernel memory (per-interface tries would have needed {} address entries); installed in {:.0} ms. A member joining: {} address write(s), {} policy writes, {} interface writes ({:.0} ms, most of it recomputing the state); leaving: {} address write(s); joining inside one of the CIDR rules (an identity of its own): {} address write and {} policy writes.\n",
        f["interfaces"], f["group_members"], f["cidr_rules"], f["address_entries"], f["policy_entries"],
        f["kernel_bytes"].as_f64().unwrap_or(0.0) / 1e6, f["per_interface_tries_entries_v1"],
        f["install_ms"].as_f64().unwrap_or(0.0),
        f["join"]["address_writes"], f["join"]["policy_writes"], f["join"]["interface_writes"], f["join"]["ms"].as_f64().unwrap_or(0.0),
        f["leave"]["address_writes"],
        f["join_new_identity"]["address_writes"], f["join_new_identity"]["policy_writes"],
    ));
    let c = &d["contention"];
    s.push_str(&format!(
        "\nFlow creation under two-CPU contention ({} new flows per CPU, 1,000 rules, each CPU its own flows): {:.0} ns per flow alone, {} at once on both CPUs: **{:.2}x** uncontended (the slower CPU).\n",
        c["flows_per_thread"],
        c["uncontended_ns"].as_f64().unwrap_or(0.0),
        c["contended_ns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.0} ns", v.as_f64().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" and "),
        c["ratio"].as_f64().unwrap_or(0.0),
    ));
    let mem = &d["memory"];
    s.push_str(&format!(
        "\nMemory (kernel map accounting): {:.0} bytes per tracked-flow table entry; {:.0} bytes per flow of allowance at {} flows on {} CPUs (the table is a preallocated hash of allowance + 2 x CPUs entries: memory grows with the allowance, not with the CPU count); {:.0} bytes per rule (address, length and policy maps, 10,000 rules).\n",
        mem["bytes_per_table_entry"].as_f64().unwrap_or(0.0),
        mem["bytes_per_allowed_flow"].as_f64().unwrap_or(0.0),
        mem["ct_entries"].as_u64().unwrap_or(0) - 2 * mem["cpus"].as_u64().unwrap_or(0),
        mem["cpus"],
        mem["bytes_per_rule"].as_f64().unwrap_or(0.0),
    ));
    s
}

pub fn plot(all: &Value, counts: &[usize], path: &Path) -> Result<()> {
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
