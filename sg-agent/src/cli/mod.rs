//! The `sg-agent` command line: one subcommand per job, each a thin layer
//! over the library (the agent, the configuration, the pinned maps).

mod admin;
mod report;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::{agent, datapath::FlowMatch, describe, model, pins::default_pin_dir, source};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/sg/sg.yaml";
/// Where the state database (managed state, audit trail) lives.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sg";
/// The API's access keys.
pub const DEFAULT_CREDENTIALS: &str = "/etc/sg/credentials.yaml";

/// AWS-style security groups for Linux interfaces, enforced by eBPF.
#[derive(Parser)]
#[command(name = "sg-agent", version, about)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    /// Where the maps and links are pinned
    /// [default: /sys/fs/bpf/sg/v<layout>/net-<netns inode>].
    #[arg(long, global = true)]
    pin_dir: Option<PathBuf>,
    /// This host's id: the agent enforces the interfaces whose `host` is
    /// this, or that name no host [default: the hostname].
    #[arg(long, global = true, value_name = "ID")]
    host_id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where the state and audit trail are: the state directory's database,
/// or a fleet's etcd.
#[derive(clap::Args)]
struct StateArgs {
    /// The state database and audit trail.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The state in etcd instead, shared by a fleet
    /// (`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, docs/fleet.md).
    #[arg(long, value_name = "URL")]
    state: Option<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

impl StateArgs {
    fn at(self) -> Result<crate::store::StateAt> {
        Ok(match self.state {
            Some(url) => crate::store::StateAt::Etcd(self.etcd.at(&url)?),
            None => crate::store::StateAt::Dir(self.state_dir),
        })
    }
}

/// How the EC2 API is served (with `--api`).
#[derive(clap::Args)]
struct ApiArgs {
    /// Serve the API over HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The private key of --api-tls-cert (PEM).
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// The API's access keys and what each may do.
    #[arg(long, default_value = DEFAULT_CREDENTIALS)]
    api_credentials: PathBuf,
    /// Record reads (Describe*, Get*) in the audit trail too.
    #[arg(long)]
    audit_reads: bool,
}

impl ApiArgs {
    fn options(self, listen: std::net::SocketAddr) -> Result<crate::api::ApiOptions> {
        crate::api::ApiOptions::new(
            listen,
            crate::api::access::Credentials::load(&self.api_credentials)?,
            self.audit_reads,
            self.api_tls_cert.zip(self.api_tls_key),
        )
    }
}

/// How to reach etcd (with `--state etcd://…`).
#[derive(clap::Args)]
struct EtcdArgs {
    /// etcd authentication: this user, its password in SG_ETCD_PASSWORD.
    #[arg(long, value_name = "USER")]
    etcd_user: Option<String>,
    /// TLS: the CA certificate (PEM) that signs the etcd servers.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), for a cluster that asks for one.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    fn at(self, url: &str) -> Result<crate::store::EtcdAt> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let mut at = crate::store::EtcdAt::parse(url)?;
        if let Some(user) = self.etcd_user {
            let password = std::env::var("SG_ETCD_PASSWORD")
                .context("--etcd-user: the password goes in SG_ETCD_PASSWORD")?;
            at.user = Some((user, password));
        }
        at.ca = self.etcd_ca.as_ref().map(read).transpose()?;
        at.identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Ok(at)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the configuration, following its changes, until SIGINT or
    /// SIGTERM (which detach everything).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// On SIGINT/SIGTERM, exit but leave the programs and maps pinned and
        /// enforcing, for the next agent to adopt (a restart without a gap,
        /// as under a service manager). `sg-agent cleanup` stops enforcing.
        #[arg(long)]
        keep_on_exit: bool,
        /// Managed mode: the state lives in the state database (or etcd,
        /// with --state, which implies this) and changes through the EC2
        /// API; --config only seeds an empty state.
        #[arg(long)]
        managed: bool,
        #[command(flatten)]
        state: StateArgs,
        /// Follow the state and compute what this host would enforce, but
        /// load no program and touch no interface (needs --state etcd://…;
        /// docs/fleet.md, "Watch-only agents").
        #[arg(long, requires = "state")]
        watch_only: bool,
        /// Serve the EC2 API on this address (port 8733 is sg's); beyond
        /// loopback only with TLS.
        #[arg(long, value_name = "ADDR:PORT")]
        api: Option<std::net::SocketAddr>,
        #[command(flatten)]
        api_opts: ApiArgs,
        /// Write flow logs as this file describes (docs/observe.md).
        #[arg(long, value_name = "FILE")]
        flow_logs: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics
        /// [default when given without a value: 127.0.0.1:9733].
        #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:9733")]
        metrics: Option<std::net::SocketAddr>,
        /// Serve the read-only console at http://ADDR:PORT/ (loopback only;
        /// the API's access keys sign in) [default when given without a
        /// value: 127.0.0.1:9734].
        #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:9734", requires = "api")]
        console: Option<std::net::SocketAddr>,
    },
    /// Serve the EC2 API on a fleet's state in etcd, enforcing nothing here
    /// (docs/fleet.md); --config seeds an empty state.
    Api {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// Where to listen; beyond loopback only with TLS.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8733")]
        api: std::net::SocketAddr,
        #[command(flatten)]
        api_opts: ApiArgs,
    },
    /// Validate a configuration without touching the kernel: list every
    /// error (exit 1) or summarise it (exit 0); with an agent running here,
    /// also say what taking it would widen.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make the running agent take its configuration file as it is now (for
    /// editors that write in place); in managed mode, make FILE the managed
    /// state (`-f`). Prints the outcome, exit 1 if refused.
    Apply {
        /// Managed mode: the file whose state replaces the managed state.
        #[arg(long, short)]
        file: Option<PathBuf>,
    },
    /// The audit trail, newest last, filtered as `aws cloudtrail
    /// lookup-events` filters (one JSON record per line).
    LookupEvents {
        #[command(flatten)]
        state: StateArgs,
        /// Only this action (`AuthorizeSecurityGroupIngress`, `ApplyConfiguration`...).
        #[arg(long)]
        event_name: Option<String>,
        /// Only calls signed with this access key.
        #[arg(long)]
        access_key: Option<String>,
        /// Only calls naming or creating this resource (sg-..., sgr-...).
        #[arg(long)]
        resource: Option<String>,
        /// Not before this time (RFC 3339, UTC: 2026-12-01T20:00:00Z).
        #[arg(long)]
        start_time: Option<String>,
        /// Not after this time.
        #[arg(long)]
        end_time: Option<String>,
        #[arg(long, default_value_t = 50)]
        max_results: usize,
    },
    /// Stop enforcing on an interface that the configuration no longer
    /// lists (leaving it out of the file keeps its last policy).
    Detach {
        /// Linux interface name.
        interface: String,
    },
    /// Seal a configuration: append (or renew) the `# sg-sha256:` line that
    /// lets the agent take a file written in place once it is complete.
    /// FILE is rewritten by rename; `-` seals standard input to standard
    /// output.
    Seal {
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// The effective security groups, as `aws ec2 describe-security-groups`
    /// prints them.
    DescribeSecurityGroups {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        output: Output,
    },
    /// The effective rules, one per peer, as `aws ec2
    /// describe-security-group-rules` prints them.
    DescribeSecurityGroupRules {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        output: Output,
    },
    /// Audit a state as AWS Firewall Manager's audit policies do: unused
    /// groups and prefix lists, redundant rules, guardrails, stale
    /// references, quotas (docs/observe.md). Exits 2 when a finding is at or
    /// above --fail-on.
    Audit {
        #[command(flatten)]
        from: ReportFrom,
        /// Guardrails to check instead of the defaults (YAML).
        #[arg(long, value_name = "FILE")]
        guardrails: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The least severity that fails the command; `never` reports only.
        #[arg(long, value_name = "LEVEL", default_value = "warning", value_parser = parse_fail_on)]
        fail_on: FailOn,
    },
    /// Draw groups, the references between them, prefix lists and the
    /// interfaces they are attached to, as Graphviz DOT or SVG.
    Graph {
        #[command(flatten)]
        from: ReportFrom,
        /// SVG (rendered by Graphviz's dot) instead of DOT.
        #[arg(long)]
        svg: bool,
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
        #[arg(long, value_parser = parse_protocol, allow_hyphen_values = true)]
        protocol: Option<u8>,
        /// Only TCP/UDP flows with this port at either end.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Detach the programs and remove the pins of this network namespace's
    /// agent (or of `--pin-dir`); refused while an agent runs there.
    Cleanup {
        /// Every sg pin directory on the host, all network namespaces'
        /// (those of running agents are skipped).
        #[arg(long)]
        all: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), or write one page per command into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The state a report reads.
#[derive(clap::Args)]
struct ReportFrom {
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The managed state (the state database, or etcd with --state)
    /// instead of the file.
    #[arg(long)]
    managed: bool,
    #[command(flatten)]
    state: StateArgs,
}

impl ReportFrom {
    fn load(self) -> Result<model::Desired> {
        let managed = self.managed || self.state.state.is_some();
        let at = if managed {
            Some(self.state.at()?)
        } else {
            None
        };
        report::load(&self.config, at.as_ref())
    }
}

/// `--fail-on`: a severity, or never.
#[derive(Clone, Copy)]
struct FailOn(Option<crate::findings::Severity>);

fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    use clap::ValueEnum;
    if s == "never" {
        return Ok(FailOn(None));
    }
    crate::findings::Severity::from_str(s, false)
        .map(|v| FailOn(Some(v)))
        .map_err(|_| format!("{s:?}: expected critical, warning, info or never"))
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

/// The binary's entry point.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Api { .. }) {
        // Output into a closed pipe (`sg-agent stats | head`) ends the
        // command quietly, as it does `ls`. The agent itself keeps Rust's
        // default (ignored), so a closed log pipe cannot kill it.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<report::Gate>() {
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    if let Some(id) = &cli.host_id {
        model::host::set(id).map_err(anyhow::Error::msg)?;
    }
    let explicit_pin_dir = cli.pin_dir.is_some();
    let pin_dir = match cli.pin_dir {
        Some(d) => d,
        None => default_pin_dir()?,
    };
    match cli.command {
        Command::Run {
            config,
            keep_on_exit,
            managed,
            state,
            watch_only,
            api,
            api_opts,
            flow_logs,
            metrics,
            console,
        } => {
            let api = api.map(|listen| api_opts.options(listen)).transpose()?;
            let state = state.at()?;
            let flow_logs = flow_logs
                .map(|f| crate::flowlog::Settings::load(&f))
                .transpose()?;
            if watch_only {
                return runtime()?.block_on(agent::follow(
                    &state,
                    &config,
                    agent::Follow::WatchOnly,
                    api,
                ));
            }
            let opts = agent::RunOptions {
                config,
                pin_dir,
                keep_on_exit,
                managed: managed || matches!(state, crate::store::StateAt::Etcd(_)),
                state,
                api,
                flow_logs,
                metrics,
                console,
            };
            runtime()?.block_on(agent::run(opts))
        }
        Command::Api {
            config,
            state,
            api,
            api_opts,
        } => {
            let state = state.at()?;
            if !matches!(state, crate::store::StateAt::Etcd(_)) {
                anyhow::bail!(
                    "sg-agent api serves a fleet's state: give --state etcd://… (on one host, `sg-agent run --managed --api` serves the state it enforces)"
                );
            }
            let api = api_opts.options(api)?;
            runtime()?.block_on(agent::follow(
                &state,
                &config,
                agent::Follow::Api,
                Some(api),
            ))
        }
        Command::Check { config } => admin::check(&config, &pin_dir),
        Command::Apply { file } => admin::apply(&pin_dir, file),
        Command::LookupEvents {
            state,
            event_name,
            access_key,
            resource,
            start_time,
            end_time,
            max_results,
        } => admin::lookup_events(
            &state.at()?,
            &crate::store::EventFilter {
                name: event_name,
                access_key,
                resource,
                start: start_time,
                end: end_time,
                max: max_results,
            },
        ),
        Command::Detach { interface } => admin::detach(&pin_dir, &interface),
        Command::Seal { file } => admin::seal(&file),
        Command::DescribeSecurityGroups { config, output } => {
            let d = source::file::load(&config, None)?;
            print(&describe::security_groups(&d), output, || {
                describe::rules_table(&d)
            })
        }
        Command::DescribeSecurityGroupRules { config, output } => {
            let d = source::file::load(&config, None)?;
            print(&describe::security_group_rules(&d), output, || {
                describe::rules_table(&d)
            })
        }
        Command::Audit {
            from,
            guardrails,
            json,
            fail_on,
        } => report::audit(&from.load()?, guardrails.as_deref(), json, fail_on.0),
        Command::Graph { from, svg } => report::graph(&from.load()?, svg),
        Command::Stats { json } => stats::stats(&pin_dir, json),
        Command::Flush {
            interface,
            peer,
            protocol,
            port,
        } => {
            let ifindex = match &interface {
                Some(name) => Some(
                    nix::net::if_::if_nametoindex(name.as_str())
                        .with_context(|| format!("no network interface {name:?} here"))?,
                ),
                None => None,
            };
            let mut maps = crate::datapath::Maps::open(&pin_dir)?;
            let n = maps.flush(&FlowMatch {
                ifindex,
                peer: peer.map(|n| n.trunc()),
                protocol,
                port,
            })?;
            println!("flushed {n} tracked flow(s)");
            Ok(())
        }
        Command::Cleanup { all } if all && !explicit_pin_dir => admin::cleanup_all(),
        Command::Cleanup { all: true } => {
            anyhow::bail!("give either --all or --pin-dir, not both")
        }
        Command::Cleanup { all: false } => admin::cleanup(&pin_dir),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sg-agent",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => man(dir.as_deref()),
    }
}

/// The daemons' runtime. Two workers: the API answers reads while the
/// loop enforces.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Manual pages in section 8 (system administration): `sg-agent(8)` and
/// `sg-agent-<command>(8)` for each command.
fn man(dir: Option<&std::path::Path>) -> Result<()> {
    let mut root = Cli::command();
    // Propagates the global options (--log-level, --pin-dir) to every
    // command, so that each page lists them as `--help` does.
    root.build();
    let Some(dir) = dir else {
        clap_mangen::Man::new(root)
            .section("8")
            .render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let mut pages = vec![("sg-agent".to_string(), root.clone())];
    for sub in root
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("sg-agent-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.8"));
        let mut f = std::fs::File::create(&path)?;
        clap_mangen::Man::new(cmd).section("8").render(&mut f)?;
    }
    Ok(())
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    match model::Protocol::parse(s)? {
        model::Protocol::Number(n) => Ok(n),
        model::Protocol::All => Err("give one protocol, not -1".into()),
    }
}
