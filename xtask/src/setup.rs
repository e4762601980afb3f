//! `cargo xtask setup`: installs what building and testing sg need, skipping
//! what is already there (docs/build.md says why).

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Debian packages: the BPF toolchain (Debian's Rust 1.96 with a prebuilt
/// `core` for `bpfel-unknown-none`, LLVM 22 for bpf-linker), and the tools the
/// tests, demo and bench drive (and the font of the bench's plot).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "util-linux",
    "bpftool",
    "iperf3",
    "nftables",
    "iptables",
    "netsniff-ng",
    "fonts-dejavu-core",
    // The package check: systemd-analyze verifies the unit; man reads pages.
    "systemd",
    "man-db",
    // The API tests drive sg with AWS's own clients, as users do.
    "awscli",
    "python3-boto3",
    // The TLS test makes its certificate.
    "openssl",
    // The fleet's store: etcd, started by the tests and the demo; protoc
    // builds the etcd-client crate's gRPC code, which imports protobuf's
    // well-known types (only recommended by protobuf-compiler).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The metrics test checks the agent's /metrics with promtool; `sg-agent
    // graph --svg` and the console's tiers render with Graphviz's dot.
    "prometheus",
    "graphviz",
    // The console test loads each page in headless Chromium, driven over
    // the DevTools protocol from Python.
    "chromium",
    "python3-websocket",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the Debian package (`cargo xtask package`); 3.x needs Rust 1.85.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// The rustup name under which Debian's compiler is linked; sg-agent's
/// build.rs asks aya-build for it.
const TOOLCHAIN: &str = "sg-bpf";

pub fn run() -> Result<()> {
    let debian =
        Path::new("/etc/debian_version").exists() && which("apt-get") && which("dpkg-query");
    let missing_pkgs = if debian {
        missing_packages()?
    } else {
        Vec::new()
    };
    let linker_ok = bpf_linker_ok();
    let toolchain_ok = toolchain_linked();
    if !debian {
        let mut missing = Vec::new();
        for (what, ok) in [
            (
                "Rust 1.96 with core for bpfel-unknown-none at /usr (Debian: rustc-web, libstd-rust-web-dev-bpf)",
                Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists(),
            ),
            (
                "LLVM 22 development files at /usr/lib/llvm-22",
                Path::new("/usr/lib/llvm-22").exists(),
            ),
            ("iproute2 (ip)", which("ip")),
            ("iputils ping", which("ping")),
            ("util-linux nsenter", which("nsenter")),
            ("bpftool", which("bpftool")),
            (
                &*format!("bpf-linker {BPF_LINKER_VERSION} built against LLVM 22"),
                linker_ok,
            ),
            (
                &*format!("rustup toolchain {TOOLCHAIN} linked to /usr"),
                toolchain_ok,
            ),
        ] {
            if !ok {
                missing.push(what.to_string());
            }
        }
        if !missing.is_empty() {
            bail!(
                "automatic setup supports Debian-family systems only, and this one lacks:\n  - {}",
                missing.join("\n  - ")
            );
        }
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    if !missing_pkgs.is_empty() {
        if !root {
            bail!(
                "setup must run as root to install: {}",
                missing_pkgs.join(" ")
            );
        }
        eprintln!("setup: installing {}", missing_pkgs.join(" "));
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing_pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !linker_ok {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        run_cmd(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                // bpf-linker's build script looks for llvm-config on PATH
                // (Debian's is LLVM 14) unless told the prefix.
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    if !cargo_deb_ok() {
        eprintln!("setup: building cargo-deb {CARGO_DEB_VERSION}");
        run_cmd(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ]),
        )?;
    }
    if !toolchain_ok {
        eprintln!("setup: linking Debian's compiler as rustup toolchain {TOOLCHAIN}");
        run_cmd(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))?;
    }
    eprintln!("setup: ok");
    Ok(())
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn missing_packages() -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PACKAGES
        .iter()
        .filter(|p| !text.lines().any(|l| l == format!("{p} installed")))
        .map(|p| p.to_string())
        .collect())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn cargo_deb_ok() -> bool {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION))
}

fn toolchain_linked() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(TOOLCHAIN))
        })
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
