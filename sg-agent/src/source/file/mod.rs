//! The file source: a YAML document (or the JSON that `aws ec2
//! describe-security-groups` prints), read into the model's input shapes,
//! then validated as a whole by [`crate::model::validate`], which reports
//! every problem at once with its file, line and object.
//!
//! Rules are spelled the way AWS spells them (`ip_protocol`, `from_port`,
//! `to_port`, `ip_ranges`, `ipv6_ranges`, `prefix_list_ids`,
//! `user_id_group_pairs`, or `IpProtocol`, `FromPort`, ...), so an AWS user
//! reads a file without the docs.

#[cfg(test)]
mod import_tests;
mod limits;
pub mod lines;
#[cfg(test)]
mod robust_tests;

use std::path::Path;

use serde::Deserialize;

use crate::model::{
    Desired, Issue, Issues, Locate,
    input::{Origin, RawConfig, RawGroup},
    validate,
};

/// `describe-security-groups` output (botocore's `DescribeSecurityGroupsResult`).
/// Members beside `SecurityGroups` (`NextToken`, boto3's `ResponseMetadata`)
/// say nothing about the groups and are ignored; inside a group every member
/// is named (see [`RawGroup`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AwsGroups {
    #[serde(rename = "SecurityGroups")]
    pub security_groups: Vec<RawGroup>,
}

/// A document read: the configuration or an imported file.
pub struct Doc {
    pub file: String,
    pub lines: lines::LineIndex,
}

/// A file's places are its lines.
struct Docs(Vec<Doc>);

impl Locate for Docs {
    fn locate(&self, doc: usize, path: &str) -> (String, Option<usize>) {
        let d = &self.0[doc];
        (d.file.clone(), d.lines.line(path))
    }
}

/// Reads `path` and the files it imports, then validates the whole.
/// `previous` is the state in force, if any (deleting a group still in use is
/// a `DependencyViolation` rather than a `NotFound`).
pub fn load(path: &Path, previous: Option<&Desired>) -> Result<Desired, Issues> {
    let text = crate::file::read_config_text(path)
        .map_err(|e| Issues::single(&path.display().to_string(), e))?;
    parse(&path.display().to_string(), &text, path.parent(), previous)
}

/// Parses and validates `text` (named `file`); imports resolve against `dir`.
pub fn parse(
    file: &str,
    text: &str,
    dir: Option<&Path>,
    previous: Option<&Desired>,
) -> Result<Desired, Issues> {
    limits::check_nesting(file, text)?;
    // serde_yaml first: it bounds nesting (and alias expansion), so the line
    // index, whose cost grows with depth, only ever sees a shallow document.
    let mut raw: RawConfig = serde_yaml::from_str(text).map_err(|e| yaml_issue(file, &e))?;
    let mut docs = vec![Doc {
        file: file.into(),
        lines: lines::LineIndex::new(text),
    }];
    for (i, g) in raw.security_groups.iter_mut().enumerate() {
        g.origin = Origin {
            doc: 0,
            path: format!("security_groups[{i}]"),
        };
    }
    for (i, g) in raw.aws_security_groups.iter_mut().enumerate() {
        g.origin = Origin {
            doc: 0,
            path: format!("SecurityGroups[{i}]"),
        };
    }
    let mut imported = Vec::new();
    for name in raw.import.clone() {
        let p = dir.map_or_else(|| Path::new(&name).to_path_buf(), |d| d.join(&name));
        let shown = p.display().to_string();
        let text = crate::file::read_config_text(&p)
            .map_err(|e| Issues::single(file, format!("import {shown}: {e}")))?;
        limits::check_nesting(&shown, &text)?;
        let aws: AwsGroups = serde_yaml::from_str(&text).map_err(|e| yaml_issue(&shown, &e))?;
        let doc = docs.len();
        docs.push(Doc {
            file: shown,
            lines: lines::LineIndex::new(&text),
        });
        for (i, mut g) in aws.security_groups.into_iter().enumerate() {
            g.origin = Origin {
                doc,
                path: format!("SecurityGroups[{i}]"),
            };
            imported.push(g);
        }
    }
    raw.aws_security_groups.extend(imported);
    validate(&raw, &Docs(docs), previous)
}

/// A YAML error as one issue, placed at its line.
fn yaml_issue(file: &str, e: &serde_yaml::Error) -> Issues {
    let msg = e.to_string();
    // serde_yaml appends " at line L column C"; the place is reported apart.
    let msg = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    Issues(vec![Issue {
        file: file.into(),
        line: e.location().map(|l| l.line()),
        object: String::new(),
        code: "InvalidParameterValue",
        message: msg,
        warning: false,
    }])
}
