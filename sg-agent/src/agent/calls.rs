//! The agent's API side: what reads see, and the changes it makes for the
//! API and for `sg-agent apply -f` in managed mode.

use std::{path::Path, sync::Arc};

use super::Agent;
use crate::{
    api::{self, Snapshot},
    control::Reply,
    managed::{Enforce, Managed},
    model::Desired,
};

impl Agent {
    /// What the API's reads see, after every change of what is in force.
    pub(super) fn publish(&self) {
        // A change in the making is not shown until it is committed.
        if self.holding {
            return;
        }
        let mut enforced: std::collections::BTreeSet<String> = self
            .applied
            .values()
            .map(|p| p.iface.name.clone())
            .collect();
        enforced.extend(self.retained.values().cloned());
        self.publish.send_replace(Arc::new(Snapshot {
            desired: self.desired.clone(),
            managed: self.is_managed,
            source: self.file.clone(),
            enforced,
            group_xml: Default::default(),
            heartbeats: self.heartbeats.clone(),
        }));
    }

    /// Runs `change` on the managed state with what is in force (`None`
    /// in file mode), enforcing as `what` says (reporting widenings when
    /// `report`); reads see nothing until it is done and committed.
    fn change_managed<R>(
        &mut self,
        what: &str,
        report: bool,
        change: impl FnOnce(&mut Managed, &mut Enforce) -> R,
    ) -> Option<R> {
        let mut m = self.managed.take()?;
        self.holding = true;
        let mut enforce = |d: Arc<Desired>| {
            let r = self.adopt(d, what, report);
            if r.ok { Ok(()) } else { Err(r.message) }
        };
        let out = change(&mut m, &mut enforce);
        self.holding = false;
        self.managed = Some(m);
        self.publish();
        Some(out)
    }

    /// API changes (managed mode), made by the state's owner: the calls
    /// that arrived together, as one batch (see [`crate::managed`]).
    pub(super) fn api(&mut self, calls: Vec<api::Call>) {
        if !self.is_managed {
            for call in calls {
                let _ = call.reply.send(Err(api::read_only(&self.file)));
            }
            return;
        }
        let names: Vec<&str> = calls.iter().map(|c| c.action.as_str()).collect();
        let what = format!("API {}", names.join(", "));
        let answers = self
            .change_managed(&what, false, |m, enforce| m.execute(calls, enforce))
            .unwrap_or_default();
        // Reads show the committed state (published above) before any
        // client hears of it.
        for (reply, resp) in answers {
            let _ = reply.send(Ok(resp));
        }
    }

    /// Another writer changed the stored state (a fleet): take it.
    pub(super) fn take_stored(&mut self, seen: crate::store::Watched) {
        let r = self.change_managed("the store's change", false, |m, enforce| {
            m.refresh(seen, enforce)
        });
        match r {
            Some(Ok(Some(what))) => log::info!("took the store's change: {what}"),
            Some(Ok(None)) | None => {}
            Some(Err(e)) => log::error!("{e}"),
        }
    }

    /// The store answered at last (the agent started while it was away):
    /// its state replaces what the pins held. `api`: the agent is to serve
    /// the API, which shows every host's heartbeat.
    pub(super) fn reconnected(&mut self, m: Managed, api: bool) {
        log::info!("{} answers: taking its state", self.file);
        self.heartbeats = m.heartbeat(true, api);
        let d = m.desired.clone();
        self.managed = Some(m);
        self.adopt(d, "the store's state", true);
    }

    /// `sg-agent apply -f FILE` in managed mode.
    pub(super) fn apply_file(&mut self, path: &Path) -> Reply {
        let r = self.change_managed("sg-agent apply -f", true, |m, enforce| {
            m.apply_file(path, enforce)
        });
        match r {
            Some(Ok(message)) => Reply { ok: true, message },
            Some(Err(message)) => Reply { ok: false, message },
            // Started while the store was away, it has not answered yet.
            None if self.is_managed => Reply {
                ok: false,
                message: format!(
                    "{} has not answered since this agent started; nothing was changed",
                    self.file
                ),
            },
            None => Reply {
                ok: false,
                message: format!(
                    "the agent follows {}: `sg-agent apply` (without -f) takes it",
                    self.file
                ),
            },
        }
    }
}
