//! The agent's mirror of the policy state in the kernel: what the address,
//! length and policy maps hold, which identity stands for which atoms, and
//! which policy holds which content. Rebuilt from the pinned maps when an
//! agent starts over an earlier one's (whose contents and identities it
//! cannot know: those stay as they are until replaced).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use sg_common::{PolicyKey, PolicyVal, addr_bytes};

use super::Maps;
use crate::compile::{Atom, DirPolicy};

/// A policy's entries towards one identity, as written.
pub(super) type Entries = Vec<(PolicyKey, PolicyVal)>;

#[derive(Default)]
pub(super) struct State {
    /// What `ADDR4`/`ADDR6` hold: block → identity.
    pub addr: HashMap<IpNet, u32>,
    /// What `LENS` holds, per family (IPv4, IPv6).
    pub lens: [BTreeSet<u8>; 2],
    /// What `POLICY` holds, by (policy, identity).
    pub pol: HashMap<(u32, u32), Entries>,
    /// The identities this agent named: atoms → id, and back.
    pub ids: HashMap<Vec<Atom>, u32>,
    pub atoms_of: HashMap<u32, Vec<Atom>>,
    /// Policies this agent wrote: content → id, and back.
    pub policy_ids: HashMap<Arc<DirPolicy>, u32>,
    pub contents: HashMap<u32, Arc<DirPolicy>>,
    /// Each configured interface's policy ids, as `IFACES` holds them.
    pub installed: HashMap<u32, [u32; 2]>,
    pub next_id: u32,
    pub next_policy: u32,
}

impl State {
    /// The state the pinned maps hold: an earlier agent's, or nothing.
    pub fn read(maps: &Maps) -> State {
        let mut st = State::default();
        for (k, id) in maps.addr4.iter().filter_map(|r| r.ok()) {
            let a = Ipv4Addr::from(k.addr.to_ne_bytes());
            if let Ok(n) = IpNet::new(IpAddr::V4(a), k.prefix_len as u8) {
                st.addr.insert(n, id);
            }
        }
        for (k, id) in maps.addr6.iter().filter_map(|r| r.ok()) {
            let a = Ipv6Addr::from(addr_bytes(&k.addr));
            if let Ok(n) = IpNet::new(IpAddr::V6(a), k.prefix_len as u8) {
                st.addr.insert(n, id);
            }
        }
        for i in 0..2 {
            if let Ok(l) = maps.lens.get(&(i as u32), 0) {
                st.lens[i] = l.entries[..(l.n as usize).min(l.entries.len())]
                    .iter()
                    .map(|e| e.len as u8)
                    .collect();
            }
        }
        for (k, v) in maps.policy.iter().filter_map(|r| r.ok()) {
            st.pol
                .entry((k.policy, k.identity))
                .or_default()
                .push((k, v));
        }
        for (ifindex, cfg) in maps.iface_cfgs() {
            st.installed.insert(ifindex, cfg.policy);
        }
        let ids = st.addr.values().copied().chain(st.pol.keys().map(|k| k.1));
        st.next_id = 1 + ids.max().unwrap_or(0);
        let policies = st
            .pol
            .keys()
            .map(|k| k.0)
            .chain(st.installed.values().flatten().copied());
        st.next_policy = 1 + policies.max().unwrap_or(0);
        st
    }
}
