//! The datapath's micro-benchmarks, through `BPF_PROG_TEST_RUN`.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use sg_agent::{
    compile::Flat,
    datapath::{self, Datapath, PROG_INGRESS, PROG_PASS},
    model::Protocol,
};
use sg_common::{CtKey, CtVal, FAMILY_V4, TCP_ESTABLISHED, names};
use sg_testkit::{
    frames::{L4, Spec, TCP_ACK, TCP_SYN},
    policies::{rules, rules_ending_with},
};

use crate::{bench_targets, compiled};

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2] as f64
}

/// Median nanoseconds of one run of `prog` over `frames`, each run once so
/// that consecutive runs do not find each other's lookups in cache (and the
/// system call between runs leaves caches and TLB cold: a pessimistic view).
pub(crate) fn cost(dp: &Datapath, prog: &str, frames: &[Vec<u8>]) -> Result<f64> {
    let mut ns = Vec::with_capacity(frames.len());
    for f in frames {
        let (_, d) = dp.test_run_named(prog, f, 1)?;
        ns.push(d.as_nanos() as u64);
    }
    Ok(median(ns))
}

/// sg's and the empty program's cost on `frames`, alternating the two over
/// chunks so that the machine's drift hits both alike.
fn alternate(dp: &Datapath, frames: &[Vec<u8>]) -> Result<(f64, f64)> {
    let (mut sg, mut base) = (vec![], vec![]);
    for chunk in frames.chunks(500) {
        sg.push(cost(dp, PROG_INGRESS, chunk)?);
        base.push(cost(dp, PROG_PASS, chunk)?);
    }
    Ok((median_f(sg), median_f(base)))
}

/// The floor (one lookup of the flow's key in the tracking table, from a
/// bare program) and the pipeline stopped after each stage, cold, measured
/// alternately with sg over the same frames.
fn floor_and_stages(dp: &Datapath, frames: &[Vec<u8>]) -> Result<(f64, serde_json::Value)> {
    let progs: Vec<&str> = [names::PROG_FLOOR]
        .into_iter()
        .chain(names::PROG_STAGES)
        .collect();
    let mut by: Vec<Vec<f64>> = vec![vec![]; progs.len()];
    for chunk in frames.chunks(500) {
        for (i, p) in progs.iter().enumerate() {
            by[i].push(cost(dp, p, chunk)?);
        }
    }
    let ns: Vec<f64> = by.into_iter().map(median_f).collect();
    let stages = json!({
        "config": ns[1],
        "config_parse": ns[2],
        "config_parse_track": ns[3],
    });
    Ok((ns[0], stages))
}

/// Mean nanoseconds per run when each frame is run 64 times in a row: the
/// flow's own entries warm, as for a packet of a busy flow.
pub(crate) fn warm_cost(dp: &Datapath, prog: &str, frames: &[Vec<u8>]) -> Result<f64> {
    let mut ns = Vec::with_capacity(frames.len());
    for f in frames.iter().take(200) {
        let (_, d) = dp.test_run_named(prog, f, 64)?;
        ns.push(d.as_nanos() as u64);
    }
    Ok(median(ns))
}

/// The maps a policy's size shows in.
const POLICY_MAPS: [&str; 4] = [names::ADDR4, names::ADDR6, names::LENS, names::POLICY];

pub(crate) const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

pub(crate) fn micro(quick: bool, pin_dir: &Path) -> Result<()> {
    let samples = if quick { 2000 } else { 6000 };
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = json!({});
    established_flows(quick, pin_dir, samples, &mut rng, &mut out)?;
    new_flows(pin_dir, samples, &mut rng, &mut out)?;
    out["update"] = update(pin_dir)?;
    out["fleet"] = crate::fleet::fleet(pin_dir)?;
    out["contention"] = crate::contention::contention(pin_dir)?;
    out["config_10000_rules_parse_validate_ms"] = json!(parse_validate_ms()?);
    let _ = std::fs::remove_dir_all(pin_dir);
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Established flows: one lookup in tables of growing size; and the
/// table's memory.
fn established_flows(
    quick: bool,
    pin_dir: &Path,
    samples: usize,
    rng: &mut StdRng,
    out: &mut serde_json::Value,
) -> Result<()> {
    let sizes: &[usize] = if quick {
        &[1_000, 65_536]
    } else {
        &[1_000, 65_536, 1_000_000]
    };
    let mut established = vec![];
    for &size in sizes {
        let _ = std::fs::remove_dir_all(pin_dir);
        let mut dp = Datapath::load(size.max(1024) as u32, pin_dir)?;
        dp.load_baseline()?;
        dp.install("bench", 1, &compiled(&rules(1), &[]))?;
        let flows = track_established(&mut dp, size, rng)?;
        let frames: Vec<Vec<u8>> = (0..samples)
            .map(|_| established_frame(flows[rng.random_range(0..flows.len())]))
            .collect();
        let (sg, base) = alternate(&dp, &frames)?;
        let (warm_sg, warm_base) = (
            warm_cost(&dp, PROG_INGRESS, &frames)?,
            warm_cost(&dp, PROG_PASS, &frames)?,
        );
        let (floor, stages) = floor_and_stages(&dp, &frames)?;
        let verdict = dp.test_run(true, &frames[0], 1)?.0;
        if verdict != 0 {
            bail!("an established flow's packet was dropped in the benchmark");
        }
        eprintln!(
            "micro: established flow, {size} flows: cold {sg:.0} ns (empty {base:.0} ns, floor {floor:.0} ns: {:.2}x), warm {warm_sg:.0} ns (empty {warm_base:.0} ns); stages {stages}",
            sg / floor
        );
        established.push(json!({"flows": size, "sg_ns": sg, "empty_ns": base, "over_empty_ns": sg - base,
            "floor_ns": floor, "over_floor": sg / floor, "stages_ns": stages,
            "warm_sg_ns": warm_sg, "warm_empty_ns": warm_base, "warm_over_empty_ns": warm_sg - warm_base}));
        if size == *sizes.last().expect("sizes") {
            let ct = dp.maps.memlock(names::CT)?;
            let ncpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
            let entries = size.max(1024) as u64 + sg_agent::datapath::ct_slack(ncpus) as u64;
            out["memory"] = json!({
                "ct_memlock_bytes": ct,
                "ct_entries": entries,
                "cpus": ncpus,
                "bytes_per_table_entry": ct as f64 / entries as f64,
                "bytes_per_allowed_flow": ct as f64 / size.max(1024) as f64,
            });
        }
        dp.stop();
    }
    out["established"] = json!(established);
    Ok(())
}

/// `n` established TCP flows from distinct peers to [`LOCAL`]:443 on
/// ifindex 1, entered in the tracking table: each flow's (peer, port).
pub(crate) fn track_established(
    dp: &mut Datapath,
    n: usize,
    rng: &mut StdRng,
) -> Result<Vec<(Ipv4Addr, u16)>> {
    // A second ago: the datapath's coarse clock may trail this one by a
    // tick, and a flow seen "later" than now is stale to it.
    let seen_ns = datapath::flow_clock_ns() - 1_000_000_000;
    let mut flows = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    while flows.len() < n {
        let remote = Ipv4Addr::from(0x0b00_0000 | rng.random_range(0..1u32 << 24));
        let rp = rng.random_range(1024..=65535u16);
        if !seen.insert((remote, rp)) {
            continue;
        }
        let mut key = CtKey {
            ifindex: 1,
            family: FAMILY_V4,
            proto: 6,
            ..Default::default()
        };
        key.local[0] = u32::from_ne_bytes(LOCAL.octets());
        key.remote[0] = u32::from_ne_bytes(remote.octets());
        key.local_port = u16::from_ne_bytes(443u16.to_be_bytes());
        key.remote_port = u16::from_ne_bytes(rp.to_be_bytes());
        let val = CtVal {
            last_seen_ns: seen_ns,
            state: TCP_ESTABLISHED,
            icmp_type: 0xff,
            ..Default::default()
        };
        dp.maps.insert_flow(&key, &val)?;
        flows.push((remote, rp));
    }
    Ok(flows)
}

/// A packet of the established flow from `(remote, port)`.
pub(crate) fn established_frame((remote, rp): (Ipv4Addr, u16)) -> Vec<u8> {
    let l4 = L4::Tcp {
        sport: rp,
        dport: 443,
        flags: TCP_ACK,
    };
    Spec::new(IpAddr::V4(remote), IpAddr::V4(LOCAL), l4).frame()
}

/// New flows from IPv4 peers at 1 to 10,000 rules, allowed (decision and
/// creation) and denied (the decision alone). The four policies are loaded side by side
/// and measured in turn over chunks of frames, so that each round's ratio
/// to the 1-rule policy compares runs made moments apart: the machine's
/// drift (up to 2x within an hour here) would otherwise decide the ratio.
fn new_flows(
    pin_dir: &Path,
    samples: usize,
    rng: &mut StdRng,
    out: &mut serde_json::Value,
) -> Result<()> {
    let counts: &[usize] = &[1, 100, 1_000, 10_000];
    struct Case {
        dp: Datapath,
        allowed: Vec<Vec<u8>>,
        denied: Vec<Vec<u8>>,
        memlock: u64,
    }
    let mut cases = Vec::new();
    for &n in counts {
        let dir = pin_dir.join(format!("new-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut dp = Datapath::load(1 << 20, &dir)?;
        dp.load_baseline()?;
        let memlock = |dp: &Datapath| -> u64 {
            POLICY_MAPS
                .iter()
                .map(|m| dp.maps.memlock(m).unwrap_or(0))
                .sum()
        };
        let before = memlock(&dp);
        let inbound = rules(n);
        dp.install("bench", 1, &compiled(&inbound, &[]))?;
        // IPv4 peers only: the 1-rule policy has one family, and an IPv6
        // packet costs more to parse and to key whatever the rules.
        let v4: Vec<&Flat> = inbound.iter().filter(|r| r.net.addr().is_ipv4()).collect();
        let allowed: Vec<Vec<u8>> = (0..samples)
            .map(|k| new_flow_frame(v4[rng.random_range(0..v4.len())], k, rng))
            .collect();
        // Denied packets of new flows: the decision alone, no flow created.
        // Peers drawn afresh: the allowed frames' entries, just looked up,
        // would still be in the cache.
        let denied = (0..samples)
            .map(|k| {
                let mut f = new_flow_frame(v4[rng.random_range(0..v4.len())], k, rng);
                deny(&mut f);
                f
            })
            .collect();
        let memlock = memlock(&dp) - before;
        cases.push(Case {
            dp,
            allowed,
            denied,
            memlock,
        });
    }
    // cost[case][round] = (allowed, denied, empty)
    let mut cost_of: Vec<Vec<(f64, f64, f64)>> = vec![vec![]; cases.len()];
    for round in 0..samples.div_ceil(CHUNK) {
        let at = round * CHUNK..((round + 1) * CHUNK).min(samples);
        for (c, case) in cases.iter().enumerate() {
            let a = cost(&case.dp, PROG_INGRESS, &case.allowed[at.clone()])?;
            let d = cost(&case.dp, PROG_INGRESS, &case.denied[at.clone()])?;
            let e = cost(&case.dp, PROG_PASS, &case.allowed[at.clone()])?;
            cost_of[c].push((a, d, e));
        }
    }
    let mut new_flow = vec![];
    for (c, case) in cases.iter().enumerate() {
        let n = counts[c];
        let created = case.dp.maps.flows(1).len();
        if created < samples / 2 {
            bail!(
                "only {created} of {samples} new flows were allowed at {n} rules: the generator and the policy disagree"
            );
        }
        let col = |f: fn(&(f64, f64, f64)) -> f64| median_f(cost_of[c].iter().map(f).collect());
        let (sg, denied, base) = (col(|x| x.0), col(|x| x.1), col(|x| x.2));
        // Per round, over the empty program, against the 1-rule policy.
        let ratio = |f: fn(&(f64, f64, f64)) -> f64| {
            let per_round: Vec<f64> = cost_of[c]
                .iter()
                .zip(&cost_of[0])
                .map(|(x, one)| (f(x) - x.2) / (f(one) - one.2).max(1.0))
                .collect();
            spread(per_round)
        };
        eprintln!(
            "micro: new flow, {n} rules: {sg:.0} ns allowed and created, {denied:.0} ns denied (empty program {base:.0} ns)"
        );
        new_flow.push(json!({
            "rules": n, "sg_ns": sg, "empty_ns": base, "over_empty_ns": sg - base,
            "denied_ns": denied, "denied_over_empty_ns": denied - base,
            "ratio_allowed": ratio(|x| x.0), "ratio_denied": ratio(|x| x.1),
            "rounds": cost_of[c].len(), "policy_memlock_bytes": case.memlock,
        }));
        if n == 10_000 {
            out["memory"]["bytes_per_rule"] = json!(case.memlock as f64 / n as f64);
        }
    }
    for case in cases {
        case.dp.stop();
    }
    out["new_flow"] = json!(new_flow);
    Ok(())
}

/// Frames per round of the interleaved measurements.
const CHUNK: usize = 500;

/// Median and the range of the middle 80 % of `v`.
pub(crate) fn spread(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"median": at(0.5), "lo": at(0.1), "hi": at(0.9)})
}

/// The first packet of a new flow that `r` allows, from a host in its block.
pub(crate) fn new_flow_frame(r: &Flat, k: usize, rng: &mut StdRng) -> Vec<u8> {
    let src = host_in(&r.net, rng);
    let dst: IpAddr = if src.is_ipv4() {
        IpAddr::V4(LOCAL)
    } else {
        "fd00::1".parse().expect("v6")
    };
    let sport = 1024 + (k % 60000) as u16;
    let l4 = match r.protocol {
        Protocol::Number(6) => L4::Tcp {
            sport,
            dport: r.lo,
            flags: TCP_SYN,
        },
        _ => L4::Udp { sport, dport: r.lo },
    };
    Spec::new(src, dst, l4).frame()
}

/// Turns a frame of `micro`'s new-flow set into one no rule allows: the
/// destination port becomes 1, below every generated range.
fn deny(frame: &mut [u8]) {
    let l4 = if frame[12..14] == [0x08, 0x00] {
        14 + 20
    } else {
        14 + 40
    };
    frame[l4 + 2..l4 + 4].copy_from_slice(&1u16.to_be_bytes());
}

pub(crate) fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// An address inside `net` (not the network address when there is room).
fn host_in(net: &IpNet, rng: &mut StdRng) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let size = 1u64 << (32 - n.prefix_len());
            let off = if size > 2 {
                rng.random_range(1..size - 1)
            } else {
                0
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + off as u32))
        }
        IpNet::V6(n) => {
            let bits = (128 - n.prefix_len()).min(32);
            let off = if bits > 1 {
                rng.random_range(1..(1u64 << bits) - 1)
            } else {
                0
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + off as u128))
        }
    }
}

/// Compiles and swaps a 10,000-rule policy in while a probe thread runs
/// packets that both policies allow and that both deny: any other verdict
/// during the swap would be a packet judged by a mix.
fn update(pin_dir: &Path) -> Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dp = Datapath::load(1 << 20, pin_dir)?;
    let target = bench_targets();
    let a = rules_ending_with(10_000, &target);
    let mut b = rules(10_001);
    b.remove(0);
    b.extend_from_slice(&target);
    dp.install("bench", 1, &compiled(&a, &[]))?;
    let prog_pin = pin_dir.join("probe-prog");
    dp.pin_program(PROG_INGRESS, &prog_pin)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (runs, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let probe = {
        let (stop, runs, wrong, pin) =
            (stop.clone(), runs.clone(), wrong.clone(), prog_pin.clone());
        std::thread::spawn(move || -> Result<()> {
            let prog = aya::programs::SchedClassifier::from_pin(&pin)?;
            let src: IpAddr = "10.77.0.1".parse()?;
            let mut sport = 1024u16;
            while !stop.load(Ordering::Relaxed) {
                sport = sport.wrapping_add(1).max(1024);
                // A new flow each time, so the policy (not the tracker) decides.
                let allowed =
                    Spec::new(src, IpAddr::V4(LOCAL), L4::Udp { sport, dport: 5353 }).frame();
                let denied =
                    Spec::new(src, IpAddr::V4(LOCAL), L4::Udp { sport, dport: 5354 }).frame();
                let (ra, _) = datapath::test_run(&prog, &allowed, 1)?;
                let (rd, _) = datapath::test_run(&prog, &denied, 1)?;
                runs.fetch_add(2, Ordering::Relaxed);
                if ra != 0 || rd != 2 {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let compiled = compiled(&b, &[]);
    let t1 = Instant::now();
    dp.install("bench", 1, &compiled)?;
    let t2 = Instant::now();
    dp.retire();
    let t3 = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    probe
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    let _ = std::fs::remove_file(&prog_pin);
    dp.stop();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let v = json!({
        "rules": 10_000,
        "compile_ms": ms(t1 - t0),
        "install_and_swap_ms": ms(t2 - t1),
        "change_to_enforcement_ms": ms(t2 - t0),
        "retire_old_ms": ms(t3 - t2),
        "probe_packets": runs.load(Ordering::Relaxed),
        "probes_judged_wrong": wrong.load(Ordering::Relaxed),
        "atomic": wrong.load(Ordering::Relaxed) == 0,
    });
    eprintln!("micro: update of a 10,000-rule policy: {v}");
    Ok(v)
}

/// Parsing and validating a file of 10,000 rules (200 groups of 50).
fn parse_validate_ms() -> Result<f64> {
    let mut text = String::from("quotas: {rules_per_group: 60}\nsecurity_groups:\n");
    for g in 0..200 {
        text.push_str(&format!("  - name: g{g}\n    ingress:\n"));
        for r in 0..50 {
            text.push_str(&format!(
                "      - {{ip_protocol: tcp, from_port: {p}, to_port: {p}, ip_ranges: [10.{g}.{r}.0/24]}}\n",
                p = 1000 + r
            ));
        }
    }
    let t = Instant::now();
    let d = sg_agent::source::file::parse("bench.yaml", &text, None, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let n: usize = d
        .groups
        .iter()
        .filter(|g| !g.is_default)
        .map(|g| g.ingress.len())
        .sum();
    if n != 10_000 {
        bail!("parsed {n} rules, not 10,000");
    }
    Ok(ms)
}
