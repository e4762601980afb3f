//! The managed state and its audit trail, in one of two backends: SQLite
//! under the state directory (one host, the default; [`sqlite`]) or etcd (a
//! fleet; [`etcd`]). Both hold the same objects ([`rows`]), commit a change
//! with its audit records as one transaction, and give the state back as
//! it was committed.

pub mod etcd;
mod rows;
mod sqlite;

use std::path::PathBuf;

use anyhow::Result;

pub use etcd::{Conflict, EtcdAt, Watched};
pub use sqlite::DB_FILE;

use crate::model::input::RawConfig;

/// One audit record, with the columns `lookup-events` filters on (etcd
/// holds it as this, in JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub time: String,
    pub name: String,
    pub access_key: Option<String>,
    /// Ids of the resources the call named or created.
    pub resources: Vec<String>,
    /// The CloudTrail-shaped record (docs/api.md, "Audit trail").
    pub record: serde_json::Value,
}

/// What `sg-agent lookup-events` filters on.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub name: Option<String>,
    pub access_key: Option<String>,
    pub resource: Option<String>,
    /// RFC 3339 times, compared as text (every record's time is UTC, `Z`).
    pub start: Option<String>,
    pub end: Option<String>,
    pub max: usize,
}

impl EventFilter {
    /// A record with these columns is one the filter asks for (SQLite asks
    /// the same in SQL).
    pub fn matches(&self, time: &str, name: &str, key: Option<&str>, resources: &[String]) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.access_key.as_deref().is_none_or(|k| Some(k) == key)
            && self.resource.as_ref().is_none_or(|r| resources.contains(r))
            && self.start.as_deref().is_none_or(|s| time >= s)
            && self.end.as_deref().is_none_or(|e| time <= e)
    }
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StateAt {
    /// The SQLite database in this directory.
    Dir(PathBuf),
    Etcd(EtcdAt),
}

pub enum Store {
    Sqlite(sqlite::Sqlite),
    Etcd(Box<etcd::Etcd>),
}

impl Store {
    pub fn open(at: &StateAt) -> Result<Store> {
        Ok(match at {
            StateAt::Dir(d) => Store::Sqlite(sqlite::Sqlite::open(d)?),
            StateAt::Etcd(e) => Store::Etcd(Box::new(etcd::Etcd::open(e)?)),
        })
    }

    /// Where the state is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Etcd(e) => e.describe(),
        }
    }

    /// The state, or `None` when none was ever committed.
    pub fn load(&mut self) -> Result<Option<RawConfig>> {
        match self {
            Store::Sqlite(s) => s.load(),
            Store::Etcd(e) => e.load(),
        }
    }

    /// Writes the change from `before` to `after` (both canonical) and its
    /// audit records in one transaction: all of it, or nothing.
    pub fn commit(
        &mut self,
        before: Option<&RawConfig>,
        after: &RawConfig,
        events: &[Event],
    ) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.commit(before, after, events),
            Store::Etcd(e) => e.commit(before, after, events),
        }
    }

    /// Records events that change nothing (refused calls, reads, reloads).
    pub fn append(&mut self, events: &[Event]) -> Result<()> {
        match self {
            Store::Sqlite(s) => s.append(events),
            Store::Etcd(e) => e.append(events),
        }
    }

    /// The records matching `f`, oldest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<serde_json::Value>> {
        match self {
            Store::Sqlite(s) => s.events(f),
            Store::Etcd(e) => e.events(f),
        }
    }
}
