//! The daemon: validate, compile, install, attach; then follow the
//! configuration (file changes and SIGHUP) and the interfaces (appearing,
//! vanishing), and sweep the tracking table, until told to stop.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    compile::{Compiled, compile, interface_rules},
    config::{self, Desired, Interface},
    datapath::{Datapath, IfaceSpec},
};

/// How often idle flows are swept from the tracking table.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often the configuration file and the interfaces are checked.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The compiled policy of one present interface.
pub struct Plan<'a> {
    pub iface: &'a Interface,
    pub ifindex: u32,
    pub compiled: Compiled,
}

/// Compiles every interface of `d` that exists here; returns the plans and
/// the names of the interfaces that do not exist. Touches nothing.
pub fn plan(d: &Desired) -> (Vec<Plan<'_>>, Vec<&Interface>) {
    let mut plans = Vec::new();
    let mut absent = Vec::new();
    for iface in &d.interfaces {
        match nix::net::if_::if_nametoindex(iface.name.as_str()) {
            Ok(ifindex) => {
                let (inbound, outbound) = interface_rules(d, iface);
                plans.push(Plan {
                    iface,
                    ifindex,
                    compiled: compile(&inbound, &outbound),
                });
            }
            Err(_) => absent.push(iface),
        }
    }
    (plans, absent)
}

/// What is installed for one interface, to skip reinstalling it unchanged.
#[derive(PartialEq)]
struct Applied {
    compiled: Compiled,
    iface: Interface,
}

/// The agent: the datapath, the file it follows, and what is in force.
struct Agent {
    dp: Datapath,
    path: PathBuf,
    file: String,
    text: String,
    desired: Desired,
    applied: HashMap<u32, Applied>,
    /// The file could not be read at the last check.
    unreadable: bool,
}

impl Agent {
    /// Makes the datapath enforce `plans`: changed policies swapped in per
    /// interface, new interfaces attached (after their policy is in place, so
    /// a program never runs without one), interfaces gone forgotten.
    fn apply(&mut self, plans: Vec<Plan<'_>>) -> Result<()> {
        let wanted: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
        let mut fresh = Vec::new();
        for p in &plans {
            let next = Applied {
                compiled: p.compiled.clone(),
                iface: p.iface.clone(),
            };
            if self.applied.get(&p.ifindex) == Some(&next) {
                continue;
            }
            let spec = IfaceSpec {
                name: &p.iface.name,
                ifindex: p.ifindex,
                attach: p.iface.attach,
                timeouts: p.iface.timeouts,
                related_icmp: p.iface.related_icmp,
            };
            self.dp.install(&spec, &p.compiled)?;
            self.applied.insert(p.ifindex, next);
            fresh.push(p);
        }
        for p in fresh {
            if self.dp.attached_hook(p.ifindex) != Some(p.iface.ingress_hook) {
                self.dp
                    .attach(&p.iface.name, p.ifindex, p.iface.ingress_hook)?;
                let names: Vec<String> = p
                    .iface
                    .groups
                    .iter()
                    .filter_map(|g| self.desired.group(g))
                    .map(|g| g.name.clone())
                    .collect();
                log::info!(
                    "enforcing on {} ({}, ifindex {}, {:?} side, ingress at {:?}): groups {names:?}",
                    p.iface.name,
                    p.iface.id,
                    p.ifindex,
                    p.iface.attach,
                    p.iface.ingress_hook
                );
            }
        }
        let gone: Vec<u32> = self
            .applied
            .keys()
            .filter(|i| !wanted.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            log::info!("no longer enforcing on ifindex {ifindex}");
            self.applied.remove(&ifindex);
            self.dp.forget(ifindex);
        }
        self.dp.retire();
        Ok(())
    }

    /// Re-reads the file if it changed (or `force`), and re-applies when the
    /// configuration or the set of present interfaces changed. An invalid
    /// file is refused as a whole and the policy in force stays.
    fn refresh(&mut self, force: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => {
                self.unreadable = false;
                t
            }
            Err(e) => {
                // Once, not at every check.
                if !std::mem::replace(&mut self.unreadable, true) {
                    log::error!("{}: cannot read: {e}; the policy in force stays", self.file);
                }
                return;
            }
        };
        if text != self.text || force {
            self.text = text;
            match config::parse(
                &self.file,
                &self.text,
                self.path.parent(),
                Some(&self.desired),
            ) {
                Ok(d) => {
                    for w in &d.warnings {
                        log::warn!("{w}");
                    }
                    if d.conntrack.max_flows != self.desired.conntrack.max_flows {
                        log::warn!(
                            "{}: conntrack.max_flows changed to {}; the table keeps its size until a restart",
                            self.file,
                            d.conntrack.max_flows
                        );
                    }
                    self.desired = d;
                    self.reconcile("configuration applied");
                }
                Err(e) => log::error!("configuration rejected; the policy in force stays. {e}"),
            }
            return;
        }
        // Interfaces that appeared, vanished or were recreated.
        let present: HashSet<u32> = self
            .desired
            .interfaces
            .iter()
            .filter_map(|i| nix::net::if_::if_nametoindex(i.name.as_str()).ok())
            .collect();
        let applied: HashSet<u32> = self.applied.keys().copied().collect();
        if present != applied {
            self.reconcile("interfaces changed");
        }
    }

    fn reconcile(&mut self, what: &str) {
        let desired = self.desired.clone();
        let (plans, absent) = plan(&desired);
        for a in absent {
            log::warn!(
                "interface {} ({}) is not here; it is enforced when it appears",
                a.name,
                a.id
            );
        }
        let n = plans.len();
        match self.apply(plans) {
            Ok(()) => log::info!("{what}: enforcing on {n} interface(s)"),
            Err(e) => log::error!("applying the configuration: {e:#}"),
        }
    }
}

pub async fn run(config: &Path, pin_dir: &Path, keep_on_exit: bool) -> Result<()> {
    let file = config.display().to_string();
    let text = std::fs::read_to_string(config).with_context(|| format!("{file}: cannot read"))?;
    let desired = config::parse(&file, &text, config.parent(), None)?;
    for w in &desired.warnings {
        log::warn!("{w}");
    }
    let (plans, absent) = plan(&desired);
    // At start an absent interface is most likely a typo: refuse, unless the
    // configuration says it may come later.
    let missing: Vec<String> = absent
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.optional)
        .map(|(_, i)| format!("{file}: network interface {:?}: no such interface here (set `optional: true` if it comes later)", i.name))
        .collect();
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    for a in &absent {
        log::warn!(
            "interface {} ({}) is not here; it is enforced when it appears",
            a.name,
            a.id
        );
    }
    let dp = Datapath::load(desired.conntrack.max_flows, pin_dir)?;
    let plans: Vec<Plan<'_>> = plans;
    let keep: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
    let mut agent = Agent {
        dp,
        path: config.to_path_buf(),
        file,
        text,
        desired: desired.clone(),
        applied: HashMap::new(),
        unreadable: false,
    };
    agent.apply(plans)?;
    // What an earlier agent enforced and this configuration no longer lists.
    agent.dp.collect_garbage(&keep);
    log::info!("sg-agent running with {} interface(s)", agent.applied.len());

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sighup.recv() => { log::info!("SIGHUP: reloading {}", agent.file); agent.refresh(true); }
            _ = watch.tick() => agent.refresh(false),
            _ = sweep.tick() => match agent.dp.maps.sweep() {
                Ok(0) => {}
                Ok(n) => log::debug!("swept {n} idle flow(s)"),
                Err(e) => log::warn!("sweeping the tracking table: {e:#}"),
            },
        }
    }
    let names: HashMap<u32, String> = agent
        .applied
        .iter()
        .map(|(i, a)| (*i, a.iface.name.clone()))
        .collect();
    for st in agent.dp.maps.stats().unwrap_or_default() {
        let [i, o] = st.dirs;
        log::info!(
            "{}: inbound {} accepted / {} rejected, outbound {} accepted / {} rejected",
            names
                .get(&st.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("ifindex {}", st.ifindex)),
            i.accepted_packets,
            i.rejected_packets,
            o.accepted_packets,
            o.rejected_packets
        );
    }
    if keep_on_exit {
        // The pinned links hold the programs, the pins hold the maps: the
        // datapath keeps enforcing this policy until the next agent adopts it.
        log::info!(
            "leaving the datapath enforcing from {}; bye",
            pin_dir.display()
        );
    } else {
        agent.dp.stop();
        log::info!("detached; bye");
    }
    Ok(())
}
