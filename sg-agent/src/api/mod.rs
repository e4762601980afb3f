//! The EC2 Query API (docs/api.md): what AWS clients (the AWS CLI, boto3,
//! Terraform's `hashicorp/aws`) send, answered as EC2 answers. This module
//! decodes and encodes ([`codec`]), authenticates ([`sigv4`], [`access`])
//! and records ([`audit`]); the model validates and the agent enforces:
//! reads are answered from the state the agent last published, and each
//! change is sent to the agent's loop, which validates, enforces, commits
//! and then answers.

pub mod access;
mod actions;
pub mod audit;
pub mod codec;
pub mod error;
mod filters;
mod server;
pub mod sigv4;
pub mod views;

use std::{collections::BTreeSet, sync::Arc};

use serde_json::Value;
use tokio::sync::oneshot;

pub use server::{ApiOptions, dry_run_ok as server_dry_run, serve};

use crate::model::{Desired, Prior, Since, input::RawConfig, validate_from};
use error::{ApiError, ApiResult};
use views::Scope;

/// The default port of the API (`sg-agent run --api 127.0.0.1:8733`).
pub const DEFAULT_PORT: u16 = 8733;

/// What reads see: the state in force, as the agent last published it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Shared with the agent: a state of thousands of rules is not copied
    /// per change.
    pub desired: Arc<Desired>,
    /// The API may change the state (managed mode); otherwise the file rules.
    pub managed: bool,
    /// Where the state comes from, for messages.
    pub source: String,
    /// Linux interfaces the agent enforces on right now.
    pub enforced: BTreeSet<String>,
    /// Each group's `DescribeSecurityGroups` item as XML, by group and
    /// region, made at the first read of this state: clients poll, and a
    /// state changes far less often than it is read.
    pub group_xml: std::sync::Mutex<std::collections::HashMap<(String, String), Arc<str>>>,
    /// A fleet's live hosts and their last heartbeats (docs/fleet.md).
    pub heartbeats: Option<crate::store::etcd::Heartbeats>,
}

impl Snapshot {
    /// Whether an interface is enforced (`in-use`) or not (`available`),
    /// and its host's last heartbeat: an interface of this host is in use
    /// while this agent enforces it, another host's while its host's lease
    /// lives.
    pub fn status(&self, i: &crate::model::Interface) -> (&'static str, Option<String>) {
        let beat = i.host.as_ref().and_then(|h| {
            let beats = self.heartbeats.as_ref()?.read().ok()?;
            beats.get(h).cloned()
        });
        let used = if i.here() {
            self.enforced.contains(&i.name)
        } else {
            beat.as_ref().is_some_and(|(_, alive)| *alive)
        };
        (
            if used { "in-use" } else { "available" },
            beat.map(|(t, _)| t),
        )
    }
}

/// A change of the managed state, being made: the input form to change,
/// and the state it starts from.
pub struct Txn<'a> {
    pub raw: RawConfig,
    /// The state the change started from, when `before` is its
    /// validation (`None`: a fleet's store moved on to a state that did not
    /// validate, and the change is validated whole).
    pub prior: Option<&'a RawConfig>,
    pub before: &'a Desired,
    pub scope: Scope,
    /// Ids the call names or creates, for the audit trail.
    pub resources: Vec<String>,
    /// The change left `raw` as the canonical form of its result (it began
    /// canonical, and the change added rules in their canonical form or
    /// removed whole ones): the next call of a batch starts from it, and
    /// the state need not be written out again for each call.
    pub canonical: bool,
}

/// Where a request's own permissions sit in the state being validated:
/// `security_groups[group].{dir}[first..]` are its `IpPermissions.1..`.
pub struct Permissions {
    pub group: usize,
    pub dir: &'static str,
    pub first: usize,
}

/// Places validation problems in a request: a problem in the request's own
/// permissions is named by its parameter (`IpPermissions.1.IpRanges.2.CidrIp`),
/// others by the object (which the message names too).
struct InRequest<'a>(Option<&'a Permissions>);

impl crate::model::Locate for InRequest<'_> {
    fn locate(&self, _doc: usize, path: &str) -> (String, Option<usize>) {
        let param = self.0.and_then(|p| {
            let rest = path.strip_prefix(&format!("security_groups[{}].{}[", p.group, p.dir))?;
            let (i, rest) = rest.split_once(']')?;
            let n = i.parse::<usize>().ok()?.checked_sub(p.first)? + 1;
            Some(format!("IpPermissions.{n}{}", member(rest)))
        });
        (param.unwrap_or_default(), None)
    }
}

/// A permission's part, as the query protocol names it.
fn member(rest: &str) -> String {
    const LISTS: [(&str, &str); 4] = [
        ("ip_ranges", "IpRanges.{}.CidrIp"),
        ("ipv6_ranges", "Ipv6Ranges.{}.CidrIpv6"),
        ("prefix_list_ids", "PrefixListIds.{}.PrefixListId"),
        ("user_id_group_pairs", "Groups.{}.GroupId"),
    ];
    let rest = rest.trim_start_matches('.');
    for (raw, api) in LISTS {
        if let Some(r) = rest.strip_prefix(raw).and_then(|r| r.strip_prefix('[')) {
            let (j, tail) = r.split_once(']').unwrap_or((r, ""));
            let n = j.parse::<usize>().map_or(0, |j| j + 1);
            let head = api.replace("{}", &n.to_string());
            return match tail.trim_start_matches('.') {
                "description" => format!(
                    ".{}.Description",
                    head.rsplit_once('.').map_or(head.as_str(), |h| h.0)
                ),
                _ => format!(".{head}"),
            };
        }
    }
    match rest {
        "ip_protocol" => ".IpProtocol".into(),
        _ => String::new(),
    }
}

impl Txn<'_> {
    /// Validates the changed state with the validation files go through.
    pub fn validate(&mut self) -> ApiResult<Desired> {
        self.check(None)
    }

    /// As [`Txn::validate`], naming problems in the request's permissions by
    /// their parameters.
    pub fn validate_permissions(&mut self, at: &Permissions) -> ApiResult<Desired> {
        self.check(Some(at))
    }

    fn check(&mut self, at: Option<&Permissions>) -> ApiResult<Desired> {
        validate_request(&mut self.raw, self.prior, self.before, at)
    }
}

/// Validates `raw`, a state a request made from `prior` (validated as
/// `before`, when given), placing problems in the request's permissions
/// `at` by their parameters.
pub fn validate_request(
    raw: &mut RawConfig,
    prior: Option<&RawConfig>,
    before: &Desired,
    at: Option<&Permissions>,
) -> ApiResult<Desired> {
    // Each group where validation's paths say it is, for the while.
    for (i, g) in raw.security_groups.iter_mut().enumerate() {
        g.origin.path = format!("security_groups[{i}]");
    }
    let prior = prior.map(|raw| Prior {
        desired: before,
        since: Since::Raw(raw),
    });
    let d = validate_from(raw, &InRequest(at), Some(before), prior).map_err(ApiError::from);
    for g in &mut raw.security_groups {
        g.origin = Default::default();
    }
    d
}

pub type Change = Box<dyn FnOnce(&mut Txn) -> ApiResult<(Value, Desired)> + Send>;

/// A mutating call, sent to the agent's loop.
pub struct Call {
    pub action: String,
    pub scope: Scope,
    pub dry_run: bool,
    pub change: Change,
    /// The audit record so far (who, what, from where).
    pub record: audit::Draft,
    pub reply: oneshot::Sender<ApiResult<Value>>,
}

/// The answer to a change that the agent does not make (file mode).
pub fn read_only(source: &str) -> ApiError {
    ApiError::client(
        "UnsupportedOperation",
        format!(
            "sg-agent enforces the file {source}: change the file (the API only reads in file mode; run with --managed to change state through the API)"
        ),
    )
}

pub fn shared(s: Snapshot) -> Arc<Snapshot> {
    Arc::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Locate;

    #[test]
    fn a_requests_permissions_are_named_by_their_parameters() {
        let at = Permissions {
            group: 3,
            dir: "ingress",
            first: 6,
        };
        let l = InRequest(Some(&at));
        let place = |p: &str| l.locate(0, p).0;
        assert_eq!(
            place("security_groups[3].ingress[7].ip_ranges[1]"),
            "IpPermissions.2.IpRanges.2.CidrIp"
        );
        assert_eq!(
            place("security_groups[3].ingress[6].ipv6_ranges[0].description"),
            "IpPermissions.1.Ipv6Ranges.1.Description"
        );
        assert_eq!(
            place("security_groups[3].ingress[6].user_id_group_pairs[2]"),
            "IpPermissions.1.Groups.3.GroupId"
        );
        assert_eq!(
            place("security_groups[3].ingress[8].ip_protocol"),
            "IpPermissions.3.IpProtocol"
        );
        assert_eq!(place("security_groups[3].ingress[8]"), "IpPermissions.3");
        // Not the request's: the rules already there, another group.
        assert_eq!(place("security_groups[3].ingress[5].ip_ranges[0]"), "");
        assert_eq!(place("security_groups[2].ingress[7]"), "");
    }
}
