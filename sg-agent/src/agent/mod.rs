//! The daemon: validate, compile, install, attach; then follow the
//! configuration (inotify, `sg-agent apply`, SIGHUP) and the interfaces
//! (appearing, vanishing), and sweep the tracking table, until told to stop.
//!
//! Nothing the file does can widen what passes except a complete file: which
//! versions are taken is [`crate::reload`]'s rule, and an interface that
//! leaves the file keeps its last policy (it is *retained*) until the file
//! marks it `detached` or the operator runs `sg-agent detach`.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use tokio::sync::watch;

use crate::{
    api::{self, ApiOptions, Snapshot},
    compile::{Compiled, Compiler, members},
    control::{Reply, Request},
    datapath::{Change, Datapath, ifname},
    file,
    managed::{self, Managed},
    model::{Desired, Interface},
    reload::{self, Trigger},
    store::Store,
    widen::{self, Enforced},
};

/// How `sg-agent run` was asked to run.
pub struct RunOptions {
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub keep_on_exit: bool,
    /// The state lives in the state database and changes through the API;
    /// `config` only seeds an empty database.
    pub managed: bool,
    pub state: crate::store::StateAt,
    pub api: Option<ApiOptions>,
    /// Flow logs (docs/observe.md), checked before the start.
    pub flow_logs: Option<crate::flowlog::Settings>,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the console on this address (needs `api`: its keys sign in).
    pub console: Option<std::net::SocketAddr>,
}

mod calls;
mod follow;
mod run;

pub use follow::{Follow, follow};
pub use run::run;

/// How often idle flows are swept from the tracking table.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often replaced policy entries whose grace is over are removed.
const RETIRE_EVERY: Duration = Duration::from_millis(25);
/// How often the interfaces are checked for appearing and vanishing.
const IFACES_EVERY: Duration = Duration::from_millis(500);
/// A read of the file that takes longer is abandoned (a hung file system):
/// the loop goes on, the policy in force stays.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One interface's way down: the interface as configured, where it is, and
/// its compiled policy. What is in force is kept as the plan it came from.
#[derive(Clone, PartialEq)]
pub struct Plan {
    pub iface: Interface,
    pub ifindex: u32,
    pub compiled: Arc<Compiled>,
}

/// Compiles every interface of `d` that exists here and is not `detached`
/// (through `compiler`, which keeps what did not change); returns the plans
/// and the interfaces that do not exist. Touches nothing.
pub fn plan<'d>(d: &'d Desired, compiler: &mut Compiler) -> (Vec<Plan>, Vec<&'d Interface>) {
    let mut here = Vec::new();
    let mut absent = Vec::new();
    for iface in d.local().filter(|i| !i.detached) {
        match nix::net::if_::if_nametoindex(iface.name.as_str()) {
            Ok(ifindex) => here.push((iface, ifindex)),
            Err(_) => absent.push(iface),
        }
    }
    let compiled = compiler.compile(d, here.iter().map(|(i, _)| *i));
    let plans = (here.into_iter().zip(compiled))
        .map(|((iface, ifindex), compiled)| Plan {
            iface: iface.clone(),
            ifindex,
            compiled,
        })
        .collect();
    (plans, absent)
}

/// Reads and validates the configuration at `path`, off the event loop (the
/// read is bounded in size and time; see [`file::read_config`]). `trigger`
/// says whether this version may be taken (see [`reload::admit`]).
pub async fn load(
    path: &Path,
    trigger: Trigger,
    previous: Option<Desired>,
    enforced: Option<Enforced>,
) -> Result<Desired, String> {
    let shown = path.display().to_string();
    let path = path.to_path_buf();
    let name = shown.clone();
    let job = tokio::task::spawn_blocking(move || {
        let text = file::read_config_text(&path).map_err(|e| format!("{name}: {e}"))?;
        reload::take(
            trigger,
            &name,
            &text,
            path.parent(),
            previous.as_ref(),
            enforced.as_ref(),
        )
    });
    match tokio::time::timeout(READ_TIMEOUT, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("reading {shown}: {e}")),
        Err(_) => Err(format!(
            "{shown}: reading took more than {} s; abandoned",
            READ_TIMEOUT.as_secs()
        )),
    }
}

/// The agent: the datapath, the file it follows, and what is in force.
struct Agent {
    dp: Datapath,
    path: PathBuf,
    file: String,
    /// The last configuration taken.
    desired: Arc<Desired>,
    /// What each enforced interface lets through, for reporting widenings.
    enforced: Enforced,
    /// Interfaces the file lists, with what is installed for them.
    applied: HashMap<u32, Plan>,
    /// Interfaces enforced that the file does not list: they keep the policy
    /// they had (by ifindex, with their names).
    retained: HashMap<u32, String>,
    /// The last problem logged, so that a stuck file is reported once.
    last_problem: Option<String>,
    /// Managed mode: the state database (taken out while a change runs).
    managed: Option<Managed>,
    /// Whether the agent runs in managed mode (`managed` may be out).
    is_managed: bool,
    /// File mode: where reloads are recorded.
    audit: Option<Store>,
    /// What the API's reads see.
    publish: watch::Sender<Arc<Snapshot>>,
    /// Listed interfaces that are not here (reported when they go missing).
    absent: HashSet<String>,
    /// A fleet's live hosts, kept by the store's heartbeat (docs/fleet.md).
    heartbeats: Option<crate::store::etcd::Heartbeats>,
    /// An API change is being made: reads keep seeing the committed state.
    holding: bool,
    /// Each interface's compiled policy, kept while its inputs are.
    compiler: Compiler,
    /// The interfaces whose groups' members the datapath holds.
    committed: Option<Arc<[Interface]>>,
}

fn iface_exists(ifindex: u32) -> bool {
    ifname(ifindex).is_some()
}

impl Agent {
    /// Makes the datapath enforce `plans`: changed policies swapped in per
    /// interface, new interfaces attached (after their policy is in place, so
    /// a program never runs without one). Interfaces no longer planned are
    /// forgotten if they are gone or `detached`, and retained otherwise.
    fn apply(&mut self, plans: Vec<Plan>) -> Result<()> {
        let wanted: HashSet<u32> = plans.iter().map(|p| p.ifindex).collect();
        let fresh: Vec<&Plan> = plans
            .iter()
            .filter(|p| self.applied.get(&p.ifindex) != Some(*p))
            .collect();
        // One transaction for every changed interface and the members of
        // every group (which a plan does not carry: a member joining changes
        // the shared address map, not the interfaces' policies).
        let changes: Vec<Change> = fresh
            .iter()
            .map(|p| Change {
                name: &p.iface.name,
                ifindex: p.ifindex,
                compiled: &p.compiled,
            })
            .collect();
        // No policy changed and the members are those the datapath holds
        // (validation kept every interface): nothing to write, and the
        // address map of a fleet of thousands not computed again.
        let same_members =
            (self.committed.as_ref()).is_some_and(|c| Arc::ptr_eq(c, &self.desired.interfaces));
        if !changes.is_empty() || !same_members {
            let began = std::time::Instant::now();
            let writes = self.dp.commit(&changes, &members(&self.desired))?;
            log::debug!("policy change written: {writes:?}");
            let m = &crate::metrics::METRICS;
            m.policy_applies.inc();
            m.policy_apply_seconds
                .observe(began.elapsed().as_secs_f64());
            self.committed = Some(self.desired.interfaces.clone());
        }
        for p in &plans {
            self.retained.remove(&p.ifindex);
            self.applied.insert(p.ifindex, p.clone());
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
        let unplanned: Vec<(u32, String)> = self
            .applied
            .iter()
            .filter(|(i, _)| !wanted.contains(i))
            .map(|(i, a)| (*i, a.iface.name.clone()))
            .collect();
        for (ifindex, name) in unplanned {
            self.applied.remove(&ifindex);
            self.retained.insert(ifindex, name);
        }
        self.settle_retained();
        // Replaced entries go on the loop's next retire tick.
        Ok(())
    }

    /// Forgets retained interfaces that are gone or that the file detaches;
    /// reports the others.
    fn settle_retained(&mut self) {
        let detached: HashSet<String> = self
            .desired
            .local()
            .filter(|i| i.detached)
            .map(|i| i.name.clone())
            .collect();
        let mut forgot = false;
        for (ifindex, name) in self.retained.clone() {
            if !iface_exists(ifindex) {
                log::info!("no longer enforcing: {name} (ifindex {ifindex}) is gone");
            } else if detached.contains(&name) {
                log::warn!(
                    "detached {name} (ifindex {ifindex}), as {} says: its traffic is no longer filtered",
                    self.file
                );
            } else {
                continue;
            }
            self.forget_retained(ifindex, &name);
            forgot = true;
        }
        if forgot {
            self.dp.collect_garbage();
        }
    }

    /// Stops enforcing on a retained interface (its policy entries go at the
    /// next `collect_garbage`).
    fn forget_retained(&mut self, ifindex: u32, name: &str) {
        self.retained.remove(&ifindex);
        self.enforced.remove(name);
        self.dp.forget(ifindex);
    }

    fn retained_note(&self) -> Option<String> {
        if self.retained.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = self.retained.values().map(String::as_str).collect();
        names.sort();
        Some(format!(
            "not in {}, kept enforcing with their last policy: {} (to stop enforcing, mark an interface `detached: true` or run `sg-agent detach IFACE`)",
            self.file,
            names.join(", ")
        ))
    }

    /// Logs a problem with the file, once until it changes.
    fn problem(&mut self, level: log::Level, msg: String) -> Reply {
        crate::metrics::METRICS.reload_errors.inc();
        if self.last_problem.as_ref() != Some(&msg) {
            log::log!(level, "{msg}; the policy in force stays");
            self.last_problem = Some(msg.clone());
        }
        Reply {
            ok: false,
            message: format!("{msg}; the policy in force stays"),
        }
    }

    /// Looks at the file after `trigger`; takes it if it is complete and
    /// valid. Anything else leaves the policy in force as it is.
    async fn refresh(&mut self, trigger: Trigger) -> Reply {
        let (previous, enforced) = ((*self.desired).clone(), self.enforced.clone());
        let d = match load(&self.path, trigger, Some(previous), Some(enforced)).await {
            Ok(d) => d,
            Err(e) => {
                let level = if e.contains("not taken") {
                    log::Level::Warn
                } else {
                    log::Level::Error
                };
                return self.problem(level, format!("configuration rejected: {e}"));
            }
        };
        self.last_problem = None;
        for w in &d.warnings {
            log::warn!("{w}");
        }
        if d == *self.desired && trigger != Trigger::Apply {
            return Reply {
                ok: true,
                message: "unchanged".into(),
            };
        }
        let changed = managed::changes(&self.desired, &d);
        let reply = self.adopt(Arc::new(d), "configuration applied", true);
        if reply.ok
            && let Some(store) = &mut self.audit
        {
            let ev = api::audit::reload(&self.file, &managed::summary(&changed), changed);
            if let Err(e) = store.append(&[ev]) {
                log::error!("recording the reload in the audit trail: {e:#}");
            }
        }
        reply
    }

    /// Enforces `d` in place of what is in force, reporting what it widens
    /// when `report` (an API call's change is what it says, and in the
    /// audit trail: the pairwise comparison is not worth its milliseconds).
    fn adopt(&mut self, d: Arc<Desired>, what: &str, report: bool) -> Reply {
        let after = widen::after(&self.enforced, &d);
        let wider = if report {
            widen::widenings(&self.enforced, &after)
        } else {
            vec![]
        };
        if !wider.is_empty() {
            log::warn!(
                "{}: this change widens what passes:\n  {}",
                self.file,
                wider.join("\n  ")
            );
        }
        if d.conntrack.max_flows != self.desired.conntrack.max_flows {
            log::warn!(
                "{}: conntrack.max_flows changed to {}; the table keeps its size until a restart",
                self.file,
                d.conntrack.max_flows
            );
        }
        self.desired = d;
        self.enforced = after;
        self.reconcile(what)
    }

    fn reconcile(&mut self, what: &str) -> Reply {
        let desired = self.desired.clone();
        let (plans, absent) = plan(&desired, &mut self.compiler);
        let absent: HashSet<String> = absent.iter().map(|a| a.name.clone()).collect();
        // Said once per absence, not at every change of the state.
        for a in absent.difference(&self.absent) {
            log::warn!("interface {a} is not here; it is enforced when it appears");
        }
        self.absent = absent;
        let n = plans.len();
        let result = self.apply(plans);
        if let Some(note) = self.retained_note() {
            log::warn!("{note}");
        }
        self.publish();
        match result {
            Ok(()) => {
                let msg = format!("{what}: enforcing on {n} interface(s)");
                log::info!("{msg}");
                Reply {
                    ok: true,
                    message: msg,
                }
            }
            Err(e) => {
                log::error!("applying the configuration: {e:#}");
                Reply {
                    ok: false,
                    message: format!("applying the configuration: {e:#}"),
                }
            }
        }
    }

    /// Re-applies when listed interfaces appeared, vanished or were
    /// recreated, or a retained one went away.
    fn check_interfaces(&mut self) {
        let present: HashSet<u32> = self
            .desired
            .local()
            .filter(|i| !i.detached)
            .filter_map(|i| nix::net::if_::if_nametoindex(i.name.as_str()).ok())
            .collect();
        let applied: HashSet<u32> = self.applied.keys().copied().collect();
        if present != applied || self.retained.keys().any(|i| !iface_exists(*i)) {
            self.reconcile("interfaces changed");
        }
    }

    /// `sg-agent detach IFACE`: stops enforcing on an interface the file
    /// does not list.
    fn detach(&mut self, name: &str) -> Reply {
        let fail = |message: String| Reply { ok: false, message };
        if self.desired.local().any(|i| i.name == name && !i.detached) {
            return fail(format!(
                "{name} is listed in {}: remove it there (or mark it `detached: true`) first, or the agent would enforce it again",
                self.file
            ));
        }
        let Some(ifindex) = self
            .retained
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(i, _)| *i)
        else {
            return fail(format!("sg-agent does not enforce on {name}"));
        };
        self.forget_retained(ifindex, name);
        self.dp.retire();
        self.dp.collect_garbage();
        let msg = format!("detached {name} (ifindex {ifindex}): its traffic is no longer filtered");
        log::warn!("{msg}, as the operator asked");
        Reply {
            ok: true,
            message: msg,
        }
    }

    /// `sg-agent check` against the running agent: what `path` would change.
    async fn check(&self, path: &Path) -> Reply {
        match load(path, Trigger::Apply, Some((*self.desired).clone()), None).await {
            Err(e) => Reply {
                ok: false,
                message: e,
            },
            Ok(d) => {
                let wider = widen::widenings(&self.enforced, &widen::after(&self.enforced, &d));
                let mut message = if wider.is_empty() {
                    "against the policy in force, it widens nothing".to_string()
                } else {
                    format!(
                        "against the policy in force, it would widen what passes:\n  {}",
                        wider.join("\n  ")
                    )
                };
                let kept: Vec<&str> = self
                    .enforced
                    .keys()
                    .filter(|n| !d.local().any(|i| &i.name == *n))
                    .map(String::as_str)
                    .collect();
                if !kept.is_empty() {
                    message.push_str(&format!(
                        "\n  not in the file, kept as they are: {}",
                        kept.join(", ")
                    ));
                }
                Reply { ok: true, message }
            }
        }
    }

    async fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Apply if self.is_managed => Reply {
                ok: false,
                message: format!(
                    "the agent's state is {}: give the file to apply (`sg-agent apply -f FILE`)",
                    self.file
                ),
            },
            Request::Apply => {
                log::info!("sg-agent apply: reloading {}", self.file);
                self.refresh(Trigger::Apply).await
            }
            Request::ApplyFile { path } => self.apply_file(&path),
            Request::Detach { interface } => self.detach(&interface),
            Request::Check { path } => self.check(&path).await,
        }
    }
}
