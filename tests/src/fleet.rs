//! A fleet testbed: a real etcd cluster (Debian's `etcd-server`, three
//! member processes) in a namespace of its own, bound to addresses of that
//! namespace, and hosts that reach it over a veth each.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Agent, Netns, Pair, TempDir, veth, wait_until, write_credentials};

/// The members' client addresses (on the etcd namespace's loopback).
const MEMBERS: [&str; 3] = ["10.98.0.11", "10.98.0.12", "10.98.0.13"];

/// Three etcd members in `ns`, started as one new cluster.
pub struct EtcdCluster {
    pub ns: Netns,
    members: Vec<Option<Child>>,
    data: TempDir,
}

impl EtcdCluster {
    pub fn start(tag: &str) -> Result<EtcdCluster> {
        if which("etcd").is_none() {
            bail!("etcd is not installed: `cargo xtask setup` installs Debian's etcd-server");
        }
        let ns = Netns::new(tag)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        for a in MEMBERS {
            ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        let mut c = EtcdCluster {
            ns,
            members: vec![None, None, None],
            data: TempDir::new()?,
        };
        for i in 0..MEMBERS.len() {
            c.start_member(i)?;
        }
        if !wait_until(Duration::from_secs(20), || c.healthy()) {
            bail!("the etcd cluster did not become healthy:\n{}", c.logs());
        }
        Ok(c)
    }

    /// `--state` for agents: every member.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = MEMBERS.iter().map(|a| format!("{a}:2379")).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Starts (or restarts, with its data) member `i`.
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let cluster: Vec<String> = MEMBERS
            .iter()
            .enumerate()
            .map(|(j, a)| format!("m{j}=http://{a}:2380"))
            .collect();
        let a = MEMBERS[i];
        let log = std::fs::File::create(self.data.0.join(format!("m{i}.log")))?;
        let child = self
            .ns
            .command("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.data.0.join(format!("m{i}")))
            .args(["--listen-client-urls", &format!("http://{a}:2379")])
            .args(["--advertise-client-urls", &format!("http://{a}:2379")])
            .args(["--listen-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "sg-test"])
            // A change of a whole state (a seed, `apply -f`) is one
            // transaction: room for it (docs/fleet.md).
            .args(["--max-txn-ops", "20000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.members[i] = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every running member answers its health check.
    pub fn healthy(&self) -> bool {
        self.members.iter().enumerate().all(|(i, m)| {
            m.is_none()
                || self
                    .ns
                    .command("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &format!("http://{}:2379", MEMBERS[i])])
                    .args(["endpoint", "health"])
                    .output()
                    .is_ok_and(|o| o.status.success())
        })
    }

    pub fn logs(&self) -> String {
        (0..MEMBERS.len())
            .map(|i| {
                std::fs::read_to_string(self.data.0.join(format!("m{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Joins `host` to the cluster's namespace with a veth (`mgmt0` in the
    /// host, addresses 10.98.`n`.1 and .2), and routes the members there.
    pub fn link(&self, host: &Netns, n: u8) -> Result<()> {
        veth(
            host,
            "mgmt0",
            &format!("10.98.{n}.1/24"),
            &self.ns,
            &format!("h{n}"),
            &format!("10.98.{n}.2/24"),
        )?;
        host.ip(&[
            "route",
            "add",
            "10.98.0.0/24",
            "via",
            &format!("10.98.{n}.2"),
        ])?;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// Two hosts joined by a veth (the [`Pair`]: the client is one host, the
/// server another), both linked to an etcd cluster.
pub struct Fleet {
    pub etcd: EtcdCluster,
    pub hosts: Pair,
    /// The API's test credentials, for every host's agent.
    creds: PathBuf,
    _dir: TempDir,
}

impl Fleet {
    pub fn new(tag: &str) -> Result<Fleet> {
        let etcd = EtcdCluster::start(&format!("{tag}e"))?;
        let hosts = Pair::new(tag)?;
        etcd.link(&hosts.client, 1)?;
        etcd.link(&hosts.server, 2)?;
        let dir = TempDir::new()?;
        Ok(Fleet {
            etcd,
            hosts,
            creds: write_credentials(&dir.0)?,
            _dir: dir,
        })
    }

    /// Starts host `host`'s agent in `ns`: its state in the cluster (seeded
    /// from `seed` if the cluster holds none), serving the API on
    /// [`crate::ENDPOINT`].
    pub fn agent(&self, ns: &Netns, host: &str, seed: &str) -> Result<Agent> {
        let (url, creds) = (self.etcd.url(), self.creds.display().to_string());
        Agent::start_with(
            ns,
            seed,
            &[
                "--host-id",
                host,
                "--state",
                &url,
                "--api",
                "127.0.0.1:8733",
                "--api-credentials",
                &creds,
            ],
        )
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

/// Runs `etcdctl` against the cluster, from its namespace.
pub fn etcdctl(c: &EtcdCluster, args: &[&str]) -> Result<String> {
    let endpoints: Vec<String> = MEMBERS.iter().map(|a| format!("http://{a}:2379")).collect();
    crate::sh(
        c.ns.command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
            .args(args),
    )
}
