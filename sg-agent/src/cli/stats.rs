//! `sg-agent stats`: the pinned counters, as a table or JSON.

use std::path::Path;

use anyhow::Result;
use sg_common::Reason;

use crate::datapath::{IfaceStats, Maps, ifname};

fn iface_name(ifindex: u32) -> String {
    ifname(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"))
}

pub fn stats(pin_dir: &Path, json: bool) -> Result<()> {
    let maps = Maps::open(pin_dir)?;
    let all = maps.stats()?;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|s| stats_json(s, &iface_name(s.ifindex)))
            .collect();
        let doc = serde_json::json!({
            "interfaces": v,
            "flows_in_use": maps.flows_in_use(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>12} {:>14} {:>12} {:>14} {:>8} {:>8}  drops by reason",
        "interface", "dir", "acc pkts", "acc bytes", "rej pkts", "rej bytes", "flows", "refused"
    );
    for s in &all {
        for (d, name) in s.dirs.iter().zip(["inbound", "outbound"]) {
            let drops: Vec<String> = Reason::ALL
                .iter()
                .filter(|r| d.drops[**r as usize] > 0)
                .map(|r| format!("{}={}", r.name(), d.drops[*r as usize]))
                .collect();
            println!(
                "{:<16} {:<8} {:>12} {:>14} {:>12} {:>14} {:>8} {:>8}  {}",
                iface_name(s.ifindex),
                name,
                d.accepted_packets,
                d.accepted_bytes,
                d.rejected_packets,
                d.rejected_bytes,
                if name == "inbound" {
                    s.flows_in_use.to_string()
                } else {
                    String::new()
                },
                d.flows_refused,
                drops.join(" ")
            );
        }
    }
    println!(
        "tracked flows counted against the allowance: {}",
        maps.flows_in_use()
    );
    Ok(())
}

fn stats_json(s: &IfaceStats, name: &str) -> serde_json::Value {
    let dir = |d: &sg_common::Stats| {
        let drops: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), d.drops[*r as usize].into()))
            .collect();
        serde_json::json!({
            "accepted_packets": d.accepted_packets,
            "accepted_bytes": d.accepted_bytes,
            "rejected_packets": d.rejected_packets,
            "rejected_bytes": d.rejected_bytes,
            "flows_created": d.flows_created,
            "flows_refused": d.flows_refused,
            "events_skipped": d.events_skipped,
            "drops": drops,
        })
    };
    serde_json::json!({
        "interface": name,
        "ifindex": s.ifindex,
        "flows_in_use": s.flows_in_use,
        "inbound": dir(&s.dirs[0]),
        "outbound": dir(&s.dirs[1]),
    })
}
