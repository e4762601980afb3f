//! The policy: the peer's class in the address trie, then the allow flags of
//! (class, protocol, port) in the port trie. Two lookups whatever the number
//! of rules.

use aya_ebpf::maps::lpm_trie::Key;
use sg_common::*;

use crate::maps::{ADDR4, ADDR6, PORTS};

/// Allow flags of the policy for `(dir, family)` towards `remote` for
/// `(proto, port)`, the port trie consulted up to `prefix` bits.
#[inline(always)]
pub(crate) fn policy(
    cfg: &IfaceCfg,
    dir: u8,
    family: u8,
    remote: &Addr,
    proto: u8,
    port: [u8; 2],
    prefix: u32,
) -> Option<u32> {
    let id = cfg.policy[policy_index(dir, family) & 3];
    if id == 0 {
        return None;
    }
    // Trie keys are packed structs; built as word arrays of the same layout
    // they are written with word stores instead of byte stores.
    let class = if family == FAMILY_V4 {
        let k: [u32; 3] = [ADDR_KEY_POLICY_BITS + 32, id, remote[0]];
        // SAFETY: `Key<AddrKey4>` is packed (align 1) with this layout:
        // prefix_len, policy, the address bytes.
        *ADDR4.get(unsafe { &*(k.as_ptr() as *const Key<AddrKey4>) })?
    } else {
        let k: [u32; 6] = [
            ADDR_KEY_POLICY_BITS + 128,
            id,
            remote[0],
            remote[1],
            remote[2],
            remote[3],
        ];
        // SAFETY: as above, for `Key<AddrKey6>`.
        *ADDR6.get(unsafe { &*(k.as_ptr() as *const Key<AddrKey6>) })?
    };
    let k: [u32; 3] = [
        prefix,
        class,
        u32::from_ne_bytes([proto, port[0], port[1], 0]),
    ];
    // SAFETY: `Key<PortKey>` is packed: prefix_len, class, proto, port, pad.
    let v = PORTS.get(unsafe { &*(k.as_ptr() as *const Key<PortKey>) })?;
    if v.flags & PORT_ALLOW != 0 {
        Some(v.flags)
    } else {
        None
    }
}
