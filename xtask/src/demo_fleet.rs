//! `cargo xtask demo --fleet`: the web and db tiers spread over three
//! hosts, one state in a three-member etcd cluster, the API served by
//! `sg-agent api`; a web member added on host-b through the AWS CLI, and
//! how long it took to be admitted on host-c.
//!
//! ```text
//!            etcd m0 m1 m2 (10.98.0.11-13), routing between the hosts
//!      ┌──────────────┼──────────────┐
//!   host-a          host-b         host-c        each: sg-agent run
//!   (+ sg-agent api)                              --state etcd://…
//!   w0 ─ web-1      w0 ─ web-2     w0 ─ db        workload namespaces
//!   10.80.1.2       10.80.2.2      10.80.3.2
//! ```

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sg_tests::{
    DATACENTER_STATE, Datacenter, HOSTS, Seen, addr, eni_of, group_id, set_groups, tcp_echo_server,
    tcp_probe, wait_until,
};

const TIMEOUT: Duration = Duration::from_millis(1500);

pub fn run(agent_bin: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    // SAFETY: set before any thread starts (the helpers read it).
    unsafe { std::env::set_var("SG_AGENT_BIN", agent_bin) };
    ctrlc::set_handler(crate::demo::on_interrupt).context("installing the Ctrl-C handler")?;

    println!("demo: a 3-member etcd cluster and three hosts, each with a workload namespace");
    let mut dc = Datacenter::new("demof")?;
    println!(
        "demo: etcd authentication on: the API's user writes the state, each host's reads it and writes its heartbeat"
    );
    dc.etcd.enable_auth(&HOSTS)?;
    let api = dc.api(0, "sg-api", DATACENTER_STATE)?;
    println!("demo: sg-agent api on host-a (enforces nothing), seeded from the embedded state");
    let agents = (0..3)
        .map(|i| dc.agent(i, DATACENTER_STATE))
        .collect::<Result<Vec<_>>>()?;
    println!("demo: sg-agent run on host-a, host-b, host-c");
    let db_ip = Datacenter::workload_v4(2);
    let db = tcp_echo_server(&dc.workloads[2], addr(&db_ip, 5432))?;
    let admin = tcp_echo_server(&dc.workloads[2], addr(&db_ip, 22))?;
    let probe = |from: usize, to| tcp_probe(&dc.workloads[from], to, TIMEOUT);

    let mut rows = vec![
        (
            "web-1 (host-a) -> db:5432 (host-c)".to_string(),
            Seen::Pass,
            probe(0, db)?,
            "db admits members of web, on any host",
        ),
        (
            "web-2 (host-b) -> db:5432 (host-c)".to_string(),
            Seen::Dropped,
            probe(1, db)?,
            "host-b's workload is not in web yet",
        ),
        (
            "web-1 (host-a) -> db:22 (host-c)".to_string(),
            Seen::Dropped,
            probe(0, admin)?,
            "no rule admits SSH",
        ),
    ];

    let ns = &dc.hosts[0];
    let web = group_id(ns, "web");
    let eni = eni_of(ns, "host-b");
    println!(
        "demo: aws ec2 modify-network-interface-attribute --network-interface-id {eni} --groups {web}"
    );
    set_groups(ns, &eni, &[&web]);
    let returned = Instant::now();
    let admitted = wait_until(Duration::from_secs(5), || {
        tcp_probe(&dc.workloads[1], db, Duration::from_millis(100)).is_ok_and(|s| s == Seen::Pass)
    });
    let probed = returned.elapsed();
    rows.push((
        "web-2 (host-b) -> db:5432 (host-c)".to_string(),
        Seen::Pass,
        if admitted { Seen::Pass } else { Seen::Dropped },
        "host-b's workload joined web through the API",
    ));
    crate::demo::print_table(&rows);
    let committed = crate::bench_fleet::times(&api.log(), "API change committed");
    for (host, agent) in HOSTS.iter().zip(&agents) {
        let took = crate::bench_fleet::times(&agent.log(), "took the store's change");
        if let (Some(c), Some(t)) = (committed.last(), took.last()) {
            println!(
                "demo: {host} enforced the change at {:+.1} ms from the API server's commit (its log line)",
                (t - c) * 1e3
            );
        }
    }
    println!(
        "demo: host-b's workload reached the db {:.1} ms after the call returned (probed, 100 ms probes)",
        probed.as_secs_f64() * 1e3
    );
    drop(agents);
    drop(api);
    drop(dc);
    crate::demo::verdict(&rows)
}
