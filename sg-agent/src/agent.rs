//! The daemon: resolve interfaces, compile, install, attach, then keep the
//! tracking table swept until told to stop.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    compile::{Compiled, compile, flatten},
    config::{Config, ConfigError, NetworkInterface},
    datapath::{Datapath, IfaceSpec},
};

/// How often idle flows are swept from the tracking table.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The compiled policy of one interface, ready to install.
pub struct Plan<'a> {
    pub iface: &'a NetworkInterface,
    pub ifindex: u32,
    pub compiled: Compiled,
}

/// Resolves and compiles every interface of `cfg`; touches nothing in the
/// kernel, so an error here leaves whatever is in force alone.
pub fn plan<'a>(file: &str, cfg: &'a Config) -> Result<Vec<Plan<'a>>, ConfigError> {
    let mut out = Vec::new();
    for (i, n) in cfg.network_interfaces.iter().enumerate() {
        let ifindex =
            nix::net::if_::if_nametoindex(n.interface.as_str()).map_err(|e| ConfigError {
                file: file.into(),
                place: format!("network_interfaces[{i}] ({:?})", n.interface),
                what: format!("no network interface {:?} here: {e}", n.interface),
            })?;
        let groups: Vec<_> = n.groups.iter().filter_map(|g| cfg.group(g)).collect();
        let inbound = flatten(groups.iter().flat_map(|g| g.ingress.iter()));
        let egress: Vec<_> = groups.iter().flat_map(|g| g.egress_rules()).collect();
        let outbound = flatten(egress.iter());
        out.push(Plan {
            iface: n,
            ifindex,
            compiled: compile(&inbound, &outbound),
        });
    }
    Ok(out)
}

pub async fn run(config: &Path) -> Result<()> {
    let file = config.display().to_string();
    let cfg = Config::load(config)?;
    let plans = plan(&file, &cfg)?;
    let mut dp = Datapath::load(cfg.conntrack.max_flows)?;
    // Policy first, programs second: a program never runs on an interface
    // whose policy is not in place (it would fail closed meanwhile).
    for p in &plans {
        let spec = IfaceSpec {
            name: &p.iface.interface,
            ifindex: p.ifindex,
            attach: p.iface.attach,
            timeouts: p.iface.conntrack,
        };
        dp.install(&spec, &p.compiled)?;
    }
    for p in &plans {
        dp.attach(&p.iface.interface, p.ifindex)?;
        log::info!(
            "enforcing on {} (ifindex {}, {:?} side): groups {:?}",
            p.iface.interface,
            p.ifindex,
            p.iface.attach,
            p.iface.groups
        );
    }
    log::info!("sg-agent running with {} interface(s)", plans.len());

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sweep.tick() => match dp.sweep() {
                Ok(0) => {}
                Ok(n) => log::debug!("swept {n} idle flow(s)"),
                Err(e) => log::warn!("sweeping the tracking table: {e:#}"),
            },
        }
    }
    for p in &plans {
        if let Ok([i, o]) = dp.stats(p.ifindex) {
            log::info!(
                "{}: inbound {} accepted / {} rejected, outbound {} accepted / {} rejected",
                p.iface.interface,
                i.accepted_packets,
                i.rejected_packets,
                o.accepted_packets,
                o.rejected_packets
            );
        }
    }
    dp.detach_all();
    log::info!("detached; bye");
    Ok(())
}
