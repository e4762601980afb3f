//! Network namespaces, veth pairs and the topologies tests use.

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::*;

/// Runs a command and fails with its output if it does not succeed.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// Kernel tests need root, network namespaces and a loadable program. Outside
/// CI a machine without them skips (returns false); in CI (`CI=true`) that is
/// a failure, never a skip.
pub fn kernel_available(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if root {
        return true;
    }
    if ci {
        panic!("{test}: kernel tests need root (CI=true: a missing kernel is a failure)");
    }
    eprintln!("{test}: SKIPPED: not root (kernel tests need root; run `cargo xtask test`)");
    false
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `sg-{tag}-{pid}-{n}`: unique per process and per call.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = unique();
        let name = format!("sg-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Duplicate address detection holds new IPv6 addresses (link-local
        // ones too) tentative for seconds; a test topology has no duplicates.
        sh(ns.command("sysctl").args([
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]))?;
        Ok(ns)
    }

    /// A handle on a namespace someone else owns (not deleted on drop).
    pub fn adopt(path: PathBuf) -> std::mem::ManuallyDrop<Netns> {
        let name = path
            .file_name()
            .expect("netns path")
            .to_string_lossy()
            .into_owned();
        std::mem::ManuallyDrop::new(Netns { name })
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace (network only: the mount
    /// namespace, and so bpffs, stay the host's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it creates
    /// belong to the namespace and may be used from any thread afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.name))?;
        thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// The ifindex of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let dev = dev.to_string();
        Ok(self.run(move || nix::net::if_::if_nametoindex(dev.as_str()))??)
    }

    pub fn ping(&self, dst: &str, count: u32, size: usize) -> bool {
        self.command("ping")
            .args([
                "-c",
                &count.to_string(),
                "-W",
                "1",
                "-i",
                "0.2",
                "-s",
                &size.to_string(),
                "-q",
                dst,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Joins `a` and `b` with a veth pair, `dev_a` in `a` and `dev_b` in `b`, both
/// up with the given addresses (CIDR notation). Deleted with its namespaces.
pub fn veth(
    a: &Netns,
    dev_a: &str,
    addr_a: &str,
    b: &Netns,
    dev_b: &str,
    addr_b: &str,
) -> Result<()> {
    ip(&[
        "link", "add", dev_a, "netns", &a.name, "type", "veth", "peer", "name", dev_b, "netns",
        &b.name,
    ])?;
    for (ns, dev, addr) in [(a, dev_a, addr_a), (b, dev_b, addr_b)] {
        for a in addr.split(',').filter(|s| !s.is_empty()) {
            let mut args = vec!["addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Two namespaces, a client and a server, joined by one veth pair:
/// client `eth0` 10.77.0.1/24 + fd77::1/64, server `eth0` 10.77.0.2/24 + fd77::2/64.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
}

pub const CLIENT_V4: &str = "10.77.0.1";
pub const SERVER_V4: &str = "10.77.0.2";
pub const CLIENT_V6: &str = "fd77::1";
pub const SERVER_V6: &str = "fd77::2";

impl Pair {
    pub fn new(tag: &str) -> Result<Pair> {
        let client = Netns::new(&format!("{tag}c"))?;
        let server = Netns::new(&format!("{tag}s"))?;
        veth(
            &client,
            "eth0",
            "10.77.0.1/24,fd77::1/64",
            &server,
            "eth0",
            "10.77.0.2/24,fd77::2/64",
        )?;
        Ok(Pair { client, server })
    }
}

/// A router namespace with workload namespaces around it, each joined by a
/// veth: workload `i` has `eth0` with 10.80.`i`.2/24 and fd80:`i`::2/64, and
/// the router's end `w<i>` has .1 and ::1. The router forwards both families.
pub struct Star {
    pub router: Netns,
    pub hosts: Vec<Netns>,
}

impl Star {
    pub fn new(tag: &str, n: usize) -> Result<Star> {
        let router = Netns::new(&format!("{tag}r"))?;
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("{tag}{i}"))?;
            veth(
                &ns,
                "eth0",
                &format!("10.80.{i}.2/24,fd80:{i}::2/64"),
                &router,
                &format!("w{i}"),
                &format!("10.80.{i}.1/24,fd80:{i}::1/64"),
            )?;
            ns.ip(&["route", "add", "default", "via", &format!("10.80.{i}.1")])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd80:{i}::1"),
            ])?;
            hosts.push(ns);
        }
        sh(router.command("sysctl").args([
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]))?;
        Ok(Star { router, hosts })
    }

    pub fn v4(i: usize) -> String {
        format!("10.80.{i}.2")
    }
}
