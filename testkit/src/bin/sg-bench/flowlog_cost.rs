//! What flow logs add to a packet, through `BPF_PROG_TEST_RUN`: the plain
//! and the reporting ingress programs on the same maps at 10,000 rules,
//! alternated over chunks of frames, for a packet of an established flow
//! (the counting) and for a new flow's first packet (the counting and the
//! flow-start event). The end-to-end rates of `cargo xtask bench
//! --flow-logs` swing more between rounds than this cost; this is the cost
//! itself.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sg_agent::{
    compile::Flat,
    datapath::{self, Datapath, PROG_INGRESS},
};
use sg_common::{CtKey, CtVal, FAMILY_V4, TCP_ESTABLISHED, names::PROG_INGRESS_LOG};
use sg_testkit::{
    frames::{L4, Spec, TCP_ACK},
    policies::rules,
};

use crate::{
    compiled,
    micro::{LOCAL, cost, median_f, new_flow_frame, spread},
};

const RULES: usize = 10_000;
const FLOWS: usize = 1_000;
const CHUNK: usize = 250;

pub(crate) fn flow_log_cost(pin_dir: &Path, samples: usize) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(11);
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dp = Datapath::load(1 << 16, pin_dir)?;
    dp.load_programs([PROG_INGRESS_LOG])?;
    let inbound = rules(RULES);
    dp.install("bench", 1, &compiled(&inbound, &[]))?;

    let established = established_frames(&mut dp, samples, &mut rng)?;
    for prog in [PROG_INGRESS, PROG_INGRESS_LOG] {
        if dp.test_run_named(prog, &established[0], 1)?.0 != 0 {
            bail!("{prog} dropped an established flow's packet in the benchmark");
        }
    }
    // A packet of a busy flow: its entry warm (64 runs in a row).
    let warm = |prog: &str, chunk: &[Vec<u8>]| -> Result<f64> {
        let mut ns = Vec::with_capacity(chunk.len());
        for f in chunk {
            ns.push(dp.test_run_named(prog, f, 64)?.1.as_nanos() as f64);
        }
        Ok(median_f(ns))
    };
    let mut est = Vec::new();
    for chunk in established.chunks(CHUNK) {
        est.push((warm(PROG_INGRESS, chunk)?, warm(PROG_INGRESS_LOG, chunk)?));
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

/// `samples` frames of [`FLOWS`] established TCP flows, the flows entered
/// in the tracking table.
fn established_frames(dp: &mut Datapath, samples: usize, rng: &mut StdRng) -> Result<Vec<Vec<u8>>> {
    // A second ago: the datapath's coarse clock may trail this one by a
    // tick, and a flow seen "later" than now is stale to it.
    let now = datapath::flow_clock_ns() - 1_000_000_000;
    let mut flows = Vec::with_capacity(FLOWS);
    let mut seen = HashSet::new();
    while flows.len() < FLOWS {
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
            last_seen_ns: now,
            state: TCP_ESTABLISHED,
            icmp_type: 0xff,
            ..Default::default()
        };
        dp.maps.insert_flow(&key, &val)?;
        flows.push((remote, rp));
    }
    Ok((0..samples)
        .map(|_| {
            let (remote, rp) = flows[rng.random_range(0..flows.len())];
            let l4 = L4::Tcp {
                sport: rp,
                dport: 443,
                flags: TCP_ACK,
            };
            Spec::new(IpAddr::V4(remote), IpAddr::V4(LOCAL), l4).frame()
        })
        .collect())
}
