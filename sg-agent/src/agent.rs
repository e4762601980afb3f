//! The daemon: resolve interfaces, compile, install, attach; then follow the
//! configuration (file changes and SIGHUP) and sweep the tracking table until
//! told to stop.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    compile::{Compiled, compile, flatten},
    config::{Config, ConfigError, NetworkInterface},
    datapath::{Datapath, IfaceSpec},
};

/// How often idle flows are swept from the tracking table.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often the configuration file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

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

/// Makes the datapath enforce exactly `plans`: policies swapped in per
/// interface, new interfaces attached (after their policy is in place, so a
/// program never runs without one), interfaces no longer listed forgotten.
fn apply(dp: &mut Datapath, plans: &[Plan<'_>]) -> Result<()> {
    for p in plans {
        let spec = IfaceSpec {
            name: &p.iface.interface,
            ifindex: p.ifindex,
            attach: p.iface.attach,
            timeouts: p.iface.conntrack,
            related_icmp: p.iface.related_icmp,
        };
        dp.install(&spec, &p.compiled)?;
    }
    for p in plans {
        if !dp.is_attached(p.ifindex) {
            dp.attach(&p.iface.interface, p.ifindex)?;
            log::info!(
                "enforcing on {} (ifindex {}, {:?} side): groups {:?}",
                p.iface.interface,
                p.ifindex,
                p.iface.attach,
                p.iface.groups
            );
        }
    }
    let wanted: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
    for ifindex in dp.interfaces() {
        if !wanted.contains(&ifindex) {
            log::info!("no longer enforcing on ifindex {ifindex}");
            dp.forget(ifindex);
        }
    }
    dp.retire();
    Ok(())
}

/// The agent's view of its configuration file.
struct Source {
    path: PathBuf,
    file: String,
    text: String,
    max_flows: u32,
}

impl Source {
    /// Re-reads the file; applies it if it changed (or `force`). An invalid
    /// file is refused as a whole and the policy in force stays.
    fn reload(&mut self, dp: &mut Datapath, force: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                log::error!("{}: cannot read: {e}; the policy in force stays", self.file);
                return;
            }
        };
        if text == self.text && !force {
            return;
        }
        self.text = text;
        let cfg = match Config::parse(&self.file, &self.text) {
            Ok(c) => c,
            Err(e) => {
                log::error!("configuration rejected: {e}; the policy in force stays");
                return;
            }
        };
        if cfg.conntrack.max_flows != self.max_flows {
            log::warn!(
                "{}: conntrack.max_flows changed to {}; the table keeps {} until a restart",
                self.file,
                cfg.conntrack.max_flows,
                self.max_flows
            );
        }
        let plans = match plan(&self.file, &cfg) {
            Ok(p) => p,
            Err(e) => {
                log::error!("configuration rejected: {e}; the policy in force stays");
                return;
            }
        };
        match apply(dp, &plans) {
            Ok(()) => log::info!("configuration applied: {} interface(s)", plans.len()),
            Err(e) => log::error!("applying the configuration: {e:#}"),
        }
    }
}

pub async fn run(config: &Path, pin_dir: &Path) -> Result<()> {
    let file = config.display().to_string();
    let text = std::fs::read_to_string(config).with_context(|| format!("{file}: cannot read"))?;
    let cfg = Config::parse(&file, &text)?;
    let plans = plan(&file, &cfg)?;
    let mut dp = Datapath::load(cfg.conntrack.max_flows, pin_dir)?;
    apply(&mut dp, &plans)?;
    // What an earlier agent enforced and this configuration no longer lists.
    dp.collect_garbage(&plans.iter().map(|p| p.ifindex).collect());
    log::info!("sg-agent running with {} interface(s)", plans.len());
    let mut source = Source {
        path: config.to_path_buf(),
        file,
        text,
        max_flows: cfg.conntrack.max_flows,
    };

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sighup.recv() => { log::info!("SIGHUP: reloading {}", source.file); source.reload(&mut dp, true); }
            _ = watch.tick() => source.reload(&mut dp, false),
            _ = sweep.tick() => match dp.maps.sweep() {
                Ok(0) => {}
                Ok(n) => log::debug!("swept {n} idle flow(s)"),
                Err(e) => log::warn!("sweeping the tracking table: {e:#}"),
            },
        }
    }
    for st in dp.maps.stats().unwrap_or_default() {
        let [i, o] = st.dirs;
        log::info!(
            "ifindex {}: inbound {} accepted / {} rejected, outbound {} accepted / {} rejected",
            st.ifindex,
            i.accepted_packets,
            i.rejected_packets,
            o.accepted_packets,
            o.rejected_packets
        );
    }
    dp.stop();
    log::info!("detached; bye");
    Ok(())
}
