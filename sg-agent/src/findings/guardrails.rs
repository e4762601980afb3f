//! Guardrails: rules that open what should not be open to anywhere (SSH and
//! RDP, every port, every protocol by default; a file of one's own with
//! `sg-agent audit --guardrails FILE`).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;

use super::{Finding, Kind, Severity, rules, show};
use crate::{
    compile::{peer_nets, port_span},
    model::{Desired, Peer, Protocol, Rule},
};

/// The guardrails file: `guardrails: [...]`, replacing the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    pub guardrails: Vec<Guardrail>,
}

/// One guardrail: a rule breaks it when its peer contains one of `sources`
/// and it lets through `protocol` on `ports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    pub name: String,
    #[serde(default = "critical")]
    pub severity: Severity,
    /// `ingress` (the default) or `egress`.
    #[serde(default = "ingress")]
    pub direction: String,
    /// `tcp`, `udp`, a number: rules of it or of all protocols break it;
    /// `-1`: only rules of all protocols do.
    #[serde(default = "all")]
    pub protocol: String,
    /// `22`, `8000-8100`: a rule that opens any of these ports; `all`: a rule
    /// that opens every port; absent: any rule of the protocol.
    #[serde(default)]
    pub ports: Option<String>,
    /// What counts as anywhere.
    #[serde(default = "anywhere")]
    pub sources: Vec<IpNet>,
}

fn critical() -> Severity {
    Severity::Critical
}
fn ingress() -> String {
    "ingress".into()
}
fn all() -> String {
    "-1".into()
}
fn anywhere() -> Vec<IpNet> {
    ["0.0.0.0/0", "::/0"].map(|s| s.parse().unwrap()).to_vec()
}

impl Default for Guardrails {
    /// SSH and RDP, every TCP or UDP port, and every protocol, from anywhere.
    fn default() -> Self {
        let g = |name: &str, protocol: &str, ports: Option<&str>| Guardrail {
            name: name.into(),
            severity: Severity::Critical,
            direction: ingress(),
            protocol: protocol.into(),
            ports: ports.map(String::from),
            sources: anywhere(),
        };
        Guardrails {
            guardrails: vec![
                g("ssh-from-anywhere", "tcp", Some("22")),
                g("rdp-from-anywhere", "tcp", Some("3389")),
                g("all-tcp-ports-from-anywhere", "tcp", Some("all")),
                g("all-udp-ports-from-anywhere", "udp", Some("all")),
                g("all-protocols-from-anywhere", "-1", None),
            ],
        }
    }
}

/// Which ports a guardrail is about.
enum Ports {
    Any,
    Every,
    Some(u16, u16),
}

impl Guardrail {
    fn ports(&self) -> Result<Ports> {
        let Some(p) = self.ports.as_deref() else {
            return Ok(Ports::Any);
        };
        if p == "all" {
            return Ok(Ports::Every);
        }
        let (lo, hi) = p.split_once('-').unwrap_or((p, p));
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| anyhow!("ports: {p:?} is not a port, a range A-B or all"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            bail!("ports: {p:?} runs backwards");
        }
        Ok(Ports::Some(lo, hi))
    }

    fn check(&self) -> Result<()> {
        Protocol::parse(&self.protocol).map_err(|e| anyhow!("protocol: {e}"))?;
        if !["ingress", "egress"].contains(&self.direction.as_str()) {
            bail!("direction: {:?} is not ingress or egress", self.direction);
        }
        if self.sources.is_empty() {
            bail!("sources: name at least one CIDR");
        }
        self.ports().map(|_| ())
    }

    /// `r` (in `dir`, its peer standing for `nets`) breaks this guardrail.
    fn broken_by(&self, dir: &str, r: &Rule, nets: &[IpNet]) -> bool {
        if dir != self.direction
            || !nets
                .iter()
                .any(|n| self.sources.iter().any(|s| n.contains(s)))
        {
            return false;
        }
        let Ok(want) = Protocol::parse(&self.protocol) else {
            return false;
        };
        if !(r.protocol == Protocol::All || r.protocol == want) {
            return false;
        }
        let (lo, hi) = port_span(r.protocol, r.from_port, r.to_port);
        match self.ports() {
            Ok(Ports::Any) => true,
            Ok(Ports::Every) => (lo, hi) == (0, u16::MAX),
            Ok(Ports::Some(a, b)) => lo <= b && a <= hi,
            Err(_) => false,
        }
    }
}

impl Guardrails {
    pub fn load(path: &Path) -> Result<Guardrails> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?;
        let g: Guardrails = serde_yaml::from_str(&text).map_err(|e| anyhow!("{shown}: {e}"))?;
        for (i, r) in g.guardrails.iter().enumerate() {
            r.check()
                .map_err(|e| anyhow!("{shown}: guardrails[{i}] ({}): {e}", r.name))?;
        }
        Ok(g)
    }

    pub fn check(&self, d: &Desired) -> Vec<Finding> {
        let mut out = Vec::new();
        for g in &d.groups {
            for (dir, r) in rules(g) {
                // A group peer stands for private addresses, never anywhere.
                if matches!(r.peer, Peer::Group { .. }) {
                    continue;
                }
                let nets = peer_nets(d, &r.peer);
                for rail in self
                    .guardrails
                    .iter()
                    .filter(|x| x.broken_by(dir, r, &nets))
                {
                    out.push(Finding {
                        severity: rail.severity,
                        kind: Kind::Guardrail,
                        resource: r.id.clone(),
                        group_id: Some(g.id.clone()),
                        guardrail: Some(rail.name.clone()),
                        detail: format!("{} breaks {}", show(dir, r), rail.name),
                    });
                }
            }
        }
        out
    }
}
