//! Test and bench support for sg, kept out of the product library (as aya
//! keeps `test/integration-*` apart): the reference oracle of verdicts
//! (`oracle`), crafted frames (`frames`), policies of a given size for the
//! benchmarks (`policies`), and the `sg-bench` binary.

pub mod frames;
pub mod oracle;
pub mod policies;
