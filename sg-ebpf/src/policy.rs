//! The policy: the peer's identity in the shared address map (an exact-match
//! lookup per prefix length present, longest first), then the port segments
//! the interface's policy allows that identity for the protocol. The cost
//! follows the number of distinct prefix lengths, not the number of rules
//! (docs/datapath.md, "The lookup path").

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use sg_common::*;

use crate::maps::{ADDR4, ADDR6, LENS, POLICY};

/// The identity of `remote`: the entry of the longest prefix containing it.
/// A function of its own (a BPF-to-BPF call): the verifier then meets one
/// return state however many lengths the loop walked, instead of carrying
/// every iteration's exit through the rest of the program.
#[inline(always)]
pub(crate) fn identity(family: u8, remote: &Addr) -> Option<u32> {
    match lookup_identity(family as u32, remote) {
        0 => None,
        id => Some(id),
    }
}

/// Identity 0 is "none" (the agent numbers identities from 1): a plain
/// `u32` return, which a BPF call can make.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied again on the stack, which here took the verifier past its limit"
)]
#[inline(never)]
fn lookup_identity(family: u32, remote: &Addr) -> u32 {
    let Some(lens) = LENS.get(if family == FAMILY_V4 as u32 { 0 } else { 1 }) else {
        return 0;
    };
    let n = lens.n as usize;
    if family == FAMILY_V4 as u32 {
        for i in 0..33 {
            if i >= n {
                break;
            }
            let e = &lens.entries[i];
            let k: [u32; 2] = [e.len, remote[0] & e.mask[0]];
            // SAFETY: `AddrKey4` is repr(C) with this layout: prefix_len, addr.
            if let Some(id) = unsafe { ADDR4.get(&*(k.as_ptr() as *const AddrKey4)) } {
                return *id;
            }
        }
    } else {
        for i in 0..MAX_LENS {
            if i >= n {
                break;
            }
            let e = &lens.entries[i];
            let k: [u32; 5] = [
                e.len,
                remote[0] & e.mask[0],
                remote[1] & e.mask[1],
                remote[2] & e.mask[2],
                remote[3] & e.mask[3],
            ];
            // SAFETY: as above, for `AddrKey6`.
            if let Some(id) = unsafe { ADDR6.get(&*(k.as_ptr() as *const AddrKey6)) } {
                return *id;
            }
        }
    }
    0
}

/// Allow flags of `policy` towards `identity` for `(proto, port)`; with
/// `any_port`, whether every port is allowed (a later fragment's question).
#[inline(always)]
pub(crate) fn allows(
    policy: u32,
    identity: u32,
    proto: u8,
    port: u16,
    any_port: bool,
) -> Option<u32> {
    if policy == 0 {
        return None;
    }
    let what = |proto: u8, any: bool| proto as u32 | (port as u32) << 8 | (any as u32) << 24;
    let mut f = segments(policy, identity, what(proto, any_port));
    // A protocol without entries of its own may have a rule of every
    // protocol (whose ports, when it has entries, those already include).
    if f == NO_ENTRY && proto != 0 {
        f = segments(policy, identity, what(0, true));
    }
    if f != NO_ENTRY && f & PORT_ALLOW != 0 {
        Some(f)
    } else {
        None
    }
}

/// What `segments` answers when the protocol has no entry at all.
const NO_ENTRY: u32 = 1 << 31;

/// The flags of the segment holding the port, 0 if none, `NO_ENTRY` if the
/// protocol has no entry for the identity. `what` packs the
/// protocol (bits 0-7), the port (8-23) and "any port" (24): a BPF call
/// takes five arguments in registers and returns one. Not inlined, for the
/// verifier's sake (see `lookup_identity`).
#[inline(never)]
fn segments(policy: u32, identity: u32, what: u32) -> u32 {
    let mut scan = Scan {
        policy,
        identity,
        what,
        flags: NO_ENTRY,
    };
    // The first chunk in line: almost every peer has at most `POLICY_SEGS`
    // port ranges per protocol. Further chunks go through `bpf_loop`, whose
    // callback the verifier walks once rather than once per iteration.
    if scan_chunk(0, &mut scan) == 0 {
        // SAFETY: the callback and its context live for the call.
        unsafe {
            bpf_loop(
                POLICY_CHUNKS as u32 - 1,
                next_chunk as *mut c_void,
                &mut scan as *mut Scan as *mut c_void,
                0,
            )
        };
    }
    scan.flags
}

#[repr(C)]
struct Scan {
    policy: u32,
    identity: u32,
    what: u32,
    /// The answer: the flags of the segment holding the port, 0, or
    /// `NO_ENTRY`.
    flags: u32,
}

/// `bpf_loop`'s callback: chunk `index + 1`.
extern "C" fn next_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `segments` passes its own `Scan`.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    scan_chunk(index as u32 + 1, scan)
}

/// Scans one chunk; 1 when the answer is known (found, or no further
/// segment can hold the port), 0 when the next chunk must be read.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied again on the stack, which here took the verifier past its limit"
)]
#[inline(always)]
fn scan_chunk(chunk: u32, scan: &mut Scan) -> i64 {
    let what = scan.what;
    let (proto, port, any_port) = (what & 0xff, (what >> 8) as u16, what >> 24 != 0);
    let k: [u32; 3] = [scan.policy, scan.identity, proto | (chunk & 0xff) << 8];
    // SAFETY: `PolicyKey` is repr(C): policy, identity, proto, chunk, pad.
    let Some(v) = (unsafe { POLICY.get(&*(k.as_ptr() as *const PolicyKey)) }) else {
        // A later chunk that is missing ends the scan: nothing holds the port.
        if chunk != 0 {
            scan.flags = 0;
        }
        return 1;
    };
    scan.flags = 0;
    if any_port {
        scan.flags = v.all_ports;
        return 1;
    }
    let n = v.n as usize;
    for i in 0..POLICY_SEGS {
        if i >= n {
            return 1;
        }
        let s = &v.segs[i];
        if port < s.lo {
            return 1;
        }
        if port <= s.hi {
            scan.flags = s.flags;
            return 1;
        }
    }
    0
}
