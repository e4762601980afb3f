//! What a new desired state would change on each interface against what is
//! in force, and above all what it would let through that passes nowhere
//! today: `sg-agent check` prints it, and the agent logs it at WARN on every
//! reload that widens.

use std::collections::BTreeMap;

use crate::{
    compile::{Flat, interface_rules},
    model::{Desired, Protocol},
};

/// The rules in force on one interface, as the datapath matches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfacePolicy {
    pub inbound: Vec<Flat>,
    pub outbound: Vec<Flat>,
    pub related_icmp: bool,
}

/// What is enforced, by interface name. `None`: enforced with a policy this
/// agent did not compile (left by an earlier agent, not in the file).
pub type Enforced = BTreeMap<String, Option<IfacePolicy>>;

/// The policy `d` gives each interface it enforces (not `detached`).
pub fn policies(d: &Desired) -> BTreeMap<String, IfacePolicy> {
    d.local()
        .filter(|i| !i.detached)
        .map(|i| {
            let (inbound, outbound) = interface_rules(d, i);
            (
                i.name.clone(),
                IfacePolicy {
                    inbound,
                    outbound,
                    related_icmp: i.related_icmp,
                },
            )
        })
        .collect()
}

/// What is enforced once `new` is taken over `before`: the interfaces `new`
/// lists get its policy; those it leaves out keep theirs (detaching is never
/// implied); those it marks `detached` are no longer enforced.
pub fn after(before: &Enforced, new: &Desired) -> Enforced {
    let mut out: Enforced = before.clone();
    for i in new.local().filter(|i| i.detached) {
        out.remove(&i.name);
    }
    for (name, p) in policies(new) {
        out.insert(name, Some(p));
    }
    out
}

/// `old` lets through everything `new` does (same protocol or all, the
/// block within, the range within).
fn covers(old: &Flat, new: &Flat) -> bool {
    (old.protocol == Protocol::All || old.protocol == new.protocol)
        && old.net.contains(&new.net)
        && old.lo <= new.lo
        && new.hi <= old.hi
}

fn describe(f: &Flat, dir: &str) -> String {
    let what = match f.protocol {
        Protocol::All => "all traffic".to_string(),
        p if (f.lo, f.hi) == (0, u16::MAX) => format!("{p}"),
        p if f.lo == f.hi => format!("{p} {}", f.lo),
        p => format!("{p} {}-{}", f.lo, f.hi),
    };
    let peer = if dir == "inbound" { "from" } else { "to" };
    format!("{dir} {what} {peer} {}", f.net)
}

/// Every way in which `after` lets through what `before` does not, one line
/// each. Conservative: a new rule counts as wider unless one rule in force
/// covers it alone.
pub fn widenings(before: &Enforced, after: &Enforced) -> Vec<String> {
    let mut out = Vec::new();
    for (name, was) in before {
        let Some(was) = was else {
            if after.get(name).is_some_and(|p| p.is_some()) {
                out.push(format!(
                    "{name}: the policy an earlier agent left is replaced by the file's"
                ));
            }
            continue;
        };
        let Some(now) = after.get(name) else {
            out.push(format!(
                "{name}: detached: all its traffic passes unfiltered"
            ));
            continue;
        };
        let Some(now) = now else { continue };
        for (dir, old, new) in [
            ("inbound", &was.inbound, &now.inbound),
            ("outbound", &was.outbound, &now.outbound),
        ] {
            for f in new {
                if !old.iter().any(|o| covers(o, f)) {
                    out.push(format!("{name}: {}", describe(f, dir)));
                }
            }
        }
        if now.related_icmp && !was.related_icmp {
            out.push(format!(
                "{name}: related_icmp: ICMP errors about tracked flows pass"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source;

    fn desired(text: &str) -> Desired {
        source::file::parse("t.yaml", text, None, None).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "security_groups:
  - name: app
    ingress:
      - ip_protocol: tcp
        from_port: 8080
        to_port: 8080
        ip_ranges:
          - 10.9.0.200/32
network_interfaces:
  - {interface: eth0, groups: [app]}
  - {interface: eth1, groups: [app]}
";

    fn enforced(text: &str) -> Enforced {
        after(&Enforced::new(), &desired(text))
    }

    #[test]
    fn a_cut_cidr_and_a_new_port_widen_a_narrower_rule_does_not() {
        let before = enforced(BASE);
        let cut = BASE.replace("10.9.0.200/32", "10.9.0.200/3");
        let w = widenings(&before, &after(&before, &desired(&cut)));
        assert_eq!(
            w,
            [
                "eth0: inbound tcp 8080 from 0.0.0.0/3",
                "eth1: inbound tcp 8080 from 0.0.0.0/3"
            ]
        );
        let port = BASE.replace("to_port: 8080", "to_port: 8090");
        assert_eq!(
            widenings(&before, &after(&before, &desired(&port))).len(),
            2
        );
        let narrower = BASE.replace("ip_protocol: tcp", "ip_protocol: udp");
        let w = widenings(&before, &after(&before, &desired(&narrower)));
        assert_eq!(w.len(), 2, "udp is not within tcp: {w:?}");
        let same = widenings(&before, &after(&before, &desired(BASE)));
        assert!(same.is_empty(), "{same:?}");
    }

    #[test]
    fn leaving_an_interface_out_keeps_it_detaching_it_is_said() {
        let before = enforced(BASE);
        let without = BASE.replace("  - {interface: eth1, groups: [app]}\n", "");
        let kept = after(&before, &desired(&without));
        assert_eq!(kept, before, "eth1 keeps its policy");
        assert!(widenings(&before, &kept).is_empty());
        let empty = after(&before, &desired("{}\n"));
        assert_eq!(empty, before, "an empty document detaches nothing");
        let detached = BASE.replace(
            "{interface: eth1, groups: [app]}",
            "{interface: eth1, detached: true}",
        );
        let w = widenings(&before, &after(&before, &desired(&detached)));
        assert_eq!(w, ["eth1: detached: all its traffic passes unfiltered"]);
    }
}
