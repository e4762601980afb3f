//! sg's benchmark helper, driven by `cargo xtask bench`:
//!
//! - `micro`: the datapath's cost per packet with `BPF_PROG_TEST_RUN`
//!   against a pass-everything program and the one-lookup floor, policy
//!   update latency and atomicity, memory per flow and per rule, and the
//!   fleet-sized state (`fleet`); prints JSON.
//! - `enforce`: installs an N-rule policy on an interface and keeps it
//!   attached until SIGINT/SIGTERM (AWS's quotas cap a configuration at 1,000
//!   rules per interface; the benchmarks go past that through the same API);
//!   with `--flow-logs FILE`, the programs that report flows, and the agent's
//!   flow-log worker reading them, as `sg-agent run --flow-logs` runs it.
//! - `render`: the same N-rule policy as nftables or iptables rules.

mod contention;
mod fleet;
mod flowlog_cost;
mod micro;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use sg_agent::{
    api::Snapshot,
    compile::{Compiled, Flat, Settings, compile},
    datapath::Datapath,
    flowlog::FlowLogs,
    model::Protocol,
};
use sg_testkit::policies::rules_ending_with;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Micro {
        /// A smaller sweep.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "/sys/fs/bpf/sg-bench")]
        pin_dir: PathBuf,
    },
    Enforce {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        rules: usize,
        #[arg(long, default_value = "/sys/fs/bpf/sg-bench-enforce")]
        pin_dir: PathBuf,
        /// Flow logs, as this settings file says (docs/observe.md).
        #[arg(long, value_name = "FILE")]
        flow_logs: Option<PathBuf>,
    },
    /// What flow logs add to a packet, through BPF_PROG_TEST_RUN (JSON).
    FlowLogCost {
        #[arg(long, default_value_t = 4000)]
        samples: usize,
        #[arg(long, default_value = "/sys/fs/bpf/sg-bench-flow-log-cost")]
        pin_dir: PathBuf,
    },
    Render {
        #[arg(long)]
        rules: usize,
        #[arg(long, value_enum)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Nft,
    Iptables,
    Ip6tables,
}

/// The rules the end-to-end traffic matches, placed last: UDP 5353 (the
/// packet-rate test), TCP 5201 (iperf3) and TCP 8000 (connection rate).
pub(crate) fn bench_targets() -> Vec<Flat> {
    let net: IpNet = "10.77.0.0/24".parse().expect("net");
    [(17u8, 5353u16), (6, 5201), (6, 8000)]
        .into_iter()
        .map(|(p, port)| Flat {
            net,
            protocol: Protocol::Number(p),
            lo: port,
            hi: port,
        })
        .collect()
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Micro { quick, pin_dir } => micro::micro(quick, &pin_dir),
        Cmd::Enforce {
            interface,
            rules,
            pin_dir,
            flow_logs,
        } => enforce(&interface, rules, &pin_dir, flow_logs.as_deref()),
        Cmd::FlowLogCost { samples, pin_dir } => {
            let cost = flowlog_cost::flow_log_cost(&pin_dir, samples);
            let _ = std::fs::remove_dir_all(&pin_dir);
            println!("{}", serde_json::to_string_pretty(&cost?)?);
            Ok(())
        }
        Cmd::Render { rules, format } => {
            print!(
                "{}",
                render(&rules_ending_with(rules, &bench_targets()), format)
            );
            Ok(())
        }
    }
}

/// The benchmarks' interface settings: a workload's own interface, AWS's
/// default timeouts.
pub(crate) fn compiled(inbound: &[Flat], outbound: &[Flat]) -> Compiled {
    compile(inbound, outbound, &Settings::default())
}

fn enforce(interface: &str, n: usize, pin_dir: &Path, flow_logs: Option<&Path>) -> Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .with_context(|| format!("no interface {interface}"))?;
    let progs = sg_agent::datapath::Programs::new(flow_logs.is_some());
    let mut dp = Datapath::load_with(262_144, pin_dir, progs)?;
    let inbound = rules_ending_with(n, &bench_targets());
    let outbound = vec![Flat {
        net: "0.0.0.0/0".parse()?,
        protocol: Protocol::All,
        lo: 0,
        hi: u16::MAX,
    }];
    dp.install("bench", ifindex, &compiled(&inbound, &outbound))?;
    dp.attach(interface, ifindex, sg_agent::model::IngressHook::Tcx)?;
    let logs = flow_logs
        .map(|f| start_flow_logs(interface, pin_dir, f))
        .transpose()?;
    println!("ready: {n} rules on {interface}");
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.thread_block()?;
    set.wait()?;
    if let Some((rt, logs)) = logs {
        rt.block_on(logs.stop());
    }
    dp.stop();
    Ok(())
}

/// The agent's flow-log worker on `interface`, on a runtime of its own (one
/// thread, as the agent's share of the host), for as long as both live.
fn start_flow_logs(
    interface: &str,
    pin_dir: &Path,
    settings: &Path,
) -> Result<(tokio::runtime::Runtime, FlowLogs)> {
    let settings = sg_agent::flowlog::Settings::load(settings)?;
    let desired = sg_agent::source::file::parse(
        "sg-bench",
        &format!("network_interfaces:\n  - {{interface: {interface}}}\n"),
        None,
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = Snapshot {
        desired: Arc::new(desired),
        managed: false,
        source: "sg-bench".into(),
        enforced: [interface.to_string()].into(),
        group_xml: Default::default(),
        heartbeats: None,
    };
    let (_publish, snapshot) = tokio::sync::watch::channel(Arc::new(snapshot));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let logs = rt.block_on(async { FlowLogs::start(pin_dir, settings, snapshot) })?;
    Ok((rt, logs))
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Number(6) => "tcp",
        _ => "udp",
    }
}

fn render(rules: &[Flat], format: Format) -> String {
    let range = |r: &Flat| {
        if r.lo == r.hi {
            r.lo.to_string()
        } else {
            format!("{}-{}", r.lo, r.hi)
        }
    };
    match format {
        Format::Nft => {
            // Sets of concatenated (address . protocol . port) intervals: one
            // lookup per family, as a careful admin would write it. Elements
            // go in batches: one netlink message of 10,000 overflows.
            let mut s = String::from(
                "table inet sgbench {\n  set allow4 { type ipv4_addr . inet_proto . inet_service; flags interval; }\n  set allow6 { type ipv6_addr . inet_proto . inet_service; flags interval; }\n  chain input {\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n    iif lo accept\n    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept\n    ip saddr . meta l4proto . th dport @allow4 accept\n    ip6 saddr . meta l4proto . th dport @allow6 accept\n  }\n}\n",
            );
            for (set, v6) in [("allow4", false), ("allow6", true)] {
                let elems: Vec<String> = rules
                    .iter()
                    .filter(|r| r.net.addr().is_ipv6() == v6)
                    .map(|r| format!("{} . {} . {}", r.net, proto_name(r.protocol), range(r)))
                    .collect();
                for chunk in elems.chunks(500) {
                    s.push_str(&format!(
                        "add element inet sgbench {set} {{ {} }}\n",
                        chunk.join(", ")
                    ));
                }
            }
            s
        }
        Format::Iptables | Format::Ip6tables => {
            // One rule per allowed entry, conntrack first: iptables as it is
            // usually written.
            let v6 = matches!(format, Format::Ip6tables);
            let mut s = String::from(
                "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
            );
            s.push_str("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n");
            if v6 {
                s.push_str("-A INPUT -p ipv6-icmp -j ACCEPT\n");
            }
            for r in rules.iter().filter(|r| r.net.addr().is_ipv6() == v6) {
                let ports = if r.lo == r.hi {
                    r.lo.to_string()
                } else {
                    format!("{}:{}", r.lo, r.hi)
                };
                s.push_str(&format!(
                    "-A INPUT -s {} -p {} --dport {ports} -j ACCEPT\n",
                    r.net,
                    proto_name(r.protocol)
                ));
            }
            s.push_str("COMMIT\n");
            s
        }
    }
}
