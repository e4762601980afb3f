//! A fleet testbed: a real etcd cluster (Debian's `etcd-server`, three
//! member processes) in a namespace of its own, bound to addresses of that
//! namespace, and hosts that reach it over a veth each.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Agent, Netns, Pair, TempDir, sh, veth, wait_until, write_credentials};

/// The members' client addresses (on the etcd namespace's loopback).
const MEMBERS: [&str; 3] = ["10.98.0.11", "10.98.0.12", "10.98.0.13"];

/// Three etcd members in `ns`, started as one new cluster.
pub struct EtcdCluster {
    pub ns: Netns,
    members: Vec<Option<Child>>,
    data: TempDir,
    /// `root:PASSWORD` once authentication is on.
    auth: Option<String>,
    /// Client TLS: the directory of [`EtcdCluster::start_tls`]'s
    /// certificates.
    tls: Option<PathBuf>,
}

impl EtcdCluster {
    pub fn start(tag: &str) -> Result<EtcdCluster> {
        Self::start_with(tag, None)
    }

    /// As [`EtcdCluster::start`], its clients served over TLS and required
    /// to present a certificate of the CA in `certs` ([`make_certs`]).
    pub fn start_tls(tag: &str, certs: &std::path::Path) -> Result<EtcdCluster> {
        Self::start_with(tag, Some(certs.to_path_buf()))
    }

    fn start_with(tag: &str, tls: Option<PathBuf>) -> Result<EtcdCluster> {
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
            auth: None,
            tls,
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = self.ns.command("etcd");
        if let Some(dir) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"));
        }
        let child = cmd
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.data.0.join(format!("m{i}")))
            .args(["--listen-client-urls", &format!("{scheme}://{a}:2379")])
            .args(["--advertise-client-urls", &format!("{scheme}://{a}:2379")])
            .args(["--listen-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "sg-test"])
            // A change of a whole state (a seed, `apply -f`) is one
            // transaction: room for it (docs/fleet.md), up to the bench's
            // 10,000 interfaces.
            .args(["--max-txn-ops", "100000"])
            .args(["--max-request-bytes", "33554432"])
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
            let mut cmd = self.ctl(&[MEMBERS[i]]);
            cmd.args(self.auth.iter().flat_map(|a| ["--user", a.as_str()]))
                .args(["endpoint", "health"]);
            m.is_none() || cmd.output().is_ok_and(|o| o.status.success())
        })
    }

    /// `etcdctl` on `members`, in the cluster's namespace, with the
    /// client certificate when the cluster asks for one.
    fn ctl(&self, members: &[&str]) -> std::process::Command {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = members
            .iter()
            .map(|a| format!("{scheme}://{a}:2379"))
            .collect();
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")]);
        if let Some(dir) = &self.tls {
            cmd.arg("--cacert")
                .arg(dir.join("ca.pem"))
                .arg("--cert")
                .arg(dir.join("client.pem"))
                .arg("--key")
                .arg(dir.join("client-key.pem"));
        }
        cmd
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

/// The password of etcd user `user` once [`EtcdCluster::enable_auth`] ran.
pub fn etcd_password(user: &str) -> String {
    format!("pw-{user}")
}

/// The key prefix of sg's state in the cluster (`--state URL` has none).
const PREFIX: &str = "/sg/v1/";

impl EtcdCluster {
    /// Turns on etcd authentication with the roles docs/fleet.md gives:
    /// `root`; `sg-api`, which reads and writes the state; and for each of
    /// `hosts` a user of its name that reads the state and writes only its
    /// own heartbeat. Every user's password is [`etcd_password`].
    pub fn enable_auth(&mut self, hosts: &[&str]) -> Result<()> {
        let ctl = |args: &[&str]| etcdctl(self, args);
        let user = |name: &str, role: &str| -> Result<()> {
            ctl(&["user", "add", &format!("{name}:{}", etcd_password(name))])?;
            ctl(&["role", "add", role])?;
            ctl(&["user", "grant-role", name, role])?;
            Ok(())
        };
        user("root", "root")?;
        user("sg-api", "sg-api")?;
        ctl(&[
            "role",
            "grant-permission",
            "sg-api",
            "--prefix=true",
            "readwrite",
            PREFIX,
        ])?;
        for h in hosts {
            let role = format!("sg-host-{h}");
            user(h, &role)?;
            ctl(&[
                "role",
                "grant-permission",
                &role,
                "--prefix=true",
                "read",
                PREFIX,
            ])?;
            for k in ["hosts", "beats"] {
                ctl(&[
                    "role",
                    "grant-permission",
                    &role,
                    "readwrite",
                    &format!("{PREFIX}{k}/{h}"),
                ])?;
            }
        }
        ctl(&["auth", "enable"])?;
        self.auth = Some(format!("root:{}", etcd_password("root")));
        Ok(())
    }
}

/// Three hosts, each a namespace with a workload namespace behind a veth
/// (`w0` on the host, 10.80.`k`.1; `eth0` in the workload, 10.80.`k`.2,
/// `k` = 1, 2, 3), linked to the etcd cluster's namespace, which routes
/// between them.
pub struct Datacenter {
    pub etcd: EtcdCluster,
    pub hosts: Vec<Netns>,
    pub workloads: Vec<Netns>,
    creds: PathBuf,
    _dir: TempDir,
}

/// The hosts' ids.
pub const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

/// The web and db tiers over a [`Datacenter`]'s hosts.
pub const DATACENTER_STATE: &str = include_str!("datacenter.yaml");

impl Datacenter {
    pub fn new(tag: &str) -> Result<Datacenter> {
        let etcd = EtcdCluster::start(&format!("{tag}e"))?;
        let forward = |ns: &Netns| {
            sh(ns
                .command("sysctl")
                .args(["-q", "-w", "net.ipv4.ip_forward=1"]))
        };
        forward(&etcd.ns)?;
        let (mut hosts, mut workloads) = (Vec::new(), Vec::new());
        for k in 1..=HOSTS.len() as u8 {
            let host = Netns::new(&format!("{tag}h{k}"))?;
            let work = Netns::new(&format!("{tag}w{k}"))?;
            etcd.link(&host, k)?;
            host.ip(&[
                "route",
                "add",
                "10.80.0.0/16",
                "via",
                &format!("10.98.{k}.2"),
            ])?;
            etcd.ns.ip(&[
                "route",
                "add",
                &format!("10.80.{k}.0/24"),
                "via",
                &format!("10.98.{k}.1"),
            ])?;
            veth(
                &work,
                "eth0",
                &format!("10.80.{k}.2/24"),
                &host,
                "w0",
                &format!("10.80.{k}.1/24"),
            )?;
            work.ip(&["route", "add", "default", "via", &format!("10.80.{k}.1")])?;
            forward(&host)?;
            hosts.push(host);
            workloads.push(work);
        }
        let dir = TempDir::new()?;
        Ok(Datacenter {
            etcd,
            hosts,
            workloads,
            creds: write_credentials(&dir.0)?,
            _dir: dir,
        })
    }

    /// Workload `i`'s address (host `HOSTS[i]`).
    pub fn workload_v4(i: usize) -> String {
        format!("10.80.{}.2", i + 1)
    }

    /// Starts host `i`'s agent, as etcd user `HOSTS[i]` (once
    /// [`EtcdCluster::enable_auth`] ran).
    pub fn agent(&self, i: usize, seed: &str) -> Result<Agent> {
        let (url, host) = (self.etcd.url(), HOSTS[i]);
        let pw = etcd_password(host);
        Agent::spawn(
            &self.hosts[i],
            TempDir::new()?,
            "run",
            seed,
            &["--host-id", host, "--state", &url, "--etcd-user", host],
            &[("SG_ETCD_PASSWORD", &pw)],
        )
    }

    /// Starts `sg-agent api` on host `i`, on [`crate::ENDPOINT`], as etcd
    /// user `user`.
    pub fn api(&self, i: usize, user: &str, seed: &str) -> Result<Agent> {
        let (url, creds, pw) = (
            self.etcd.url(),
            self.creds.display().to_string(),
            etcd_password(user),
        );
        Agent::spawn(
            &self.hosts[i],
            TempDir::new()?,
            "api",
            seed,
            &[
                "--state",
                &url,
                "--etcd-user",
                user,
                "--api-credentials",
                &creds,
            ],
            &[("SG_ETCD_PASSWORD", &pw)],
        )
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
/// As root once authentication is on.
pub fn etcdctl(c: &EtcdCluster, args: &[&str]) -> Result<String> {
    etcdctl_as(c, c.auth.as_deref(), args)
}

/// Runs `etcdctl` as `user` (`NAME:PASSWORD`; none: without
/// authentication).
pub fn etcdctl_as(c: &EtcdCluster, user: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = c.ctl(&MEMBERS);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    crate::sh(cmd.args(args))
}

/// Writes into `dir` a CA (`ca.pem`), a server certificate for the members'
/// addresses (`server.pem`, `server-key.pem`) and a client certificate
/// (`client.pem`, `client-key.pem`) it signed, and a client certificate of
/// another CA (`stranger.pem`, `stranger-key.pem`), with openssl.
pub fn make_certs(dir: &std::path::Path) -> Result<()> {
    let ssl = |args: &[&str]| {
        sh(std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args))
    };
    let key = |name: &str| ssl(&["genrsa", "-out", &format!("{name}-key.pem"), "2048"]);
    for ca in ["ca", "other-ca"] {
        key(ca)?;
        ssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{ca}-key.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-out",
            &format!("{ca}.pem"),
        ])?;
    }
    let sans: Vec<String> = MEMBERS.iter().map(|a| format!("IP:{a}")).collect();
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={}\n", sans.join(",")),
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("stranger", "other-ca", "client.ext"),
    ] {
        key(name)?;
        ssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}-key.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        ssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    Ok(())
}
