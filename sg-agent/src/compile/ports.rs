//! Port ranges to port-trie entries: the rules that apply to one peer,
//! partitioned into disjoint segments and split into aligned blocks.

use std::collections::BTreeSet;

use sg_common::{
    PORT_ALLOW, PORT_KEY_CLASS_BITS, PORT_KEY_PROTO_BITS, PORT_UNTRACKED, PROTO_TCP, PROTO_UDP,
};

use super::{Flat, PortEntry, is_default_route};
use crate::model::Protocol;

/// Port-trie entries for a set of rules that all apply to one peer.
pub(super) fn port_entries(rules: &[&Flat], untracked_ok: &dyn Fn(u8) -> bool) -> Vec<PortEntry> {
    let mut entries = Vec::new();
    let all: Vec<&&Flat> = rules
        .iter()
        .filter(|r| r.protocol == Protocol::All)
        .collect();
    let mut protos: BTreeSet<u8> = rules
        .iter()
        .filter_map(|r| match r.protocol {
            Protocol::Number(n) => Some(n),
            Protocol::All => None,
        })
        .collect();
    if !all.is_empty() {
        // Other protocols fall through to the class-wide entry. TCP and UDP
        // get entries of their own so that they can carry the untracked flag.
        entries.push(PortEntry {
            prefix_len: PORT_KEY_CLASS_BITS,
            proto: 0,
            port: 0,
            flags: PORT_ALLOW,
        });
        protos.insert(PROTO_TCP);
        protos.insert(PROTO_UDP);
    }
    for proto in protos {
        // (lo, hi, untracked) intervals of this protocol.
        let ivs: Vec<(u16, u16, bool)> = rules
            .iter()
            .filter(|r| r.protocol == Protocol::All || r.protocol == Protocol::Number(proto))
            .map(|r| {
                let untracked = (proto == PROTO_TCP || proto == PROTO_UDP)
                    && is_default_route(&r.net)
                    && untracked_ok(proto);
                (r.lo, r.hi, untracked)
            })
            .collect();
        let segments = partition(&ivs);
        let covers_all = segments.first().is_some_and(|s| s.0 == 0)
            && segments.last().is_some_and(|s| s.1 == u16::MAX)
            && segments
                .windows(2)
                .all(|w| w[0].1 as u32 + 1 == w[1].0 as u32);
        let whole = segments.len() == 1 && covers_all;
        if covers_all && !whole {
            // Lets a non-first fragment (no ports) find "all ports allowed".
            entries.push(PortEntry {
                prefix_len: PORT_KEY_PROTO_BITS,
                proto,
                port: 0,
                flags: PORT_ALLOW,
            });
        }
        for (lo, hi, untracked) in segments {
            let flags = PORT_ALLOW | if untracked { PORT_UNTRACKED } else { 0 };
            for (port, bits) in blocks(lo, hi) {
                entries.push(PortEntry {
                    prefix_len: PORT_KEY_PROTO_BITS + bits,
                    proto,
                    port,
                    flags,
                });
            }
        }
    }
    entries.sort();
    entries
}

/// Disjoint, maximal segments covered by `ivs`; a segment is untracked when
/// any interval covering it is.
fn partition(ivs: &[(u16, u16, bool)]) -> Vec<(u16, u16, bool)> {
    let mut cuts: BTreeSet<u32> = BTreeSet::new();
    for &(lo, hi, _) in ivs {
        cuts.insert(lo as u32);
        cuts.insert(hi as u32 + 1);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<(u16, u16, bool)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let covering = ivs
            .iter()
            .filter(|iv| iv.0 as u32 <= lo && hi <= iv.1 as u32);
        let mut covered = false;
        let mut untracked = false;
        for iv in covering {
            covered = true;
            untracked |= iv.2;
        }
        if !covered {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 as u32 + 1 == lo && last.2 == untracked => last.1 = hi as u16,
            _ => out.push((lo as u16, hi as u16, untracked)),
        }
    }
    out
}

/// Splits `lo..=hi` into aligned power-of-two blocks: `(start, prefix bits)`.
pub fn blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}
