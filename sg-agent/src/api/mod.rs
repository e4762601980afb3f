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

use crate::model::{Desired, input::RawConfig, validate};
use error::{ApiError, ApiResult};
use views::Scope;

/// The default port of the API (`sg-agent run --api 127.0.0.1:8733`).
pub const DEFAULT_PORT: u16 = 8733;

/// What reads see: the state in force, as the agent last published it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub desired: Desired,
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
}

/// A change of the managed state, being made: the input form to change,
/// and the state it starts from.
pub struct Txn<'a> {
    pub raw: RawConfig,
    pub before: &'a Desired,
    pub scope: Scope,
    /// Ids the call names or creates, for the audit trail.
    pub resources: Vec<String>,
}

/// Places of validation problems, for a request: the object path in the
/// state (the message names the object).
struct InRequest;

impl crate::model::Locate for InRequest {
    fn locate(&self, _doc: usize, path: &str) -> (String, Option<usize>) {
        (path.to_string(), None)
    }
}

impl Txn<'_> {
    /// Validates the changed state with the validation files go through.
    pub fn validate(&self) -> ApiResult<Desired> {
        validate(&self.raw, &InRequest, Some(self.before)).map_err(ApiError::from)
    }
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
