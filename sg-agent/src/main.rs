use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sg_agent::{
    agent, config,
    datapath::{FlowMatch, IfaceStats, Maps, default_pin_dir},
    describe,
};
use sg_common::Reason;

/// AWS-style security groups for Linux interfaces, enforced by eBPF.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    /// Where the maps and links are pinned
    /// [default: /sys/fs/bpf/sg/v<layout>/net-<netns inode>].
    #[arg(long, global = true)]
    pin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the configuration, following its changes, until SIGINT or
    /// SIGTERM (which detach everything).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// On SIGINT/SIGTERM, exit but leave the programs and maps pinned and
        /// enforcing, for the next agent to adopt (a restart without a gap,
        /// as under a service manager). `sg-agent cleanup` stops enforcing.
        #[arg(long)]
        keep_on_exit: bool,
    },
    /// Validate a configuration without touching the kernel: list every
    /// error (exit 1) or summarise it (exit 0).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The effective security groups, as `aws ec2 describe-security-groups`
    /// prints them.
    DescribeSecurityGroups {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        output: Output,
    },
    /// The effective rules, one per peer, as `aws ec2
    /// describe-security-group-rules` prints them.
    DescribeSecurityGroupRules {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        output: Output,
    },
    /// Print the counters of the running agent's interfaces.
    Stats {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete tracked flows (of one interface, or all), cutting flows that a
    /// rule removal left running.
    Flush {
        /// Linux interface name; all interfaces when absent.
        #[arg(long)]
        interface: Option<String>,
        /// Only flows whose peer lies in this CIDR.
        #[arg(long)]
        peer: Option<ipnet::IpNet>,
        /// Only flows of this protocol (tcp, udp, icmp, icmpv6 or a number).
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<u8>,
        /// Only TCP/UDP flows with this port at either end.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Detach every sg program and remove every sg pin on this host (only
    /// those under `--pin-dir`, when it is given).
    Cleanup,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Json,
    Yaml,
    Table,
}

fn print(v: &serde_json::Value, output: Output, table: impl FnOnce() -> String) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(v)?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    if let (Command::Cleanup, Some(dir)) = (&cli.command, &cli.pin_dir) {
        Maps::remove_pins_at(dir);
        println!("removed the pins under {}", dir.display());
        return Ok(());
    }
    let pin_dir = match cli.pin_dir {
        Some(d) => d,
        None => default_pin_dir()?,
    };
    match cli.command {
        Command::Run {
            config,
            keep_on_exit,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(agent::run(&config, &pin_dir, keep_on_exit)),
        Command::Check { config } => {
            let d = config::load(&config, None)?;
            for w in &d.warnings {
                println!("warning: {w}");
            }
            let rules: usize = d
                .groups
                .iter()
                .map(|g| g.ingress.len() + g.egress.len())
                .sum();
            println!(
                "{}: valid: {} VPC(s), {} security group(s) with {rules} rule(s), {} prefix list(s), {} network interface(s)",
                config.display(),
                d.vpcs.len(),
                d.groups.len(),
                d.prefix_lists.len(),
                d.interfaces.len()
            );
            for i in &d.interfaces {
                let names: Vec<&str> = i
                    .groups
                    .iter()
                    .filter_map(|g| d.group(g))
                    .map(|g| g.name.as_str())
                    .collect();
                println!("  {} ({}, {}): {}", i.name, i.id, i.vpc, names.join(", "));
            }
            Ok(())
        }
        Command::DescribeSecurityGroups { config, output } => {
            let d = config::load(&config, None)?;
            print(&describe::security_groups(&d), output, || {
                describe::rules_table(&d)
            })
        }
        Command::DescribeSecurityGroupRules { config, output } => {
            let d = config::load(&config, None)?;
            print(&describe::security_group_rules(&d), output, || {
                describe::rules_table(&d)
            })
        }
        Command::Stats { json } => stats(&pin_dir, json),
        Command::Flush {
            interface,
            peer,
            protocol,
            port,
        } => {
            let mut maps = Maps::open(&pin_dir)?;
            let ifindex = match &interface {
                Some(name) => Some(
                    nix::net::if_::if_nametoindex(name.as_str())
                        .with_context(|| format!("no network interface {name:?} here"))?,
                ),
                None => None,
            };
            let n = maps.flush(&FlowMatch {
                ifindex,
                peer: peer.map(|n| n.trunc()),
                protocol,
                port,
            })?;
            println!("flushed {n} tracked flow(s)");
            Ok(())
        }
        Command::Cleanup => cleanup(),
    }
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    match config::Protocol::parse(s)? {
        config::Protocol::Number(n) => Ok(n),
        config::Protocol::All => Err("give one protocol, not -1".into()),
    }
}

fn iface_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("ifindex {ifindex}"))
}

fn stats(pin_dir: &Path, json: bool) -> Result<()> {
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

/// Removes every pin directory under /sys/fs/bpf/sg (all layouts, all
/// network namespaces); unpinning a link detaches it.
fn cleanup() -> Result<()> {
    let root = Path::new("/sys/fs/bpf/sg");
    let mut n = 0;
    for layout in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for ns in std::fs::read_dir(layout.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            Maps::remove_pins_at(&ns.path());
            n += 1;
        }
        let _ = std::fs::remove_dir(layout.path());
    }
    let _ = std::fs::remove_dir(root);
    println!(
        "removed {n} sg pin director{}",
        if n == 1 { "y" } else { "ies" }
    );
    Ok(())
}
