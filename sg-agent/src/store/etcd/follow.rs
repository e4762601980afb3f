//! A follower's copy of the state, patched with each commit its watch sees
//! (docs/fleet.md, "What an agent does per change"): only the objects the
//! commit wrote are parsed and put in their places, the rest of the copy is
//! not touched, and what the commit touched is told to validation, which
//! takes the rest from the state in force. A copy patched is the copy a
//! whole read would give: the same objects in the same order (an object
//! rewritten keeps its place, a new one comes after every older one).

use anyhow::{Context, Result, bail};
use foldhash::{HashMap, HashSet};

use super::{Etcd, Watched};
use crate::{
    model::{Touched, input::RawConfig},
    store::rows::{Row, rule_id},
};

/// Where the copy holds each group and each interface, by id.
pub(super) struct Index {
    groups: HashMap<String, usize>,
    interfaces: HashMap<String, usize>,
}

impl Index {
    fn of(raw: &RawConfig) -> Index {
        Index {
            groups: groups_at(raw),
            interfaces: interfaces_at(raw),
        }
    }
}

fn positions<'a>(ids: impl Iterator<Item = Option<&'a String>>) -> HashMap<String, usize> {
    ids.enumerate()
        .filter_map(|(i, id)| Some((id?.clone(), i)))
        .collect()
}

fn groups_at(raw: &RawConfig) -> HashMap<String, usize> {
    positions(raw.security_groups.iter().map(|g| g.id.as_ref()))
}

fn interfaces_at(raw: &RawConfig) -> HashMap<String, usize> {
    positions(raw.network_interfaces.iter().map(|i| i.id.as_ref()))
}

/// One object a commit wrote: its key, kind and id, its place and what it
/// holds now (`None`: deleted), and whether the copy held it before.
struct Written {
    key: String,
    kind: String,
    id: String,
    at: Option<(i64, u64)>,
    row: Option<Row>,
    held: bool,
}

impl Etcd {
    /// Applies what the watch saw to `raw`, the copy of the state this
    /// store last read or wrote: what the change touched, or `None` when
    /// it holds nothing new (this store's own commit). A commit that cannot
    /// be taken in place (an object that does not parse, a copy that does
    /// not hold what the store says it holds) is taken by reading the whole
    /// state; until a read succeeds, `raw` stays as it was and every commit
    /// is read whole, so the copy never skips one.
    pub fn follow(&mut self, w: Watched, raw: &mut RawConfig) -> Result<Option<Touched>> {
        let (revision, changes) = match w {
            Watched::Commit { revision, .. } if revision <= self.base => return Ok(None),
            Watched::Commit { revision, changes } if !self.broken => (revision, changes),
            _ => return self.reread(raw),
        };
        match self.patch(revision, changes, raw) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                log::warn!(
                    "a commit of the state could not be taken in place ({e:#}); reading the whole state"
                );
                self.reread(raw)
            }
        }
    }

    fn reread(&mut self, raw: &mut RawConfig) -> Result<Option<Touched>> {
        self.broken = true;
        match self.load()? {
            Some(read) => {
                *raw = read;
                Ok(Some(Touched::all()))
            }
            None => bail!("the state is gone"),
        }
    }

    /// Checks every object of the commit against the copy, then changes
    /// the copy: nothing is changed unless all of it can be.
    fn patch(
        &mut self,
        revision: i64,
        changes: Vec<(String, Option<(String, i64)>)>,
        raw: &mut RawConfig,
    ) -> Result<Touched> {
        let settings_key = self.at.key("settings");
        let mut settings = None;
        let mut written = Vec::with_capacity(changes.len());
        for (key, value) in changes {
            if key == settings_key {
                let v = value.context("the settings were deleted")?.0;
                settings = Some(serde_json::from_str(&v).context("the stored settings")?);
                continue;
            }
            let (kind, id) = self.kind_id(&key)?;
            let (kind, id) = (kind.to_string(), id.to_string());
            let (at, row) = match value {
                Some((v, created)) => {
                    let (at, row) = self.parse(&key, &v, created)?;
                    (Some(at), Some(row))
                }
                None => (None, None),
            };
            let held = self.places.contains_key(&key);
            written.push(Written {
                key,
                kind,
                id,
                at,
                row,
                held,
            });
        }
        let settings: RawConfig = settings.context("a commit without its settings")?;
        let index = self.index.get_or_insert_with(|| Index::of(raw));
        // Unchanged, with the copy, when the commit does not fit.
        let touched = patch_copy(&mut written, settings, raw, index)?;
        for w in written {
            match w.at {
                Some(at) => self.places.insert(w.key, at),
                None => self.places.remove(&w.key),
            };
        }
        self.base = revision;
        Ok(touched)
    }
}

/// Takes a commit's objects and settings into `raw` if every object is
/// where the store says `raw` holds it; otherwise changes nothing.
fn patch_copy(
    written: &mut [Written],
    settings: RawConfig,
    raw: &mut RawConfig,
    index: &mut Index,
) -> Result<Touched> {
    check(written, raw, index)?;
    let mut touched = Touched {
        context: raw.account_id != settings.account_id || raw.quotas != settings.quotas,
        ..Default::default()
    };
    raw.account_id = settings.account_id;
    raw.conntrack = settings.conntrack;
    raw.quotas = settings.quotas;
    apply(written, raw, index, &mut touched);
    Ok(touched)
}

/// A rule object's id, `{group}/{ingress|egress}/{rule}`, in its parts.
fn rule_parts(id: &str) -> Option<(&str, bool, &str)> {
    let mut p = id.splitn(3, '/');
    let (group, dir, rule) = (p.next()?, p.next()?, p.next()?);
    Some((group, dir == "egress", rule))
}

/// Where rule `rule` of `group` stands in its list, if the copy holds it.
fn rule_at(raw: &RawConfig, index: &Index, group: &str, egress: bool, rule: &str) -> Option<usize> {
    let g = &raw.security_groups[*index.groups.get(group)?];
    let list = if egress {
        g.egress.as_deref().unwrap_or(&[])
    } else {
        &g.ingress[..]
    };
    list.iter().position(|r| rule_id(r) == Some(rule))
}

/// Whether the copy holds object `kind`/`id`.
fn holds(raw: &RawConfig, index: &Index, kind: &str, id: &str) -> Result<bool> {
    let some = |x: Option<&String>| x.map(String::as_str) == Some(id);
    Ok(match kind {
        "vpc" => raw.vpcs.iter().any(|v| some(v.id.as_ref())),
        "prefix_list" => raw.prefix_lists.iter().any(|p| some(p.id.as_ref())),
        "security_group" => index.groups.contains_key(id),
        "network_interface" => index.interfaces.contains_key(id),
        "rule" => {
            let (group, egress, rule) = rule_parts(id).context("a rule's key")?;
            rule_at(raw, index, group, egress, rule).is_some()
        }
        other => bail!("a stored object of unknown kind {other:?}"),
    })
}

/// Every object of the commit is where the store says the copy holds it,
/// and every rule written belongs to a group the copy holds once the
/// commit's groups are in.
fn check(written: &[Written], raw: &RawConfig, index: &Index) -> Result<()> {
    let mut gone: HashSet<&str> = HashSet::default();
    let mut new: HashSet<&str> = HashSet::default();
    for w in written.iter().filter(|w| w.kind == "security_group") {
        match &w.row {
            None => gone.insert(&w.id),
            Some(_) if !w.held => new.insert(&w.id),
            Some(_) => false,
        };
    }
    for w in written {
        let group = match w.kind.as_str() {
            "rule" => Some(rule_parts(&w.id).context("a rule's key")?.0),
            _ => None,
        };
        // A deleted group's rules go with it.
        if group.is_some_and(|g| gone.contains(g)) && w.row.is_none() {
            continue;
        }
        let group_new = group.is_some_and(|g| new.contains(g));
        let holds = !group_new && holds(raw, index, &w.kind, &w.id)?;
        if holds != w.held {
            bail!(
                "the store {} {} {} but this copy {}",
                if w.held { "held" } else { "did not hold" },
                w.kind,
                w.id,
                if holds { "does" } else { "does not" },
            );
        }
        if let Some(g) = group
            && w.row.is_some()
            && (gone.contains(g) || !group_new && !index.groups.contains_key(g))
        {
            bail!("a stored rule {} of group {g}, which is not stored", w.id);
        }
    }
    Ok(())
}

/// Puts `now` at `at` in `list`, after every other when `at` is `None`,
/// or removes what is at `at` when `now` is `None`.
fn place<T>(list: &mut Vec<T>, at: Option<usize>, now: Option<T>) {
    match (at, now) {
        (Some(i), Some(x)) => list[i] = x,
        (None, Some(x)) => list.push(x),
        (Some(i), None) => drop(list.remove(i)),
        (None, None) => {}
    }
}

/// Puts each written object in its place (checked by [`check`]): groups,
/// interfaces, VPCs and prefix lists first, then the rules, whose groups
/// a commit may create after them.
fn apply(written: &mut [Written], raw: &mut RawConfig, index: &mut Index, touched: &mut Touched) {
    let (mut gone_groups, mut gone_ifaces) = (HashSet::default(), HashSet::default());
    for w in written.iter_mut().filter(|w| w.kind != "rule") {
        let row = w.row.take();
        match (w.kind.as_str(), row) {
            ("vpc", row) => {
                touched.context = true;
                let at = raw.vpcs.iter().position(|v| v.id.as_ref() == Some(&w.id));
                match row {
                    Some(Row::Vpc(v)) => place(&mut raw.vpcs, at, Some(v)),
                    None => place(&mut raw.vpcs, at, None),
                    Some(_) => {}
                }
            }
            ("prefix_list", row) => {
                touched.context = true;
                let at = raw
                    .prefix_lists
                    .iter()
                    .position(|p| p.id.as_ref() == Some(&w.id));
                match row {
                    Some(Row::PrefixList(p)) => place(&mut raw.prefix_lists, at, Some(p)),
                    None => place(&mut raw.prefix_lists, at, None),
                    Some(_) => {}
                }
            }
            ("security_group", row) => {
                touched.groups.insert(w.id.clone());
                match (index.groups.get(&w.id).copied(), row) {
                    (Some(i), Some(Row::Group(mut g))) => {
                        // The group's own object holds no rules: its
                        // rules stay.
                        let was = &mut raw.security_groups[i];
                        g.ingress = std::mem::take(&mut was.ingress);
                        g.egress = was.egress.take();
                        *was = g;
                    }
                    (None, Some(Row::Group(g))) => {
                        index.groups.insert(w.id.clone(), raw.security_groups.len());
                        raw.security_groups.push(g);
                    }
                    (Some(_), None) => {
                        gone_groups.insert(w.id.clone());
                    }
                    _ => {}
                }
            }
            (_, row) => {
                touched.interfaces = true;
                match (index.interfaces.get(&w.id).copied(), row) {
                    (Some(i), Some(Row::Iface(x))) => raw.network_interfaces[i] = x,
                    (None, Some(Row::Iface(x))) => {
                        index
                            .interfaces
                            .insert(w.id.clone(), raw.network_interfaces.len());
                        raw.network_interfaces.push(x);
                    }
                    (Some(_), None) => {
                        gone_ifaces.insert(w.id.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    for w in written.iter_mut().filter(|w| w.kind == "rule") {
        let Some((group, egress, rule)) = rule_parts(&w.id) else {
            continue;
        };
        touched.groups.insert(group.to_string());
        if gone_groups.contains(group) {
            continue;
        }
        let at = rule_at(raw, index, group, egress, rule);
        let Some(&gi) = index.groups.get(group) else {
            continue;
        };
        let g = &mut raw.security_groups[gi];
        let list = if egress {
            g.egress.get_or_insert_with(Vec::new)
        } else {
            &mut g.ingress
        };
        match w.row.take() {
            Some(Row::Rule { rule, .. }) => place(list, at, Some(rule)),
            None => place(list, at, None),
            Some(_) => {}
        }
    }
    // Deleted groups and interfaces last: the places of the others move.
    if !gone_groups.is_empty() {
        raw.security_groups
            .retain(|g| !g.id.as_ref().is_some_and(|id| gone_groups.contains(id)));
        index.groups = groups_at(raw);
    }
    if !gone_ifaces.is_empty() {
        raw.network_interfaces
            .retain(|i| !i.id.as_ref().is_some_and(|id| gone_ifaces.contains(id)));
        index.interfaces = interfaces_at(raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::canonical::canonical,
        source::file::parse,
        store::rows::{self, Write},
    };

    const STATE: &str = "vpcs:\n  - {name: main, cidr_blocks: [10.0.0.0/16]}\n\
prefix_lists:\n  - {name: office, max_entries: 5, entries: [{cidr: 192.0.2.0/24}]}\n\
security_groups:\n\
  - {name: web, vpc: main, ingress: [{ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [0.0.0.0/0, 10.0.0.0/8]}]}\n\
  - {name: db, vpc: main, ingress: [{ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web], prefix_list_ids: [office]}]}\n\
network_interfaces:\n\
  - {interface: w0, vpc: main, private_ipv4: [10.0.0.2], groups: [web]}\n\
  - {interface: w1, vpc: main, private_ipv4: [10.0.0.4], groups: [web]}\n\
  - {interface: d0, vpc: main, private_ipv4: [10.0.0.3], groups: [db]}\n";

    /// What etcd holds: each object's place and row, by key.
    #[derive(Default)]
    struct Held {
        places: HashMap<String, (i64, u64)>,
        rows: HashMap<String, Row>,
        revision: i64,
    }

    impl Held {
        /// Commits the change from `before` to `after` as a store does,
        /// and says what its watch would bring.
        fn commit(&mut self, before: Option<&RawConfig>, after: &RawConfig) -> Vec<Written> {
            self.revision += 1;
            let mut out = vec![];
            for (i, w) in rows::writes(before, after).unwrap().into_iter().enumerate() {
                let (kind, id, body) = match w {
                    Write::Put { kind, id, body } => (kind, id, Some(body)),
                    Write::Delete { kind, id } => (kind, id, None),
                };
                let key = format!("{kind}/{id}");
                let held = self.places.contains_key(&key);
                let (at, row) = match body {
                    Some(body) => {
                        let row = Row::parse(kind, &id, &body).unwrap();
                        let at = *self
                            .places
                            .entry(key.clone())
                            .or_insert((self.revision, i as u64));
                        self.rows.insert(key.clone(), row.clone());
                        (Some(at), Some(row))
                    }
                    None => {
                        self.places.remove(&key);
                        self.rows.remove(&key);
                        (None, None)
                    }
                };
                let kind = kind.to_string();
                out.push(Written {
                    key,
                    kind,
                    id,
                    at,
                    row,
                    held,
                });
            }
            out
        }

        /// What a whole read gives.
        fn read(&self, settings: &str) -> RawConfig {
            let mut rows: Vec<_> = (self.places.iter())
                .map(|(k, at)| (*at, self.rows[k].clone()))
                .collect();
            rows.sort_by_key(|(at, _)| *at);
            rows::assemble_rows(settings, rows.into_iter().map(|(_, r)| r)).unwrap()
        }
    }

    fn new_rule(
        raw: &RawConfig,
        group: usize,
        id: &str,
        port: u16,
    ) -> crate::model::input::RawRule {
        let mut r = raw.security_groups[group].ingress[0].clone();
        (r.from_port, r.to_port) = (Some(port.into()), Some(port.into()));
        r.ip_ranges[0].rule_id = Some(id.into());
        r
    }

    /// A copy patched with each commit is the copy a whole read gives,
    /// and says what was touched.
    #[test]
    fn a_copy_patched_with_each_commit_is_what_a_whole_read_gives() {
        let mut before = canonical(&parse("t.yaml", STATE, None, None).unwrap());
        let mut held = Held::default();
        held.commit(None, &before);
        let mut copy = before.clone();
        let mut index = Index::of(&copy);
        type Edit = fn(&mut RawConfig);
        type Said = fn(&Touched, &RawConfig) -> bool;
        fn web(r: &RawConfig) -> String {
            r.security_groups[0].id.clone().unwrap()
        }
        let edits: Vec<(&str, Edit, Said)> = vec![
            (
                "a rule added",
                |r| {
                    let rule = new_rule(r, 0, "sgr-new1", 80);
                    r.security_groups[0].ingress.push(rule);
                },
                |t, r| t.groups.contains(&web(r)) && !t.interfaces && !t.context,
            ),
            (
                "a rule's description",
                |r| {
                    r.security_groups[0].ingress[0].ip_ranges[0].description = Some("d".into());
                },
                |t, r| t.groups.contains(&web(r)),
            ),
            (
                "a rule removed",
                |r| {
                    r.security_groups[0].ingress.remove(0);
                },
                |t, r| t.groups.contains(&web(r)),
            ),
            (
                "a group added with rules",
                |r| {
                    let mut g = r.security_groups[0].clone();
                    (g.id, g.name) = (Some("sg-0new".into()), "new".into());
                    g.ingress = vec![
                        new_rule(r, 0, "sgr-new2", 81),
                        new_rule(r, 0, "sgr-new3", 82),
                    ];
                    r.security_groups.push(g);
                },
                |t, _| t.groups.contains("sg-0new"),
            ),
            (
                "a group's description",
                |r| {
                    r.security_groups[1].description = Some("words".into());
                },
                |t, r| t.groups.contains(r.security_groups[1].id.as_ref().unwrap()),
            ),
            (
                "a group deleted with its rules",
                |r| {
                    r.security_groups.remove(0);
                },
                |t, _| t.groups.len() == 1,
            ),
            (
                "interfaces changed, added and removed",
                |r| {
                    r.network_interfaces[0].private_ipv4 = vec!["10.0.0.9".into()];
                    let mut i = r.network_interfaces[1].clone();
                    (i.id, i.interface) = (Some("eni-0new".into()), "w9".into());
                    r.network_interfaces.remove(1);
                    r.network_interfaces.push(i);
                },
                |t, _| t.interfaces && t.groups.is_empty() && !t.context,
            ),
            (
                "a prefix list and a VPC",
                |r| {
                    r.prefix_lists[0].max_entries = 7;
                    let mut v = r.vpcs[0].clone();
                    (v.id, v.name) = (Some("vpc-0new".into()), Some("other".into()));
                    r.vpcs.push(v);
                },
                |t, _| t.context && !t.interfaces,
            ),
            ("quotas", |r| r.quotas.rules_per_group = 7, |t, _| t.context),
        ];
        for (what, edit, said) in edits {
            let mut after = before.clone();
            edit(&mut after);
            let mut written = held.commit(Some(&before), &after);
            let text = rows::settings(&after).unwrap();
            let settings = serde_json::from_str(&text).unwrap();
            let t = patch_copy(&mut written, settings, &mut copy, &mut index).unwrap();
            assert_eq!(copy, after, "{what}");
            assert_eq!(
                copy,
                held.read(&text),
                "{what}: not what a whole read gives"
            );
            assert!(said(&t, &before), "{what}: touched {t:?}");
            assert_eq!(index.groups, groups_at(&copy), "{what}: the index");
            assert_eq!(index.interfaces, interfaces_at(&copy), "{what}: the index");
            before = after;
        }
    }

    /// A commit that does not fit the copy (an object the store held that
    /// the copy does not) changes nothing.
    #[test]
    fn a_commit_that_does_not_fit_changes_nothing() {
        let before = canonical(&parse("t.yaml", STATE, None, None).unwrap());
        let mut held = Held::default();
        held.commit(None, &before);
        let mut after = before.clone();
        let rule = new_rule(&after, 0, "sgr-new1", 80);
        after.security_groups[0].ingress.push(rule);
        after.network_interfaces.remove(2);
        let mut written = held.commit(Some(&before), &after);
        // The copy lost a rule the store holds.
        let mut copy = before.clone();
        copy.security_groups[0].ingress.clear();
        for w in &mut written {
            w.held = true;
        }
        let was = copy.clone();
        let mut index = Index::of(&copy);
        let settings = serde_json::from_str(&rows::settings(&after).unwrap()).unwrap();
        let e = patch_copy(&mut written, settings, &mut copy, &mut index).unwrap_err();
        assert!(e.to_string().contains("this copy does not"), "{e}");
        assert_eq!(copy, was);
    }
}
