//! sg-agent: AWS-style security groups for Linux interfaces, enforced by eBPF.
//!
//! The pure parts (configuration, compilation) need neither root nor a kernel
//! and are unit-tested here; `datapath` talks to the kernel.

pub mod agent;
pub mod bench;
pub mod compile;
pub mod config;
pub mod datapath;
pub mod describe;
pub mod frames;
pub mod model;
