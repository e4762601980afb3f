//! Policies of a given size for the scale test and the benchmarks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use sg_agent::{compile::Flat, model::Protocol};

/// `n` inbound rules: mixed prefix lengths of both families (/24, /28, /32;
/// /48 to /128), single ports and 100-port ranges, TCP and UDP. Rule `i` is
/// from `10.0.(i).0` (or `2001:db8:i::`), no two blocks overlapping, port `1000 + i % 5000`. None of them
/// covers 10.77.0.0/16, the benchmarks' own traffic.
pub fn rules(n: usize) -> Vec<Flat> {
    (0..n as u32)
        .map(|i| {
            let net = if i % 4 == 3 {
                // The index inside the first 48 bits: no two rules' blocks
                // overlap, which nftables' interval sets require.
                let a = Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 0);
                IpNet::new(IpAddr::V6(a), [48, 64, 96, 128][(i % 16 / 4) as usize])
                    .expect("valid length")
                    .trunc()
            } else {
                let a = Ipv4Addr::from(0x0a00_0000 | (i << 8));
                IpNet::new(IpAddr::V4(a), [24, 28, 32][(i % 3) as usize])
                    .expect("valid length")
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

/// `n` rules in all whose last ones are `last`: where a first-match filter
/// (iptables) finds them only after every other rule.
pub fn rules_ending_with(n: usize, last: &[Flat]) -> Vec<Flat> {
    let mut out = rules(n.saturating_sub(last.len()));
    out.extend_from_slice(last);
    out
}
