//! Followers of a fleet's state that load no program (docs/fleet.md):
//! `sg-agent api`, which serves the EC2 API and enforces nothing, and
//! `sg-agent run --watch-only`, which computes what its host would enforce
//! (each local interface's compiled policy and the shared address map) and
//! stops short of the kernel: a host's share of a fleet's work, so that a
//! fleet of hundreds can be measured on one machine.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    api::{self, ApiOptions, Snapshot},
    compile::{Compiled, Compiler, address_map, members},
    managed::Managed,
    model::{Desired, Interface},
    store::{StateAt, Store},
};

/// Which follower.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// `sg-agent api`: the API, nothing computed for any host.
    Api,
    /// `sg-agent run --watch-only`: this host's share computed, heartbeat
    /// written, nothing loaded.
    WatchOnly,
}

/// How long to wait before trying an unreachable store again.
const RETRY: Duration = Duration::from_secs(1);

/// Opens the managed state, trying again every [`RETRY`] while it cannot
/// be opened (etcd away, an invalid state), saying so once per reason.
pub async fn open_when_reachable(at: &StateAt, seed: &Path) -> Managed {
    let mut said = String::new();
    loop {
        let (at, seed) = (at.clone(), seed.to_path_buf());
        match tokio::task::spawn_blocking(move || Managed::open(&at, &seed)).await {
            Ok(Ok(opened)) => return opened,
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                if e != said {
                    log::error!("opening the state: {e}; trying again every {RETRY:?}");
                    said = e;
                }
            }
            Err(e) => log::error!("opening the state: {e}"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// What a follower keeps.
struct Follower {
    role: Follow,
    managed: Managed,
    desired: Arc<Desired>,
    publish: watch::Sender<Arc<Snapshot>>,
    heartbeats: Option<crate::store::etcd::Heartbeats>,
    source: String,
    compiler: Compiler,
    /// What the address map was last computed from, and its size.
    computed: Option<Computed>,
}

struct Computed {
    interfaces: Arc<[Interface]>,
    compiled: Vec<Arc<Compiled>>,
    blocks: usize,
}

impl Follower {
    /// What this host would write for `d`: every local interface's policy
    /// (kept while its inputs are) and the address map of all of them
    /// (computed again, and dropped, unless its inputs are those of the
    /// last: as an enforcing agent writes, docs/fleet.md).
    fn compute(&mut self, d: &Desired) -> (usize, usize) {
        if self.role == Follow::Api {
            return (0, 0);
        }
        let compiled = self.compiler.compile(d, d.local().filter(|i| !i.detached));
        let n = compiled.len();
        if let Some(c) = &self.computed
            && Arc::ptr_eq(&c.interfaces, &d.interfaces)
            && c.compiled.len() == n
            && c.compiled
                .iter()
                .zip(&compiled)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return (n, c.blocks);
        }
        // Each atom once, as the datapath gathers them.
        let atoms: std::collections::BTreeSet<_> = (compiled.iter())
            .flat_map(|c| c.dirs.iter())
            .flat_map(|p| p.atoms())
            .collect();
        let blocks = address_map(atoms, &members(d)).len();
        self.computed = Some(Computed {
            interfaces: d.interfaces.clone(),
            compiled,
            blocks,
        });
        (n, blocks)
    }
}

impl Follower {
    /// Takes `d` as the state this follower follows.
    fn take(&mut self, d: Arc<Desired>, what: &str) {
        let t = std::time::Instant::now();
        let (ifaces, blocks) = self.compute(&d);
        self.desired = d;
        self.publish();
        match self.role {
            Follow::Api => log::info!("{what}: serving it"),
            Follow::WatchOnly => log::info!(
                "{what}: computed {ifaces} interface(s), {blocks} address block(s) in {:.1} ms (watch-only: nothing loaded)",
                t.elapsed().as_secs_f64() * 1e3
            ),
        }
    }

    fn publish(&self) {
        self.publish.send_replace(Arc::new(Snapshot {
            desired: self.desired.clone(),
            managed: true,
            source: self.source.clone(),
            enforced: Default::default(),
            group_xml: Default::default(),
            heartbeats: self.heartbeats.clone(),
        }));
    }

    fn refresh(&mut self, seen: crate::store::Watched) {
        let reread = matches!(seen, crate::store::Watched::Reread);
        let t = std::time::Instant::now();
        let mut taken = None;
        let r = self.managed.refresh(seen, &mut |d| {
            taken = Some(d);
            Ok(())
        });
        match (r, taken) {
            (Ok(Some(what)), Some(d)) => self.take(d, &format!("took the store's change: {what}")),
            (Ok(_), _) => {}
            (Err(e), _) => log::error!("{e}"),
        }
        if reread {
            log::info!(
                "re-read the whole state in {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    fn api(&mut self, calls: Vec<api::Call>) {
        let mut taken = None;
        let answers = self.managed.execute(calls, &mut |d| {
            taken = Some(d);
            Ok(())
        });
        if let Some(d) = taken
            && !answers.is_empty()
        {
            self.take(d, "API change committed");
        }
        for (reply, resp) in answers {
            let _ = reply.send(Ok(resp));
        }
    }
}

/// Follows the state at `at` (seeded from `seed` when empty) as `role`
/// says, serving `api` when given, until SIGINT or SIGTERM.
pub async fn follow(
    at: &StateAt,
    seed: &Path,
    role: Follow,
    api: Option<ApiOptions>,
) -> Result<()> {
    let managed = open_when_reachable(at, seed).await;
    let desired = managed.desired.clone();
    let source = format!("the managed state {}", managed.store.describe());
    let mut changes = managed
        .watch()
        .context("a follower needs a fleet's store")?;
    let heartbeats = managed.heartbeat(role == Follow::WatchOnly, api.is_some());
    let (publish, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let mut f = Follower {
        role,
        managed,
        desired: Arc::default(),
        publish,
        heartbeats,
        source,
        compiler: Compiler::default(),
        computed: None,
    };
    f.take(desired, "state taken");
    let (api_tx, mut api_calls) = mpsc::channel::<api::Call>(64);
    if let Some(a) = api {
        api::serve(a, snapshot, api_tx, Store::open(at)?).await?;
    }
    match role {
        Follow::Api => log::info!("sg-agent running: serving the API, enforcing nothing"),
        Follow::WatchOnly => log::info!("sg-agent running watch-only: no program loaded"),
    }
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {e}");
    }
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut batcher = super::run::Batcher::default();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some(seen) = changes.recv() => f.refresh(seen),
            Some(call) = api_calls.recv() => {
                let calls = batcher.gather(call, &mut api_calls).await;
                f.api(calls)
            }
        }
    }
    log::info!("stopping; bye");
    Ok(())
}
