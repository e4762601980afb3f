//! The managed state in etcd, for a fleet (docs/fleet.md): the objects of
//! [`super::rows`] under `{prefix}/v1/objects/{kind}/{id}`, the settings at
//! `{prefix}/v1/settings`, and the audit trail under
//! `{prefix}/v1/events/{time}/{eventID}`. Every commit is one etcd
//! transaction guarded by `{prefix}/v1/generation`, which each commit
//! rewrites: a writer whose view is older than the last commit (another API
//! server won the race) changes nothing and is told so ([`Conflict`]).
//!
//! etcd's client is asynchronous; the store keeps a runtime of its own and
//! waits on it, so that the agent uses both backends alike.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use foldhash::{HashMap, HashMapExt};
use serde_json::value::RawValue;

use super::{
    Event, EventFilter,
    rows::{self, Row, Write},
};
use crate::model::input::RawConfig;

mod follow;
mod heartbeat;

pub use heartbeat::Heartbeats;

/// Where the state lives in etcd, and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct EtcdAt {
    pub endpoints: Vec<String>,
    /// Keys live under `{prefix}/v1/`.
    pub prefix: String,
    /// etcd authentication: user and password.
    pub user: Option<(String, String)>,
    /// TLS: the CA that signs the servers, and this client's certificate
    /// and key (PEM), if the cluster asks for one.
    pub ca: Option<String>,
    pub identity: Option<(String, String)>,
}

impl EtcdAt {
    /// `etcd://h1:2379,h2:2379[/prefix]`.
    pub fn parse(url: &str) -> Result<EtcdAt> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            bail!("--state {url:?}: expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]");
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{}", p.trim_matches('/'))),
            None => (rest, "/sg".to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| h.to_string())
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|h| !h.contains(':')) {
            bail!("--state {url:?}: each etcd endpoint is HOST:PORT");
        }
        Ok(EtcdAt {
            endpoints,
            prefix,
            ..Default::default()
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/v1/{rest}", self.prefix)
    }

    pub fn describe(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// A commit refused because the state changed since this writer last saw
/// it: nothing of it was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "the state in etcd changed since this agent read it (another writer's change came first); nothing was written"
)]
pub struct Conflict;

pub struct Etcd {
    at: EtcdAt,
    /// One client per member: requests go to one member, and to the next
    /// when it cannot be reached (etcd's own client pins one endpoint too).
    clients: Vec<Client>,
    pinned: AtomicUsize,
    rt: Runtime,
    /// The generation key's revision in the state last read or written:
    /// what a commit requires it still to be.
    base: i64,
    /// Each stored object's place at `base` (the revision that created it,
    /// then its place among those its commit created: `[seq, body]` is
    /// what a value holds), so that a state comes back in its own order
    /// and an object rewritten keeps its place. The objects themselves are
    /// the follower's copy of the state (`follow`), not kept twice.
    places: HashMap<String, (i64, u64)>,
    /// Where the follower's copy holds each group and interface, once
    /// looked for (`follow::Index`); dropped when the copy is replaced.
    index: Option<follow::Index>,
    /// A commit could not be taken in place: the next one reads the whole
    /// state, so that the copy never misses a commit.
    broken: bool,
}

/// What a watch tells the store's follower.
#[derive(Debug)]
pub enum Watched {
    /// One commit's changes to objects and settings, in order: each key
    /// with its new value and creation revision, or `None` when deleted.
    Commit {
        revision: i64,
        changes: Vec<(String, Option<(String, i64)>)>,
    },
    /// Changes were lost (etcd compacted past the watch): read it all.
    Reread,
}

/// The largest answer taken from etcd (a whole state's read): gRPC's
/// default of 4 MiB is a few thousand interfaces.
const MAX_MESSAGE: usize = 1 << 30;

/// How long a call to etcd may take before the store reports it down.
const TIMEOUT: Duration = Duration::from_secs(3);

impl Etcd {
    pub fn open(at: &EtcdAt) -> Result<Etcd> {
        let rt = Runtime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sg-etcd")
                .enable_all()
                .build()?,
        ));
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), TIMEOUT);
        if let Some((u, p)) = &at.user {
            // etcd's tokens expire, and die with a restarted member: a
            // client whose token is refused signs in again.
            opts = opts.with_user(u, p).with_auto_token_refresh(true);
        }
        if at.ca.is_some() || at.identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &at.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &at.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(tls);
        }
        // Connections are made at the first request: a member that is down
        // now is tried when the others fail.
        let clients = at
            .endpoints
            .iter()
            .map(|e| block(&rt, Client::connect([e], Some(opts.clone()))))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("connecting to etcd at {}", at.endpoints.join(",")))?;
        Ok(Etcd {
            at: at.clone(),
            clients,
            pinned: AtomicUsize::new(0),
            rt,
            base: 0,
            places: HashMap::new(),
            index: None,
            broken: false,
        })
    }

    pub fn describe(&self) -> String {
        self.at.describe()
    }

    /// The state, or `None` when none was ever committed; read at one
    /// revision, which later commits are guarded against.
    pub fn load(&mut self) -> Result<Option<RawConfig>> {
        let (generation, objects, settings) = (
            self.at.key("generation"),
            self.at.key("objects/"),
            self.at.key("settings"),
        );
        let txn = Txn::new().and_then([
            TxnOp::get(generation, None),
            TxnOp::get(objects.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(settings, None),
        ]);
        let resp = self.txn(&txn).context("reading the state from etcd")?;
        let gets: Vec<_> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        let [generation, objects_resp, settings] = gets.as_slice() else {
            bail!("etcd answered a read of three ranges with {}", gets.len());
        };
        let settings = match settings.kvs().first() {
            Some(kv) => Some(kv.value_str()?.to_string()),
            None => None,
        };
        let mut places = HashMap::with_capacity(objects_resp.kvs().len());
        let mut rows = Vec::with_capacity(objects_resp.kvs().len());
        for kv in objects_resp.kvs() {
            let key = kv.key_str()?;
            let (at, row) = self.parse(key, kv.value_str()?, kv.create_revision())?;
            places.insert(key.to_string(), at);
            rows.push((at, row));
        }
        // The state held, in the order objects were first written (as the
        // SQLite store keeps them).
        rows.sort_by_key(|(at, _)| *at);
        let raw = match &settings {
            Some(s) => Some(rows::assemble_rows(s, rows.into_iter().map(|(_, r)| r))?),
            None => None,
        };
        self.base = generation.kvs().first().map_or(0, |kv| kv.mod_revision());
        self.places = places;
        self.index = None;
        self.broken = false;
        Ok(raw)
    }

    /// The object stored at `key` (created at `created`), and its place.
    fn parse(&self, key: &str, value: &str, created: i64) -> Result<((i64, u64), Row)> {
        let (kind, id) = self.kind_id(key)?;
        let (seq, body): (u64, &RawValue) =
            serde_json::from_str(value).with_context(|| format!("the stored object {key}"))?;
        Ok(((created, seq), Row::parse(kind, id, body.get())?))
    }

    /// The kind and id of an object's key.
    fn kind_id<'k>(&self, key: &'k str) -> Result<(&'k str, &'k str)> {
        let objects = self.at.key("objects/");
        key.strip_prefix(objects.as_str())
            .and_then(|k| k.split_once('/'))
            .with_context(|| format!("an etcd key {key:?} that is not an object's"))
    }

    /// Writes the change from `before` to `after` and its audit records in
    /// one transaction, if no other commit came since this store's last
    /// read or write; otherwise [`Conflict`].
    pub fn commit(
        &mut self,
        before: Option<&RawConfig>,
        after: &RawConfig,
        events: &[Event],
    ) -> Result<()> {
        let mut ops = Vec::new();
        // Each object's place once committed (`None`: deleted).
        let mut written = Vec::new();
        for (i, w) in rows::writes(before, after)?.into_iter().enumerate() {
            ops.push(match w {
                Write::Put { kind, id, body } => {
                    let key = self.at.key(&format!("objects/{kind}/{id}"));
                    // An object rewritten keeps its place.
                    let (created, seq) = self.places.get(&key).copied().unwrap_or((0, i as u64));
                    let value = format!("[{seq},{body}]");
                    written.push((key.clone(), Some((created, seq))));
                    TxnOp::put(key, value, None)
                }
                Write::Delete { kind, id } => {
                    let key = self.at.key(&format!("objects/{kind}/{id}"));
                    written.push((key.clone(), None));
                    TxnOp::delete(key, None)
                }
            });
        }
        let settings = rows::settings(after)?;
        ops.push(TxnOp::put(self.at.key("settings"), settings, None));
        ops.push(TxnOp::put(self.at.key("generation"), "", None));
        for e in events {
            ops.push(self.event_op(e)?);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.at.key("generation"),
                CompareOp::Equal,
                self.base,
            )])
            .and_then(ops);
        let resp = self.txn(&txn).context("committing to etcd")?;
        if !resp.succeeded() {
            return Err(Conflict.into());
        }
        let revision = resp.header().map_or(self.base, |h| h.revision());
        for (key, value) in written {
            match value {
                // New objects were created by this revision.
                Some((created, seq)) => {
                    let created = if created == 0 { revision } else { created };
                    self.places.insert(key, (created, seq));
                }
                None => {
                    self.places.remove(&key);
                }
            }
        }
        self.base = revision;
        // The caller's copy is now `after`.
        self.index = None;
        self.broken = false;
        Ok(())
    }

    fn event_op(&self, e: &Event) -> Result<TxnOp> {
        let id = e.record["eventID"].as_str().unwrap_or_default();
        let body = serde_json::to_string(e)?;
        Ok(TxnOp::put(
            self.at.key(&format!("events/{}/{id}", e.time)),
            body,
            None,
        ))
    }

    /// Records events that change nothing (refused calls, reads).
    pub fn append(&mut self, events: &[Event]) -> Result<()> {
        let ops = events
            .iter()
            .map(|e| self.event_op(e))
            .collect::<Result<Vec<_>>>()?;
        self.txn(&Txn::new().and_then(ops))
            .context("writing the audit trail to etcd")?;
        Ok(())
    }

    /// The records matching `f`, oldest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<serde_json::Value>> {
        let prefix = self.at.key("events/");
        let resp = self
            .txn(&Txn::new().and_then([TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))]))
            .context("reading the audit trail from etcd")?;
        let mut out = Vec::new();
        let gets = resp.op_responses();
        let kvs = gets.iter().flat_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs(),
            _ => &[],
        });
        for kv in kvs {
            let e: Event = serde_json::from_str(kv.value_str()?)?;
            if f.matches(&e.time, &e.name, e.access_key.as_deref(), &e.resources) {
                out.push(e.record);
            }
        }
        let skip = out.len().saturating_sub(f.max);
        Ok(out.split_off(skip))
    }

    /// Tells `changed` of every commit after this store's last read or
    /// write, from a watch that resumes where it stopped when etcd goes away
    /// and comes back; after a compaction it asks for a re-read.
    pub fn watch(&self, changed: tokio::sync::mpsc::Sender<Watched>) {
        // Objects and settings, and nothing else (heartbeats, the trail):
        // every commit writes the settings after its objects, so a
        // commit's changes are complete at its settings.
        let clients = self.clients.clone();
        let (from, settings) = (self.at.key("objects/"), self.at.key("settings"));
        let to = format!("{settings}\0");
        let mut pinned = self.pinned.load(Ordering::Relaxed);
        let mut next = self.base + 1;
        self.rt.spawn(async move {
            // Quick at first (another member is likely up), then every
            // second.
            let mut pause = Duration::from_millis(100);
            let mut changes = Vec::new();
            loop {
                let opts = WatchOptions::new()
                    .with_start_revision(next)
                    .with_range(to.clone());
                let mut client = clients[pinned % clients.len()]
                    .watch_client()
                    .max_decoding_message_size(MAX_MESSAGE);
                // A commit seen in part is seen again from its start.
                changes.clear();
                match client.watch(from.clone(), Some(opts)).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(resp)) if resp.compact_revision() > 0 => {
                                // Changes lost to compaction: re-read it
                                // all, and watch on from then.
                                log::warn!(
                                    "etcd compacted past this agent's watch; re-reading the state"
                                );
                                next = resp.compact_revision();
                                changes.clear();
                                if changed.send(Watched::Reread).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Some(resp)) => {
                                pause = Duration::from_millis(100);
                                for ev in resp.events() {
                                    let Some(kv) = ev.kv() else { continue };
                                    let key = kv.key_str().unwrap_or_default().to_string();
                                    let value = match ev.event_type() {
                                        EventType::Put => Some((
                                            kv.value_str().unwrap_or_default().to_string(),
                                            kv.create_revision(),
                                        )),
                                        EventType::Delete => None,
                                    };
                                    let end = key == settings;
                                    changes.push((key, value));
                                    if end {
                                        let revision = kv.mod_revision();
                                        next = revision + 1;
                                        let changes = std::mem::take(&mut changes);
                                        let w = Watched::Commit { revision, changes };
                                        if changed.send(w).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                log::warn!("watching etcd: {e}; resuming");
                                break;
                            }
                        }
                    },
                    Err(e) => log::warn!("watching etcd: {e}; retrying"),
                }
                // The member went away, or never answered: the next one.
                pinned += 1;
                tokio::time::sleep(pause).await;
                // At most a second between tries: an agent cut off catches
                // up within about a second of its link's return (a resync
                // after compaction is due within 2 s, docs/fleet.md).
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }
}

impl Etcd {
    /// Runs `txn` on the pinned member, and on the next while the one asked
    /// could not be reached (a request that never arrived changed nothing),
    /// up to twice round the members.
    fn txn(&self, txn: &Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let n = self.clients.len();
        let mut tries = 2 * n;
        loop {
            let at = self.pinned.load(Ordering::Relaxed) % n;
            let mut kv = self.clients[at]
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE);
            let txn = txn.clone();
            match block(&self.rt, async move { kv.txn(txn).await }) {
                Err(e) if tries > 1 && unreachable(&e) => {
                    tries -= 1;
                    log::debug!("etcd {}: {e}; trying another member", self.at.endpoints[at]);
                    self.pinned.store(at + 1, Ordering::Relaxed);
                }
                r => return r,
            }
        }
    }
}

/// The request did not reach a member (the connection was refused or is
/// gone), or the member did not answer in time (killed mid-request, or
/// waiting for an election after the leader went): another member may.
/// Trying again is safe for every request this store makes: reads, puts
/// of keys of their own (audit records), and commits guarded by the
/// generation's revision, which, if the first try did apply, fail as a
/// `Conflict` rather than apply twice (the watch then brings the change).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// The store's own runtime. It may be dropped inside the agent's (a store
/// that could not be opened, a follower's end), where a runtime's usual
/// drop, which waits for its threads, is not allowed: its tasks are left to
/// end with the process instead.
struct Runtime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Runtime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the runtime lives until dropped")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Waits for `f` on `rt`, from inside another runtime's worker or not.
fn block<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| rt.block_on(f)),
        Err(_) => rt.block_on(f),
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;
    use etcd_client::Error;
    use tonic::Status;

    /// What is tried on another member: a member that is gone or did not
    /// answer in time; never a refusal, which every member would repeat.
    #[test]
    fn a_member_gone_or_late_is_tried_again_a_refusal_is_not() {
        assert!(unreachable(&Error::GRpcStatus(Status::unavailable("gone"))));
        assert!(unreachable(&Error::GRpcStatus(Status::cancelled(
            "Timeout expired"
        ))));
        assert!(unreachable(&Error::GRpcStatus(Status::deadline_exceeded(
            "late"
        ))));
        assert!(!unreachable(&Error::GRpcStatus(Status::permission_denied(
            "no"
        ))));
        assert!(!unreachable(&Error::GRpcStatus(Status::invalid_argument(
            "bad"
        ))));
        assert!(!unreachable(&Error::InvalidArgs("bad".into())));
    }
}
