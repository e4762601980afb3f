//! The programs load and decide correctly at the policy sizes the bench uses:
//! 10,000 rules on one interface and a table of 1,000,000 flows.

use sg_agent::{
    compile::{Settings, compile},
    datapath::Datapath,
};
use sg_testkit::frames::{L4, Spec, TCP_SYN};
use sg_tests::{PinDir, kernel_available};
use std::net::IpAddr;

#[test]
fn loads_and_decides_at_10000_rules_and_a_million_flows() {
    if !kernel_available("loads_and_decides_at_10000_rules_and_a_million_flows") {
        return;
    }
    let pins = PinDir::new("scale");
    let mut dp = Datapath::load(1_000_000, &pins.0).expect("verifier accepts the programs");
    // The tracking table is sized by the allowance, not by the CPU count: a
    // plain hash (nothing is evicted) of the allowance plus two per CPU.
    let ct = aya::maps::MapInfo::from_pin(pins.0.join(sg_common::names::CT)).unwrap();
    let ncpus = aya::util::nr_cpus().unwrap() as u32;
    assert_eq!(ct.max_entries(), 1_000_000 + 2 * ncpus);
    assert!(matches!(ct.map_type().unwrap(), aya::maps::MapType::Hash));
    let bytes = dp.maps.memlock(sg_common::names::CT).unwrap();
    assert!(bytes < 200 * 1_000_000, "{bytes} bytes for a million flows");
    let inbound = sg_testkit::policies::rules(10_000);
    let compiled = compile(&inbound, &[], &Settings::default());
    dp.install("lo", 1, &compiled)
        .expect("install 10,000 rules");
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
