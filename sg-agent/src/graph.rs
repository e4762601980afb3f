//! `sg-agent graph` (docs/observe.md, "The picture"): the state as a
//! Graphviz graph, one cluster per VPC. Groups are boxes, prefix lists
//! folders, interfaces ellipses (by host in a fleet); an edge from a peer to
//! the group whose inbound rule admits it says what it admits, an edge from
//! a group to an interface that the interface uses the group. SVG is
//! Graphviz's own rendering (`dot -Tsvg`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::model::{Desired, Peer, Protocol, Rule};

/// A DOT string literal.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a rule admits, short: `tcp/22`, `all`, `icmp`.
fn admits(r: &Rule) -> String {
    match (r.protocol, r.from_port, r.to_port) {
        (Protocol::All, ..) => "all".into(),
        (p, -1, _) => p.to_string(),
        (p @ Protocol::Number(1 | 58), t, -1) => format!("{p} type {t}"),
        (p @ Protocol::Number(1 | 58), t, c) => format!("{p} {t}/{c}"),
        (p, f, t) if f == t => format!("{p}/{f}"),
        (p, f, t) => format!("{p}/{f}-{t}"),
    }
}

/// The state as DOT.
pub fn dot(d: &Desired) -> String {
    let mut s = String::from(
        "digraph sg {\n  rankdir=LR;\n  graph [fontname=\"Helvetica\", fontsize=11];\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n",
    );
    for v in &d.vpcs {
        let _ = writeln!(
            s,
            "  subgraph {} {{\n    label={};\n    style=rounded;",
            q(&format!("cluster_{}", v.id)),
            q(&format!("{} ({})", v.id, v.name))
        );
        for g in d.groups.iter().filter(|g| g.vpc == v.id) {
            let _ = writeln!(
                s,
                "    {} [shape=box, style=filled, fillcolor=\"#dbe8f6\", label={}];",
                q(&g.id),
                q(&format!("{}\n{}", g.name, g.id))
            );
        }
        // Interfaces grouped by the host that enforces them.
        let mut hosts: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for i in d.interfaces.iter().filter(|i| i.vpc == v.id) {
            hosts
                .entry(i.host.as_deref().unwrap_or(""))
                .or_default()
                .push(i);
        }
        for (host, ifaces) in hosts {
            let indent = if host.is_empty() { "    " } else { "      " };
            if !host.is_empty() {
                let _ = writeln!(
                    s,
                    "    subgraph {} {{\n      label={};\n      style=dashed;",
                    q(&format!("cluster_{}_{host}", v.id)),
                    q(&format!("host {host}"))
                );
            }
            for i in ifaces {
                let addrs: Vec<String> = i
                    .ipv4
                    .iter()
                    .map(|a| a.to_string())
                    .chain(i.ipv6.iter().map(|a| a.to_string()))
                    .collect();
                let _ = writeln!(
                    s,
                    "{indent}{} [shape=ellipse, label={}];",
                    q(&i.id),
                    q(&format!("{}\n{}\n{}", i.name, i.id, addrs.join(" ")))
                );
            }
            if !host.is_empty() {
                s += "    }\n";
            }
        }
        s += "  }\n";
    }
    for p in &d.prefix_lists {
        let _ = writeln!(
            s,
            "  {} [shape=folder, label={}];",
            q(&p.id),
            q(&format!(
                "{}\n{}\n{} entries",
                p.name,
                p.id,
                p.entries.len()
            ))
        );
    }
    for i in d.interfaces.iter() {
        for g in &i.groups {
            let _ = writeln!(
                s,
                "  {} -> {} [style=dashed, arrowhead=none];",
                q(g),
                q(&i.id)
            );
        }
    }
    edges(d, &mut s);
    s += "}\n";
    s
}

/// One edge per peer and group admitting it, labelled with what it admits.
fn edges(d: &Desired, s: &mut String) {
    let mut cidrs = Vec::new();
    for g in &d.groups {
        let mut by_peer: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
        for r in g.ingress.iter() {
            let (node, stale) = match &r.peer {
                Peer::Group { id, stale, .. } => (id.clone(), *stale),
                Peer::PrefixList(id) => (id.clone(), false),
                Peer::Cidr(n) => {
                    let n = n.to_string();
                    if !cidrs.contains(&n) {
                        cidrs.push(n.clone());
                    }
                    (n, false)
                }
            };
            let e = by_peer.entry(node).or_default();
            e.0.push(admits(r));
            e.1 |= stale;
        }
        for (peer, (what, stale)) in by_peer {
            let style = if stale {
                ", color=red, fontcolor=red, style=dotted"
            } else {
                ""
            };
            let label = if stale {
                format!("{} (stale)", what.join(", "))
            } else {
                what.join(", ")
            };
            let _ = writeln!(
                s,
                "  {} -> {} [label={}{style}];",
                q(&peer),
                q(&g.id),
                q(&label)
            );
        }
    }
    for c in cidrs {
        let wide = c.ends_with("/0");
        let color = if wide { "#f6d5d5" } else { "#eeeeee" };
        let _ = writeln!(
            s,
            "  {} [shape=note, style=filled, fillcolor=\"{color}\"];",
            q(&c)
        );
    }
}

/// The DOT rendered as SVG by Graphviz's `dot`.
pub fn svg(dot: &str) -> Result<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running Graphviz's dot (Debian's graphviz package) for SVG")?;
    child
        .stdin
        .take()
        .context("dot's input")?
        .write_all(dot.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("dot -Tsvg: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}
