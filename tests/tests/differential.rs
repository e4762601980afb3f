//! Differential tests: random policies and random packet sequences run through
//! the real program with `BPF_PROG_TEST_RUN` and through the reference oracle
//! (`sg_testkit::oracle`); every verdict, drop reason and tracker state must be
//! the same.
//!
//! `SG_SEED=<n>` reproduces a run; `SG_CASES=<n>` sets the number of packets
//! (default 12,000). A failure prints the seed, the policy and the packets of
//! its scenario.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sg_agent::{
    compile::{Flat, Settings, compile},
    datapath::{Datapath, PROG_EGRESS, PROG_INGRESS, PROG_XDP, ct_addr},
    model::{AttachMode, Protocol, Timeouts},
};
use sg_common::{DIR_INBOUND, DIR_OUTBOUND, Reason};
use sg_testkit::{
    frames::{self, Frag, L4, Spec, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    oracle::{self, FlowId, FragId, Policy, State, Verdict},
};
use sg_tests::{PinDir, kernel_available};

/// `BPF_PROG_TEST_RUN` runs on the loopback device of this namespace.
const IFINDEX: u32 = 1;
const PACKETS_PER_SCENARIO: usize = 24;

const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 100);
const REMOTE4: [Ipv4Addr; 6] = [
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(10, 1, 2, 200),
    Ipv4Addr::new(10, 1, 9, 9),
    Ipv4Addr::new(10, 2, 0, 1),
    Ipv4Addr::new(192, 0, 2, 7),
    Ipv4Addr::new(203, 0, 113, 5),
];
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x64);
const REMOTE6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0xc8),
    Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
];
const PORTS: [u16; 9] = [22, 53, 80, 443, 1000, 5000, 8080, 40000, 65535];
const OTHER_PROTOS: [u8; 3] = [47, 132, 50];

fn random_net(rng: &mut StdRng, v6: bool) -> IpNet {
    if v6 {
        let a = *REMOTE6.choose(rng).unwrap();
        let len = *[0u8, 16, 32, 48, 64, 100, 127, 128].choose(rng).unwrap();
        IpNet::new(IpAddr::V6(a), len).unwrap().trunc()
    } else {
        let a = *REMOTE4.choose(rng).unwrap();
        let len = *[0u8, 1, 8, 16, 23, 24, 30, 32].choose(rng).unwrap();
        IpNet::new(IpAddr::V4(a), len).unwrap().trunc()
    }
}

fn random_rule(rng: &mut StdRng) -> Flat {
    let v6 = rng.random_bool(0.4);
    let net = random_net(rng, v6);
    let roll: f64 = rng.random();
    let (protocol, lo, hi) = if roll < 0.3 || roll < 0.55 {
        let proto = if roll < 0.3 { 6 } else { 17 };
        let p = *PORTS.choose(rng).unwrap();
        match rng.random_range(0..4) {
            0 => (Protocol::Number(proto), 0, u16::MAX),
            1 => (
                Protocol::Number(proto),
                p,
                p.saturating_add(rng.random_range(0..2000)),
            ),
            _ => (Protocol::Number(proto), p, p),
        }
    } else if roll < 0.75 {
        let proto = if v6 { 58 } else { 1 };
        let t = *[0u8, 3, 8, 11, 128, 129, 1].choose(rng).unwrap() as u16;
        match rng.random_range(0..3) {
            0 => (Protocol::Number(proto), 0, u16::MAX),
            1 => (Protocol::Number(proto), t << 8, t << 8 | 0xff),
            _ => {
                let c = rng.random_range(0..4u16);
                (Protocol::Number(proto), t << 8 | c, t << 8 | c)
            }
        }
    } else if roll < 0.87 {
        (Protocol::All, 0, u16::MAX)
    } else {
        (
            Protocol::Number(*OTHER_PROTOS.choose(rng).unwrap()),
            0,
            u16::MAX,
        )
    };
    Flat {
        net,
        protocol,
        lo,
        hi,
    }
}

fn default_egress() -> Vec<Flat> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .map(|n| Flat {
            net: n.parse().unwrap(),
            protocol: Protocol::All,
            lo: 0,
            hi: u16::MAX,
        })
        .collect()
}

fn random_policy(rng: &mut StdRng) -> Policy {
    let n_in = rng.random_range(0..24);
    let n_out = rng.random_range(0..12);
    let mut inbound: Vec<Flat> = (0..n_in).map(|_| random_rule(rng)).collect();
    let mut outbound: Vec<Flat> = (0..n_out).map(|_| random_rule(rng)).collect();
    if rng.random_bool(0.5) {
        outbound.extend(default_egress());
    }
    if rng.random_bool(0.2) {
        inbound.extend(default_egress());
    }
    // Flattened rules are a set, as `compile::flatten` makes them.
    inbound.sort();
    inbound.dedup();
    outbound.sort();
    outbound.dedup();
    Policy {
        inbound,
        outbound,
        related_icmp: rng.random_bool(0.3),
        max_flows: 1 << 20,
    }
}

/// A packet of a scenario: its direction and spec.
#[derive(Clone, Debug)]
struct Sent {
    dir: u8,
    spec: Spec,
}

fn random_l4(rng: &mut StdRng, v6: bool) -> L4 {
    let port = |rng: &mut StdRng| {
        if rng.random_bool(0.7) {
            *PORTS.choose(rng).unwrap()
        } else {
            rng.random_range(1024..=65535)
        }
    };
    match rng.random_range(0..10) {
        0..=3 => L4::Tcp {
            sport: port(rng),
            dport: port(rng),
            flags: *[
                TCP_SYN,
                TCP_SYN,
                TCP_ACK,
                TCP_SYN | TCP_ACK,
                TCP_FIN | TCP_ACK,
                TCP_RST,
            ]
            .choose(rng)
            .unwrap(),
        },
        4..=6 => L4::Udp {
            sport: port(rng),
            dport: port(rng),
        },
        7 | 8 => {
            let types: &[u8] = if v6 {
                &[128, 129, 1, 3, 135, 136, 2]
            } else {
                &[8, 0, 3, 11, 13, 14, 5]
            };
            L4::Icmp {
                t: *types.choose(rng).unwrap(),
                code: rng.random_range(0..4),
                id: *[7u16, 9, 1000].choose(rng).unwrap(),
            }
        }
        _ => L4::Raw {
            proto: *OTHER_PROTOS.choose(rng).unwrap(),
            len: 16,
        },
    }
}

/// The reply a peer would send to `s`.
fn reverse(rng: &mut StdRng, s: &Sent) -> Sent {
    let l4 = match s.spec.l4 {
        L4::Tcp { sport, dport, .. } => L4::Tcp {
            sport: dport,
            dport: sport,
            flags: *[TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST]
                .choose(rng)
                .unwrap(),
        },
        L4::Udp { sport, dport } => L4::Udp {
            sport: dport,
            dport: sport,
        },
        L4::Icmp { t, code, id } => L4::Icmp {
            t: match t {
                8 => 0,
                13 => 14,
                128 => 129,
                other => other,
            },
            code,
            id,
        },
        ref raw => raw.clone(),
    };
    Sent {
        dir: if s.dir == DIR_INBOUND {
            DIR_OUTBOUND
        } else {
            DIR_INBOUND
        },
        spec: Spec::new(s.spec.dst, s.spec.src, l4),
    }
}

fn random_packet(rng: &mut StdRng, history: &[Sent]) -> (Sent, Vec<u8>) {
    let roll: f64 = rng.random();
    let mut sent = if !history.is_empty() && roll < 0.35 {
        let orig = history.choose(rng).unwrap().clone();
        reverse(rng, &orig)
    } else if !history.is_empty() && roll < 0.5 {
        let mut s = history.choose(rng).unwrap().clone();
        if let L4::Tcp { ref mut flags, .. } = s.spec.l4 {
            *flags = *[TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, TCP_SYN]
                .choose(rng)
                .unwrap();
        }
        s
    } else {
        let v6 = rng.random_bool(0.45);
        let dir = if rng.random_bool(0.5) {
            DIR_INBOUND
        } else {
            DIR_OUTBOUND
        };
        let (local, remote) = if v6 {
            (
                IpAddr::V6(LOCAL6),
                IpAddr::V6(*REMOTE6.choose(rng).unwrap()),
            )
        } else {
            (
                IpAddr::V4(LOCAL4),
                IpAddr::V4(*REMOTE4.choose(rng).unwrap()),
            )
        };
        let (src, dst) = if dir == DIR_INBOUND {
            (remote, local)
        } else {
            (local, remote)
        };
        Sent {
            dir,
            spec: Spec::new(src, dst, random_l4(rng, v6)),
        }
    };
    let v6 = sent.spec.src.is_ipv6();
    // IP-layer variations.
    let id = *[1u32, 2, 77].choose(rng).unwrap();
    match rng.random_range(0..20) {
        0 | 1 => sent.spec.frag = Frag::First { id },
        2 | 3 => {
            sent.spec.frag = Frag::Later {
                id,
                offset: rng.random_range(1..200),
            }
        }
        4 | 5 if v6 => sent.spec.ext_headers = rng.random_range(1..=sg_common::MAX_EXT_HEADERS + 1),
        _ => {}
    }
    let mut frame = sent.spec.frame();
    // Malformations and other frames.
    match rng.random_range(0..40) {
        // BPF_PROG_TEST_RUN refuses a frame shorter than its IP header.
        0 if frame.len() > 14 + if v6 { 40 } else { 20 } => {
            frame.truncate(rng.random_range(14 + if v6 { 40 } else { 20 }..frame.len()))
        }
        1 => frame[14] = (frame[14] & 0x0f) | 0x50, // wrong IP version
        2 if !v6 => frame[14] = 0x44,               // IHL below 5
        3 => {
            // A length field that claims more than the frame holds.
            let at = if v6 { 18 } else { 16 };
            frame[at] = 0xff;
        }
        4 => frame[12..14].copy_from_slice(&frames::ETH_ARP.to_be_bytes()),
        5 => frame[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()),
        6 => frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes()),
        7 if matches!(sent.spec.l4, L4::Tcp { .. })
            && sent.spec.frag == Frag::Whole
            && sent.spec.ext_headers == 0 =>
        {
            let at = 14 + if v6 { 40 } else { 20 } + 12;
            frame[at] = rng.random_range(0..16u8) << 4; // any data offset
        }
        8 if sent.spec.frag == Frag::Whole && sent.spec.ext_headers == 0 => {
            // An ICMP error quoting the scenario's own traffic.
            sent.spec.l4 = L4::Icmp {
                t: if v6 { 1 } else { 3 },
                code: 3,
                id: 0,
            };
            let mut f = sent.spec.frame();
            let quoted = reverse(rng, &sent).spec.frame();
            f.extend_from_slice(&quoted[14..quoted.len().min(14 + 48)]);
            fix_ip_length(&mut f, v6);
            frame = f;
        }
        _ => {}
    }
    (sent, frame)
}

fn fix_ip_length(f: &mut [u8], v6: bool) {
    if v6 {
        let n = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&n.to_be_bytes());
    } else {
        let n = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&n.to_be_bytes());
    }
}

/// The tracker's state as the kernel holds it, in the oracle's terms.
fn kernel_state(dp: &Datapath) -> State {
    let mut st = State::default();
    for (k, v) in dp.maps.flows(IFINDEX) {
        let id = FlowId {
            family: k.family,
            proto: k.proto,
            local: ct_addr(k.family, &k.local),
            remote: ct_addr(k.family, &k.remote),
            local_port: u16::from_be_bytes(k.local_port.to_ne_bytes()),
            remote_port: u16::from_be_bytes(k.remote_port.to_ne_bytes()),
        };
        st.flows.insert(
            id,
            oracle::Flow {
                state: v.state,
                flags: v.flags,
                icmp_type: v.icmp_type,
            },
        );
    }
    for k in dp.maps.fragments(IFINDEX) {
        st.frags.insert(FragId {
            family: k.family,
            proto: k.proto,
            id: k.id,
            src: ct_addr(k.family, &k.src),
            dst: ct_addr(k.family, &k.dst),
        });
    }
    st
}

fn drops(dp: &Datapath) -> [u64; sg_common::REASON_COUNT] {
    let all = dp.maps.stats().expect("stats");
    let s = all
        .iter()
        .find(|s| s.ifindex == IFINDEX)
        .expect("lo configured");
    let mut out = [0; sg_common::REASON_COUNT];
    for d in s.dirs {
        for (o, x) in out.iter_mut().zip(d.drops) {
            *o += x;
        }
    }
    out
}

#[test]
fn datapath_matches_the_reference_oracle() {
    if !kernel_available("datapath_matches_the_reference_oracle") {
        return;
    }
    let seed: u64 = std::env::var("SG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("SG_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12_000);
    eprintln!("differential: seed {seed} (SG_SEED={seed} reproduces), {cases} packets");
    let mut rng = StdRng::seed_from_u64(seed);
    let pins = PinDir::new("differential");
    let mut dp = Datapath::load(1 << 16, &pins.0).expect("loading the datapath");
    let mut done = 0;
    let mut scenarios = 0;
    let mut seen = std::collections::BTreeMap::new();
    while done < cases {
        scenarios += 1;
        let policy = random_policy(&mut rng);
        let attach = if rng.random_bool(0.5) {
            AttachMode::Workload
        } else {
            AttachMode::Host
        };
        let settings = Settings {
            attach,
            timeouts: Timeouts::default(),
            related_icmp: policy.related_icmp,
        };
        let compiled = compile(&policy.inbound, &policy.outbound, &settings);
        dp.install("lo", IFINDEX, &compiled).expect("install");
        dp.retire();
        dp.maps.flush(&Default::default()).expect("flush");
        let mut state = State::default();
        let mut history: Vec<Sent> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        for _ in 0..PACKETS_PER_SCENARIO {
            let (sent, frame) = random_packet(&mut rng, &history);
            // Which hook sees this direction in this attach mode.
            let ingress = (sent.dir == DIR_INBOUND) == (attach == AttachMode::Workload);
            let (want, next) = oracle::verdict(&policy, &state, sent.dir, &frame);
            let before = drops(&dp);
            // The ingress side runs at tcx or at XDP: the same decision.
            let xdp = ingress && rng.random_bool(0.5);
            let prog = match (xdp, ingress) {
                (true, _) => PROG_XDP,
                (false, true) => PROG_INGRESS,
                (false, false) => PROG_EGRESS,
            };
            let (ret, _) = dp
                .test_run_named(prog, &frame, 1)
                .unwrap_or_else(|e| panic!("test run of {} bytes {frame:02x?}: {e}", frame.len()));
            let after = drops(&dp);
            let reason = Reason::ALL
                .into_iter()
                .find(|r| after[*r as usize] > before[*r as usize]);
            // TC_ACT_OK is 0 and TC_ACT_SHOT 2; XDP_PASS is 2 and XDP_DROP 1.
            let passed = if xdp { ret == 2 } else { ret == 0 };
            let dropped = if xdp { ret == 1 } else { ret == 2 };
            let got = match (passed, dropped, reason) {
                (true, _, None) => Verdict::Pass,
                (_, true, Some(r)) => Verdict::Drop(r),
                other => panic!(
                    "seed {seed}: {prog} returned {ret} {other:?} without a matching counter"
                ),
            };
            log.push(format!(
                "  {} {:?} via {prog}: oracle {want:?}, kernel {got:?}",
                if sent.dir == DIR_INBOUND {
                    "in "
                } else {
                    "out"
                },
                sent.spec,
            ));
            let kstate = kernel_state(&dp);
            if want != got || kstate != next {
                panic!(
                    "seed {seed}, scenario {scenarios}: the datapath differs from the oracle\n\
                     policy ({attach:?}, related_icmp {}):\n  inbound {:?}\n  outbound {:?}\n\
                     packets:\n{}\nframe {:02x?}\noracle state {:#?}\nkernel state {:#?}",
                    policy.related_icmp,
                    policy.inbound,
                    policy.outbound,
                    log.join("\n"),
                    frame,
                    next,
                    kstate
                );
            }
            *seen.entry(format!("{want:?}")).or_insert(0usize) += 1;
            state = next;
            history.push(sent);
            done += 1;
        }
    }
    eprintln!(
        "differential: {done} packets in {scenarios} scenarios agree (seed {seed}): {seen:?}"
    );
    // A run that never saw a class of verdict proved nothing about it.
    if cases >= 10_000 {
        for r in [
            Reason::NoRule,
            Reason::Malformed,
            Reason::UnsupportedL2,
            Reason::Fragment,
            Reason::ExtHeaders,
        ] {
            assert!(
                seen.contains_key(&format!("{:?}", Verdict::Drop(r))),
                "seed {seed}: no {r:?} drop in {done} packets"
            );
        }
        assert!(
            seen.get("Pass").is_some_and(|n| *n > cases / 10),
            "seed {seed}: too few passes: {seen:?}"
        );
    }
}
