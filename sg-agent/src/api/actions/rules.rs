//! Rules: authorize, revoke (by permission or by id), describe, modify,
//! and their descriptions. A request's permissions are read into the input
//! form and resolved by validation itself, so that `10.0.0.1/8` means here
//! what it means in a file.

use foldhash::HashSet;

use serde_json::{Value, json};

use super::{find_group, group_not_found, member, raw_group, required, state, string, tag_specs};
use crate::{
    api::{
        Permissions, Snapshot, Txn,
        error::{ApiError, ApiResult},
        filters::{self, Filterable},
        validate_request,
        views::{self, Scope, is_default_vpc},
    },
    model::{
        Desired, Group, Rule, canonical,
        input::{RawConfig, RawGroup, RawPeer, RawRule},
    },
};

fn rules_of(g: &Group, egress: bool) -> &[Rule] {
    if egress { &g.egress } else { &g.ingress }
}

/// The permissions of a request: `IpPermissions.N`, or the legacy
/// top-level `IpProtocol`/`FromPort`/`ToPort`/`CidrIp`/`SourceSecurityGroupName`.
fn permissions(p: &Value) -> ApiResult<Vec<RawRule>> {
    if let Some(Value::Array(list)) = p.get("IpPermissions") {
        for (i, perm) in list.iter().enumerate() {
            if perm.get("IpProtocol").is_none() {
                return Err(ApiError::missing(&format!(
                    "IpPermissions.{}.IpProtocol",
                    i + 1
                )));
            }
        }
    }
    let mut perms: Vec<RawRule> = member(p, "IpPermissions")?;
    let legacy_peer = string(p, "CidrIp").or_else(|| string(p, "SourceSecurityGroupName"));
    if let Some(peer) = legacy_peer {
        let mut r = RawRule {
            ip_protocol: string(p, "IpProtocol").unwrap_or_else(|| "-1".into()),
            from_port: p.get("FromPort").and_then(Value::as_i64),
            to_port: p.get("ToPort").and_then(Value::as_i64),
            ..Default::default()
        };
        let peer = RawPeer {
            value: peer,
            ..Default::default()
        };
        if p.get("CidrIp").is_some() {
            r.ip_ranges.push(peer);
        } else {
            r.user_id_group_pairs.push(peer);
        }
        perms.push(r);
    }
    for r in &mut perms {
        for peer in r.peers_mut() {
            // Ids are the server's to give.
            peer.rule_id = None;
        }
    }
    Ok(perms)
}

fn dir_mut(g: &mut RawGroup, egress: bool) -> &mut Vec<RawRule> {
    if egress {
        g.egress.get_or_insert_with(Vec::new)
    } else {
        &mut g.ingress
    }
}

fn authorize(txn: &mut Txn, p: &Value, egress: bool) -> ApiResult<(Value, Desired)> {
    let before = txn.before;
    let g = find_group(before, p)?;
    let mut perms = permissions(p)?;
    if perms.is_empty() {
        return Err(ApiError::missing("IpPermissions"));
    }
    let tags = tag_specs(p, "security-group-rule")?;
    for r in &mut perms {
        for peer in r.peers_mut() {
            peer.tags = tags.clone();
        }
    }
    let group = txn
        .raw
        .security_groups
        .iter()
        .position(|x| x.id.as_deref() == Some(g.id.as_str()))
        .ok_or_else(|| group_not_found(&g.id))?;
    let list = dir_mut(raw_group(txn, &g.id)?, egress);
    let first = list.len();
    list.extend(perms);
    let dir = if egress { "egress" } else { "ingress" };
    let after = txn.validate_permissions(&Permissions { group, dir, first })?;
    let old: HashSet<&str> = rules_of(g, egress).iter().map(|r| r.id.as_str()).collect();
    let ag = after.group(&g.id).expect("still there");
    let new: Vec<&Rule> = rules_of(ag, egress)
        .iter()
        .filter(|r| !old.contains(r.id.as_str()))
        .collect();
    // The request's permissions as the state keeps them, one rule per peer
    // with its id: the new rules come last, in their order (validation
    // keeps a direction's order), so the state is canonical again.
    let list = dir_mut(raw_group(txn, &g.id)?, egress);
    list.truncate(first);
    list.extend(new.iter().map(|r| canonical::rule(r)));
    txn.canonical = true;
    let created: Vec<Value> = new
        .iter()
        .map(|r| views::rule(r, ag, egress, &txn.scope))
        .collect();
    txn.resources.push(g.id.clone());
    txn.resources.extend(
        created
            .iter()
            .filter_map(|r| r["SecurityGroupRuleId"].as_str().map(String::from)),
    );
    Ok((
        json!({"Return": true, "SecurityGroupRules": created}),
        after,
    ))
}

pub fn authorize_ingress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    authorize(txn, p, false)
}

pub fn authorize_egress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    authorize(txn, p, true)
}

/// The rules `perms` stand for, resolved by validation against the state:
/// the group's rules of that direction replaced by them, in a copy.
/// The copy keeps every VPC, prefix list and group (peers name them) but no
/// other rule and no interface: resolving a few permissions need not
/// validate every rule of the state.
fn resolve(txn: &Txn, g: &Group, egress: bool, perms: Vec<RawRule>) -> ApiResult<Vec<Rule>> {
    let raw = &txn.raw;
    let mut probe = RawConfig {
        account_id: raw.account_id.clone(),
        vpcs: raw.vpcs.clone(),
        prefix_lists: raw.prefix_lists.clone(),
        security_groups: raw
            .security_groups
            .iter()
            .map(RawGroup::without_rules)
            .collect(),
        conntrack: raw.conntrack,
        quotas: raw.quotas,
        ..Default::default()
    };
    let group = probe
        .security_groups
        .iter()
        .position(|x| x.id.as_deref() == Some(g.id.as_str()))
        .ok_or_else(|| group_not_found(&g.id))?;
    *dir_mut(&mut probe.security_groups[group], egress) = perms;
    // The request's permissions are the whole direction: IpPermissions.1 is
    // its first rule.
    let dir = if egress { "egress" } else { "ingress" };
    let at = Permissions {
        group,
        dir,
        first: 0,
    };
    let d = validate_request(&mut probe, txn.prior, txn.before, Some(&at))?;
    Ok(rules_of(d.group(&g.id).expect("kept"), egress).to_vec())
}

/// Whether two rules match the same traffic from the same peer.
fn same(a: &Rule, b: &Rule) -> bool {
    use crate::model::Peer;
    (a.protocol, a.from_port, a.to_port) == (b.protocol, b.from_port, b.to_port)
        && match (&a.peer, &b.peer) {
            (Peer::Group { id: x, .. }, Peer::Group { id: y, .. }) => x == y,
            (x, y) => x == y,
        }
}

fn remove_ids(g: &mut RawGroup, ids: &HashSet<String>) {
    let keep = |r: &mut RawRule| {
        r.retain_peers(|p| p.rule_id.as_ref().is_none_or(|id| !ids.contains(id)));
        r.peers().next().is_some()
    };
    g.ingress.retain_mut(keep);
    if let Some(e) = &mut g.egress {
        e.retain_mut(keep);
    }
}

/// The rules a call names by `SecurityGroupRuleId.N` and by permission.
fn named(txn: &Txn, g: &Group, p: &Value, egress: bool) -> ApiResult<(Vec<Rule>, Vec<Rule>)> {
    let have = rules_of(g, egress);
    let ids: Vec<String> = member(p, "SecurityGroupRuleIds")?;
    let mut found = Vec::new();
    for id in &ids {
        match have.iter().find(|r| r.id == *id) {
            Some(r) => found.push(r.clone()),
            None => {
                return Err(ApiError::client(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!(
                        "The security group rule ID '{id}' does not exist in {}",
                        g.id
                    ),
                ));
            }
        }
    }
    let perms = permissions(p)?;
    if ids.is_empty() && perms.is_empty() {
        return Err(ApiError::missing("IpPermissions"));
    }
    let mut unknown = Vec::new();
    if !perms.is_empty() {
        for w in resolve(txn, g, egress, perms)? {
            match have.iter().find(|r| same(r, &w)) {
                Some(r) => found.push(Rule {
                    description: w.description.clone(),
                    ..r.clone()
                }),
                None => unknown.push(w),
            }
        }
    }
    Ok((found, unknown))
}

fn revoke(txn: &mut Txn, p: &Value, egress: bool) -> ApiResult<(Value, Desired)> {
    let before = txn.before;
    let g = find_group(before, p)?;
    let (found, unknown) = named(txn, g, p, egress)?;
    let default_vpc = txn
        .before
        .vpcs
        .iter()
        .any(|v| v.id == g.vpc && is_default_vpc(v));
    if !unknown.is_empty() && !default_vpc {
        return Err(ApiError::client(
            "InvalidPermission.NotFound",
            "The specified rule does not exist in this security group.",
        ));
    }
    let ids: HashSet<String> = found.iter().map(|r| r.id.clone()).collect();
    remove_ids(raw_group(txn, &g.id)?, &ids);
    // Whole rules went (one peer each, in the canonical form).
    txn.canonical = true;
    let after = txn.validate()?;
    txn.resources.push(g.id.clone());
    txn.resources.extend(ids.iter().cloned());
    let mut out = json!({
        "Return": true,
        "RevokedSecurityGroupRules": found.iter().map(|r| views::revoked(r, g, egress)).collect::<Vec<_>>(),
    });
    if !unknown.is_empty() {
        // The default VPC's way: what matched is revoked, the rest reported.
        out["UnknownIpPermissions"] = views::permissions(&unknown, &txn.scope);
    }
    Ok((out, after))
}

pub fn revoke_ingress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    revoke(txn, p, false)
}

pub fn revoke_egress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    revoke(txn, p, true)
}

/// The input form of the rule `id` (one peer), wherever it is in `g`.
fn raw_rule<'g>(g: &'g mut RawGroup, id: &str) -> Option<&'g mut RawRule> {
    g.rules_mut()
        .find(|r| r.peers().any(|p| p.rule_id.as_deref() == Some(id)))
}

fn rule_not_found(id: &str) -> ApiError {
    ApiError::client(
        "InvalidSecurityGroupRuleId.NotFound",
        format!("The security group rule ID '{id}' does not exist"),
    )
}

pub fn modify(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Req {
        ip_protocol: Option<String>,
        from_port: Option<i64>,
        to_port: Option<i64>,
        cidr_ipv4: Option<String>,
        cidr_ipv6: Option<String>,
        prefix_list_id: Option<String>,
        referenced_group_id: Option<String>,
        description: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Update {
        security_group_rule_id: String,
        #[serde(default)]
        security_group_rule: Req,
    }
    let gid = required(p, "GroupId")?;
    let before = txn.before;
    let g = find_group(before, p)?;
    let updates: Vec<Update> = member(p, "SecurityGroupRules")?;
    for u in updates {
        let id = u.security_group_rule_id;
        let raw = raw_group(txn, &gid)?;
        let r = raw_rule(raw, &id).ok_or_else(|| rule_not_found(&id))?;
        let old_tags = r
            .peers_mut()
            .next()
            .map(|p| p.tags.clone())
            .unwrap_or_default();
        let q = u.security_group_rule;
        let peer = |value: String| RawPeer {
            value,
            description: q.description.clone(),
            rule_id: Some(id.clone()),
            tags: old_tags.clone(),
            ..Default::default()
        };
        let mut new = RawRule {
            ip_protocol: q.ip_protocol.clone().ok_or_else(|| {
                ApiError::missing("SecurityGroupRule.N.SecurityGroupRule.IpProtocol")
            })?,
            from_port: q.from_port,
            to_port: q.to_port,
            ..Default::default()
        };
        let targets = [
            &q.cidr_ipv4,
            &q.cidr_ipv6,
            &q.prefix_list_id,
            &q.referenced_group_id,
        ];
        if targets.iter().filter(|t| t.is_some()).count() != 1 {
            return Err(ApiError::invalid(
                "a rule names exactly one of CidrIpv4, CidrIpv6, PrefixListId, ReferencedGroupId",
            ));
        }
        if let Some(c) = &q.cidr_ipv4 {
            new.ip_ranges.push(peer(c.clone()));
        } else if let Some(c) = &q.cidr_ipv6 {
            new.ipv6_ranges.push(peer(c.clone()));
        } else if let Some(c) = &q.prefix_list_id {
            new.prefix_list_ids.push(peer(c.clone()));
        } else if let Some(c) = &q.referenced_group_id {
            new.user_id_group_pairs.push(peer(c.clone()));
        }
        *r = new;
        txn.resources.push(id);
    }
    let after = txn.validate()?;
    txn.resources.push(g.id.clone());
    Ok((json!({"Return": true}), after))
}

fn descriptions(txn: &mut Txn, p: &Value, egress: bool) -> ApiResult<(Value, Desired)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ById {
        security_group_rule_id: String,
        description: Option<String>,
    }
    let before = txn.before;
    let g = find_group(before, p)?;
    let by_id: Vec<ById> = member(p, "SecurityGroupRuleDescriptions")?;
    let mut set: Vec<(String, Option<String>)> = Vec::new();
    for b in by_id {
        if !rules_of(g, egress)
            .iter()
            .any(|r| r.id == b.security_group_rule_id)
        {
            return Err(rule_not_found(&b.security_group_rule_id));
        }
        set.push((b.security_group_rule_id, b.description));
    }
    if p.get("IpPermissions").is_some() {
        let (found, unknown) = named(
            txn,
            g,
            &json!({"IpPermissions": p["IpPermissions"]}),
            egress,
        )?;
        if !unknown.is_empty() {
            return Err(ApiError::client(
                "InvalidPermission.NotFound",
                "The specified rule does not exist in this security group.",
            ));
        }
        set.extend(found.into_iter().map(|r| (r.id, r.description)));
    }
    if set.is_empty() {
        return Err(ApiError::missing("IpPermissions"));
    }
    let raw = raw_group(txn, &g.id)?;
    for (id, d) in set {
        let r = raw_rule(raw, &id).ok_or_else(|| rule_not_found(&id))?;
        for peer in r.peers_mut() {
            peer.description = d.clone();
        }
    }
    let after = txn.validate()?;
    txn.resources.push(g.id.clone());
    Ok((json!({"Return": true}), after))
}

pub fn describe_ingress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    descriptions(txn, p, false)
}

pub fn describe_egress(txn: &mut Txn, p: &Value) -> ApiResult<(Value, Desired)> {
    descriptions(txn, p, true)
}

struct R<'a>(&'a Rule, &'a Group, bool);

impl Filterable for R<'_> {
    const NAMES: &'static [&'static str] = &["group-id", "security-group-rule-id"];
    fn values(&self, name: &str) -> Vec<String> {
        match name {
            "group-id" => vec![self.1.id.clone()],
            "security-group-rule-id" => vec![self.0.id.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &std::collections::BTreeMap<String, String> {
        &self.0.tags
    }
}

pub fn describe(s: &Snapshot, p: &Value, scope: &Scope) -> ApiResult<Value> {
    let d = state(s);
    let ids: Vec<String> = member(p, "SecurityGroupRuleIds")?;
    let all: Vec<R> = d
        .groups
        .iter()
        .flat_map(|g| {
            g.ingress
                .iter()
                .map(move |r| R(r, g, false))
                .chain(g.egress.iter().map(move |r| R(r, g, true)))
        })
        .collect();
    for id in &ids {
        if !all.iter().any(|r| r.0.id == *id) {
            return Err(rule_not_found(id));
        }
    }
    let picked: Vec<&R> = all
        .iter()
        .filter(|r| ids.is_empty() || ids.contains(&r.0.id))
        .collect();
    let kept = filters::apply(picked, &filters::of(p)?)?;
    let (page, next) = filters::page(kept, p, (5, 1000))?;
    Ok(views::object([
        (
            "SecurityGroupRules",
            Value::Array(
                page.iter()
                    .map(|r| views::rule(r.0, r.1, r.2, scope))
                    .collect(),
            ),
        ),
        ("NextToken", next.into()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::codec, model::canonical::canonical, source};

    /// Authorize and revoke keep the state canonical, as they claim: what
    /// the next call of a batch starts from and what is stored are
    /// `canonical` of the result, exactly.
    #[test]
    fn authorize_and_revoke_leave_the_canonical_form() {
        let text = r#"
security_groups:
  - name: web
    ingress:
      - {ip_protocol: tcp, from_port: 80, to_port: 80, ip_ranges: [10.0.0.0/8, 10.1.0.0/16]}
  - {name: db}
"#;
        let mut state =
            source::file::parse("t.yaml", text, None, None).unwrap_or_else(|e| panic!("{e}"));
        let mut raw = canonical(&state);
        let web = state
            .groups
            .iter()
            .find(|g| g.name == "web")
            .unwrap()
            .id
            .clone();
        let db = state
            .groups
            .iter()
            .find(|g| g.name == "db")
            .unwrap()
            .id
            .clone();
        let at = |pairs: &[(&str, &str)]| {
            let mut all = vec![("GroupId".to_string(), web.clone())];
            all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            all
        };
        let calls: Vec<(&str, Vec<(String, String)>)> = vec![
            (
                "AuthorizeSecurityGroupIngress",
                at(&[
                    ("IpPermissions.1.IpProtocol", "TCP"),
                    ("IpPermissions.1.FromPort", "22"),
                    ("IpPermissions.1.ToPort", "22"),
                    ("IpPermissions.1.IpRanges.1.CidrIp", "10.2.0.1/16"),
                    ("IpPermissions.1.IpRanges.2.CidrIp", "10.3.0.0/16"),
                    ("IpPermissions.1.IpRanges.2.Description", "ops"),
                    ("IpPermissions.2.IpProtocol", "-1"),
                    ("IpPermissions.2.Groups.1.GroupId", &db),
                    ("TagSpecification.1.ResourceType", "security-group-rule"),
                    ("TagSpecification.1.Tag.1.Key", "team"),
                    ("TagSpecification.1.Tag.1.Value", "ops"),
                ]),
            ),
            (
                "RevokeSecurityGroupIngress",
                at(&[
                    ("IpPermissions.1.IpProtocol", "tcp"),
                    ("IpPermissions.1.FromPort", "80"),
                    ("IpPermissions.1.ToPort", "80"),
                    ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
                ]),
            ),
            (
                "AuthorizeSecurityGroupEgress",
                at(&[
                    ("IpPermissions.1.IpProtocol", "udp"),
                    ("IpPermissions.1.FromPort", "53"),
                    ("IpPermissions.1.ToPort", "53"),
                    ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "::/0"),
                ]),
            ),
        ];
        for (action, params) in calls {
            let p = codec::decode(action, &params).unwrap_or_else(|e| panic!("{}", e.message));
            let mut txn = Txn {
                raw: raw.clone(),
                prior: Some(&raw),
                before: &state,
                scope: Scope {
                    account: "123456789012".into(),
                    region: "us-east-1".into(),
                },
                resources: vec![],
                canonical: false,
            };
            let (_, after) = match action {
                "AuthorizeSecurityGroupIngress" => authorize_ingress(&mut txn, &p),
                "AuthorizeSecurityGroupEgress" => authorize_egress(&mut txn, &p),
                _ => revoke_ingress(&mut txn, &p),
            }
            .unwrap_or_else(|e| panic!("{action}: {}", e.message));
            assert!(txn.canonical, "{action}");
            assert_eq!(txn.raw, canonical(&after), "{action}");
            assert_ne!(after, state, "{action} changed nothing");
            (raw, state) = (txn.raw, after);
        }
        // The revoke by id too, of a rule the first call made.
        let id = state.groups.iter().find(|g| g.id == web).unwrap().ingress[0]
            .id
            .clone();
        let p = codec::decode(
            "RevokeSecurityGroupIngress",
            &at(&[("SecurityGroupRuleId.1", &id)]),
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        let mut txn = Txn {
            raw: raw.clone(),
            prior: Some(&raw),
            before: &state,
            scope: Scope {
                account: "123456789012".into(),
                region: "us-east-1".into(),
            },
            resources: vec![],
            canonical: false,
        };
        let (_, after) = revoke_ingress(&mut txn, &p).unwrap_or_else(|e| panic!("{}", e.message));
        assert!(
            after
                .group(&web)
                .unwrap()
                .ingress
                .iter()
                .all(|r| r.id != id)
        );
        assert_eq!(txn.raw, canonical(&after));
    }
}
