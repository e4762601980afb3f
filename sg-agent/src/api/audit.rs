//! The audit trail: one CloudTrail-shaped record per call (mutating,
//! refused, failing authentication; reads when asked) and per reload of a
//! file, kept in the state database, append-only (docs/api.md, "Audit
//! trail"). A change's record is committed in the change's transaction.

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::error::ApiError;
use crate::store::Event;

/// A record before the outcome is known.
#[derive(Debug, Clone)]
pub struct Draft {
    pub time: String,
    pub name: String,
    pub source: String,
    pub region: String,
    pub source_ip: String,
    pub user_agent: String,
    pub access_key: Option<String>,
    pub user_arn: Option<String>,
    pub request_id: String,
    pub parameters: Value,
    pub read_only: bool,
}

pub fn now() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl Draft {
    /// The finished record, with the call's outcome; `resources` are the
    /// ids it named or created.
    pub fn finish(&self, outcome: Result<&Value, &ApiError>, mut resources: Vec<String>) -> Event {
        if let Some(id) = self.parameters.get("GroupId").and_then(Value::as_str) {
            resources.push(id.into());
        }
        resources.sort();
        resources.dedup();
        let mut r = json!({
            "eventVersion": "1.08",
            "eventTime": self.time,
            "eventSource": self.source,
            "eventName": self.name,
            "awsRegion": self.region,
            "sourceIPAddress": self.source_ip,
            "userAgent": self.user_agent,
            "userIdentity": {
                "type": if self.access_key.is_some() { "IAMUser" } else { "Unknown" },
                "accessKeyId": self.access_key,
                "arn": self.user_arn,
            },
            "requestParameters": self.parameters,
            "responseElements": null,
            "requestID": self.request_id,
            "eventID": uuid::Uuid::new_v4().to_string(),
            "readOnly": self.read_only,
            "eventType": "AwsApiCall",
            "resources": resources,
        });
        match outcome {
            Ok(v) => r["responseElements"] = v.clone(),
            Err(e) => {
                r["errorCode"] = e.code.clone().into();
                r["errorMessage"] = e.message.clone().into();
            }
        }
        Event {
            time: self.time.clone(),
            name: self.name.clone(),
            access_key: self.access_key.clone(),
            resources,
            record: r,
        }
    }
}

/// The record of a file reload taken (file mode): what changed.
pub fn reload(file: &str, summary: &str, changed: Value) -> Event {
    let time = now();
    Event {
        time: time.clone(),
        name: "ApplyConfiguration".into(),
        access_key: None,
        resources: vec![],
        record: json!({
            "eventVersion": "1.08",
            "eventTime": time,
            "eventSource": "sg-agent",
            "eventName": "ApplyConfiguration",
            "userIdentity": {"type": "File", "path": file},
            "requestParameters": {"file": file},
            "responseElements": {"summary": summary, "changed": changed},
            "eventID": uuid::Uuid::new_v4().to_string(),
            "readOnly": false,
            "eventType": "ConfigurationReload",
        }),
    }
}
