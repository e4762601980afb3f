use super::*;

// Frames come from the same builder as the differential test's.
use crate::frames::{Frag, L4, Spec, eth};
use std::net::IpAddr;

fn v4(src: [u8; 4], dst: [u8; 4], l4: L4) -> Vec<u8> {
    Spec::new(IpAddr::from(src), IpAddr::from(dst), l4).frame()
}

/// A fragment of datagram 0x1234.
fn v4_frag(src: [u8; 4], dst: [u8; 4], l4: L4, frag: Frag) -> Vec<u8> {
    Spec {
        frag,
        ..Spec::new(IpAddr::from(src), IpAddr::from(dst), l4)
    }
    .frame()
}

const FIRST: Frag = Frag::First { id: 0x1234 };
const LATER: Frag = Frag::Later {
    id: 0x1234,
    offset: 100,
};

/// `fd00::<last>`.
fn a6(last: u16) -> IpAddr {
    IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

fn v6(src: u16, dst: u16, l4: L4) -> Vec<u8> {
    Spec::new(a6(src), a6(dst), l4).frame()
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

fn icmp(t: u8, code: u8, id: u16) -> L4 {
    L4::Icmp { t, code, id }
}

fn raw(proto: u8) -> L4 {
    L4::Raw { proto, len: 4 }
}

fn flat(net: &str, proto: Protocol, lo: u16, hi: u16) -> Flat {
    Flat {
        net: net.parse().unwrap(),
        protocol: proto,
        lo,
        hi,
    }
}

const TCP: Protocol = Protocol::Number(PROTO_TCP);
const UDP: Protocol = Protocol::Number(PROTO_UDP);
const ME: [u8; 4] = [10, 0, 0, 2];
const PEER: [u8; 4] = [10, 0, 0, 1];
const FAR: [u8; 4] = [192, 0, 2, 1];

fn web() -> Policy {
    Policy {
        inbound: vec![flat("10.0.0.0/24", TCP, 80, 80)],
        outbound: vec![],
        related_icmp: false,
        max_flows: 100,
    }
}

fn run(p: &Policy, st: &mut State, dir: u8, f: &[u8]) -> Verdict {
    let (v, next) = verdict(p, st, dir, f);
    *st = next;
    v
}

const IN: u8 = DIR_INBOUND;
const OUT: u8 = DIR_OUTBOUND;
const NO_RULE: Verdict = Verdict::Drop(Reason::NoRule);

#[test]
fn allow_only_by_source_and_destination_port() {
    let p = web();
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(1234, 80, TCP_SYN))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(80, 81, TCP_SYN))),
        NO_RULE
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, tcp(1, 80, TCP_SYN))),
        NO_RULE
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, udp(1, 80))),
        NO_RULE,
        "tcp rule, udp packet"
    );
    // Nothing outbound: no rule, no pass (a group without egress rules).
    assert_eq!(
        run(&p, &mut st, OUT, &v4(ME, FAR, tcp(1, 80, TCP_SYN))),
        NO_RULE
    );
}

#[test]
fn families_are_apart_and_protocol_all_covers_everything() {
    let p = Policy {
        inbound: vec![flat("fd00::/16", Protocol::All, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v6(1, 2, tcp(1, 2, TCP_SYN))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v6(1, 2, raw(47))),
        Verdict::Pass,
        "GRE"
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(1, 2, TCP_SYN))),
        NO_RULE
    );
}

#[test]
fn icmp_type_and_code() {
    let p = Policy {
        inbound: vec![
            flat("0.0.0.0/0", Protocol::Number(1), 8 << 8, 8 << 8 | 0xff),
            flat("0.0.0.0/0", Protocol::Number(1), 3 << 8 | 4, 3 << 8 | 4),
        ],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, icmp(8, 0, 7))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, icmp(3, 4, 0))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, icmp(3, 3, 0))),
        NO_RULE,
        "an error opened nothing"
    );
    assert_eq!(st.flows.len(), 1, "only the echo is tracked");
    assert_eq!(run(&p, &mut st, IN, &v4(PEER, ME, icmp(13, 0, 7))), NO_RULE);
}

#[test]
fn replies_of_tracked_flows_pass_both_ways_and_outlive_the_rule() {
    let mut p = web();
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(1234, 80, TCP_SYN))),
        Verdict::Pass
    );
    assert_eq!(
        run(
            &p,
            &mut st,
            OUT,
            &v4(ME, PEER, tcp(80, 1234, TCP_SYN | TCP_ACK))
        ),
        Verdict::Pass,
        "reply without an outbound rule"
    );
    let flow = *st.flows.values().next().unwrap();
    assert_eq!(flow.state, TCP_ESTABLISHED);
    p.inbound.clear();
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(1234, 80, TCP_ACK))),
        Verdict::Pass
    );
    // Outbound-initiated flows too: an echo and its reply.
    let p = Policy {
        outbound: vec![flat("0.0.0.0/0", Protocol::All, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, OUT, &v4(ME, FAR, icmp(8, 0, 9))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, icmp(0, 0, 9))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, icmp(0, 0, 10))),
        NO_RULE,
        "other id"
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, icmp(8, 0, 9))),
        NO_RULE,
        "a request is not a reply"
    );
}

#[test]
fn tcp_states() {
    let p = web();
    let mut st = State::default();
    let i = |f| v4(PEER, ME, tcp(1234, 80, f));
    let o = |f| v4(ME, PEER, tcp(80, 1234, f));
    run(&p, &mut st, IN, &i(TCP_SYN));
    let s = |st: &State| st.flows.values().next().unwrap().state;
    assert_eq!(s(&st), TCP_SYN_SENT);
    run(&p, &mut st, OUT, &o(TCP_SYN | TCP_ACK));
    assert_eq!(s(&st), TCP_ESTABLISHED);
    run(&p, &mut st, IN, &i(TCP_FIN | TCP_ACK));
    assert_eq!(s(&st), TCP_FIN_WAIT);
    run(&p, &mut st, OUT, &o(TCP_FIN | TCP_ACK));
    assert_eq!(s(&st), TCP_CLOSED);
    run(&p, &mut st, IN, &i(TCP_SYN));
    assert_eq!(s(&st), TCP_SYN_SENT, "reopened");
    run(&p, &mut st, OUT, &o(TCP_RST));
    assert_eq!(s(&st), TCP_RESET);
    // A lone RST opens nothing.
    let mut st = State::default();
    assert_eq!(run(&p, &mut st, IN, &i(TCP_RST)), Verdict::Pass);
    assert!(st.flows.is_empty());
}

#[test]
fn udp_stream_after_a_second_exchange() {
    let p = Policy {
        inbound: vec![flat("10.0.0.0/8", UDP, 53, 53)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    let q = v4(PEER, ME, udp(999, 53));
    let a = v4(ME, PEER, udp(53, 999));
    run(&p, &mut st, IN, &q);
    run(&p, &mut st, OUT, &a);
    let f = |st: &State| st.flows.values().next().unwrap().flags;
    assert_eq!(f(&st) & CT_UDP_STREAM, 0, "one request/response");
    run(&p, &mut st, IN, &q);
    assert_ne!(f(&st) & CT_UDP_STREAM, 0);
}

#[test]
fn untracked_flows_keep_no_state_and_replies_pass_by_the_opposite_rule() {
    let mut p = Policy {
        inbound: vec![flat("0.0.0.0/0", TCP, 22, 22)],
        outbound: vec![flat("0.0.0.0/0", Protocol::All, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, tcp(5555, 22, TCP_SYN))),
        Verdict::Pass
    );
    assert_eq!(
        run(
            &p,
            &mut st,
            OUT,
            &v4(ME, FAR, tcp(22, 5555, TCP_SYN | TCP_ACK))
        ),
        Verdict::Pass
    );
    assert!(st.flows.is_empty(), "untracked both ways");
    // The rule goes: the flow stops at once.
    p.inbound.clear();
    assert_eq!(
        run(&p, &mut st, IN, &v4(FAR, ME, tcp(5555, 22, TCP_ACK))),
        NO_RULE
    );
    // Outbound flows to ports the inbound side does not open are tracked.
    let p = Policy {
        inbound: vec![flat("0.0.0.0/0", TCP, 22, 22)],
        outbound: vec![flat("0.0.0.0/0", Protocol::All, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    run(&p, &mut st, OUT, &v4(ME, FAR, tcp(40000, 443, TCP_SYN)));
    assert_eq!(st.flows.len(), 1);
    // Without the all-outbound rule, the inbound /0 flow is tracked.
    let p = Policy {
        inbound: vec![flat("0.0.0.0/0", TCP, 22, 22)],
        outbound: vec![flat("0.0.0.0/0", TCP, 443, 443)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    run(&p, &mut st, IN, &v4(FAR, ME, tcp(5555, 22, TCP_SYN)));
    assert_eq!(st.flows.len(), 1);
    // ICMP is always tracked.
    let p = Policy {
        inbound: vec![flat("0.0.0.0/0", Protocol::All, 0, u16::MAX)],
        outbound: vec![flat("0.0.0.0/0", Protocol::All, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    run(&p, &mut st, IN, &v4(FAR, ME, icmp(8, 0, 1)));
    assert_eq!(st.flows.len(), 1);
}

#[test]
fn table_full_refuses_new_flows_only() {
    let p = Policy {
        max_flows: 1,
        ..web()
    };
    let mut st = State::default();
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(1, 80, TCP_SYN))),
        Verdict::Pass
    );
    assert_eq!(
        run(&p, &mut st, IN, &v4(PEER, ME, tcp(2, 80, TCP_SYN))),
        Verdict::Drop(Reason::TableFull)
    );
    assert_eq!(
        run(
            &p,
            &mut st,
            OUT,
            &v4(ME, PEER, tcp(80, 1, TCP_SYN | TCP_ACK))
        ),
        Verdict::Pass
    );
}

#[test]
fn edges_arp_nd_l2_malformed() {
    let p = web();
    let st = State::default();
    assert_eq!(
        verdict(&p, &st, IN, &eth(0x0806, &[0; 28])).0,
        Verdict::Pass
    );
    assert_eq!(
        verdict(&p, &st, IN, &v6(1, 2, icmp(135, 0, 0))).0,
        Verdict::Pass
    );
    assert_eq!(verdict(&p, &st, IN, &v6(1, 2, icmp(128, 0, 0))).0, NO_RULE);
    assert_eq!(
        verdict(&p, &st, IN, &eth(0x88cc, &[0; 40])).0,
        Verdict::Drop(Reason::UnsupportedL2)
    );
    let mut f = v4(PEER, ME, tcp(1, 80, TCP_SYN));
    f.truncate(30);
    assert_eq!(verdict(&p, &st, IN, &f).0, Verdict::Drop(Reason::Malformed));
    let mut f = v4(PEER, ME, tcp(1, 80, TCP_SYN));
    f[14 + 20 + 12] = 4 << 4; // data offset below 5 words
    assert_eq!(verdict(&p, &st, IN, &f).0, Verdict::Drop(Reason::Malformed));
    // A TCP header cut to 10 bytes inside a consistent IP packet.
    let mut f = v4(PEER, ME, tcp(1, 80, TCP_SYN));
    f.truncate(14 + 20 + 10);
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(
        verdict(&p, &st, IN, &f).0,
        Verdict::Drop(Reason::Malformed),
        "short L4"
    );
}

#[test]
fn extension_headers_are_walked_and_bounded() {
    let p = Policy {
        inbound: vec![flat("fd00::/16", TCP, 80, 80)],
        max_flows: 10,
        ..Policy::default()
    };
    let chain = |n: usize| {
        Spec {
            ext_headers: n,
            ..Spec::new(a6(1), a6(2), tcp(1, 80, TCP_SYN))
        }
        .frame()
    };
    let st = State::default();
    assert_eq!(verdict(&p, &st, IN, &chain(3)).0, Verdict::Pass);
    assert_eq!(
        verdict(&p, &st, IN, &chain(MAX_EXT_HEADERS)).0,
        Verdict::Pass
    );
    assert_eq!(
        verdict(&p, &st, IN, &chain(MAX_EXT_HEADERS + 1)).0,
        Verdict::Drop(Reason::ExtHeaders)
    );
}

#[test]
fn fragments_follow_their_first_or_an_all_ports_rule() {
    let p = Policy {
        inbound: vec![
            flat("10.0.0.0/24", UDP, 5000, 5000),
            flat("10.0.0.0/24", Protocol::Number(47), 0, u16::MAX),
        ],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    let later = v4_frag(PEER, ME, udp(0, 0), LATER);
    assert_eq!(
        run(&p, &mut st, IN, &later),
        Verdict::Drop(Reason::Fragment),
        "no first seen"
    );
    let first = v4_frag(PEER, ME, udp(1, 5000), FIRST);
    assert_eq!(run(&p, &mut st, IN, &first), Verdict::Pass);
    assert_eq!(run(&p, &mut st, IN, &later), Verdict::Pass);
    let denied_first = v4_frag(FAR, ME, udp(1, 5000), FIRST);
    assert_eq!(run(&p, &mut st, IN, &denied_first), NO_RULE);
    assert_eq!(
        run(&p, &mut st, IN, &v4_frag(FAR, ME, udp(0, 0), LATER)),
        Verdict::Drop(Reason::Fragment)
    );
    // All ports of GRE from the peer: later fragments pass on their own.
    assert_eq!(
        run(&p, &mut st, IN, &v4_frag(PEER, ME, raw(47), LATER)),
        Verdict::Pass
    );
}

#[test]
fn related_icmp_is_optional() {
    let mut p = Policy {
        outbound: vec![flat("0.0.0.0/0", UDP, 0, u16::MAX)],
        max_flows: 10,
        ..Policy::default()
    };
    let mut st = State::default();
    let out = v4(ME, FAR, udp(4000, 53));
    run(&p, &mut st, OUT, &out);
    // Port unreachable from FAR, quoting our datagram.
    let mut f = Spec {
        payload: 28,
        ..Spec::new(IpAddr::from(FAR), IpAddr::from(ME), icmp(3, 3, 0))
    }
    .frame();
    f[14 + 20 + 8..].copy_from_slice(&out[14..14 + 28]);
    assert_eq!(run(&p, &mut st, IN, &f), NO_RULE, "off by default");
    p.related_icmp = true;
    assert_eq!(run(&p, &mut st, IN, &f), Verdict::Pass);
}
