//! Managed mode: the desired state lives in the state database and changes
//! through the EC2 API (or `sg-agent apply -f FILE`). A change is validated,
//! enforced, then committed with its audit record, and only then answered;
//! if enforcing or committing fails, the previous state is enforced again
//! and the call fails. A crash before the commit leaves the previous state,
//! which the next start enforces: nothing acknowledged is lost, nothing
//! unacknowledged stays.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{
    api::{
        Call, Txn,
        error::{ApiError, ApiResult},
        server_dry_run,
    },
    model::{
        Desired, Prior, Since, Touched, canonical::canonical, input::RawConfig, validate,
        validate_from,
    },
    source,
    store::{Event, StateAt, Store, Watched},
};

/// Where a call's answer goes.
pub type Reply = tokio::sync::oneshot::Sender<ApiResult<Value>>;

/// What enforces a state: the agent's datapath, or a follower's
/// computation.
pub type Enforce<'a> = dyn FnMut(Arc<Desired>) -> Result<(), String> + 'a;

pub struct Managed {
    pub store: Store,
    /// The committed state, in canonical input form: in a fleet, the
    /// store's latest, patched with each commit the watch sees.
    pub raw: RawConfig,
    /// The state in force: `raw` validated, unless `pending`. The next
    /// change is validated from it.
    pub desired: Arc<Desired>,
    /// What `raw` has had changed since `desired` was validated from it
    /// (a fleet's store moved on to a state that did not validate, or
    /// could not be enforced): `None` when `desired` is `raw` validated.
    pending: Option<Touched>,
}

struct Stored;

impl crate::model::Locate for Stored {
    fn locate(&self, _: usize, path: &str) -> (String, Option<usize>) {
        (format!("the stored state: {path}"), None)
    }
}

/// The managed state at `at`, read only (for reports).
pub fn stored(at: &StateAt) -> Result<Desired> {
    if let StateAt::Dir(dir) = at
        && !dir.join(crate::store::DB_FILE).exists()
    {
        anyhow::bail!(
            "{}: no managed state here (is this the agent's --state-dir?)",
            dir.display()
        );
    }
    let mut store = Store::open(at)?;
    let raw = store
        .load()?
        .with_context(|| format!("{}: no state was ever stored", store.describe()))?;
    validate(&raw, &Stored, None)
        .map_err(|e| anyhow::anyhow!("{}: the stored state is invalid:\n{e}", store.describe()))
}

impl Managed {
    /// Opens the state in `dir`. A database without state is seeded from
    /// `seed` when that file exists, and otherwise starts as EC2 does: a
    /// default VPC with its default group.
    pub fn open(at: &StateAt, seed: &Path) -> Result<Managed> {
        let mut store = Store::open(at)?;
        let valid = |store: &Store, raw: RawConfig| {
            let d = validate(&raw, &Stored, None).map_err(|e| {
                anyhow::anyhow!("{}: the stored state is invalid:\n{e}", store.describe())
            })?;
            anyhow::Ok((raw, d))
        };
        let (raw, desired) = match store.load()? {
            Some(raw) => valid(&store, raw)?,
            None => {
                let d = if seed.exists() {
                    log::info!(
                        "managed state: seeding {} from {}",
                        store.describe(),
                        seed.display()
                    );
                    source::file::load(seed, None)?
                } else {
                    log::info!(
                        "managed state: starting {} with a default VPC",
                        store.describe()
                    );
                    validate(&RawConfig::default(), &Stored, None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                };
                let raw = canonical(&d);
                let ev = crate::api::audit::reload(
                    &seed.display().to_string(),
                    "seeded the managed state",
                    Value::Null,
                );
                match store.commit(None, &raw, &[ev]) {
                    Ok(()) => (raw, d),
                    // Another host's agent seeded the fleet's store first:
                    // its state is the one.
                    Err(e) if e.is::<crate::store::Conflict>() => {
                        log::info!(
                            "{}: another agent seeded the state first; taking it",
                            store.describe()
                        );
                        let raw = store.load()?.context("the state seeded by another agent")?;
                        valid(&store, raw)?
                    }
                    Err(e) => return Err(e.context("storing the first state")),
                }
            }
        };
        Ok(Managed {
            store,
            raw,
            desired: Arc::new(desired),
            pending: None,
        })
    }

    /// Makes a batch of API changes, one after the other as if each came
    /// alone, each on the state the previous left; then enforces and
    /// commits the result once, with every call's audit record (group
    /// commit: one transaction and one swap for the batch), and only then
    /// answers. If enforcing or committing fails, every change of the batch
    /// fails and the previous state is enforced again. The answers of the
    /// changes made are returned, for the caller to send once reads show
    /// the committed state.
    pub fn execute(&mut self, calls: Vec<Call>, enforce: &mut Enforce) -> Vec<(Reply, Value)> {
        let before = self.desired.clone();
        // The batch's state so far, once a call changed it (whole-state
        // copies cost milliseconds at thousands of rules).
        let mut state: Option<Desired> = None;
        let mut raw: Option<RawConfig> = None;
        let mut events = Vec::new();
        let mut accepted = Vec::new();
        for call in calls {
            let Call {
                dry_run,
                change,
                record,
                reply,
                scope,
                ..
            } = call;
            let start = raw.as_ref().unwrap_or(&self.raw);
            // Validated from the state before unless that is not `start`
            // validated (the store's latest did not validate).
            let validated = raw.is_some() || self.pending.is_none();
            let mut txn = Txn {
                raw: start.clone(),
                prior: validated.then_some(start),
                before: state.as_ref().unwrap_or(&before),
                scope,
                resources: vec![],
                canonical: false,
            };
            let outcome = change(&mut txn);
            let resources = std::mem::take(&mut txn.resources);
            match outcome {
                Ok((resp, after)) if !dry_run => {
                    events.push(record.finish(Ok(&resp), resources.clone()));
                    // Written out again only when the change did not
                    // keep it canonical (at thousands of rules, that costs
                    // more than the change).
                    let next = if txn.canonical {
                        txn.raw
                    } else {
                        canonical(&after)
                    };
                    raw = Some(next);
                    state = Some(after);
                    accepted.push((reply, resp, record, resources));
                }
                outcome => {
                    let e = match outcome {
                        Ok(_) => server_dry_run(),
                        Err(e) => e,
                    };
                    events.push(record.finish(Err(&e), resources));
                    let _ = reply.send(Err(e));
                }
            }
        }
        let (Some(state), Some(raw)) = (state, raw) else {
            if let Err(err) = self.store.append(&events) {
                log::error!("writing the audit trail: {err:#}");
            }
            return vec![];
        };
        match self.take(state, raw, enforce, &events) {
            Ok(()) => accepted
                .into_iter()
                .map(|(reply, resp, ..)| (reply, resp))
                .collect(),
            Err(e) => {
                let failed: Vec<Event> = accepted
                    .into_iter()
                    .map(|(reply, _, record, resources)| {
                        let _ = reply.send(Err(e.clone()));
                        record.finish(Err(&e), resources)
                    })
                    .collect();
                if let Err(err) = self.store.append(&failed) {
                    log::error!("writing the audit trail: {err:#}");
                }
                vec![]
            }
        }
    }

    /// Enforces `after` (whose canonical form is `raw`), then commits it
    /// with `events`; on any failure enforces the committed state again.
    fn take(
        &mut self,
        after: Desired,
        raw: RawConfig,
        enforce: &mut Enforce,
        events: &[Event],
    ) -> Result<(), ApiError> {
        let after = Arc::new(after);
        let before = self.desired.clone();
        let restore = |enforce: &mut Enforce| {
            if let Err(e) = enforce(before.clone()) {
                log::error!("restoring the previous state after a failed change: {e}");
            }
        };
        if let Err(e) = enforce(after.clone()) {
            restore(enforce);
            return Err(ApiError::internal(format!(
                "enforcing the change failed; the previous state stays: {e}"
            )));
        }
        if let Err(e) = self.store.commit(Some(&self.raw), &raw, events) {
            restore(enforce);
            let message = format!("storing the change failed; the previous state stays: {e:#}");
            // A fleet's store that is away, or that another writer changed
            // first: 503, which AWS's clients retry (docs/fleet.md).
            return Err(match self.store {
                Store::Etcd(_) => ApiError::new(503, "Unavailable", message),
                Store::Sqlite(_) => ApiError::internal(message),
            });
        }
        self.raw = raw;
        self.desired = after;
        self.pending = None;
        Ok(())
    }

    /// A channel told of every change of the stored state that another
    /// writer may have made (a fleet's store); `None` when this agent is the
    /// state's only writer.
    pub fn watch(&self) -> Option<tokio::sync::mpsc::Receiver<Watched>> {
        let Store::Etcd(e) = &self.store else {
            return None;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        e.watch(tx);
        Some(rx)
    }

    /// In a fleet's store, when `beat` (an agent, not an API server)
    /// starts this host's heartbeat, and when `read` (it serves the API)
    /// follows every host's.
    pub fn heartbeat(&self, beat: bool, read: bool) -> Option<crate::store::etcd::Heartbeats> {
        let Store::Etcd(e) = &self.store else {
            return None;
        };
        let beats = read.then(crate::store::etcd::Heartbeats::default);
        let host = beat.then(|| crate::model::host::this().to_string());
        e.heartbeat(host, beats.clone());
        beats
    }

    /// Takes what the store's watch saw (another API server's change) into
    /// `raw`, and if it changes anything, validates it from the state in
    /// force (only the objects the change touched are resolved again), then
    /// enforces it. A state that cannot be read or is invalid changes
    /// nothing enforced: the next change is validated with this one's.
    pub fn refresh(
        &mut self,
        seen: Watched,
        enforce: &mut Enforce,
    ) -> Result<Option<String>, String> {
        let Store::Etcd(e) = &mut self.store else {
            return Ok(None);
        };
        match e.follow(seen, &mut self.raw) {
            // This store's own commit.
            Ok(None) => return Ok(None),
            Ok(Some(t)) => self.pending.get_or_insert_default().merge(t),
            Err(err) => {
                return Err(format!(
                    "{}: {err:#}; the state in force stays",
                    self.store.describe()
                ));
            }
        }
        let touched = self.pending.as_ref().expect("merged");
        if touched.is_empty() {
            self.pending = None;
            return Ok(None);
        }
        let prior = Prior {
            desired: &self.desired,
            since: Since::Touched(touched),
        };
        let after = validate_from(&self.raw, &Stored, None, Some(prior)).map_err(|e| {
            format!(
                "{}: the stored state is invalid, the state in force stays:\n{e}",
                self.store.describe()
            )
        })?;
        let changed = changes(&self.desired, &after);
        let after = Arc::new(after);
        enforce(after.clone())?;
        self.desired = after;
        self.pending = None;
        Ok(Some(summary(&changed)))
    }

    /// `sg-agent apply -f FILE`: the file's state replaces the managed
    /// state, through the same validation; says what changed.
    pub fn apply_file(&mut self, path: &Path, enforce: &mut Enforce) -> Result<String, String> {
        let after = source::file::load(path, Some(&self.desired)).map_err(|e| format!("{e:#}"))?;
        let changed = changes(&self.desired, &after);
        let summary = format!("applied {}: {}", path.display(), summary(&changed));
        let ev = crate::api::audit::reload(&path.display().to_string(), &summary, changed);
        let raw = canonical(&after);
        self.take(after, raw, enforce, &[ev])
            .map_err(|e| e.message)?;
        Ok(summary)
    }
}

/// What differs between two states: ids of groups, prefix lists, VPCs and
/// interfaces added, removed and changed.
pub fn changes(before: &Desired, after: &Desired) -> Value {
    fn diff<T: PartialEq>(a: &[T], b: &[T], id: impl Fn(&T) -> &str) -> Value {
        // Most changes keep every object in its place: then side by side.
        if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| id(x) == id(y)) {
            let changed: Vec<&str> = a
                .iter()
                .zip(b)
                .filter(|(x, y)| x != y)
                .map(|(x, _)| id(x))
                .collect();
            return json!({"added": [], "removed": [], "changed": changed});
        }
        // Otherwise by id: states of thousands of objects.
        let ia: foldhash::HashMap<&str, &T> = a.iter().map(|x| (id(x), x)).collect();
        let ib: foldhash::HashSet<&str> = b.iter().map(&id).collect();
        let added: Vec<&str> = b.iter().map(&id).filter(|k| !ia.contains_key(k)).collect();
        let removed: Vec<&str> = a.iter().map(&id).filter(|k| !ib.contains(k)).collect();
        let changed: Vec<&str> = b
            .iter()
            .filter(|x| ia.get(id(x)).is_some_and(|old| *old != *x))
            .map(&id)
            .collect();
        json!({"added": added, "removed": removed, "changed": changed})
    }
    json!({
        "security_groups": diff(&before.groups, &after.groups, |g| &g.id),
        "prefix_lists": diff(&before.prefix_lists, &after.prefix_lists, |p| &p.id),
        "vpcs": diff(&before.vpcs, &after.vpcs, |v| &v.id),
        // Unchanged interfaces are the prior state's own (validation takes
        // them whole): thousands not compared.
        "network_interfaces": if Arc::ptr_eq(&before.interfaces, &after.interfaces) {
            json!({"added": [], "removed": [], "changed": []})
        } else {
            diff(&before.interfaces, &after.interfaces, |i| &i.id)
        },
    })
}

pub fn summary(changes: &Value) -> String {
    let mut parts = Vec::new();
    for (kind, d) in changes.as_object().into_iter().flatten() {
        for what in ["added", "removed", "changed"] {
            let ids: Vec<&str> = d[what]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !ids.is_empty() {
                parts.push(format!("{kind} {what}: {}", ids.join(", ")));
            }
        }
    }
    if parts.is_empty() {
        "nothing changed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(groups: &[&str]) -> Desired {
        let mut text = String::from("security_groups:\n");
        for g in groups {
            text.push_str(&format!("  - {{name: {g}, ingress: []}}\n"));
        }
        source::file::parse("t.yaml", &text, None, None).unwrap()
    }

    /// What changed, side by side when every object kept its place, by id
    /// when some came or went.
    #[test]
    fn changes_are_found_in_place_and_by_id() {
        let (a, b) = (state(&["web", "db"]), state(&["web", "db"]));
        assert_eq!(summary(&changes(&a, &b)), "nothing changed");
        let mut c = b.clone();
        c.groups[1].description = "changed".into();
        let id =
            |d: &Desired, name: &str| d.groups.iter().find(|g| g.name == name).unwrap().id.clone();
        assert_eq!(
            summary(&changes(&a, &c)),
            format!("security_groups changed: {}", id(&a, "db"))
        );
        let d = state(&["db", "cache"]);
        let diff = changes(&a, &d);
        assert_eq!(diff["security_groups"]["added"], json!([id(&d, "cache")]));
        assert_eq!(diff["security_groups"]["removed"], json!([id(&a, "web")]));
        assert_eq!(diff["security_groups"]["changed"], json!([]));
    }
}
