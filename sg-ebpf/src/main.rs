//! sg's datapath: allow-only, stateful security-group enforcement at tcx.
//!
//! Order of work, after Cilium's `bpf_lxc.c`: parse, look the flow up in the
//! tracking table (one lookup for both directions), and only for a packet of
//! no tracked flow consult the policy (the peer's identity, then what the
//! interface's policy allows it: flat in the number of rules), then create state. Every error is a counted drop.
// Built for the BPF target by sg-agent's build.rs. On the host (clippy, a
// workspace check) it is an ordinary binary that only refuses to run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod conntrack;
mod context;
mod flowlog;
mod fragments;
mod maps;
mod parse;
mod policy;
mod related;
mod stages;
mod verdict;

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use network_types::eth::EthHdr;
use sg_common::*;

use conntrack::{CtStatus, Meter, now_ns};
use context::{Frame, load};
use maps::{FRAGS, IFACES};
use parse::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Pkt};
use verdict::{Pass, count};

#[classifier]
pub fn sg_tc_ingress(ctx: TcContext) -> i32 {
    tc(run::<_, false>(&ctx, true))
}

#[classifier]
pub fn sg_tc_egress(ctx: TcContext) -> i32 {
    tc(run::<_, false>(&ctx, false))
}

/// The same decision at XDP, for an interface's ingress: drops before an skb
/// exists, which pays on real NICs (on veth tcx is cheaper, docs/datapath.md).
#[xdp]
pub fn sg_xdp(ctx: XdpContext) -> u32 {
    xdp(run::<_, false>(&ctx, true))
}

/// The programs with flow logs (docs/observe.md): the same decision, which
/// also counts each tracked flow's packets and writes flow events. Separate
/// programs rather than a run-time switch, so that the programs without
/// flow logs pay nothing for them and the verifier walks each once.
#[classifier]
pub fn sg_tc_ingress_log(ctx: TcContext) -> i32 {
    tc(run::<_, true>(&ctx, true))
}

#[classifier]
pub fn sg_tc_egress_log(ctx: TcContext) -> i32 {
    tc(run::<_, true>(&ctx, false))
}

#[xdp]
pub fn sg_xdp_log(ctx: XdpContext) -> u32 {
    xdp(run::<_, true>(&ctx, true))
}

#[inline(always)]
fn tc(pass: bool) -> i32 {
    if pass { TC_ACT_OK } else { TC_ACT_SHOT }
}

#[inline(always)]
fn xdp(pass: bool) -> u32 {
    if pass {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Passes everything: the baseline `sg-bench` subtracts from sg's cost. The
/// agent never attaches it.
#[classifier]
pub fn sg_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// The verdict on the frame: pass (true) or a counted drop.
#[inline(always)]
fn run<C: Frame, const LOG: bool>(ctx: &C, hook_ingress: bool) -> bool {
    let ifindex = ctx.ifindex();
    let len = ctx.len() as u64;
    let Some(cfg) = (unsafe { IFACES.get(ifindex) }) else {
        count(
            0,
            if hook_ingress { 0 } else { 1 },
            len,
            Err(Reason::NoConfig),
        );
        return false;
    };
    // Copy what we need so that a concurrent policy swap (a new IfaceCfg
    // element) cannot mix two policies within this packet. With flow logs
    // the copy goes to this CPU's scratch cell: the decision's frame and the
    // event's must fit the kernel's 512 bytes of stack together.
    let copied;
    let cfg: &IfaceCfg = if LOG {
        match maps::CFG_SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch cell, written whole before its use.
            Some(c) => unsafe {
                *c = *cfg;
                &*c
            },
            None => {
                count(cfg.stats_slot, 0, len, Err(Reason::MapError));
                return false;
            }
        }
    } else {
        copied = *cfg;
        &copied
    };
    let inbound = hook_ingress != (cfg.flags & IFACE_HOST_SIDE != 0);
    let dir = if inbound { DIR_INBOUND } else { DIR_OUTBOUND };
    let m = Meter {
        on: LOG,
        len: len as u32,
    };
    let verdict = decide(ctx, ifindex, cfg, dir, m);
    if LOG {
        let (kind, detail) = match verdict {
            Ok(Pass::NewFlow) => (EVENT_START, 0),
            Ok(Pass::EndedFlow) => (EVENT_END, 0),
            Ok(Pass::Plain) => (0, 0),
            Err(r) => (EVENT_REJECT, r as u8),
        };
        if kind != 0 {
            let n = flowlog::Note::new(kind, dir, detail, ifindex, cfg.stats_slot, len as u32);
            flowlog::event(ctx, n.at, n.what);
        }
    }
    count(cfg.stats_slot, dir as u32, len, verdict);
    verdict.is_ok()
}

#[inline(always)]
fn decide<C: Frame>(
    ctx: &C,
    ifindex: u32,
    cfg: &IfaceCfg,
    dir: u8,
    m: Meter,
) -> Result<Pass, Reason> {
    let eth: EthHdr = load(ctx, 0)?;
    let pkt = match u16::from_be(eth.ether_type) {
        ETH_P_IP => parse::parse_v4(ctx)?,
        ETH_P_IPV6 => {
            let p = parse::parse_v6(ctx)?;
            // Neighbour discovery (ICMPv6 133-137) always passes (docs/contract.md §5).
            if p.proto == PROTO_ICMPV6 && p.frag == FRAG_NONE && (133..=137).contains(&p.dport[0]) {
                return Ok(Pass::Plain);
            }
            p
        }
        ETH_P_ARP => return Ok(Pass::Plain),
        _ => return Err(Reason::UnsupportedL2),
    };
    if pkt.frag == FRAG_LATER {
        return fragments::later_fragment(ifindex, cfg, dir, &pkt);
    }
    if cfg.flags & IFACE_RELATED_ICMP != 0
        && related::icmp_is_error(pkt.family, pkt.proto, pkt.dport[0])
        && pkt.frag == FRAG_NONE
        && related::related(ctx, ifindex, cfg, dir, &pkt)
    {
        return Ok(Pass::Plain);
    }
    let verdict = decide_l4(ifindex, cfg, dir, &pkt, m);
    if verdict.is_ok() && pkt.frag == FRAG_FIRST {
        let key = fragments::frag_key(ifindex, &pkt);
        let now = now_ns();
        if FRAGS.insert(key, now, BPF_ANY as u64).is_err() {
            return Err(Reason::MapError);
        }
    }
    verdict
}

#[inline(always)]
fn decide_l4(ifindex: u32, cfg: &IfaceCfg, dir: u8, p: &Pkt, m: Meter) -> Result<Pass, Reason> {
    let inbound = dir == DIR_INBOUND;
    let (local, remote, lport, rport) = if inbound {
        (p.dst, p.src, p.dport, p.sport)
    } else {
        (p.src, p.dst, p.sport, p.dport)
    };
    // ICMP queries key by identifier (in `sport`); the type travels in `dport`.
    let key = conntrack::ct_key(
        ifindex, p.family, p.proto, local, remote, lport, rport, p.sport,
    );
    let now = now_ns();
    let status = conntrack::lookup(&key, cfg, p, dir, now, m);
    match status {
        CtStatus::Established => return Ok(Pass::Plain),
        CtStatus::Ended => return Ok(Pass::EndedFlow),
        _ => {}
    }
    // No live tracked flow: the policy decides.
    let id = policy::identity(p.family, &remote).ok_or(Reason::NoRule)?;
    let flags = policy::allows(
        cfg.policy[dir as usize & 1],
        id,
        p.proto,
        u16::from_be_bytes(p.dport),
        false,
    )
    .ok_or(Reason::NoRule)?;
    if p.proto == PROTO_TCP || p.proto == PROTO_UDP {
        if flags & PORT_UNTRACKED != 0 {
            return Ok(Pass::Plain);
        }
        // A packet of an untracked flow started in the other direction (a
        // response) also keeps no state: the other direction would have let
        // the reversed packet start an untracked flow.
        let other = if inbound { DIR_OUTBOUND } else { DIR_INBOUND };
        if cfg.all_response & all_response_bit(dir, p.family, p.proto) != 0
            && let Some(f) = policy::allows(
                cfg.policy[other as usize & 1],
                id,
                p.proto,
                u16::from_be_bytes(p.sport),
                false,
            )
            && f & PORT_UNTRACKED != 0
        {
            return Ok(Pass::Plain);
        }
        // A lone RST opens nothing.
        if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
            return Ok(Pass::Plain);
        }
    }
    conntrack::create(&key, status == CtStatus::Stale, p, dir, now, m)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sg-ebpf is a BPF object: sg-agent embeds it; it does not run on the host");
    std::process::exit(2);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
