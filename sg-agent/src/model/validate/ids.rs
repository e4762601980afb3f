//! Ids, names and addresses: the checks every phase shares.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

use crate::model::Collector;

/// A stable id: `prefix-` and 17 hex digits of a hash of what names the
/// object, so that ids survive reloads and restarts.
pub fn make_id(prefix: &str, parts: &[&str]) -> String {
    let mut named = Vec::new();
    for p in parts {
        named.extend_from_slice(p.as_bytes());
        named.push(0);
    }
    format!("{prefix}-{}", &sha256_hex(&named)[..17])
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|h| {
            (8..=17).contains(&h.len()) && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// An object's id: the one written in the file when it is well formed, a
/// generated one (from `parts`) when none is written, `None` (reported with
/// AWS's code for the kind) when it is malformed.
pub fn object_id(
    v: &mut Collector,
    given: &Option<String>,
    prefix: &str,
    parts: &[&str],
    doc: usize,
    path: &str,
    obj: &str,
) -> Option<String> {
    let Some(id) = given else {
        return Some(make_id(prefix, parts));
    };
    if valid_id(prefix, id) {
        return Some(id.clone());
    }
    let code = match prefix {
        "vpc" => "InvalidVpcID.Malformed",
        "pl" => "InvalidPrefixListID.Malformed",
        "sg" => "InvalidGroupId.Malformed",
        _ => "InvalidNetworkInterfaceID.Malformed",
    };
    v.err(
        doc,
        &format!("{path}.id"),
        obj,
        code,
        format!("{id:?} is not {prefix}- and 8-17 hex digits"),
    );
    None
}

/// AWS's character set for group names and descriptions (VPC).
pub fn valid_text(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c))
}

pub fn parse_v4(s: &str) -> Option<Ipv4Net> {
    let s = s.trim();
    s.parse::<Ipv4Net>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .ok()
        .map(|n| n.trunc())
}

pub fn parse_v6(s: &str) -> Option<Ipv6Net> {
    let s = s.trim();
    s.parse::<Ipv6Net>()
        .or_else(|_| s.parse::<Ipv6Addr>().map(Ipv6Net::from))
        .ok()
        .map(|n| n.trunc())
}
