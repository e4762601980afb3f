//! `sg-agent run`: the start (the state, the datapath, what an earlier
//! agent left), the event loop, and the stop.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use super::{
    Agent, IFACES_EVERY, RETIRE_EVERY, RunOptions, SWEEP_EVERY, follow::open_when_reachable, load,
    plan,
};
use crate::{
    api::{self, Snapshot},
    compile::Compiler,
    control,
    datapath::{Datapath, Programs, ifname},
    flowlog::{self, FlowLogs},
    managed::Managed,
    metrics,
    reload::Trigger,
    store::{StateAt, Store},
    watch::{Change, Watch},
    widen::{self, Enforced},
};

/// Most API changes made in one commit.
const API_BATCH: usize = 64;

/// How long a batch waits for the calls it expects (see [`Batcher`]).
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Gathers API changes into batches made as one commit (group commit: one
/// enforcement and one transaction for the batch, which at thousands of
/// rules cost more than the calls themselves). A batch is the first call
/// and those waiting behind it; when the last batch held several calls
/// (several clients at once, each waiting for its answer), it also waits
/// up to [`BATCH_WAIT`] for as many, since their next calls are on their
/// way. A lone client's calls never wait.
pub(super) struct Batcher {
    last: usize,
    wait: std::time::Duration,
}

impl Default for Batcher {
    fn default() -> Batcher {
        Batcher {
            last: 0,
            wait: BATCH_WAIT,
        }
    }
}

impl Batcher {
    pub(super) async fn gather(
        &mut self,
        first: api::Call,
        rx: &mut mpsc::Receiver<api::Call>,
    ) -> Vec<api::Call> {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.wait;
        while batch.len() < API_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) if batch.len() < self.last => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(c)) => batch.push(c),
                        _ => break,
                    }
                }
                Err(_) => break,
            }
        }
        self.last = batch.len();
        batch
    }
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let (config, pin_dir) = (opts.config.as_path(), opts.pin_dir.as_path());
    let pinned = pin_dir.join(sg_common::names::IFACES).exists();
    // A fleet's agent restarted while etcd is away: it keeps what its pins
    // enforce and takes the state when etcd answers (docs/fleet.md).
    let mut reopen = None;
    let (desired, managed, file) = if opts.managed {
        match Managed::open(&opts.state, config) {
            Ok(m) => {
                let file = format!("the managed state {}", m.store.describe());
                (m.desired.clone(), Some(m), file)
            }
            Err(e) if pinned && let StateAt::Etcd(etcd) = &opts.state => {
                log::error!(
                    "{e:#}: enforcing what the pins hold until the store answers, then its state"
                );
                let (tx, rx) = oneshot::channel();
                let (at, seed) = (opts.state.clone(), config.to_path_buf());
                tokio::spawn(async move {
                    let _ = tx.send(open_when_reachable(&at, &seed).await);
                });
                reopen = Some(rx);
                let file = format!("the managed state {}", etcd.describe());
                (Arc::default(), None, file)
            }
            Err(e) => return Err(e),
        }
    } else {
        // Started where an earlier agent's pins enforce (a crash, a restart
        // by the service manager), the file is not the operator's say-so.
        let trigger = if pinned {
            Trigger::Restart
        } else {
            Trigger::Apply
        };
        let d = load(config, trigger, None, None)
            .await
            .map_err(anyhow::Error::msg)?;
        (Arc::new(d), None, config.display().to_string())
    };
    log::debug!("state taken from {file}");
    // File mode records its reloads; managed mode records in its store.
    // In file mode the trail is a record, not the state: a state directory
    // that cannot be written (a full disk) does not stop enforcement.
    let audit = if opts.managed {
        None
    } else {
        match Store::open(&opts.state) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("the audit trail is unavailable, reloads will not be recorded: {e:#}");
                None
            }
        }
    };
    for w in &desired.warnings {
        log::warn!("{w}");
    }
    let mut compiler = Compiler::default();
    let (plans, absent) = plan(&desired, &mut compiler);
    // At start an absent interface is most likely a typo: refuse, unless the
    // configuration says it may come later.
    let missing: Vec<String> = absent
        .iter()
        .filter(|i| !i.optional)
        .map(|i| format!("{file}: network interface {:?}: no such interface here (set `optional: true` if it comes later)", i.name))
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
    // Takes the pin directory's lock: from here on this agent owns it.
    let progs = Programs::new(opts.flow_logs.is_some());
    let dp = Datapath::load_with(desired.conntrack.max_flows, pin_dir, progs)?;
    log::debug!("datapath loaded at {}", pin_dir.display());
    let mut calls = control::serve(pin_dir)?;
    // Managed, the file only seeds: it is never watched.
    let (mut watch, mut store_changes) = if opts.managed {
        (None, managed.as_ref().and_then(Managed::watch))
    } else {
        (Some(Watch::new(config)?), None)
    };
    // What an earlier agent enforced that this file does not list is kept.
    let listed: HashSet<&str> = desired.local().map(|i| i.name.as_str()).collect();
    let mut retained = HashMap::new();
    let mut enforced: Enforced = widen::policies(&desired)
        .into_iter()
        .map(|(n, p)| (n, Some(p)))
        .collect();
    for ifindex in dp.maps.iface_cfgs().into_keys() {
        if let Some(name) = ifname(ifindex) {
            let detached = desired.local().any(|i| i.name == name && i.detached);
            if !listed.contains(name.as_str()) || detached {
                if !detached {
                    enforced.insert(name.clone(), None);
                }
                retained.insert(ifindex, name);
            }
        }
    }
    let heartbeats = managed
        .as_ref()
        .and_then(|m| m.heartbeat(true, opts.api.is_some()));
    let (publish, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let mut agent = Agent {
        dp,
        path: config.to_path_buf(),
        file,
        desired: desired.clone(),
        enforced,
        applied: HashMap::new(),
        retained,
        last_problem: None,
        is_managed: opts.managed,
        managed,
        audit,
        publish,
        absent: absent.iter().map(|a| a.name.clone()).collect(),
        heartbeats,
        holding: false,
        compiler,
        committed: None,
    };
    agent.apply(plans)?;
    if let Some(note) = agent.retained_note() {
        log::warn!("{note}");
    }
    agent.dp.collect_garbage();
    agent.publish();
    // An earlier agent may have left the datapath reporting flows.
    let flow_logs = match opts.flow_logs {
        Some(s) => Some(FlowLogs::start(pin_dir, s, snapshot.clone())?),
        None => {
            flowlog::disable(pin_dir)?;
            None
        }
    };
    let max_flows = agent.desired.conntrack.max_flows as u64;
    if let Some(listen) = opts.metrics {
        metrics::serve(listen, pin_dir.to_path_buf(), snapshot.clone(), max_flows).await?;
    }
    if let Some(listen) = opts.console {
        let keys = opts
            .api
            .as_ref()
            .map(|a| a.credentials.clone())
            .context("--console needs --api: the API's access keys sign in to it")?;
        crate::console::serve(
            listen,
            keys,
            snapshot.clone(),
            pin_dir.to_path_buf(),
            max_flows,
        )
        .await?;
    }
    let (api_tx, mut api_calls) = mpsc::channel::<api::Call>(64);
    // The API records into the store: while it has not been reached, the
    // API waits for it too.
    let mut api_opts = opts.api;
    if reopen.is_none()
        && let Some(a) = api_opts.take()
    {
        api::serve(
            a,
            snapshot.clone(),
            api_tx.clone(),
            Store::open(&opts.state)?,
        )
        .await?;
    }
    log::info!(
        "sg-agent running with {} interface(s)",
        agent.applied.len() + agent.retained.len()
    );
    // Under systemd (Type=notify): started means enforcing. Elsewhere a no-op.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {e}");
    }

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut ifaces = tokio::time::interval(IFACES_EVERY);
    let mut retire = tokio::time::interval(RETIRE_EVERY);
    let mut batcher = Batcher::default();
    loop {
        let file_change = async {
            match &mut watch {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sighup.recv() => {
                if agent.is_managed {
                    log::info!("SIGHUP: nothing to reload in managed mode (use `sg-agent apply -f FILE`)");
                } else {
                    log::info!("SIGHUP: reloading {}", agent.file);
                    agent.refresh(Trigger::Apply).await;
                }
            }
            change = file_change => match change {
                Ok(Change::Content(t)) => { agent.refresh(t).await; }
                Ok(Change::Removed) => {
                    let msg = format!("{}: deleted or renamed away", agent.file);
                    agent.problem(log::Level::Warn, msg);
                }
                Err(e) => log::error!("watching {}: {e:#}", agent.file),
            },
            Some((req, reply)) = calls.recv() => {
                let r = agent.handle(req).await;
                let _ = reply.send(r);
            }
            Some(seen) = async {
                match &mut store_changes {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => agent.take_stored(seen),
            Ok(m) = async {
                match &mut reopen {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            } => {
                reopen = None;
                store_changes = m.watch();
                agent.reconnected(m, api_opts.is_some());
                if let Some(a) = api_opts.take() {
                    let served = match Store::open(&opts.state) {
                        Ok(audit) => api::serve(a, snapshot.clone(), api_tx.clone(), audit).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        log::error!("the API could not be served: {e:#}");
                    }
                }
            }
            Some(call) = api_calls.recv() => {
                let calls = batcher.gather(call, &mut api_calls).await;
                agent.api(calls)
            }
            _ = ifaces.tick() => agent.check_interfaces(),
            _ = retire.tick(), if agent.dp.retiring() => { agent.dp.retire_expired(); }
            _ = sweep.tick() => match agent.dp.maps.sweep() {
                Ok(0) => {}
                Ok(n) => log::debug!("swept {n} idle flow(s)"),
                Err(e) => log::warn!("sweeping the tracking table: {e:#}"),
            },
        }
    }
    if let Some(f) = flow_logs {
        f.stop().await;
    }
    stop(agent, pin_dir, opts.keep_on_exit);
    Ok(())
}

fn stop(agent: Agent, pin_dir: &Path, keep_on_exit: bool) {
    let mut names: HashMap<u32, String> = agent
        .applied
        .iter()
        .map(|(i, a)| (*i, a.iface.name.clone()))
        .collect();
    names.extend(agent.retained.clone());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call() -> api::Call {
        api::Call {
            action: "AuthorizeSecurityGroupIngress".into(),
            scope: api::views::Scope {
                account: "123456789012".into(),
                region: "us-east-1".into(),
            },
            dry_run: false,
            change: Box::new(|_| unreachable!("not made here")),
            record: api::audit::Draft {
                time: String::new(),
                name: String::new(),
                source: String::new(),
                region: String::new(),
                source_ip: String::new(),
                user_agent: String::new(),
                access_key: None,
                user_arn: None,
                request_id: String::new(),
                parameters: serde_json::Value::Null,
                read_only: false,
            },
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    /// A lone client's call goes at once; after a batch of several, the
    /// next waits (a bounded while) for as many, taking those that come.
    #[tokio::test]
    async fn a_batch_waits_only_for_the_calls_concurrent_clients_have_on_their_way() {
        let (tx, mut rx) = mpsc::channel(64);
        // A long wait, so that a slow machine cannot make a call late.
        let wait = Duration::from_secs(2);
        let mut b = Batcher { last: 0, wait };
        // Clients are other threads (the API server's), as here.
        let late = |tx: mpsc::Sender<api::Call>, after: u64| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(after));
                let _ = tx.blocking_send(call());
            })
        };
        // Alone: a call just behind is the next batch's.
        let began = std::time::Instant::now();
        let next = late(tx.clone(), 50);
        assert_eq!(b.gather(call(), &mut rx).await.len(), 1);
        assert!(began.elapsed() < wait / 2);
        next.join().unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(b.gather(first, &mut rx).await.len(), 1);
        // Three at once, then: the next batch waits for the two behind.
        for _ in 0..2 {
            tx.send(call()).await.unwrap();
        }
        assert_eq!(b.gather(call(), &mut rx).await.len(), 3);
        let (x, y) = (late(tx.clone(), 20), late(tx.clone(), 60));
        assert_eq!(b.gather(call(), &mut rx).await.len(), 3);
        x.join().unwrap();
        y.join().unwrap();
        // Clients that stopped cost one bounded wait, and are forgotten.
        b.wait = Duration::from_millis(30);
        let began = std::time::Instant::now();
        assert_eq!(b.gather(call(), &mut rx).await.len(), 1);
        assert!(began.elapsed() >= b.wait);
        b.wait = wait;
        let began = std::time::Instant::now();
        assert_eq!(b.gather(call(), &mut rx).await.len(), 1);
        assert!(began.elapsed() < wait / 2);
    }
}
