//! The managed state on disk: SQLite in WAL mode under the state directory
//! (`/var/lib/sg/sg.db` by default). One object per row, in the canonical
//! input form ([`crate::model::canonical`]), a group's rules each in a row
//! of their own; every accepted API call is one
//! `BEGIN IMMEDIATE` transaction holding its changes *and* its audit record,
//! so a crash leaves the previous state or the new one, never a mix, and
//! never a change without its record. The audit trail is append-only: the
//! schema refuses updates and deletes of events.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Event, EventFilter,
    rows::{self, Write},
};
use crate::model::input::{RawConfig, RawGroup};

/// A step of the schema: SQL, then what SQL alone cannot do.
struct Migration {
    sql: &'static str,
    then: Option<fn(&rusqlite::Transaction) -> Result<()>>,
}

/// The schema's version, in `PRAGMA user_version`; `MIGRATIONS[i]` takes a
/// database from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        sql: r#"
CREATE TABLE objects (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    time       TEXT NOT NULL,
    name       TEXT NOT NULL,
    access_key TEXT,
    resources  TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#,
        then: None,
    },
    // Version 2: a group's rules in rows of their own (kind `rule`), so that
    // a call on a group of 1,000 rules writes its rule, not the group's
    // ~100 kB; `split_rules` moves version 1's embedded rules out.
    Migration {
        sql: "",
        then: Some(split_rules),
    },
];

pub const DB_FILE: &str = "sg.db";

pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
    /// Dropped with the store, which stops the checkpointer.
    _checkpoints: mpsc::Sender<()>,
}

/// How often the WAL is copied back into the database, off the commits'
/// path: SQLite's own checkpoint runs inside the commit that fills the WAL,
/// and copying a few MB there made one call in ~40 several ms slower.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoints `path`'s WAL from a connection of its own until `stop`'s
/// sender goes. PASSIVE: it never waits for, nor blocks, the writer.
fn checkpointer(path: PathBuf, stop: mpsc::Receiver<()>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{}: no WAL checkpoints: {e}", path.display());
            return;
        }
    };
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("{}: WAL checkpoint: {e}", path.display());
        }
    }
}

impl Sqlite {
    /// Opens (creating, and migrating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Sqlite> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers never block the writer; FULL: a commit is on disk
        // before the call that made it is answered.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (tx, rx) = mpsc::channel();
        let at = path.clone();
        std::thread::Builder::new()
            .name("sg-checkpoint".into())
            .spawn(move || checkpointer(at, rx))
            .context("starting the WAL checkpointer")?;
        let mut store = Sqlite {
            conn,
            path,
            _checkpoints: tx,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: usize =
            tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            bail!(
                "{}: schema version {version} is newer than this sg-agent's ({}); refusing to touch it",
                self.path.display(),
                MIGRATIONS.len()
            );
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let at = || format!("migrating {} to schema {}", self.path.display(), i + 1);
            tx.execute_batch(m.sql).with_context(at)?;
            if let Some(then) = m.then {
                then(&tx).with_context(at)?;
            }
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// The managed state, or `None` when none was ever committed.
    pub fn load(&self) -> Result<Option<RawConfig>> {
        let Some(settings) = self
            .conn
            .query_row("SELECT value FROM settings WHERE key = 'state'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        else {
            return Ok(None);
        };
        let mut rows = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, body FROM objects WHERE kind = ?1 ORDER BY rowid")?;
        for kind in rows::KINDS {
            for row in stmt.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))? {
                let (id, body) = row?;
                rows.push((kind.to_string(), id, body));
            }
        }
        rows::assemble(&settings, rows).map(Some)
    }

    /// Writes the change from `before` to `after` (both canonical) and its
    /// audit records in one transaction: all of it, or nothing.
    pub fn commit(
        &mut self,
        before: Option<&RawConfig>,
        after: &RawConfig,
        events: &[Event],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // New rows in the state's order: rows load in the order they were
        // first written (a rule inserted among others by `apply -f` comes
        // back last).
        for w in rows::writes(before, after)? {
            match w {
                Write::Put { kind, id, body } => upsert(&tx, kind, &id, &body)?,
                Write::Delete { kind, id } => {
                    tx.execute(
                        "DELETE FROM objects WHERE kind = ?1 AND id = ?2",
                        params![kind, id],
                    )?;
                }
            }
        }
        tx.execute(
            "INSERT INTO settings (key, value) VALUES ('state', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [rows::settings(after)?],
        )?;
        insert_events(&tx, events)?;
        tx.commit().context("committing the change")?;
        Ok(())
    }

    /// Records events that change nothing (refused calls, reads, reloads).
    pub fn append(&mut self, events: &[Event]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_events(&tx, events)?;
        tx.commit()?;
        Ok(())
    }

    /// The records matching `f`, oldest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<serde_json::Value>> {
        let mut stmt = self.conn.prepare(
            "SELECT record FROM events
             WHERE (?1 IS NULL OR name = ?1)
               AND (?2 IS NULL OR access_key = ?2)
               AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(resources) WHERE value = ?3))
               AND (?4 IS NULL OR time >= ?4)
               AND (?5 IS NULL OR time <= ?5)
             ORDER BY seq DESC LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                f.name,
                f.access_key,
                f.resource,
                f.start,
                f.end,
                f.max as i64
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        out.reverse();
        Ok(out)
    }
}

fn insert_events(tx: &rusqlite::Transaction, events: &[Event]) -> Result<()> {
    for e in events {
        tx.execute(
            "INSERT INTO events (time, name, access_key, resources, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                e.time,
                e.name,
                e.access_key,
                serde_json::to_string(&e.resources)?,
                serde_json::to_string(&e.record)?
            ],
        )?;
    }
    Ok(())
}

/// Writes `body` as the row (`kind`, `id`), keeping the row's place if it
/// exists.
fn upsert(tx: &rusqlite::Transaction, kind: &str, id: &str, body: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
        params![kind, id, body],
    )?;
    Ok(())
}

/// Schema 2: moves each group's rules into rows of their own.
fn split_rules(tx: &rusqlite::Transaction) -> Result<()> {
    let groups: Vec<(String, String)> = tx
        .prepare("SELECT id, body FROM objects WHERE kind = 'security_group' ORDER BY rowid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, b) in groups {
        let g: RawGroup = rows::parse(&b).with_context(|| format!("the stored group {id}"))?;
        for w in rows::group_rows(&g)? {
            if let Write::Put { kind, id, body } = w {
                upsert(tx, kind, &id, &body)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::input::RawRule;

    #[test]
    fn commits_whole_changes_and_keeps_the_trail_append_only() {
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Sqlite::open(&dir).unwrap();
        assert!(s.load().unwrap().is_none());
        let raw = RawConfig {
            account_id: Some("123456789012".into()),
            vpcs: vec![crate::model::input::RawVpc {
                id: Some("vpc-0123456789abcdef0".into()),
                name: Some("main".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ev = Event {
            time: "2026-12-01T00:00:00Z".into(),
            name: "CreateVpc".into(),
            access_key: Some("AKIDEXAMPLE".into()),
            resources: vec!["vpc-0123456789abcdef0".into()],
            record: serde_json::json!({"eventName": "CreateVpc"}),
        };
        s.commit(None, &raw, std::slice::from_ref(&ev)).unwrap();
        drop(s);
        let mut s = Sqlite::open(&dir).unwrap();
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.vpcs.len(), 1);
        assert_eq!(back.account_id.as_deref(), Some("123456789012"));
        let f = EventFilter {
            resource: Some("vpc-0123456789abcdef0".into()),
            max: 10,
            ..Default::default()
        };
        assert_eq!(s.events(&f).unwrap().len(), 1);
        let err = s.conn.execute("DELETE FROM events", []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        // Removing the VPC removes its row.
        s.commit(
            Some(&back),
            &RawConfig {
                account_id: back.account_id.clone(),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        assert!(s.load().unwrap().unwrap().vpcs.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rule(cidr: &str, id: &str) -> RawRule {
        RawRule {
            ip_protocol: "tcp".into(),
            from_port: Some(22.into()),
            to_port: Some(22.into()),
            ip_ranges: vec![crate::model::input::RawPeer {
                value: cidr.into(),
                rule_id: Some(id.into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn group(rules: Vec<RawRule>) -> RawConfig {
        RawConfig {
            security_groups: vec![RawGroup {
                id: Some("sg-0123456789abcdef0".into()),
                name: "web".into(),
                ingress: rules,
                egress: Some(vec![rule("10.9.0.0/16", "sgr-00000000000000e01")]),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn rows(s: &Sqlite, kind: &str) -> usize {
        s.conn
            .query_row(
                "SELECT count(*) FROM objects WHERE kind = ?1",
                [kind],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize
    }

    #[test]
    fn a_groups_rules_are_rows_of_their_own_in_order() {
        let dir = std::env::temp_dir().join(format!("sg-store-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Sqlite::open(&dir).unwrap();
        let ids = [
            "sgr-00000000000000a03",
            "sgr-00000000000000a01",
            "sgr-00000000000000a02",
        ];
        let three = group(
            ids.iter()
                .enumerate()
                .map(|(i, id)| rule(&format!("10.0.{i}.0/24"), id))
                .collect(),
        );
        s.commit(None, &three, &[]).unwrap();
        assert_eq!(rows(&s, "rule"), 4);
        assert_eq!(
            s.load().unwrap().unwrap().security_groups,
            three.security_groups
        );
        // Revoking the middle rule deletes its row; the others keep theirs
        // and their order.
        let mut two = three.clone();
        two.security_groups[0].ingress.remove(1);
        s.commit(Some(&three), &two, &[]).unwrap();
        assert_eq!(rows(&s, "rule"), 3);
        // A rule changed in place is the one row written, beside the
        // settings: the group's other rules and its own row are not.
        let mut described = two.clone();
        described.security_groups[0].ingress[1].ip_ranges[0].description = Some("db".into());
        let writes = s.conn.total_changes();
        s.commit(Some(&two), &described, &[]).unwrap();
        assert_eq!(s.conn.total_changes() - writes, 2);
        drop(s);
        let s = Sqlite::open(&dir).unwrap();
        assert_eq!(
            s.load().unwrap().unwrap().security_groups,
            described.security_groups
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn schema_1_groups_with_embedded_rules_migrate() {
        let dir = std::env::temp_dir().join(format!("sg-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = group(vec![rule("10.0.0.0/24", "sgr-00000000000000b01")]);
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(MIGRATIONS[0].sql).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            let g = &state.security_groups[0];
            c.execute(
                "INSERT INTO objects (kind, id, body) VALUES ('security_group', ?1, ?2)",
                params![g.id, serde_json::to_string(g).unwrap()],
            )
            .unwrap();
            c.execute(
                "INSERT INTO settings (key, value) VALUES ('state', '{}')",
                [],
            )
            .unwrap();
        }
        let s = Sqlite::open(&dir).unwrap();
        assert_eq!(rows(&s, "rule"), 2);
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.security_groups, state.security_groups);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
