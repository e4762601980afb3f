//! What flow logs add to a packet, through `BPF_PROG_TEST_RUN`: the plain
//! and the reporting ingress programs on the same maps at 10,000 rules,
//! alternated over chunks of frames, for a packet of an established flow
//! (the counting) and for a new flow's first packet (the counting and the
//! flow-start event). The end-to-end rates of `cargo xtask bench
//! --flow-logs` swing more between rounds than this cost; this is the cost
//! itself.

use std::path::Path;

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sg_agent::{
    compile::Flat,
    datapath::{Datapath, PROG_INGRESS},
};
use sg_common::names::PROG_INGRESS_LOG;
use sg_testkit::policies::rules;

use crate::{
    compiled,
    micro::{
        cost, established_frame, median_f, new_flow_frame, spread, track_established, warm_cost,
    },
};

const RULES: usize = 10_000;
const FLOWS: usize = 1_000;
/// Frames per round: what `warm_cost` takes of a set.
const CHUNK: usize = 200;

pub(crate) fn flow_log_cost(pin_dir: &Path, samples: usize) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(11);
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dp = Datapath::load(1 << 16, pin_dir)?;
    dp.load_programs([PROG_INGRESS_LOG])?;
    let inbound = rules(RULES);
    dp.install("bench", 1, &compiled(&inbound, &[]))?;

    let flows = track_established(&mut dp, FLOWS, &mut rng)?;
    let established: Vec<Vec<u8>> = (0..samples)
        .map(|_| established_frame(flows[rng.random_range(0..flows.len())]))
        .collect();
    for prog in [PROG_INGRESS, PROG_INGRESS_LOG] {
        if dp.test_run_named(prog, &established[0], 1)?.0 != 0 {
            bail!("{prog} dropped an established flow's packet in the benchmark");
        }
    }
    // A packet of a busy flow: its entry warm.
    let mut est = Vec::new();
    for chunk in established.chunks(CHUNK) {
        est.push((
            warm_cost(&dp, PROG_INGRESS, chunk)?,
            warm_cost(&dp, PROG_INGRESS_LOG, chunk)?,
        ));
    }

    // New flows: each frame once, the plain and the reporting program on
    // frames of distinct flows (a flow the one created would be an
    // established flow to the other).
    let v4: Vec<&Flat> = inbound.iter().filter(|r| r.net.addr().is_ipv4()).collect();
    let fresh: Vec<Vec<u8>> = (0..2 * samples)
        .map(|k| new_flow_frame(v4[rng.random_range(0..v4.len())], k, &mut rng))
        .collect();
    let mut new = Vec::new();
    for pair in fresh.chunks(2 * CHUNK) {
        let (plain, logged) = pair.split_at(pair.len() / 2);
        new.push((
            cost(&dp, PROG_INGRESS, plain)?,
            cost(&dp, PROG_INGRESS_LOG, logged)?,
        ));
    }
    let created = dp.maps.flows(1).len() - FLOWS;
    if created < samples {
        bail!("only {created} of {} new flows were created", 2 * samples);
    }
    dp.stop();
    let summary = |v: &[(f64, f64)]| {
        json!({
            "plain_ns": median_f(v.iter().map(|x| x.0).collect()),
            "reporting_ns": median_f(v.iter().map(|x| x.1).collect()),
            "added_ns": spread(v.iter().map(|x| x.1 - x.0).collect()),
            "rounds": v.len(),
        })
    };
    Ok(json!({"rules": RULES, "established": summary(&est), "new_flow": summary(&new)}))
}
