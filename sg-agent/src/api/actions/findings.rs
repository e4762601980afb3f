//! `DescribeAuditFindings`, sg's own action: `sg-agent audit` over the API,
//! on the state in force, with the default guardrails.

use serde_json::{Value, json};

use super::{super::views::Scope, Snapshot, state};
use crate::{
    api::error::ApiResult,
    findings::{self, Guardrails, Severity},
};

pub fn describe(s: &Snapshot, _p: &Value, _scope: &Scope) -> ApiResult<Value> {
    let found = findings::audit(state(s), &Guardrails::default());
    let count = |v: Severity| found.iter().filter(|f| f.severity == v).count();
    let items: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({
                "Severity": f.severity.to_string(),
                "Kind": f.kind.to_string(),
                "Resource": f.resource,
                "GroupId": f.group_id,
                "Guardrail": f.guardrail,
                "Detail": f.detail,
            })
        })
        .collect();
    Ok(json!({
        "Findings": items,
        "Critical": count(Severity::Critical),
        "Warning": count(Severity::Warning),
        "Info": count(Severity::Info),
    }))
}
