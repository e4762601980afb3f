//! The commands that report on a state without touching it: `audit` and
//! `graph`, on a file or on the managed state.

use std::path::Path;

use anyhow::Result;

use crate::{
    findings::{self, Guardrails, Severity},
    graph,
    model::Desired,
    source,
    store::StateAt,
};

/// The state a report reads: the managed state when `state` is given,
/// else the file.
pub fn load(config: &Path, state: Option<&StateAt>) -> Result<Desired> {
    match state {
        Some(at) => crate::managed::stored(at),
        None => Ok(source::file::load(config, None)?),
    }
}

/// A non-error exit with findings to gate on: `main` exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0} finding(s) at or above --fail-on {1}")]
pub struct Gate(pub usize, pub Severity);

pub fn audit(
    d: &Desired,
    guardrails: Option<&Path>,
    json: bool,
    fail_on: Option<Severity>,
) -> Result<()> {
    let rails = match guardrails {
        Some(p) => Guardrails::load(p)?,
        None => Guardrails::default(),
    };
    let found = findings::audit(d, &rails);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings::report(&found))?
        );
    } else {
        print!("{}", findings::table(&found));
    }
    match fail_on {
        Some(level) => match found.iter().filter(|f| f.severity >= level).count() {
            0 => Ok(()),
            n => Err(Gate(n, level).into()),
        },
        None => Ok(()),
    }
}

pub fn graph(d: &Desired, svg: bool) -> Result<()> {
    let dot = graph::dot(d);
    if svg {
        print!("{}", graph::svg(&dot)?);
    } else {
        print!("{dot}");
    }
    Ok(())
}
