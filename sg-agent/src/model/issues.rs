//! What validation reports: every problem at once, each with its place,
//! object, AWS error code and message. Places come from the source through
//! [`Locate`]: a file's line today, a request parameter's name next.

use std::fmt;

/// Maps where the validator is (the document, and a path such as
/// `security_groups[2].ingress[0].ip_ranges[1]`) to a place to report: the
/// file and its line, for a file source.
pub trait Locate {
    fn locate(&self, doc: usize, path: &str) -> (String, Option<usize>);
}

/// Tests' source: a problem is named by its path alone.
#[cfg(test)]
pub struct Nowhere;

#[cfg(test)]
impl Locate for Nowhere {
    fn locate(&self, _: usize, path: &str) -> (String, Option<usize>) {
        (path.into(), None)
    }
}

/// One problem: where, in which object, AWS's code, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where: the file (or, from the API, the request parameter).
    pub file: String,
    pub line: Option<usize>,
    pub object: String,
    pub code: &'static str,
    pub message: String,
    /// Reported, but the configuration is still applied (stale references).
    pub warning: bool,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        write!(f, ": {}: {}", self.code, self.message)
    }
}

/// Every problem found in a configuration, each with its place.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn single(file: &str, message: String) -> Issues {
        Issues(vec![Issue {
            file: file.into(),
            line: None,
            object: String::new(),
            code: "InvalidParameterValue",
            message,
            warning: false,
        }])
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<&Issue> = self.0.iter().filter(|i| !i.warning).collect();
        writeln!(f, "{} error(s) in the configuration:", errors.len())?;
        for i in errors {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}

/// Collects every problem of a validation, each placed by the source it
/// came from (see [`Locate`]).
pub struct Collector<'a> {
    locate: &'a dyn Locate,
    pub issues: Vec<Issue>,
}

impl<'a> Collector<'a> {
    pub fn new(locate: &'a dyn Locate) -> Self {
        Collector {
            locate,
            issues: Vec::new(),
        }
    }

    pub fn push(
        &mut self,
        doc: usize,
        path: &str,
        object: &str,
        code: &'static str,
        message: String,
        warning: bool,
    ) {
        let (file, line) = self.locate.locate(doc, path);
        self.issues.push(Issue {
            file,
            line,
            object: object.to_string(),
            code,
            message,
            warning,
        });
    }

    pub fn err(
        &mut self,
        doc: usize,
        path: &str,
        object: &str,
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.push(doc, path, object, code, message.into(), false);
    }
}

/// AWS's code for a bad value.
pub const INVALID: &str = "InvalidParameterValue";
