//! Benchmark-only programs (the agent never attaches them): sg's pipeline
//! stopped after each stage, and the floor an established packet is held
//! to — one lookup of its flow's key in the tracking table. `sg-bench`
//! runs them beside `sg_tc_ingress` to say where an established packet's
//! time goes (docs/datapath.md, "Where an established packet's time goes").

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use network_types::eth::EthHdr;
use sg_common::*;

use crate::{
    conntrack::ct_key,
    context::{Frame, load},
    maps::{CT, IFACES},
    parse,
};

/// The floor: the flow's key from fixed offsets of an untagged IPv4/TCP
/// frame without options, and one lookup.
#[classifier]
pub fn sg_tc_floor(ctx: TcContext) -> i32 {
    let Ok(w) = load::<[u32; 3], _>(&ctx, EthHdr::LEN + 12) else {
        return TC_ACT_OK;
    };
    // Source and destination addresses, then the ports.
    let ports = w[2].to_ne_bytes();
    let key = ct_key(
        ctx.ifindex(),
        FAMILY_V4,
        PROTO_TCP,
        [w[1], 0, 0, 0],
        [w[0], 0, 0, 0],
        [ports[2], ports[3]],
        [ports[0], ports[1]],
        [ports[0], ports[1]],
    );
    let hit = unsafe { CT.get(key) }.is_some();
    if hit { TC_ACT_OK } else { TC_ACT_OK + 1 }
}

/// The interface's configuration, looked up and copied.
#[classifier]
pub fn sg_tc_stage_config(ctx: TcContext) -> i32 {
    match unsafe { IFACES.get(ctx.ifindex()) } {
        Some(c) => (core::hint::black_box(*c).flags & 1) as i32,
        None => TC_ACT_OK,
    }
}

/// The configuration and the parse.
#[classifier]
pub fn sg_tc_stage_parse(ctx: TcContext) -> i32 {
    if unsafe { IFACES.get(ctx.ifindex()) }.is_none() {
        return TC_ACT_OK;
    }
    match parse::parse_v4(&ctx) {
        Ok(p) => p.proto as i32 & 1,
        Err(_) => TC_ACT_OK,
    }
}

/// The configuration, the parse and the tracking lookup (no refresh, no
/// counters: what the full program adds beyond this is theirs).
#[classifier]
pub fn sg_tc_stage_track(ctx: TcContext) -> i32 {
    let ifindex = ctx.ifindex();
    if unsafe { IFACES.get(ifindex) }.is_none() {
        return TC_ACT_OK;
    }
    let Ok(p) = parse::parse_v4(&ctx) else {
        return TC_ACT_OK;
    };
    let key = ct_key(
        ifindex, p.family, p.proto, p.dst, p.src, p.dport, p.sport, p.sport,
    );
    if unsafe { CT.get(key) }.is_some() {
        TC_ACT_OK
    } else {
        TC_ACT_OK + 1
    }
}
