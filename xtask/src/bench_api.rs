//! The EC2 API's part of `cargo xtask bench`: a managed agent enforcing on
//! a veth, its state at 1, 1,000 and 10,000 rules, measured by
//! `sg-api-bench` from inside the agent's namespace (latency of a change
//! until its answer, which comes once it is enforced and committed;
//! sustained authorize/revoke pairs; reads).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sg_tests::{ADMIN, Agent, Pair, TempDir, sh};

/// The bench group's id, fixed so that the bench need not look it up.
const GROUP: &str = "sg-00000000000000bec";

/// A state: the bench group with `rules` rules on eth0, and `others` more
/// groups of `each` rules (100 groups in all, for the reads).
fn seed(rules: usize, others: usize, each: usize) -> String {
    // Distinct /24s: the i-th of group `salt`.
    let cidrs = |n: usize, salt: usize| {
        (0..n)
            .map(|i| {
                let k = salt * 1000 + i;
                format!("{}.{}.{}.0/24", 10 + (k >> 16), (k >> 8) & 255, k & 255)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "quotas: {{rules_per_group: 1000, groups_per_interface: 1}}\nsecurity_groups:\n  - {{id: {GROUP}, name: bench, description: bench, ingress: [{{ip_protocol: tcp, from_port: 80, to_port: 80, ip_ranges: [{}]}}]}}\n",
        cidrs(rules, 0)
    );
    for g in 0..others {
        s.push_str(&format!(
            "  - {{name: g{g}, description: filler, ingress: [{{ip_protocol: tcp, from_port: 81, to_port: 81, ip_ranges: [{}]}}]}}\n",
            cidrs(each, g + 1)
        ));
    }
    s.push_str(
        "network_interfaces:\n  - {interface: eth0, private_ipv4: [10.77.0.2], groups: [bench]}\n",
    );
    s
}

pub fn run(api_bench: &Path, quick: bool) -> Result<Value> {
    // (label, rules in the bench group, other groups, rules each): the
    // bench group leaves room under the 1,000-rule quota for the clients'
    // rules; 10,000 rules cannot be one group (AWS's quota), so the third
    // state holds them in ten groups.
    let mut cases = vec![
        ("1 rule", 1, 99, 1),
        ("1,000 rules (one group)", 990, 99, 1),
    ];
    if !quick {
        cases.push(("10,000 rules (ten groups of 1,000)", 990, 9, 1000));
    }
    let rounds = if quick { 1 } else { 3 };
    let mut out = json!({});
    for (label, rules, others, each) in cases {
        let pair = Pair::new("apib")?;
        let state = TempDir::new()?;
        let _agent = Agent::start_managed(&pair.server, &state.0, &seed(rules, others, each))?;
        let mut runs = Vec::new();
        for round in 0..rounds {
            let text = sh(pair
                .server
                .command(api_bench)
                .args([
                    "--key",
                    ADMIN.id,
                    "--secret",
                    ADMIN.secret,
                    "--group",
                    GROUP,
                ])
                .args([
                    "--calls",
                    if quick { "100" } else { "300" },
                    "--seconds",
                    if quick { "2" } else { "4" },
                ]))
            .with_context(|| format!("sg-api-bench, {label}"))?;
            let v: Value = serde_json::from_str(text.trim())?;
            eprintln!("bench: API, {label}, round {round}: {v}");
            runs.push(v);
        }
        out[label] = Value::Array(runs);
    }
    Ok(out)
}

/// The median of `f` over the rounds.
pub(crate) fn median(runs: &[Value], f: impl Fn(&Value) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The median and the range of `f` over the rounds.
pub(crate) fn spread(runs: &[Value], f: impl Fn(&Value) -> Option<f64>) -> String {
    let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "-".into(),
        [one] => format!("{one:.1}"),
        all => format!(
            "{:.1} ({:.1}-{:.1})",
            all[all.len() / 2],
            all[0],
            all[all.len() - 1]
        ),
    }
}

pub fn markdown(api: &Value) -> String {
    let mut md = String::from(
        "\nEC2 API, a managed agent enforcing on a veth (each call answered once enforced and committed; latency of sequential calls, rates with 4 concurrent clients on the same 2 vCPUs; median (range) over the rounds):\n\n| state | authorize p50 ms | authorize p99 ms | revoke p99 ms | mutating calls/s | reads/s (`DescribeSecurityGroups`, 100 groups) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (label, runs) in api.as_object().into_iter().flatten() {
        let runs = runs.as_array().map(Vec::as_slice).unwrap_or_default();
        let ms = |k: &'static str, p: &'static str| move |v: &Value| v[k][p].as_f64();
        md.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            spread(runs, ms("authorize_ms", "p50")),
            spread(runs, ms("authorize_ms", "p99")),
            spread(runs, ms("revoke_ms", "p99")),
            spread(runs, |v| v["mutating_calls_per_s"].as_f64()),
            spread(runs, |v| v["reads_per_s"].as_f64()),
        ));
    }
    md
}

/// `cargo xtask bench --api`: this part alone, written to
/// `target/bench/api.json` and printed as its table.
pub fn only(release: &Path, quick: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the bench creates network namespaces and loads eBPF: run it as root");
    }
    let api = run(&release.join("sg-api-bench"), quick)?;
    let dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("api.json"), serde_json::to_string_pretty(&api)?)?;
    println!("{}", markdown(&api));
    Ok(())
}
