//! Compiled entries to the kernel's keys and values, with the ids the
//! datapath allocated: the layouts of `sg-common`, written in one place.

use anyhow::{Result, bail};
use ipnet::IpNet;
use sg_common::{
    AddrKey4, AddrKey6, LenMask, Lens, MAX_LENS, POLICY_CHUNKS, POLICY_SEGS, PORT_ALLOW, PolicyKey,
    PolicyVal, PortSeg,
};

use super::{Segments, ports::covers_all};

/// The key of an address block in the shared address map.
pub enum AddrKey {
    V4(AddrKey4),
    V6(AddrKey6),
}

pub fn addr_key(net: &IpNet) -> AddrKey {
    let prefix_len = net.prefix_len() as u32;
    match net.trunc() {
        IpNet::V4(n) => AddrKey::V4(AddrKey4 {
            prefix_len,
            addr: u32::from_ne_bytes(n.network().octets()),
        }),
        IpNet::V6(n) => {
            let b = n.network().octets();
            let mut addr = [0u32; 4];
            for (i, w) in addr.iter_mut().enumerate() {
                *w = u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
            }
            AddrKey::V6(AddrKey6 { prefix_len, addr })
        }
    }
}

/// The `POLICY` entries of `policy` towards `identity` for `segs`: one
/// chunk of up to `POLICY_SEGS` segments per key.
pub fn policy_entries(
    policy: u32,
    identity: u32,
    segs: &Segments,
) -> Result<Vec<(PolicyKey, PolicyVal)>> {
    let mut out = Vec::new();
    for (proto, segs) in segs {
        let all_ports = if covers_all(segs) { PORT_ALLOW } else { 0 };
        let chunks: Vec<&[PortSeg]> = segs.chunks(POLICY_SEGS).collect();
        if chunks.len() > POLICY_CHUNKS as usize {
            bail!(
                "{} disjoint port ranges of protocol {proto} for one peer: the datapath matches at most {}",
                segs.len(),
                POLICY_SEGS * POLICY_CHUNKS as usize
            );
        }
        for (c, chunk) in chunks.into_iter().enumerate() {
            let mut val = PolicyVal {
                all_ports,
                n: chunk.len() as u32,
                ..PolicyVal::default()
            };
            val.segs[..chunk.len()].copy_from_slice(chunk);
            let key = PolicyKey {
                policy,
                identity,
                proto: *proto,
                chunk: c as u8,
                _pad: 0,
            };
            out.push((key, val));
        }
    }
    Ok(out)
}

/// The `LENS` value for a family's prefix lengths: longest first, each with
/// its mask.
pub fn lens_value(lens: &std::collections::BTreeSet<u8>) -> Lens {
    let mut v = Lens::default();
    for (e, len) in v.entries.iter_mut().zip(lens.iter().rev().take(MAX_LENS)) {
        let bits = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
        let b = bits.to_be_bytes();
        // An IPv4 length masks the first word only: its address is there.
        let mut mask = [0u32; 4];
        for (i, w) in mask.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        }
        *e = LenMask {
            len: *len as u32,
            mask,
        };
    }
    v.n = lens.len().min(MAX_LENS) as u32;
    v
}
