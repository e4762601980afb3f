//! Compiled entries to the kernel's keys and values, with the ids the
//! datapath allocated: the layouts of `sg-common`, written in one place.

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use sg_common::{ADDR_KEY_POLICY_BITS, AddrKey4, AddrKey6, IfaceCfg, PortKey, PortVal};

use super::Compiled;

impl Compiled {
    /// The port-trie entries, classes numbered from `class_base`.
    pub fn port_keys(&self, class_base: u32) -> Vec<(Key<PortKey>, PortVal)> {
        let mut out = Vec::new();
        for (i, entries) in self.classes.iter().enumerate() {
            let class = class_base + i as u32;
            for e in entries {
                let key = Key::new(
                    e.prefix_len,
                    PortKey {
                        class,
                        proto: e.proto,
                        port_be: e.port.to_be_bytes(),
                        _pad: 0,
                    },
                );
                out.push((key, PortVal { flags: e.flags }));
            }
        }
        out
    }

    /// The address-trie entries of policy index `idx` under the id `policy`,
    /// classes numbered from `class_base`, and the class each maps to.
    pub fn addr_keys(&self, idx: usize, policy: u32, class_base: u32) -> AddrKeys {
        let mut out = AddrKeys::default();
        for a in &self.addrs[idx] {
            let class = class_base + a.class as u32;
            let bits = ADDR_KEY_POLICY_BITS + a.net.prefix_len() as u32;
            match a.net {
                IpNet::V4(n) => out.v4.push((
                    Key::new(
                        bits,
                        AddrKey4 {
                            policy,
                            addr: n.network().octets(),
                        },
                    ),
                    class,
                )),
                IpNet::V6(n) => out.v6.push((
                    Key::new(
                        bits,
                        AddrKey6 {
                            policy,
                            addr: n.network().octets(),
                        },
                    ),
                    class,
                )),
            }
        }
        out
    }

    /// The interface's configuration with the ids the datapath allocated.
    pub fn iface_cfg(&self, policy: [u32; 4], stats_slot: u32) -> IfaceCfg {
        IfaceCfg {
            policy,
            stats_slot,
            ..self.cfg
        }
    }
}

/// Address-trie entries, by family: (key, class).
#[derive(Default)]
pub struct AddrKeys {
    pub v4: Vec<(Key<AddrKey4>, u32)>,
    pub v6: Vec<(Key<AddrKey6>, u32)>,
}
