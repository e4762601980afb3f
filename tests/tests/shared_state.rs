//! The shared address map and identity-keyed policies (docs/datapath.md),
//! on the real programs through `BPF_PROG_TEST_RUN`: a member joining is one
//! map write whatever the number of interfaces; port ranges past one chunk
//! are matched; and a change of rules and members together never shows a
//! packet half of it (a probe loop during the changes).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use sg_agent::{
    compile::{Atom, Compiled, Members, Rule, Settings, compile_rules},
    datapath::{self, Change, Datapath, PROG_INGRESS, Writes},
    model::Protocol,
};
use sg_testkit::frames::{L4, Spec, TCP_SYN};
use sg_tests::{PinDir, kernel_available};

const GROUP: &str = "sg-00000000000000db0";
const LOCAL: &str = "10.1.0.1";
const TCP: Protocol = Protocol::Number(6);

fn rule(atom: Atom, lo: u16, hi: u16) -> Rule {
    Rule {
        atom,
        protocol: TCP,
        lo,
        hi,
    }
}

fn group() -> Atom {
    Atom::Group(GROUP.into())
}

fn net(s: &str) -> Atom {
    Atom::Net(s.parse().unwrap())
}

fn policy(rules: Vec<Rule>) -> Compiled {
    compile_rules(rules, [], &Settings::default())
}

fn syn(src: &str, sport: u16, dport: u16) -> Vec<u8> {
    Spec::new(
        src.parse().unwrap(),
        LOCAL.parse().unwrap(),
        L4::Tcp {
            sport,
            dport,
            flags: TCP_SYN,
        },
    )
    .frame()
}

/// The verdict on a new flow from `src` to `dport` on the loopback (0: pass).
fn verdict(dp: &Datapath, src: &str, dport: u16) -> u32 {
    static SPORT: AtomicU64 = AtomicU64::new(20000);
    let sport = 20000 + (SPORT.fetch_add(1, Ordering::Relaxed) % 40000) as u16;
    dp.test_run(true, &syn(src, sport, dport), 1).unwrap().0
}

fn members(addrs: impl IntoIterator<Item = IpAddr>) -> Members {
    let mut m = Members::default();
    m.insert(GROUP.into(), addrs.into_iter().collect());
    m
}

#[test]
fn a_member_joining_is_one_address_write_whatever_the_interfaces() {
    if !kernel_available("a_member_joining_is_one_address_write_whatever_the_interfaces") {
        return;
    }
    let pins = PinDir::new("sharedjoin");
    let mut dp = Datapath::load(4096, &pins.0).unwrap();
    // 30 interfaces (the loopback among them) whose policies differ, all
    // referencing one group of 1,000 members.
    let compiled: Vec<Compiled> = (0..30)
        .map(|i| {
            policy(vec![
                rule(group(), 5432, 5432),
                rule(net(&format!("192.168.{i}.0/24")), 22, 22),
            ])
        })
        .collect();
    let changes: Vec<Change> = compiled
        .iter()
        .enumerate()
        .map(|(i, c)| Change {
            name: "t",
            ifindex: if i == 0 { 1 } else { 2000 + i as u32 },
            compiled: c,
        })
        .collect();
    let member = |i: u32| IpAddr::from([10, 50, (i >> 8) as u8, i as u8]);
    let base = members((0..1000).map(member));
    dp.commit(&changes, &base).unwrap();
    dp.retire();
    let (addrs, entries) = dp.maps.policy_sizes();
    // One entry per member and per block, not per interface.
    assert_eq!(addrs, 1000 + 30);
    assert!(entries <= 30 * 3, "{entries} policy entries");
    assert_eq!(verdict(&dp, "10.50.0.7", 5432), 0);
    assert_eq!(verdict(&dp, "10.50.9.9", 5432), 2);

    let joined = members((0..1000).map(member).chain([member(2313)]));
    let w = dp.commit(&[], &joined).unwrap();
    assert_eq!(
        w,
        Writes {
            addresses: 1,
            policy: 0,
            interfaces: 0,
            staged: false,
        }
    );
    assert_eq!(verdict(&dp, "10.50.9.9", 5432), 0);
    assert_eq!(verdict(&dp, "10.50.9.9", 22), 2);
    let w = dp.commit(&[], &base).unwrap();
    assert_eq!(w.addresses + w.policy + w.interfaces, 1);
    assert_eq!(verdict(&dp, "10.50.9.9", 5432), 2);
    // A rule added to one interface's policy: that identity's entry is
    // rewritten in place, nothing else.
    let more = policy(vec![
        rule(group(), 5432, 5432),
        rule(group(), 6432, 6432),
        rule(net("192.168.0.0/24"), 22, 22),
    ]);
    let change = [Change {
        name: "t",
        ifindex: 1,
        compiled: &more,
    }];
    let w = dp.commit(&change, &base).unwrap();
    assert_eq!(
        w,
        Writes {
            addresses: 0,
            policy: 1,
            interfaces: 0,
            staged: false,
        }
    );
    assert_eq!(verdict(&dp, "10.50.0.7", 6432), 0);
    assert_eq!(verdict(&dp, "10.50.0.7", 5432), 0);
    dp.stop();
}

#[test]
fn port_ranges_past_one_chunk_are_matched() {
    if !kernel_available("port_ranges_past_one_chunk_are_matched") {
        return;
    }
    let pins = PinDir::new("sharedchunks");
    let mut dp = Datapath::load(4096, &pins.0).unwrap();
    // 40 single ports and a range: 41 segments for one peer, six chunks.
    let mut rules: Vec<Rule> = (0..40u16)
        .map(|i| rule(net("10.0.0.0/8"), 1000 + 2 * i, 1000 + 2 * i))
        .collect();
    rules.push(rule(net("10.0.0.0/8"), 3000, 3100));
    dp.install("lo", 1, &policy(rules)).unwrap();
    for i in 0..40u16 {
        assert_eq!(
            verdict(&dp, "10.2.3.4", 1000 + 2 * i),
            0,
            "port {}",
            1000 + 2 * i
        );
        assert_eq!(
            verdict(&dp, "10.2.3.4", 1001 + 2 * i),
            2,
            "port {}",
            1001 + 2 * i
        );
    }
    for (port, want) in [
        (2999, 2),
        (3000, 0),
        (3050, 0),
        (3100, 0),
        (3101, 2),
        (999, 2),
    ] {
        assert_eq!(verdict(&dp, "10.2.3.4", port), want, "port {port}");
    }
    assert_eq!(verdict(&dp, "11.0.0.1", 3050), 2);
    dp.stop();
}

/// Changes to the loopback and to interface 3001 (which need not exist).
fn lo_and_other<'a>(lo: &'a Compiled, other: &'a Compiled) -> [Change<'a>; 2] {
    [
        Change {
            name: "lo",
            ifindex: 1,
            compiled: lo,
        },
        Change {
            name: "other",
            ifindex: 3001,
            compiled: other,
        },
    ]
}

/// A datapath whose ingress program is pinned for a probe thread to run.
fn probed(name: &str) -> (PinDir, Datapath, std::path::PathBuf) {
    let pins = PinDir::new(name);
    let mut dp = Datapath::load(1 << 16, &pins.0).unwrap();
    let pin = pins.0.join("probe-prog");
    dp.pin_program(PROG_INGRESS, &pin).unwrap();
    (pins, dp, pin)
}

/// Commits `a` and `b` in turn while a thread probes `src`:80 with new
/// flows; returns (probes, verdicts other than `want`).
fn probe_during_changes(
    dp: &mut Datapath,
    pin: &std::path::Path,
    a: (&Compiled, &Members),
    b: (&Compiled, &Members),
    want: u32,
) -> (u64, u64) {
    let other = policy(vec![rule(group(), 80, 80)]);
    probe_while(dp, pin, 80, want, |dp, to_b| {
        let (c, m) = if to_b { b } else { a };
        // Another interface references the group, so that its members are
        // in the address map in both states.
        dp.commit(&lo_and_other(c, &other), m).unwrap();
    })
}

/// Calls `flip(dp, false)`, then `flip(dp, true)` and `flip(dp, false)`
/// in turn while a thread probes 10.9.0.7:`dport` with new flows; returns
/// (probes, verdicts other than `want`).
fn probe_while(
    dp: &mut Datapath,
    pin: &std::path::Path,
    dport: u16,
    want: u32,
    mut flip: impl FnMut(&mut Datapath, bool),
) -> (u64, u64) {
    flip(dp, false);
    dp.retire();
    let stop = Arc::new(AtomicBool::new(false));
    let (runs, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let probe = {
        let (stop, runs, wrong, pin) =
            (stop.clone(), runs.clone(), wrong.clone(), pin.to_path_buf());
        std::thread::spawn(move || {
            let prog = aya::programs::SchedClassifier::from_pin(&pin).unwrap();
            let mut sport = 1024u16;
            while !stop.load(Ordering::Relaxed) {
                sport = sport.wrapping_add(1).max(1024);
                let (r, _) = datapath::test_run(&prog, &syn("10.9.0.7", sport, dport), 1).unwrap();
                runs.fetch_add(1, Ordering::Relaxed);
                if r != want {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for _ in 0..40 {
        flip(dp, true);
        dp.retire_expired();
        flip(dp, false);
        dp.retire_expired();
    }
    dp.retire();
    stop.store(true, Ordering::Relaxed);
    probe.join().unwrap();
    (runs.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed))
}

#[test]
fn a_change_of_rules_and_members_together_is_never_seen_half_done() {
    if !kernel_available("a_change_of_rules_and_members_together_is_never_seen_half_done") {
        return;
    }
    let (_pins, mut dp, pin) = probed("sharedatomic");
    let x: IpAddr = "10.9.0.7".parse().unwrap();
    let (none, with_x) = (members([]), members([x]));
    let by_group = policy(vec![rule(group(), 80, 80)]);
    let elsewhere = policy(vec![rule(net("10.200.0.0/16"), 81, 81)]);
    let by_address = policy(vec![rule(net("10.9.0.7/32"), 80, 80)]);
    // Denied both ways: the rule allows the group but 10.9.0.7 is not in
    // it; then it is, but the rule is gone. Old rules with new members
    // would let it through.
    let (runs, wrong) =
        probe_during_changes(&mut dp, &pin, (&by_group, &none), (&elsewhere, &with_x), 2);
    assert!(runs > 100, "only {runs} probes ran");
    assert_eq!(
        wrong, 0,
        "{wrong} of {runs} probes passed a port both states deny"
    );
    // Allowed both ways: as a member through the group rule; then through
    // a rule for its address, no longer a member. New rules with old
    // members would drop it.
    let (runs, wrong) =
        probe_during_changes(&mut dp, &pin, (&by_group, &with_x), (&by_address, &none), 0);
    assert!(runs > 100, "only {runs} probes ran");
    assert_eq!(
        wrong, 0,
        "{wrong} of {runs} probes dropped what both states allow"
    );
    let _ = std::fs::remove_file(&pin);
    dp.stop();
}

#[test]
fn a_rule_for_a_new_block_is_enforced_unstaged_and_never_seen_half_done() {
    if !kernel_available("a_rule_for_a_new_block_is_enforced_unstaged_and_never_seen_half_done") {
        return;
    }
    let (_pins, mut dp, pin) = probed("sharedunstaged");
    // Two interfaces share a policy allowing 10.0.0.0/8 to 80; each then
    // adds a rule of its own for 10.9.0.0/24, a block new to the address
    // map: 10.9.0.7 takes a new identity while the shared policy is
    // replaced (not rewritten in place), so a packet that read the old
    // configuration may meet the new identity, and one that read the new
    // may meet the old. Port 80 is allowed in both states, 82 in neither.
    let base = vec![rule(net("10.0.0.0/8"), 80, 80)];
    let with = |port: u16| {
        let mut r = base.clone();
        r.push(rule(net("10.9.0.0/24"), port, port));
        policy(r)
    };
    let (a, b1, b2) = (policy(base.clone()), with(81), with(83));
    let none = members([]);
    let mut staged = 0;
    let mut flip = |dp: &mut Datapath, to_b: bool| {
        let (lo, other) = if to_b { (&b1, &b2) } else { (&a, &a) };
        let w = dp.commit(&lo_and_other(lo, other), &none).unwrap();
        staged += usize::from(w.staged);
    };
    for (dport, want, what) in [(80, 0, "dropped what both"), (82, 2, "passed what neither")] {
        let (runs, wrong) = probe_while(&mut dp, &pin, dport, want, &mut flip);
        assert!(runs > 100, "only {runs} probes ran");
        assert_eq!(wrong, 0, "{wrong} of {runs} probes {what} states allow");
    }
    assert_eq!(verdict(&dp, "10.9.0.7", 81), 2);
    flip(&mut dp, true);
    assert_eq!(verdict(&dp, "10.9.0.7", 81), 0);
    assert_eq!(verdict(&dp, "10.10.0.7", 81), 2);
    // Rules and blocks grew together, or shrank together: nothing waited.
    assert_eq!(staged, 0, "{staged} changes were staged");
    let _ = std::fs::remove_file(&pin);
    dp.stop();
}
