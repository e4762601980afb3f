//! Flow creation under two-CPU contention: new flows created on one CPU
//! alone, then on both CPUs at once (each thread pinned to its CPU, each
//! creating its own flows), through the pinned program.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Barrier},
};

use anyhow::{Result, anyhow};
use nix::{sched::CpuSet, unistd::Pid};
use serde_json::json;
use sg_agent::datapath::{self, Datapath, PROG_INGRESS};
use sg_testkit::{
    frames::{L4, Spec, TCP_SYN},
    policies::rules_ending_with,
};

use crate::{compiled, micro::LOCAL};

/// Flows each thread creates per measurement.
const FLOWS: u16 = 20_000;

/// Median ns of creating `FLOWS` flows from source `net_octet`, one run
/// each, on `cpu`.
fn create(pin: &Path, cpu: usize, net_octet: u8, start: &Barrier) -> Result<f64> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)?;
    let prog = aya::programs::SchedClassifier::from_pin(pin)?;
    let src = IpAddr::from([10, 77, 0, net_octet]);
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let l4 = L4::Tcp {
                sport: 1024 + i,
                dport: 8000,
                flags: TCP_SYN,
            };
            Spec::new(src, IpAddr::V4(LOCAL), l4).frame()
        })
        .collect();
    start.wait();
    let mut ns = Vec::with_capacity(frames.len());
    for f in &frames {
        let (r, d) = datapath::test_run(&prog, f, 1)?;
        if r != 0 {
            return Err(anyhow!("a new flow of the contention bench was dropped"));
        }
        ns.push(d.as_nanos() as f64);
    }
    ns.sort_by(|a, b| a.total_cmp(b));
    Ok(ns[ns.len() / 2])
}

pub(crate) fn contention(pin_dir: &Path) -> Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dp = Datapath::load(1 << 18, pin_dir)?;
    dp.install(
        "bench",
        1,
        &compiled(&rules_ending_with(1_000, &crate::bench_targets()), &[]),
    )?;
    let pin = pin_dir.join("contention-prog");
    dp.pin_program(PROG_INGRESS, &pin)?;
    let alone = create(&pin, 0, 1, &Barrier::new(1))?;
    let both = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [(0usize, 2u8), (1, 3)]
        .into_iter()
        .map(|(cpu, octet)| {
            let (pin, both) = (pin.clone(), both.clone());
            std::thread::spawn(move || create(&pin, cpu, octet, &both))
        })
        .collect();
    let mut together = Vec::new();
    for t in threads {
        together.push(
            t.join()
                .map_err(|_| anyhow!("a contention thread panicked"))??,
        );
    }
    let contended = together.iter().copied().fold(0.0, f64::max);
    let _ = std::fs::remove_file(&pin);
    dp.stop();
    let v = json!({
        "flows_per_thread": FLOWS,
        "uncontended_ns": alone,
        "contended_ns": together,
        "ratio": contended / alone,
    });
    eprintln!("micro: flow creation under two-CPU contention: {v}");
    Ok(v)
}
