//! The fleet's part of `cargo xtask bench` (docs/fleet.md): how long a
//! change takes from the API call's return to every host's agent having
//! taken it, with three real agents enforcing on three simulated hosts; and
//! with 100 watch-only agents over a state of 10,000 interfaces and 2,500
//! groups, their memory and a full resync after etcd compacted past one.
//!
//! Times come from the agents' own logs (millisecond timestamps, the line
//! each writes once a change is enforced or computed) against the client's
//! clock at the call's return: one machine, one clock.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sg_tests::{
    ADMIN, Agent, DATACENTER_STATE, Datacenter, EtcdCluster, HOSTS, Netns, TempDir, boto3, eni_of,
    etcdctl, group_id, wait_until,
};

/// The line an agent writes once it has taken another writer's change.
const TOOK: &str = "took the store's change";

/// The times (Unix seconds) of an agent's log lines containing `what`.
pub fn times(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let stamp = l.strip_prefix('[')?.split_whitespace().next()?;
            let t =
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            Some(t.unix_timestamp_nanos() as f64 / 1e9)
        })
        .collect()
}

/// Runs `calls` (Python expressions on boto3's client `c`) one after the
/// other from `ns`, `gap` seconds apart; the time each returned.
fn timed_calls(ns: &Netns, calls: &[String], gap: f64) -> Result<Vec<f64>> {
    let script = format!(
        "import time\nc = ec2()\nout = []\nfor call in {calls:?}:\n    eval(call)\n    out.append(time.time())\n    time.sleep({gap})\nprint(json.dumps(out))\n"
    );
    let v = boto3(ns, ADMIN, &script)?;
    v.as_array()
        .context("the calls' times")?
        .iter()
        .map(|t| t.as_f64().context("a time"))
        .collect()
}

/// Each change's delay to each agent: the k-th `TOOK` line of each log
/// against the k-th call's return, in ms (negative: taken before the
/// caller heard back).
fn delays(returned: &[f64], logs: &[String]) -> Result<Vec<Vec<f64>>> {
    logs.iter()
        .map(|log| {
            let took = times(log, TOOK);
            if took.len() < returned.len() {
                bail!(
                    "an agent took {} of {} changes:\n{log}",
                    took.len(),
                    returned.len()
                );
            }
            Ok(returned
                .iter()
                .zip(took)
                .map(|(r, t)| (t - r) * 1e3)
                .collect())
        })
        .collect()
}

/// p50, p99 and max of `v`.
fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0), "n": v.len()})
}

/// Three agents enforcing, the API served by `sg-agent api` on host-a:
/// host-b's workload joins and leaves web, `n` times.
fn three_hosts(n: usize) -> Result<Value> {
    let mut dc = Datacenter::new("fb")?;
    dc.etcd.enable_auth(&HOSTS)?;
    let api = dc.api(0, "sg-api", DATACENTER_STATE)?;
    let agents = (0..3)
        .map(|i| dc.agent(i, DATACENTER_STATE))
        .collect::<Result<Vec<Agent>>>()?;
    let ns = &dc.hosts[0];
    let (eni, web, default) = (
        eni_of(ns, "host-b"),
        group_id(ns, "web"),
        group_id(ns, "default"),
    );
    let calls: Vec<String> = (0..n)
        .map(|k| {
            let g = if k % 2 == 0 { &web } else { &default };
            format!(
                "c.modify_network_interface_attribute(NetworkInterfaceId={eni:?}, Groups=[{g:?}])"
            )
        })
        .collect();
    let returned = timed_calls(ns, &calls, 0.2)?;
    std::thread::sleep(Duration::from_secs(1));
    let logs: Vec<String> = agents.iter().map(Agent::log).collect();
    // Enforced on every host: the last of the three, from the call's return
    // and from the API server's commit.
    let every = |from: &[f64]| -> Result<Vec<f64>> {
        let per_agent = delays(from, &logs)?;
        Ok((0..n)
            .map(|k| per_agent.iter().map(|d| d[k]).fold(f64::MIN, f64::max))
            .collect())
    };
    let committed = times(&api.log(), "API change committed");
    let by_host: BTreeMap<&str, Value> = HOSTS
        .iter()
        .zip(delays(&returned, &logs)?)
        .map(|(h, d)| (*h, percentiles(d)))
        .collect();
    Ok(json!({
        "changes": n,
        "every_host_ms": percentiles(every(&returned)?),
        "every_host_from_commit_ms": percentiles(every(&committed)?),
        "by_host_ms": by_host,
    }))
}

/// A state of `interfaces` interfaces on `hosts` hosts and `groups` groups
/// (the default among them), each group admitting the next one's members
/// and a /24; each interface in two groups.
fn scale_seed(interfaces: usize, hosts: usize, groups: usize) -> String {
    let named = groups - 1;
    let mut s = String::from("quotas: {groups_per_interface: 5}\nsecurity_groups:\n");
    for g in 0..named {
        s.push_str(&format!(
            "  - {{name: g{g}, description: tier {g}, ingress: [{{ip_protocol: tcp, from_port: {p}, to_port: {p}, user_id_group_pairs: [g{next}]}}, {{ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [10.{}.{}.0/24]}}]}}\n",
            g >> 8,
            g & 255,
            p = 1000 + g % 100,
            next = (g + 1) % named,
        ));
    }
    s.push_str("network_interfaces:\n");
    for i in 0..interfaces {
        s.push_str(&format!(
            "  - {{interface: w{}, host: host-{:03}, private_ipv4: [10.{}.{}.{}], groups: [g{}, g{}]}}\n",
            i / hosts,
            i % hosts,
            100 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            i % named,
            (i * 7 + 1) % named,
        ));
    }
    s
}

/// Resident and peak memory of process `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// `agents` watch-only agents over the scale state: the delay of `n`
/// changes to each, their memory, and one agent's full resync after etcd
/// compacted past its watch.
fn watching(agents: usize, n: usize) -> Result<Value> {
    let etcd = EtcdCluster::start("fw")?;
    let dir = TempDir::new()?;
    let seed = scale_seed(10_000, 100, 2_500);
    let seed_path = dir.0.join("seed.yaml");
    std::fs::write(&seed_path, &seed)?;
    let creds = sg_tests::write_credentials(&dir.0)?.display().to_string();
    let url = etcd.url();
    let t = Instant::now();
    let _api = Agent::spawn(
        &etcd.ns,
        TempDir::new()?,
        "api",
        &seed,
        &["--state", &url, "--api-credentials", &creds],
        &[],
    )?;
    let seeded_s = t.elapsed().as_secs_f64();
    eprintln!("bench: fleet: seeded 10,000 interfaces and 2,500 groups in {seeded_s:.1} s");
    let mut watchers = Vec::new();
    for h in 0..agents {
        let host = format!("host-{h:03}");
        let args = ["--watch-only", "--host-id", &host, "--state", &url];
        watchers.push(Agent::spawn(
            &etcd.ns,
            TempDir::new()?,
            "run",
            "",
            &args,
            &[],
        )?);
    }
    // The one that will resync, in a namespace of its own so that its
    // link to etcd can be cut.
    let far = Netns::new("fwr")?;
    etcd.link(&far, 1)?;
    let args = ["--watch-only", "--host-id", "host-099", "--state", &url];
    let resync = Agent::spawn(&far, TempDir::new()?, "run", "", &args, &[])?;
    eprintln!("bench: fleet: {} watch-only agents following", agents + 1);
    let group = group_id(&etcd.ns, "g5");
    let calls: Vec<String> = (0..n)
        .map(|k| format!("c.authorize_security_group_ingress(GroupId={group:?}, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': {p}, 'ToPort': {p}, 'IpRanges': [{{'CidrIp': '10.1.2.0/24'}}]}}])", p = 2000 + k))
        .collect();
    // Far enough apart that each change is taken everywhere before the
    // next (the agents share two CPUs).
    let gap = 0.15 * agents as f64;
    let returned = timed_calls(&etcd.ns, &calls, gap)?;
    std::thread::sleep(Duration::from_secs_f64(gap));
    let logs: Vec<String> = watchers.iter().map(Agent::log).collect();
    let all: Vec<f64> = delays(&returned, &logs)?.into_iter().flatten().collect();
    let mem: Vec<(f64, f64)> = watchers.iter().map(|a| memory(a.pid())).collect();
    let rss: Vec<f64> = mem.iter().map(|m| m.0).collect();
    let peak: Vec<f64> = mem.iter().map(|m| m.1).collect();

    // Resync: the far agent cut off, changes made and compacted away, the
    // link back: its watch resumes at a compacted revision, so it reads
    // the whole state again.
    far.ip(&["link", "set", "mgmt0", "down"])?;
    timed_calls(
        &etcd.ns,
        &["c.authorize_security_group_ingress(GroupId='".to_string()
            + &group
            + "', IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.9.9.0/24'}]}])"],
        0.0,
    )?;
    let status = etcdctl(&etcd, &["endpoint", "status", "--write-out", "json"])?;
    let rev = serde_json::from_str::<Value>(&status)?[0]["Status"]["header"]["revision"]
        .as_i64()
        .context("etcd's revision")?;
    etcdctl(&etcd, &["compact", &rev.to_string()])?;
    // Long enough for the client's keep-alive to give the connection up.
    std::thread::sleep(Duration::from_secs(10));
    let back = Instant::now();
    far.ip(&["link", "set", "mgmt0", "up"])?;
    // The route went with the link.
    far.ip(&["route", "add", "10.98.0.0/24", "via", "10.98.1.2"])?;
    if !wait_until(Duration::from_secs(60), || {
        resync.log().contains("re-read the whole state")
    }) {
        bail!(
            "the cut-off agent did not re-read the state:\n{}",
            resync.log()
        );
    }
    let resync_s = back.elapsed().as_secs_f64();
    let took_ms = resync
        .log()
        .lines()
        .find(|l| l.contains("re-read the whole state"))
        .and_then(|l| {
            l.split(" in ")
                .nth(1)?
                .split(" ms")
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(f64::NAN);
    Ok(json!({
        "agents": agents + 1, "interfaces": 10_000, "groups": 2_500, "changes": n,
        "seed_s": seeded_s,
        "delay_ms": percentiles(all),
        "rss_mib": percentiles(rss), "peak_mib": percentiles(peak),
        "resync": {"reread_ms": took_ms, "link_back_to_taken_s": resync_s},
    }))
}

pub fn run(quick: bool) -> Result<Value> {
    let (n, agents, changes) = if quick { (10, 20, 3) } else { (40, 99, 8) };
    eprintln!("bench: fleet: three hosts, {n} changes");
    let three = three_hosts(n)?;
    eprintln!("bench: fleet: three hosts: {three}");
    eprintln!(
        "bench: fleet: {} watch-only agents, {changes} changes",
        agents + 1
    );
    let many = watching(agents, changes)?;
    eprintln!("bench: fleet: watching: {many}");
    Ok(json!({"three_hosts": three, "watching": many}))
}

pub fn markdown(f: &Value) -> String {
    let t = &f["three_hosts"];
    let w = &f["watching"];
    let ms = |v: &Value| format!("{:.1}", v.as_f64().unwrap_or(f64::NAN));
    format!(
        "\nFleet (etcd, 3 members; docs/fleet.md). Propagation with three agents enforcing on three hosts, {} changes, to the last host's log line written once its datapath holds the change: from the API call's return (boto3) p50 **{} ms**, p99 **{} ms** (max {} ms; below zero: enforced everywhere before the caller heard back); by host p99 {}; from the API server's commit p50 {} ms, p99 {} ms.\n\n{} watch-only agents over {} interfaces and {} groups, {} changes: delay p50 {} ms, p99 **{} ms** (max {} ms); memory per agent {} MiB resident (p50; max {}), peak {} MiB (max {}); a full resync after a compaction: {} ms to re-read, validate and compute ({:.1} s from the link's return).\n",
        t["changes"],
        ms(&t["every_host_ms"]["p50"]),
        ms(&t["every_host_ms"]["p99"]),
        ms(&t["every_host_ms"]["max"]),
        t["by_host_ms"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(h, v)| format!("{h} {} ms", ms(&v["p99"])))
            .collect::<Vec<_>>()
            .join(", "),
        ms(&t["every_host_from_commit_ms"]["p50"]),
        ms(&t["every_host_from_commit_ms"]["p99"]),
        w["agents"],
        w["interfaces"],
        w["groups"],
        w["changes"],
        ms(&w["delay_ms"]["p50"]),
        ms(&w["delay_ms"]["p99"]),
        ms(&w["delay_ms"]["max"]),
        ms(&w["rss_mib"]["p50"]),
        ms(&w["rss_mib"]["max"]),
        ms(&w["peak_mib"]["p50"]),
        ms(&w["peak_mib"]["max"]),
        ms(&w["resync"]["reread_ms"]),
        w["resync"]["link_back_to_taken_s"]
            .as_f64()
            .unwrap_or(f64::NAN),
    )
}

/// `cargo xtask bench --fleet`: this part alone, written to
/// `target/bench/fleet.json` and printed.
pub fn only(quick: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench creates network namespaces and loads eBPF: run it as root");
    }
    let f = run(quick)?;
    let dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("fleet.json"), serde_json::to_string_pretty(&f)?)?;
    println!("{}", markdown(&f));
    Ok(())
}
