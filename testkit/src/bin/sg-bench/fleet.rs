//! The case that sized datapath v2: 100 local interfaces whose groups
//! reference a 10,000-member group, plus 1,000 CIDR rules. Reports the
//! kernel entries and bytes, and what a membership change writes.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Instant,
};

use anyhow::{Result, bail};
use serde_json::json;
use sg_agent::{
    compile::{Atom, Compiled, Members, Rule, Settings, compile_rules},
    datapath::{Change, Datapath},
    model::Protocol,
};
use sg_common::names;
use sg_testkit::{
    frames::{L4, Spec, TCP_SYN},
    policies::rules,
};

use crate::micro::LOCAL;

const INTERFACES: u32 = 100;
const MEMBERS: u32 = 10_000;
const GROUP: &str = "sg-0000000000000web0";

fn member(i: u32) -> IpAddr {
    // 10.128.0.0/16 and up: outside every generated rule's block.
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i))
}

pub(crate) fn fleet(pin_dir: &Path) -> Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(pin_dir);
    let mut dp = Datapath::load(1024, pin_dir)?;
    let shared: Vec<Rule> = rules(1_000)
        .into_iter()
        .map(|f| Rule {
            atom: Atom::Net(f.net),
            protocol: f.protocol,
            lo: f.lo,
            hi: f.hi,
        })
        .chain([Rule {
            atom: Atom::Group(GROUP.into()),
            protocol: Protocol::Number(6),
            lo: 5432,
            hi: 5432,
        }])
        .collect();
    // Each interface also has a rule of its own, so that no two share a
    // policy: the worst case for the policy map.
    let compiled: Vec<Compiled> = (0..INTERFACES)
        .map(|i| {
            let own = Rule {
                atom: Atom::Net(format!("192.168.{i}.0/24").parse().expect("net")),
                protocol: Protocol::Number(6),
                lo: 9000,
                hi: 9000,
            };
            compile_rules(
                shared.iter().cloned().chain([own]),
                [],
                &Settings::default(),
            )
        })
        .collect();
    // Interface 0 is the loopback (ifindex 1), where test runs are judged.
    let changes: Vec<Change> = compiled
        .iter()
        .enumerate()
        .map(|(i, c)| Change {
            name: "bench",
            ifindex: if i == 0 { 1 } else { 1000 + i as u32 },
            compiled: c,
        })
        .collect();
    let mut members = Members::default();
    members.insert(GROUP.into(), (0..MEMBERS).map(member).collect());
    let t = Instant::now();
    let first = dp.commit(&changes, &members)?;
    let install_ms = t.elapsed().as_secs_f64() * 1e3;
    dp.retire();
    let (addrs, policy) = dp.maps.policy_sizes();
    let bytes: u64 = [
        names::ADDR4,
        names::ADDR6,
        names::LENS,
        names::POLICY,
        names::IFACES,
    ]
    .iter()
    .map(|m| dp.maps.memlock(m).unwrap_or(0))
    .sum();
    dp.load_baseline()?;
    // Each probe a new flow (its own source port), so the policy decides.
    let sport = std::cell::Cell::new(40000u16);
    let verdict = |dp: &Datapath, src: IpAddr| -> Result<u32> {
        sport.set(sport.get() + 1);
        let l4 = L4::Tcp {
            sport: sport.get(),
            dport: 5432,
            flags: TCP_SYN,
        };
        Ok(dp
            .test_run(true, &Spec::new(src, IpAddr::V4(LOCAL), l4).frame(), 1)?
            .0)
    };
    let newcomer = member(MEMBERS);
    if verdict(&dp, member(7))? != 0 || verdict(&dp, newcomer)? != 2 {
        bail!("fleet: a member was not allowed, or a non-member was");
    }
    // A member joins with the identity the others have: one address write.
    let mut joined = members.clone();
    joined.get_mut(GROUP).expect("group").push(newcomer);
    let t = Instant::now();
    let join = dp.commit(&[], &joined)?;
    let join_ms = t.elapsed().as_secs_f64() * 1e3;
    if verdict(&dp, newcomer)? != 0 {
        bail!("fleet: the new member is not allowed after the change");
    }
    // It leaves: one address removed.
    let t = Instant::now();
    let leave = dp.commit(&[], &members)?;
    let leave_ms = t.elapsed().as_secs_f64() * 1e3;
    if verdict(&dp, newcomer)? != 2 {
        bail!("fleet: the member that left is still allowed");
    }
    // A member inside one of the CIDR rules has an identity of its own
    // (the group and the block): one address, and that identity's entry in
    // each policy that has a rule for either.
    let inside = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    let mut nested = members.clone();
    nested.get_mut(GROUP).expect("group").push(inside);
    let new_identity = dp.commit(&[], &nested)?;
    dp.retire();
    let v1_entries = INTERFACES as u64 * (MEMBERS as u64 + 1_000 + 1);
    let v = json!({
        "interfaces": INTERFACES,
        "group_members": MEMBERS,
        "cidr_rules": 1_000,
        "install_ms": install_ms,
        "install_writes": first.addresses + first.policy + first.interfaces,
        "address_entries": addrs,
        "policy_entries": policy,
        "kernel_bytes": bytes,
        "per_interface_tries_entries_v1": v1_entries,
        "join": {"address_writes": join.addresses, "policy_writes": join.policy, "interface_writes": join.interfaces, "ms": join_ms},
        "leave": {"address_writes": leave.addresses, "policy_writes": leave.policy, "interface_writes": leave.interfaces, "ms": leave_ms},
        "join_new_identity": {"address_writes": new_identity.addresses, "policy_writes": new_identity.policy, "interface_writes": new_identity.interfaces},
    });
    eprintln!("micro: fleet: {v}");
    dp.stop();
    Ok(v)
}
