//! Managed mode: the desired state lives in the state database and changes
//! through the EC2 API (or `sg-agent apply -f FILE`). A change is validated,
//! enforced, then committed with its audit record, and only then answered;
//! if enforcing or committing fails, the previous state is enforced again
//! and the call fails. A crash before the commit leaves the previous state,
//! which the next start enforces: nothing acknowledged is lost, nothing
//! unacknowledged stays.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{
    api::{Call, Txn, error::ApiError, server_dry_run},
    model::{Desired, canonical::canonical, input::RawConfig, validate},
    source,
    store::{Event, Store},
};

pub struct Managed {
    pub store: Store,
    /// The committed state, in canonical input form.
    pub raw: RawConfig,
}

struct Stored;

impl crate::model::Locate for Stored {
    fn locate(&self, _: usize, path: &str) -> (String, Option<usize>) {
        (format!("the stored state: {path}"), None)
    }
}

impl Managed {
    /// Opens the state in `dir`. A database without state is seeded from
    /// `seed` when that file exists, and otherwise starts as EC2 does: a
    /// default VPC with its default group.
    pub fn open(dir: &Path, seed: &Path) -> Result<(Managed, Desired)> {
        let mut store = Store::open(dir)?;
        let (raw, desired) = match store.load()? {
            Some(raw) => {
                let d = validate(&raw, &Stored, None).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: the stored state is invalid:\n{e}",
                        store.path().display()
                    )
                })?;
                (raw, d)
            }
            None => {
                let d = if seed.exists() {
                    log::info!(
                        "managed state: seeding {} from {}",
                        store.path().display(),
                        seed.display()
                    );
                    source::file::load(seed, None)?
                } else {
                    log::info!(
                        "managed state: starting {} with a default VPC",
                        store.path().display()
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
                store
                    .commit(None, &raw, &[ev])
                    .context("storing the first state")?;
                (raw, d)
            }
        };
        Ok((Managed { store, raw }, desired))
    }

    /// Makes one API change: runs it on a copy, then (unless a dry run)
    /// enforces and commits it. Returns the new state when it was taken.
    pub fn execute(
        &mut self,
        call: Call,
        before: &Desired,
        enforce: &mut dyn FnMut(&Desired) -> Result<(), String>,
    ) -> Option<Desired> {
        let Call {
            dry_run,
            change,
            record,
            reply,
            scope,
            ..
        } = call;
        let mut txn = Txn {
            raw: self.raw.clone(),
            before,
            scope,
            resources: vec![],
        };
        let outcome = change(&mut txn);
        let resources = txn.resources;
        let mut taken = None;
        let result = match outcome {
            Err(e) => Err(e),
            Ok(_) if dry_run => Err(server_dry_run()),
            Ok((resp, after)) => match self.take(
                &after,
                before,
                enforce,
                record.finish(Ok(&resp), resources.clone()),
            ) {
                Ok(()) => {
                    taken = Some(after);
                    Ok(resp)
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &result {
            let ev = record.finish(Err(e), resources);
            if let Err(err) = self.store.append(&[ev]) {
                log::error!("writing the audit trail: {err:#}");
            }
        }
        let _ = reply.send(result);
        taken
    }

    /// Enforces `after`, then commits it with `event`; on any failure
    /// enforces `before` again.
    fn take(
        &mut self,
        after: &Desired,
        before: &Desired,
        enforce: &mut dyn FnMut(&Desired) -> Result<(), String>,
        event: Event,
    ) -> Result<(), ApiError> {
        let raw = canonical(after);
        let restore = |enforce: &mut dyn FnMut(&Desired) -> Result<(), String>| {
            if let Err(e) = enforce(before) {
                log::error!("restoring the previous state after a failed change: {e}");
            }
        };
        if let Err(e) = enforce(after) {
            restore(enforce);
            return Err(ApiError::internal(format!(
                "enforcing the change failed; the previous state stays: {e}"
            )));
        }
        if let Err(e) = self.store.commit(Some(&self.raw), &raw, &[event]) {
            restore(enforce);
            return Err(ApiError::internal(format!(
                "storing the change failed; the previous state stays: {e:#}"
            )));
        }
        self.raw = raw;
        Ok(())
    }

    /// `sg-agent apply -f FILE`: the file's state replaces the managed
    /// state, through the same validation; says what changed.
    pub fn apply_file(
        &mut self,
        path: &Path,
        before: &Desired,
        enforce: &mut dyn FnMut(&Desired) -> Result<(), String>,
    ) -> Result<(String, Desired), String> {
        let after = source::file::load(path, Some(before)).map_err(|e| format!("{e:#}"))?;
        let changed = changes(before, &after);
        let summary = format!("applied {}: {}", path.display(), summary(&changed));
        let ev = crate::api::audit::reload(&path.display().to_string(), &summary, changed);
        self.take(&after, before, enforce, ev)
            .map_err(|e| e.message)?;
        Ok((summary, after))
    }
}

/// What differs between two states: ids of groups, prefix lists, VPCs and
/// interfaces added, removed and changed.
pub fn changes(before: &Desired, after: &Desired) -> Value {
    fn diff<T: PartialEq>(a: &[T], b: &[T], id: impl Fn(&T) -> String) -> Value {
        let find = |l: &[T], k: &str| l.iter().position(|x| id(x) == k);
        let added: Vec<String> = b.iter().map(&id).filter(|k| find(a, k).is_none()).collect();
        let removed: Vec<String> = a.iter().map(&id).filter(|k| find(b, k).is_none()).collect();
        let changed: Vec<String> = b
            .iter()
            .filter(|x| find(a, &id(x)).is_some_and(|i| a[i] != **x))
            .map(&id)
            .collect();
        json!({"added": added, "removed": removed, "changed": changed})
    }
    json!({
        "security_groups": diff(&before.groups, &after.groups, |g| g.id.clone()),
        "prefix_lists": diff(&before.prefix_lists, &after.prefix_lists, |p| p.id.clone()),
        "vpcs": diff(&before.vpcs, &after.vpcs, |v| v.id.clone()),
        "network_interfaces": diff(&before.interfaces, &after.interfaces, |i| i.name.clone()),
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
