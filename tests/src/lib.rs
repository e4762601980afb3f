//! A testbed of network namespaces joined by veth pairs, for sg's kernel-level
//! tests and its demo: uniquely named namespaces (tests run in parallel),
//! traffic probes from inside them, and an `sg-agent` process handle. Every
//! resource is removed on drop.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

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
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
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

/// A ping every 2 ms, `count` of them: `(sent, received)`.
pub fn ping_flood(ns: &Netns, dst: &str, count: u32, seconds: u32) -> (u32, u32) {
    let out = ns
        .command("ping")
        .args([
            "-i",
            "0.002",
            "-q",
            "-c",
            &count.to_string(),
            "-w",
            &seconds.to_string(),
            dst,
        ])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or_default();
    let num = |word: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

/// Packets sg has rejected so far on every interface it enforces in `ns`,
/// read from the pinned counters (so also while the agent is down).
pub fn rejected(ns: &Netns) -> u64 {
    let out = sh(ns.command(agent_bin()).args(["stats", "--json"])).expect("sg-agent stats");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
    v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| {
            [
                &i["inbound"]["rejected_packets"],
                &i["outbound"]["rejected_packets"],
            ]
        })
        .filter_map(|n| n.as_u64())
        .sum()
}

/// A TCP stream from `ns` to an echo server at `dst`, running until stopped:
/// it writes and reads back continuously and counts the bytes echoed.
pub struct Stream {
    stop: Arc<std::sync::atomic::AtomicBool>,
    echoed: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Stream {
    pub fn start(ns: &Netns, dst: SocketAddr) -> Result<Stream> {
        let s = ns.run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))??;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, ec) = (stop.clone(), echoed.clone());
        let thread = thread::spawn(move || -> std::io::Result<()> {
            let mut s = s;
            let chunk = [0x42u8; 16384];
            let mut back = [0u8; 16384];
            while !st.load(Ordering::Relaxed) {
                s.write_all(&chunk)?;
                s.read_exact(&mut back)?;
                ec.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Stream {
            stop,
            echoed,
            thread: Some(thread),
        })
    }

    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Stops the stream; an error means it broke (a reset, or 5 s of silence).
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("stream thread")?;
        Ok(self.echoed())
    }
}

/// The sg-agent binary: `SG_AGENT_BIN`, or `target/<profile>/sg-agent` next
/// to the running test or tool.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SG_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    for dir in exe.ancestors().skip(1) {
        let cand = dir.join("sg-agent");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "sg-agent binary not found near {}; build it (`cargo build -p sg-agent`) or set SG_AGENT_BIN",
        exe.display()
    );
}

/// A running `sg-agent run`, stopped with SIGTERM on drop.
pub struct Agent {
    child: Option<Child>,
    netns: PathBuf,
    log: Arc<Mutex<String>>,
    _dir: TempDir,
    pub config: PathBuf,
}

impl Agent {
    /// Starts the agent inside `ns` with `config` and waits until it enforces.
    pub fn start(ns: &Netns, config: &str) -> Result<Agent> {
        Self::start_with(ns, config, &[])
    }

    pub fn start_with(ns: &Netns, config: &str, extra: &[&str]) -> Result<Agent> {
        Self::start_in(ns, TempDir::new()?, config, extra)
    }

    /// As [`Agent::start_with`], with the configuration at `dir/sg.yaml`.
    pub fn start_in(ns: &Netns, dir: TempDir, config: &str, extra: &[&str]) -> Result<Agent> {
        let path = dir.0.join("sg.yaml");
        std::fs::write(&path, config)?;
        let mut child = ns
            .command(agent_bin())
            .args(["--log-level", "debug", "run", "--config"])
            .arg(&path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning sg-agent")?;
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().expect("log");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut agent = Agent {
            child: Some(child),
            netns: ns.path(),
            log,
            _dir: dir,
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.log().contains("sg-agent running") {
                return Ok(agent);
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "sg-agent exited ({status}) before enforcing:\n{}",
                    agent.log()
                );
            }
            if Instant::now() > deadline {
                bail!("sg-agent did not start within 30 s:\n{}", agent.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the configuration file and signals the agent (SIGHUP); waits
    /// until it logs the result. Returns whether it applied the change.
    pub fn reload(&self, config: &str) -> Result<bool> {
        let count = |log: &str| {
            log.matches("configuration applied").count()
                + log.matches("configuration rejected").count()
        };
        let before = count(&self.log());
        let applied_before = self.log().matches("configuration applied").count();
        // Write and rename, so that the agent's file watcher never reads half a file.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config)?;
        std::fs::rename(&tmp, &self.config)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        if !wait_until(Duration::from_secs(10), || count(&self.log()) > before) {
            bail!("sg-agent did not report on the reload:\n{}", self.log());
        }
        Ok(self.log().matches("configuration applied").count() > applied_before)
    }

    /// `sg-agent stats --json`, run in the agent's namespace.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let out = sh(Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(agent_bin())
            .args(["stats", "--json"]))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// One counter of `sg-agent stats --json` for interface `iface`, by its
    /// JSON path below the interface (for example `inbound/drops/no_rule`).
    pub fn counter(&self, iface: &str, path: &str) -> u64 {
        let stats = self.stats().expect("sg-agent stats");
        let entry = stats["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["interface"] == iface))
            .unwrap_or_else(|| panic!("no interface {iface} in {stats}"));
        path.split('/')
            .fold(entry, |v, k| &v[k])
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {path} in {entry}"))
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends `sig` and waits for the process to exit; returns its log.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "sg-agent did not exit within 10 s of {sig}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_with(nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Connects from `ns` to `dst` over and over (each attempt gives up after
/// 100 ms) until finished: the probe loop on a denied port that must never
/// get through while the configuration is tampered with.
pub struct ProbeLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<(u32, u32)>>,
}

impl ProbeLoop {
    pub fn start(ns: &Netns, dst: SocketAddr) -> Result<ProbeLoop> {
        let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.name))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            let (mut tries, mut passed) = (0, 0);
            while !st.load(Ordering::Relaxed) {
                tries += 1;
                if TcpStream::connect_timeout(&dst, Duration::from_millis(100)).is_ok() {
                    passed += 1;
                }
            }
            (tries, passed)
        });
        Ok(ProbeLoop {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop: `(attempts, connections that got through)`.
    pub fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("probe thread")
    }
}

/// A bpffs pin directory of its own for an in-process datapath, with every
/// pin under it removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/sg-test/{tag}-{}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The exchange completed (connected and echoed, or answered).
    Pass,
    /// Nothing came back: the packets were dropped.
    Dropped,
    /// A TCP connect was refused (an RST came back): nobody listens, or the
    /// filter let the SYN through.
    Refused,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seen::Pass => "allow",
            Seen::Dropped => "deny",
            Seen::Refused => "refused",
        })
    }
}

/// A TCP echo server in `ns`, serving until the process ends or the listener
/// is dropped with the returned handle's thread.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = ns.run(move || TcpListener::bind(addr))??;
    let local = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(local)
}

/// A UDP echo server in `ns`.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddr) -> Result<SocketAddr> {
    let sock = ns.run(move || UdpSocket::bind(addr))??;
    let local = sock.local_addr()?;
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    Ok(local)
}

/// Connects from `ns` to `dst`, sends a message and expects it echoed.
pub fn tcp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<Seen> {
    ns.run(move || -> Result<Seen> {
        let mut s = match TcpStream::connect_timeout(&dst, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(Seen::Dropped),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(Seen::Refused);
            }
            Err(e) => return Err(e.into()),
        };
        s.set_read_timeout(Some(timeout))?;
        let msg = b"sg probe";
        s.write_all(msg)?;
        let mut buf = [0u8; 8];
        match s.read_exact(&mut buf) {
            Ok(()) if &buf == msg => Ok(Seen::Pass),
            Ok(()) => bail!("echo from {dst} garbled"),
            Err(_) => Ok(Seen::Dropped),
        }
    })?
}

/// Sends a datagram from `ns` to `dst` and waits for its echo (three tries).
pub fn udp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<Seen> {
    ns.run(move || -> Result<Seen> {
        let bind: SocketAddr = if dst.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(timeout / 3))?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            s.send_to(b"sg probe", dst)?;
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && from == dst
                && &buf[..n] == b"sg probe"
            {
                return Ok(Seen::Pass);
            }
        }
        Ok(Seen::Dropped)
    })?
}

/// A socket address from an address of either family and a port.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    SocketAddr::new(ip, port)
}

/// Waits until `f` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}
