//! How the state is cut into stored objects, whatever the backend: one per
//! VPC, prefix list, group (without its rules), rule and interface, each
//! keyed by (kind, id) and held in the canonical input form as JSON. A
//! commit writes only the objects a change touched ([`writes`]); a load
//! puts the objects back together ([`assemble`]).

use std::borrow::Cow;

use anyhow::{Context, Result, bail};
use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::input::{RawConfig, RawGroup, RawIface, RawPrefixList, RawRule, RawVpc};

/// The kinds of object, in the order a state is put back together.
pub const KINDS: [&str; 5] = [
    "vpc",
    "prefix_list",
    "security_group",
    "rule",
    "network_interface",
];

/// One stored object's change.
pub enum Write {
    Put {
        kind: &'static str,
        id: String,
        body: String,
    },
    Delete {
        kind: &'static str,
        id: String,
    },
}

/// What turns `before` into `after` (both canonical), new objects in the
/// state's order: compared as values, so that only what changed is
/// serialised and written (a rule added to a group of 1,000 is one object).
pub fn writes(before: Option<&RawConfig>, after: &RawConfig) -> Result<Vec<Write>> {
    // Groups equal on both sides are skipped whole: a change touches one
    // group, and a group's rules are most of the state.
    let same = unchanged(before, after);
    let old: HashMap<_, _> = before
        .map(|b| objects(b, &same))
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let new = objects(after, &same)?;
    let mut out = Vec::new();
    for ((kind, id), obj) in &new {
        if old.get(&(*kind, id.clone())) != Some(obj) {
            out.push(Write::Put {
                kind,
                id: id.clone(),
                body: obj.body()?,
            });
        }
    }
    let new: HashSet<_> = new.into_iter().map(|(k, _)| k).collect();
    for (kind, id) in old.into_keys().filter(|k| !new.contains(k)) {
        out.push(Write::Delete { kind, id });
    }
    Ok(out)
}

/// The rows of one group (a schema migration's).
pub fn group_rows(g: &RawGroup) -> Result<Vec<Write>> {
    let mut rows = Objects::new();
    group_objects(g, &Same::default(), &mut rows)?;
    rows.into_iter()
        .map(|((kind, id), obj)| {
            Ok(Write::Put {
                kind,
                id,
                body: obj.body()?,
            })
        })
        .collect()
}

/// The state's settings (account, conntrack table, quotas), stored apart.
pub fn settings(after: &RawConfig) -> Result<String> {
    body(&RawConfig {
        account_id: after.account_id.clone(),
        conntrack: after.conntrack,
        quotas: after.quotas,
        ..Default::default()
    })
}

/// A stored object, parsed: what a fleet's agent keeps of each (etcd), so
/// that a change costs a parse of what it wrote, not of the whole state.
#[derive(Clone)]
pub enum Row {
    Vpc(RawVpc),
    PrefixList(RawPrefixList),
    Group(RawGroup),
    Rule {
        group: String,
        egress: bool,
        rule: RawRule,
    },
    Iface(RawIface),
}

impl Row {
    /// The object of `kind` and `id` whose stored body is `body`.
    pub fn parse(kind: &str, id: &str, body: &str) -> Result<Row> {
        let bad = || format!("the stored {kind} {id}");
        Ok(match kind {
            "vpc" => Row::Vpc(parse(body).with_context(bad)?),
            "prefix_list" => Row::PrefixList(parse(body).with_context(bad)?),
            "security_group" => Row::Group(parse(body).with_context(bad)?),
            "rule" => {
                let r: StoredRule = parse(body).with_context(bad)?;
                Row::Rule {
                    group: r.group.into_owned(),
                    egress: r.egress,
                    rule: r.rule.into_owned(),
                }
            }
            "network_interface" => Row::Iface(parse(body).with_context(bad)?),
            other => bail!("a stored object of unknown kind {other:?} ({id})"),
        })
    }
}

/// The state from its settings and its objects, `rows` as (kind, id, body)
/// in the order they were first written (each kind's own order is kept).
pub fn assemble(
    settings: &str,
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Result<RawConfig> {
    let rows = rows
        .into_iter()
        .map(|(kind, id, body)| Row::parse(&kind, &id, &body))
        .collect::<Result<Vec<_>>>()?;
    assemble_rows(settings, rows)
}

/// As [`assemble`], from objects already parsed.
pub fn assemble_rows(settings: &str, rows: impl IntoIterator<Item = Row>) -> Result<RawConfig> {
    let mut raw: RawConfig = serde_json::from_str(settings).context("the stored settings")?;
    let mut rules = Vec::new();
    for row in rows {
        match row {
            Row::Vpc(x) => raw.vpcs.push(x),
            Row::PrefixList(x) => raw.prefix_lists.push(x),
            Row::Group(x) => raw.security_groups.push(x),
            Row::Rule {
                group,
                egress,
                rule,
            } => rules.push((group, egress, rule)),
            Row::Iface(x) => raw.network_interfaces.push(x),
        }
    }
    // Each rule to its group, in the order the rules were written.
    let at: HashMap<String, usize> = raw
        .security_groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| Some((g.id.clone()?, i)))
        .collect();
    for (group, egress, rule) in rules {
        let Some(&i) = at.get(&group) else {
            bail!("a stored rule of group {group}, which is not stored");
        };
        let g = &mut raw.security_groups[i];
        let list = if egress {
            g.egress.get_or_insert_with(Vec::new)
        } else {
            &mut g.ingress
        };
        list.push(rule);
    }
    Ok(raw)
}

pub fn parse<T: DeserializeOwned>(body: &str) -> Result<T> {
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
pub(super) fn rule_id(r: &RawRule) -> Option<&str> {
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
