//! The sg-agent process under test, its counters, and directories that
//! clean up after themselves.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::*;

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
    /// The state database and audit trail (`--state-dir`).
    pub state: PathBuf,
}

impl Agent {
    /// Starts the agent inside `ns` with `config` and waits until it enforces.
    pub fn start(ns: &Netns, config: &str) -> Result<Agent> {
        Self::start_with(ns, config, &[])
    }

    pub fn start_with(ns: &Netns, config: &str, extra: &[&str]) -> Result<Agent> {
        Self::start_in(ns, TempDir::new()?, config, extra)
    }

    /// Starts a managed agent serving the EC2 API on [`ENDPOINT`] with the
    /// test credentials, its state in `state` (seeded from `seed` when
    /// empty), so that a restarted agent finds it.
    pub fn start_managed(ns: &Netns, state: &Path, seed: &str) -> Result<Agent> {
        Self::start_managed_with(ns, state, seed, &["--api", "127.0.0.1:8733"])
    }

    /// As [`Agent::start_managed`], with the API's options given (`--api`...).
    pub fn start_managed_with(ns: &Netns, state: &Path, seed: &str, api: &[&str]) -> Result<Agent> {
        let dir = TempDir::new()?;
        let creds = write_credentials(&dir.0)?.display().to_string();
        let state = state.display().to_string();
        let mut args = vec![
            "--managed",
            "--api-credentials",
            &creds,
            "--state-dir",
            &state,
        ];
        args.extend_from_slice(api);
        Self::start_in(ns, dir, seed, &args)
    }

    /// As [`Agent::start_with`], with the configuration at `dir/sg.yaml`.
    pub fn start_in(ns: &Netns, dir: TempDir, config: &str, extra: &[&str]) -> Result<Agent> {
        Self::spawn(ns, dir, "run", config, extra, &[])
    }

    /// Starts `sg-agent COMMAND --config dir/sg.yaml EXTRA...` with `env`,
    /// and waits until it says it runs.
    pub fn spawn(
        ns: &Netns,
        dir: TempDir,
        command: &str,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let path = dir.0.join("sg.yaml");
        std::fs::write(&path, config)?;
        // A state directory of the test's own, unless it gives one.
        let state = match extra.iter().position(|a| *a == "--state-dir") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => dir.0.join("state"),
        };
        let mut child = ns
            .command(agent_bin())
            .args(["--log-level", "debug", command, "--config"])
            .arg(&path)
            .args(extra)
            .envs(env.iter().copied())
            .args((!extra.contains(&"--state-dir")).then_some("--state-dir"))
            .args((!extra.contains(&"--state-dir")).then_some(&state))
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
            state,
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

/// A bpffs pin directory of its own for an in-process datapath, with every
/// pin under it removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        let n = unique();
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
        let n = unique();
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
