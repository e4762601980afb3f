//! The programs load and decide correctly at the policy sizes the bench uses:
//! 10,000 rules on one interface and a table of 1,000,000 flows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use sg_agent::{
    compile::{Flat, compile},
    config::{AttachMode, Protocol, Timeouts},
    datapath::{Datapath, IfaceSpec},
};
use sg_tests::{
    PinDir,
    frames::{L4, Spec, TCP_SYN},
    kernel_available,
};

/// 10,000 inbound rules: mixed prefix lengths of both families, single ports
/// and ranges.
fn rules() -> Vec<Flat> {
    (0..10_000u32)
        .map(|i| {
            let net = if i % 4 == 3 {
                let a = Ipv6Addr::new(0x2001, 0xdb8, (i >> 8) as u16, i as u16, 0, 0, 0, 0);
                IpNet::new(IpAddr::V6(a), [48, 64, 96, 128][(i % 16 / 4) as usize])
                    .unwrap()
                    .trunc()
            } else {
                let a = Ipv4Addr::from(0x0a00_0000 | (i << 8));
                IpNet::new(IpAddr::V4(a), [24, 28, 32][(i % 3) as usize])
                    .unwrap()
                    .trunc()
            };
            let port = 1000 + (i % 5000) as u16;
            let (lo, hi) = if i % 2 == 0 {
                (port, port)
            } else {
                (port, port + 100)
            };
            Flat {
                net,
                protocol: Protocol::Number(if i % 5 == 0 { 17 } else { 6 }),
                lo,
                hi,
            }
        })
        .collect()
}

#[test]
fn loads_and_decides_at_10000_rules_and_a_million_flows() {
    if !kernel_available("loads_and_decides_at_10000_rules_and_a_million_flows") {
        return;
    }
    let pins = PinDir::new("scale");
    let mut dp = Datapath::load(1_000_000, &pins.0).expect("verifier accepts the programs");
    let inbound = rules();
    let compiled = compile(&inbound, &[]);
    let spec = IfaceSpec {
        name: "lo",
        ifindex: 1,
        attach: AttachMode::Workload,
        timeouts: Timeouts::default(),
        related_icmp: false,
    };
    dp.install(&spec, &compiled).expect("install 10,000 rules");
    let local: IpAddr = "10.255.0.1".parse().unwrap();
    let syn = |src: &str, dport: u16| {
        Spec::new(
            src.parse().unwrap(),
            local,
            L4::Tcp {
                sport: 40000,
                dport,
                flags: TCP_SYN,
            },
        )
        .frame()
    };
    // Rule 1 is tcp 1001-1101 from 10.0.1.0/28: a hit, a port just outside
    // every range there, an address just outside the /28, and one nowhere.
    assert_eq!(dp.test_run(true, &syn("10.0.1.5", 1050), 1).unwrap().0, 0);
    assert_eq!(dp.test_run(true, &syn("10.0.1.5", 999), 1).unwrap().0, 2);
    assert_eq!(dp.test_run(true, &syn("10.0.1.17", 1050), 1).unwrap().0, 2);
    assert_eq!(dp.test_run(true, &syn("11.0.0.1", 1050), 1).unwrap().0, 2);
}
