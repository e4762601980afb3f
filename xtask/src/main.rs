//! Project tasks: `cargo xtask setup | build | demo | test | bench | package`.
//! Orchestration only; the product lives in the other crates.

mod api_model;
mod bench;
mod bench_api;
mod bench_fleet;
mod bench_flowlogs;
mod bench_report;
mod bench_traffic;
mod demo;
mod demo_fleet;
mod package;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "sg project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Setup, then build sg-agent with its embedded eBPF object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the web/db demo between network namespaces.
    Demo {
        /// The tiers spread over three hosts, one state in etcd.
        #[arg(long)]
        fleet: bool,
    },
    /// Measure sg against no filter, nftables and iptables (not a test).
    Bench {
        /// A smaller sweep, in under five minutes.
        #[arg(long)]
        quick: bool,
        /// Only the EC2 API's part (target/bench/api.json).
        #[arg(long)]
        api: bool,
        /// Only the fleet's part (target/bench/fleet.json).
        #[arg(long, conflicts_with = "api")]
        fleet: bool,
        /// Only flow logs' part (target/bench/flow-logs.json).
        #[arg(long, conflicts_with_all = ["api", "fleet"])]
        flow_logs: bool,
    },
    /// Extract the API's shapes from botocore's service model into
    /// sg-agent/src/api/model.json (a developer task; the file is checked in).
    ApiModel,
    /// Build the Debian package (target/debian/), with the man pages and
    /// shell completions generated from the CLI.
    Package,
    /// Build, check formatting and lints, then run every test of the
    /// workspace (kernel tests need root), then build, install and check the
    /// Debian package (as root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release).map(|_| ())
        }
        Task::Demo { fleet } => {
            setup::run()?;
            let bin = build(false)?;
            if fleet {
                return demo_fleet::run(&bin);
            }
            demo::run(&bin)
        }
        Task::Bench {
            quick,
            api,
            fleet,
            flow_logs,
        } => {
            setup::run()?;
            let status = cargo()
                .args([
                    "build",
                    "--release",
                    "--package",
                    "sg-testkit",
                    "--package",
                    "sg-agent",
                    "--bins",
                ])
                .status()
                .context("running cargo build")?;
            if !status.success() {
                bail!("building sg-bench failed ({status})");
            }
            // The API bench starts the release agent.
            // SAFETY: set before any thread starts.
            unsafe { std::env::set_var("SG_AGENT_BIN", target_dir().join("release/sg-agent")) };
            if api {
                return bench_api::only(&target_dir().join("release"), quick);
            }
            if fleet {
                return bench_fleet::only(quick);
            }
            if flow_logs {
                return bench_flowlogs::only(&target_dir().join("release"), quick);
            }
            bench::run(&target_dir().join("release"), quick)
        }
        Task::ApiModel => api_model::run(&workspace_root()),
        Task::Package => {
            setup::run()?;
            package::build().map(|_| ())
        }
        Task::Test { args } => {
            setup::run()?;
            let bin = build(false)?;
            for (what, args) in [
                ("formatting", &["fmt", "--all", "--", "--check"][..]),
                (
                    "clippy",
                    &[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ][..],
                ),
            ] {
                if !cargo()
                    .args(args)
                    .status()
                    .with_context(|| format!("running {what}"))?
                    .success()
                {
                    bail!("{what} check failed");
                }
            }
            let status = cargo()
                .args(["test", "--workspace", "--exclude", "sg-ebpf"])
                .args(&args)
                .env("SG_AGENT_BIN", &bin)
                .status()
                .context("running cargo test")?;
            if !status.success() {
                bail!("tests failed ({status})");
            }
            if nix::unistd::geteuid().is_root() {
                package::check(&package::build()?)
            } else if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                bail!(
                    "the package check installs the .deb: it needs root (CI=true: a failure, not a skip)"
                )
            } else {
                eprintln!("package check SKIPPED: not root (it installs the .deb)");
                Ok(())
            }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds sg-agent; returns the binary's path.
fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "sg-agent"]);
    if release {
        c.arg("--release");
    }
    let status = c.status().context("running cargo build")?;
    if !status.success() {
        bail!("building sg-agent failed ({status})");
    }
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sg-agent"))
}
