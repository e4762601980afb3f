//! The desired state, independent of where it comes from: the domain types
//! (`types`), the unvalidated input that sources produce (`input`), what
//! validation reports (`issues`), and validation itself (`validate`), one
//! file per phase.

pub mod canonical;
pub mod host;
pub mod input;
mod issues;
mod types;
pub mod validate;

#[cfg(test)]
pub use issues::Nowhere;
pub use issues::{Collector, INVALID, Issue, Issues, Locate};
pub use types::*;
pub use validate::{Prior, Since, Touched, validate, validate_from};
