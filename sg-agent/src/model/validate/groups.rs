//! Security groups: their identity first (name, description, VPC, id), so
//! that rules can refer to any of them; then every VPC's default group.

use std::{collections::BTreeMap, sync::Arc};

use foldhash::{HashMap, HashMapExt};

use super::{
    ids::{make_id, object_id, valid_text},
    rules::{default_egress, rule},
    vpcs::Vpcs,
};
use crate::model::{
    Collector, Group, INVALID, Peer, Protocol,
    input::{RawConfig, RawGroup},
};

/// The groups written (in the file and imported), each with where it came
/// from.
pub fn identities<'r>(
    v: &mut Collector,
    raw: &'r RawConfig,
    vpcs: &Vpcs,
    account: &str,
) -> (Vec<Group>, Vec<Option<&'r RawGroup>>) {
    // Groups: first their identity, so that rules can refer to any of them.
    let sources: Vec<&RawGroup> = raw
        .security_groups
        .iter()
        .chain(raw.aws_security_groups.iter())
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    // Where each (VPC, name) and id is in `groups`: thousands of groups.
    let mut names: HashMap<(String, String), usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut group_src: Vec<Option<&RawGroup>> = Vec::new();
    for g in &sources {
        let (doc, path) = (g.origin.doc, g.origin.path.as_str());
        let name = g.name.trim_end().to_string();
        let obj = format!("security group {name:?}");
        let mut ok = true;
        if name.is_empty() || name.len() > 255 {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name is 1-255 characters",
            );
            ok = false;
        } else if !valid_text(&name) {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name may hold only a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*",
            );
            ok = false;
        } else if name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("sg-")) {
            v.err(
                doc,
                &format!("{path}.name"),
                &obj,
                INVALID,
                "a group name may not start with sg-",
            );
            ok = false;
        }
        // Without a description the name (checked above) stands in for it.
        let description = g.description.clone().unwrap_or_else(|| name.clone());
        if g.description.is_some()
            && (description.is_empty() || description.len() > 255 || !valid_text(&description))
        {
            v.err(doc, &format!("{path}.description"), &obj, INVALID, "a description is 1-255 characters of a-z A-Z 0-9, spaces and ._-:/()#,@[]+=&;{}!$*");
            ok = false;
        }
        let Some(vpc) = vpcs.resolve(v, &g.vpc, doc, &format!("{path}.vpc"), &obj) else {
            continue;
        };
        let Some(id) = object_id(v, &g.id, "sg", &[&vpc, &name], doc, path, &obj) else {
            continue;
        };
        let taken = [names.get(&(vpc.clone(), name.clone())), ids.get(&id)];
        if let Some(other) = taken.into_iter().flatten().min().map(|&i| &groups[i]) {
            v.err(
                doc,
                path,
                &obj,
                "InvalidGroup.Duplicate",
                format!(
                    "the group {:?} ({}) already exists in {vpc}",
                    other.name, other.id
                ),
            );
            continue;
        }
        if !ok {
            continue;
        }
        // The first of each wins, as a scan would find it.
        names
            .entry((vpc.clone(), name.clone()))
            .or_insert(groups.len());
        ids.entry(id.clone()).or_insert(groups.len());
        groups.push(Group {
            id,
            name: name.clone(),
            description,
            vpc,
            owner: g.owner_id.clone().unwrap_or_else(|| account.to_string()),
            tags: g.tags.clone(),
            ingress: Arc::default(),
            egress: Arc::default(),
            is_default: name == "default",
        });
        group_src.push(Some(g));
    }
    (groups, group_src)
}

/// Adds the default group of every VPC that does not write one.
pub fn defaults(
    groups: &mut Vec<Group>,
    group_src: &mut Vec<Option<&RawGroup>>,
    vpcs: &Vpcs,
    account: &str,
) {
    // Every VPC has its default group (created when not written).
    for vpc in &vpcs.list {
        if !groups.iter().any(|g| g.vpc == vpc.id && g.is_default) {
            let id = make_id("sg", &[&vpc.id, "default"]);
            let all = rule(
                &id,
                "ingress",
                Protocol::All,
                -1,
                -1,
                Peer::Group {
                    id: id.clone(),
                    vpc: vpc.id.clone(),
                    peering: None,
                    stale: false,
                },
                None,
            );
            let g = Group {
                id: id.clone(),
                name: "default".into(),
                description: "default VPC security group".into(),
                vpc: vpc.id.clone(),
                owner: account.to_string(),
                tags: BTreeMap::new(),
                ingress: Arc::new([all]),
                egress: default_egress(&id, vpc).into(),
                is_default: true,
            };
            groups.push(g);
            group_src.push(None);
        }
    }
}
