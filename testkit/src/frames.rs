//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN` (tests and benchmarks): IPv4 and IPv6, with
//! TCP, UDP, ICMP or any payload, fragments and extension headers. Checksums
//! stay zero: the program never reads them.

use std::net::IpAddr;

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;

pub use sg_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// The transport part of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        t: u8,
        code: u8,
        id: u16,
    },
    /// Any other protocol, its payload bytes.
    Raw {
        proto: u8,
        len: usize,
    },
}

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&8u16.to_be_bytes());
                h
            }
            L4::Icmp { t, code, id } => {
                let mut h = vec![t, code, 0, 0, 0, 0, 0, 1];
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h
            }
            L4::Raw { len, .. } => vec![0xab; len],
        }
    }
}

/// How the IP layer carries the transport part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frag {
    #[default]
    Whole,
    /// The first fragment of datagram `id` (more fragments follow).
    First { id: u32 },
    /// A later fragment of datagram `id` at 8-byte offset `offset` (≥ 1).
    Later { id: u32, offset: u16 },
}

/// An IP packet to craft.
#[derive(Debug, Clone)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub frag: Frag,
    /// IPv6 destination-options headers before the transport header.
    pub ext_headers: usize,
    /// Extra payload after the transport header.
    pub payload: usize,
}

impl Spec {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Spec {
        Spec {
            src,
            dst,
            l4,
            frag: Frag::Whole,
            ext_headers: 0,
            payload: 0,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let proto = self.l4.proto(v6);
        let mut body = if matches!(self.frag, Frag::Later { .. }) {
            vec![0x5a; 24]
        } else {
            self.l4.bytes()
        };
        body.extend(std::iter::repeat_n(0u8, self.payload));
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (id, frag) = match self.frag {
                    Frag::Whole => (0x1234u16, 0u16),
                    Frag::First { id } => (id as u16, 0x2000),
                    Frag::Later { id, offset } => (id as u16, offset & 0x1fff),
                };
                let mut ip = vec![0x45, 0, 0, 0];
                ip.extend_from_slice(&id.to_be_bytes());
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.extend_from_slice(&[64, proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let total = (ip.len() + body.len()) as u16;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&body);
                eth(ETH_IPV4, &ip)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                // Chain: destination options..., fragment header, transport.
                let mut headers: Vec<(u8, Vec<u8>)> = Vec::new();
                for _ in 0..self.ext_headers {
                    headers.push((60, vec![0u8; 8]));
                }
                match self.frag {
                    Frag::Whole => {}
                    Frag::First { id } => headers.push((44, frag6(id, 0, true))),
                    Frag::Later { id, offset } => headers.push((44, frag6(id, offset, false))),
                }
                let mut payload = Vec::new();
                let first = headers.first().map_or(proto, |h| h.0);
                for i in 0..headers.len() {
                    let next = headers.get(i + 1).map_or(proto, |h| h.0);
                    let mut h = headers[i].1.clone();
                    h[0] = next;
                    payload.extend_from_slice(&h);
                }
                payload.extend_from_slice(&body);
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[first, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&payload);
                eth(ETH_IPV6, &ip)
            }
            _ => panic!("mixed address families"),
        }
    }
}

fn frag6(id: u32, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    let fo = (offset << 3) | u16::from(more);
    h[2..4].copy_from_slice(&fo.to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h
}

/// An Ethernet II frame around `payload`.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
