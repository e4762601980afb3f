//! The agent's API side: what reads see, and the changes it makes for the
//! API and for `sg-agent apply -f` in managed mode.

use std::{path::Path, sync::Arc};

use super::Agent;
use crate::{
    api::{self, Snapshot},
    control::Reply,
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
        }));
    }

    /// API changes (managed mode), made by the state's owner: the calls
    /// that arrived together, as one batch (see [`crate::managed`]).
    pub(super) fn api(&mut self, calls: Vec<api::Call>) {
        let Some(mut m) = self.managed.take() else {
            for call in calls {
                let _ = call.reply.send(Err(api::read_only(&self.file)));
            }
            return;
        };
        let before = self.desired.clone();
        let names: Vec<&str> = calls.iter().map(|c| c.action.as_str()).collect();
        let what = format!("API {}", names.join(", "));
        self.holding = true;
        let mut enforce = |d: &Desired| {
            let r = self.adopt(d.clone(), &what, false);
            if r.ok { Ok(()) } else { Err(r.message) }
        };
        let answers = m.execute(calls, &before, &mut enforce);
        self.holding = false;
        self.managed = Some(m);
        // Reads show the committed state before any client hears of it.
        self.publish();
        for (reply, resp) in answers {
            let _ = reply.send(Ok(resp));
        }
    }

    /// `sg-agent apply -f FILE` in managed mode.
    pub(super) fn apply_file(&mut self, path: &Path) -> Reply {
        let Some(mut m) = self.managed.take() else {
            return Reply {
                ok: false,
                message: format!(
                    "the agent follows {}: `sg-agent apply` (without -f) takes it",
                    self.file
                ),
            };
        };
        let before = self.desired.clone();
        self.holding = true;
        let mut enforce = |d: &Desired| {
            let r = self.adopt(d.clone(), "sg-agent apply -f", true);
            if r.ok { Ok(()) } else { Err(r.message) }
        };
        let r = m.apply_file(path, &before, &mut enforce);
        self.holding = false;
        self.managed = Some(m);
        self.publish();
        match r {
            Ok((message, _)) => Reply { ok: true, message },
            Err(message) => Reply { ok: false, message },
        }
    }
}
