//! The managed state on disk: SQLite in WAL mode under the state directory
//! (`/var/lib/sg/sg.db` by default). One object per row, in the canonical
//! input form ([`crate::model::canonical`]), a group's rules each in a row
//! of their own; every accepted API call is one
//! `BEGIN IMMEDIATE` transaction holding its changes *and* its audit record,
//! so a crash leaves the previous state or the new one, never a mix, and
//! never a change without its record. The audit trail is append-only: the
//! schema refuses updates and deletes of events.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use foldhash::{HashMap, HashSet};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::input::{RawConfig, RawGroup, RawIface, RawPrefixList, RawRule, RawVpc};

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

/// One audit record, with the columns `lookup-events` filters on.
#[derive(Debug, Clone)]
pub struct Event {
    pub time: String,
    pub name: String,
    pub access_key: Option<String>,
    /// Ids of the resources the call named or created.
    pub resources: Vec<String>,
    /// The CloudTrail-shaped record (docs/api.md, "Audit trail").
    pub record: serde_json::Value,
}

pub struct Store {
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

/// The kinds of object, each with its list in the input form.
const KINDS: [&str; 5] = [
    "vpc",
    "prefix_list",
    "security_group",
    "rule",
    "network_interface",
];

impl Store {
    /// Opens (creating, and migrating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
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
        let mut store = Store {
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
        let mut raw: RawConfig = serde_json::from_str(&settings).context("the stored settings")?;
        let mut rules: Vec<StoredRule> = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, body FROM objects WHERE kind = ?1 ORDER BY rowid")?;
        for kind in KINDS {
            let rows = stmt.query_map([kind], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, body) = row?;
                let bad = || format!("the stored {kind} {id}");
                match kind {
                    "vpc" => raw.vpcs.push(parse(&body).with_context(bad)?),
                    "prefix_list" => raw.prefix_lists.push(parse(&body).with_context(bad)?),
                    "security_group" => raw.security_groups.push(parse(&body).with_context(bad)?),
                    "rule" => rules.push(parse(&body).with_context(bad)?),
                    _ => raw.network_interfaces.push(parse(&body).with_context(bad)?),
                }
            }
        }
        // Each rule to its group, in the order the rows were written.
        let at: HashMap<String, usize> = raw
            .security_groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((g.id.clone()?, i)))
            .collect();
        for r in rules {
            let Some(&i) = at.get(r.group.as_ref()) else {
                bail!("a stored rule of group {}, which is not stored", r.group);
            };
            let g = &mut raw.security_groups[i];
            let list = if r.egress {
                g.egress.get_or_insert_with(Vec::new)
            } else {
                &mut g.ingress
            };
            list.push(r.rule.into_owned());
        }
        Ok(Some(raw))
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
        // Objects are compared as values: only what changed is serialised
        // and written (a rule added to a group of 1,000 is one row).
        // New rows in the state's order: rows load in the order they were
        // first written (a rule inserted among others by `apply -f` comes
        // back last).
        // Groups equal on both sides are skipped whole: a change touches
        // one group, and a group's rules are most of the state.
        let same = unchanged(before, after);
        let old: HashMap<_, _> = before
            .map(|b| objects(b, &same))
            .transpose()?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let new = objects(after, &same)?;
        for (key, obj) in &new {
            if old.get(key) != Some(obj) {
                upsert(&tx, key, obj)?;
            }
        }
        let new: HashSet<_> = new.into_iter().map(|(k, _)| k).collect();
        for key in old.keys().filter(|k| !new.contains(*k)) {
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND id = ?2",
                params![key.0, key.1],
            )?;
        }
        let settings = serde_json::to_string(&RawConfig {
            account_id: after.account_id.clone(),
            conntrack: after.conntrack,
            quotas: after.quotas,
            ..Default::default()
        })?;
        tx.execute(
            "INSERT INTO settings (key, value) VALUES ('state', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [settings],
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

fn parse<T: DeserializeOwned>(body: &str) -> Result<T> {
    Ok(serde_json::from_str(body)?)
}

fn body<T: Serialize>(x: &T) -> Result<String> {
    Ok(serde_json::to_string(x)?)
}

/// One stored object, borrowed from the state (a group's own row, without
/// its rules, made from it).
#[derive(PartialEq)]
enum Obj<'a> {
    Vpc(&'a RawVpc),
    PrefixList(&'a RawPrefixList),
    Group(RawGroup),
    Rule(StoredRule<'a>),
    Interface(&'a RawIface),
}

/// A group's rule, as its row holds it (one permission with one peer, whose
/// id is the row's).
#[derive(PartialEq, Serialize, Deserialize)]
struct StoredRule<'a> {
    group: Cow<'a, str>,
    egress: bool,
    rule: Cow<'a, RawRule>,
}

impl Obj<'_> {
    fn body(&self) -> Result<String> {
        match self {
            Obj::Vpc(x) => body(x),
            Obj::PrefixList(x) => body(x),
            Obj::Group(x) => body(x),
            Obj::Rule(x) => body(x),
            Obj::Interface(x) => body(x),
        }
    }
}

/// Writes `obj` as the row `key`, keeping the row's place if it exists.
fn upsert(tx: &rusqlite::Transaction, key: &(&str, String), obj: &Obj) -> Result<()> {
    tx.execute(
        "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
        params![key.0, key.1, obj.body()?],
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
        let g: RawGroup = parse(&b).with_context(|| format!("the stored group {id}"))?;
        let mut rows = Objects::new();
        group_objects(&g, &Same::default(), &mut rows)?;
        for (key, obj) in &rows {
            upsert(tx, key, obj)?;
        }
    }
    Ok(())
}

/// Rows by (kind, id), in the state's order.
type Objects<'a> = Vec<((&'static str, String), Obj<'a>)>;

/// A group's row (without its rules) and its rules' rows, into `out`.
fn group_objects<'a>(g: &'a RawGroup, same: &Same, out: &mut Objects<'a>) -> Result<()> {
    let id =
        g.id.as_deref()
            .ok_or_else(|| anyhow::anyhow!("a group without an id cannot be stored"))?;
    let lists = [
        (false, &g.ingress[..]),
        (true, g.egress.as_deref().unwrap_or(&[])),
    ];
    for (egress, rules) in lists {
        for r in rules {
            let rule_id = rule_id(r).ok_or_else(|| {
                anyhow::anyhow!("a rule of group {id} without an id cannot be stored")
            })?;
            if same.rules.contains(&(id, egress, rule_id)) {
                continue;
            }
            let row = StoredRule {
                group: Cow::Borrowed(id),
                egress,
                rule: Cow::Borrowed(r),
            };
            // Keyed by group and direction too: a file may give one id to
            // an inbound and an outbound rule.
            let dir = if egress { "egress" } else { "ingress" };
            out.push((("rule", format!("{id}/{dir}/{rule_id}")), Obj::Rule(row)));
        }
    }
    out.push((
        ("security_group", id.to_string()),
        Obj::Group(g.without_rules()),
    ));
    Ok(())
}

/// What a change leaves as it was, so that the store neither compares nor
/// writes it: the groups held exactly as before, and, in the groups that
/// changed, each rule (by group, direction and id) held exactly as before.
#[derive(Default)]
struct Same<'a> {
    groups: HashSet<&'a str>,
    rules: HashSet<(&'a str, bool, &'a str)>,
}

/// A rule's id: the one its peer keeps.
fn rule_id(r: &RawRule) -> Option<&str> {
    r.peers().find_map(|p| p.rule_id.as_deref())
}

/// A group's rules by direction (outbound or not) and id.
fn rules_by_id(g: &RawGroup) -> impl Iterator<Item = ((bool, &str), &RawRule)> {
    let ingress = g.ingress.iter().map(|r| (false, r));
    let egress = g.egress.iter().flatten().map(|r| (true, r));
    ingress
        .chain(egress)
        .filter_map(|(e, r)| Some(((e, rule_id(r)?), r)))
}

fn unchanged<'a>(before: Option<&'a RawConfig>, after: &'a RawConfig) -> Same<'a> {
    let mut same = Same::default();
    let Some(before) = before else {
        return same;
    };
    let old: HashMap<&str, &RawGroup> = before
        .security_groups
        .iter()
        .filter_map(|g| Some((g.id.as_deref()?, g)))
        .collect();
    for g in &after.security_groups {
        let Some((id, was)) = g.id.as_deref().and_then(|id| Some((id, *old.get(id)?))) else {
            continue;
        };
        if was == g {
            same.groups.insert(id);
            continue;
        }
        let rules: HashMap<_, _> = rules_by_id(was).collect();
        same.rules.extend(
            rules_by_id(g)
                .filter(|(k, r)| rules.get(k) == Some(r))
                .map(|((e, rid), _)| (id, e, rid)),
        );
    }
    same
}

/// Every object of `raw` by (kind, id), but for what `same` holds.
fn objects<'a>(raw: &'a RawConfig, same: &Same) -> Result<Objects<'a>> {
    let mut out = Objects::new();
    let missing = |kind: &str| anyhow::anyhow!("a {kind} without an id cannot be stored");
    for v in &raw.vpcs {
        out.push((
            ("vpc", v.id.clone().ok_or_else(|| missing("VPC"))?),
            Obj::Vpc(v),
        ));
    }
    for p in &raw.prefix_lists {
        out.push((
            (
                "prefix_list",
                p.id.clone().ok_or_else(|| missing("prefix list"))?,
            ),
            Obj::PrefixList(p),
        ));
    }
    for g in &raw.security_groups {
        if g.id.as_deref().is_some_and(|id| same.groups.contains(id)) {
            continue;
        }
        group_objects(g, same, &mut out)?;
    }
    for i in &raw.network_interfaces {
        out.push((
            (
                "network_interface",
                i.id.clone().ok_or_else(|| missing("interface"))?,
            ),
            Obj::Interface(i),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_whole_changes_and_keeps_the_trail_append_only() {
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir).unwrap();
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
        let mut s = Store::open(&dir).unwrap();
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

    fn rows(s: &Store, kind: &str) -> usize {
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
        let mut s = Store::open(&dir).unwrap();
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
        let s = Store::open(&dir).unwrap();
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
        let s = Store::open(&dir).unwrap();
        assert_eq!(rows(&s, "rule"), 2);
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.security_groups, state.security_groups);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
