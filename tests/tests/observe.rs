//! What the firewall shows of itself: `/metrics` checked by promtool and
//! moving with traffic; `sg-agent audit` on a file, on the managed state and
//! over the API (a botocore-signed `DescribeAuditFindings`); `sg-agent graph`
//! as DOT and as SVG rendered by Graphviz.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sg_tests::*;

const CONFIG: &str = "security_groups:
  - name: app
    ingress:
      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [10.77.0.0/24]}
      - {ip_protocol: tcp, from_port: 22, to_port: 22, ip_ranges: [0.0.0.0/0]}
  - name: spare
    description: attached nowhere
network_interfaces:
  - {interface: eth0, private_ipv4: [10.77.0.2], groups: [app]}
";

/// `GET /metrics` on the agent's loopback endpoint, from inside `ns`.
fn scrape(ns: &Netns) -> String {
    ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9733").expect("the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    })
    .unwrap()
}

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                || labels.is_empty() && l.starts_with(&format!("{name} "))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

/// `promtool check metrics`: the exposition's format and naming lint.
fn promtool(text: &str) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() {
    if !kernel_available("observe") {
        return;
    }
    let pair = Pair::new("om").unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let agent = Agent::start_with(&pair.server, CONFIG, &["--metrics"]).unwrap();
    let before = scrape(&pair.server);
    promtool(&before);
    let eth0 = [("interface", "eth0"), ("direction", "inbound")];
    let accepted = |t: &str| {
        sample(
            t,
            "sg_packets_total",
            &[eth0[0], eth0[1], ("action", "accept")],
        )
    };
    let rejected = |t: &str| {
        sample(
            t,
            "sg_packets_total",
            &[eth0[0], eth0[1], ("action", "reject")],
        )
    };
    let no_rule = |t: &str| {
        sample(
            t,
            "sg_drops_total",
            &[eth0[0], eth0[1], ("reason", "no_rule")],
        )
    };
    let created = |t: &str| sample(t, "sg_flows_created_total", &eth0);
    let available = sample(&before, "conntrack_allowance_available", &[]);
    assert!(available > 1000.0, "{available}");
    assert_eq!(
        sample(&before, "conntrack_allowance_exceeded_total", &[]),
        0.0
    );
    assert!(sample(&before, "sg_policy_applies_total", &[]) >= 1.0);

    // One allowed connection and two denied probes.
    assert_eq!(probe_server(&pair, 8080), Seen::Pass);
    for _ in 0..2 {
        assert_eq!(
            tcp_probe(
                &pair.client,
                addr(SERVER_V4, 9000),
                Duration::from_millis(300)
            )
            .unwrap(),
            Seen::Dropped
        );
    }
    let after = scrape(&pair.server);
    promtool(&after);
    assert!(accepted(&after) >= accepted(&before) + 3.0, "{after}");
    assert!(rejected(&after) >= rejected(&before) + 2.0, "{after}");
    assert!(no_rule(&after) >= no_rule(&before) + 2.0);
    assert_eq!(created(&after), created(&before) + 1.0);
    // The agent's counters and the datapath's say the same.
    assert_eq!(
        rejected(&after) as u64,
        agent.counter("eth0", "inbound/rejected_packets")
    );
    assert!(after.contains("interface_id=\"eni-"), "{after}");
}

/// Runs `sg-agent ARGS`; its exit code and standard output.
fn agent_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(agent_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The (kind, guardrail) pairs of a JSON report, sorted.
fn kinds(report: &Value) -> Vec<(String, String)> {
    let mut v: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["guardrail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `DescribeAuditFindings`, signed by botocore with `key`; the findings'
/// (kind, guardrail) pairs, sorted, or the error code.
fn api_findings(ns: &Netns, key: Key) -> Result<Vec<(String, String)>, String> {
    let script = format!(
        "{SIGNED_PY}\nimport xml.etree.ElementTree as ET\nxml = send('Action=DescribeAuditFindings&Version=2016-11-15', {:?}, {:?})\nif err(xml) != 'OK':\n    print(json.dumps({{'error': err(xml)}}))\nelse:\n    ns = {{'e': 'http://ec2.amazonaws.com/doc/2016-11-15/'}}\n    root = ET.fromstring(xml)\n    items = root.findall('e:findingSet/e:item', ns)\n    print(json.dumps({{'findings': [[i.findtext('e:kind', '', ns), i.findtext('e:guardrail', '', ns)] for i in items], 'warning': root.findtext('e:warning', '', ns)}}))\n",
        key.id, key.secret
    );
    let v = boto3(ns, key, &script).unwrap();
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    let mut out: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn audit_reports_the_same_on_a_file_the_managed_state_and_the_api() {
    if !kernel_available("observe") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let file = dir.0.join("sg.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    let f = file.display().to_string();
    let want = [("guardrail", "ssh-from-anywhere"), ("unused-group", "")]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec();

    // On the file: the table and JSON; exit 2 gates at critical, not below
    // --fail-on never.
    let (code, json) = agent_cli(&["audit", "-c", &f, "--json"]);
    assert_eq!(code, 2, "{json}");
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(kinds(&report), want);
    assert_eq!(report["summary"]["critical"], 1);
    assert_eq!(agent_cli(&["audit", "-c", &f, "--fail-on", "never"]).0, 0);
    let (code, table) = agent_cli(&["audit", "-c", &f, "--fail-on", "critical"]);
    assert_eq!(code, 2);
    assert!(table.starts_with("SEVERITY  FINDING"), "{table}");
    assert!(table.contains("guardrail:ssh-from-anywhere"), "{table}");

    // The managed state, while an agent enforces and serves it.
    let pair = Pair::new("oa").unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, CONFIG).unwrap();
    let s = state.0.display().to_string();
    let (code, json) = agent_cli(&["audit", "--managed", "--state-dir", &s, "--json"]);
    assert_eq!(code, 2, "{json}");
    assert_eq!(kinds(&serde_json::from_str(&json).unwrap()), want);
    // Over the API, for a reader as for an admin; not for a stranger.
    assert_eq!(api_findings(&pair.server, READER), Ok(want.clone()));
    assert_eq!(
        api_findings(&pair.server, STRANGER),
        Err("AuthFailure".to_string())
    );

    // Revoking the SSH rule through the CLI clears the guardrail everywhere.
    let app = group_id(&pair.server, "app");
    aws(
        &pair.server,
        ADMIN,
        &[
            "revoke-security-group-ingress",
            "--group-id",
            &app,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "0.0.0.0/0",
        ],
    )
    .ok();
    let left = vec![("unused-group".to_string(), String::new())];
    assert_eq!(api_findings(&pair.server, ADMIN), Ok(left.clone()));
    let (code, json) = agent_cli(&["audit", "--managed", "--state-dir", &s, "--json"]);
    assert_eq!(kinds(&serde_json::from_str(&json).unwrap()), left);
    // An unused group is info: below the default --fail-on warning.
    assert_eq!(code, 0);
}

#[test]
fn graph_draws_groups_references_and_interfaces() {
    let dir = TempDir::new().unwrap();
    let file = dir.0.join("sg.yaml");
    std::fs::write(
        &file,
        "prefix_lists:
  - {name: admins, address_family: IPv4, max_entries: 5, entries: [{cidr: 198.51.100.0/24}]}
security_groups:
  - name: web
    ingress:
      - {ip_protocol: tcp, from_port: 443, to_port: 443, ip_ranges: [0.0.0.0/0]}
      - {ip_protocol: tcp, from_port: 22, to_port: 22, prefix_list_ids: [admins]}
  - name: app
    ingress:
      - {ip_protocol: tcp, from_port: 8080, to_port: 8080, user_id_group_pairs: [web]}
network_interfaces:
  - {interface: web0, host: h1, private_ipv4: [10.0.0.10], groups: [web]}
  - {interface: app0, host: h2, private_ipv4: [10.0.0.20], groups: [app]}
",
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, dot) = agent_cli(&["graph", "-c", &f]);
    assert_eq!(code, 0);
    let id = |name: &str| {
        let d = sg_agent::source::file::load(Path::new(&file), None).unwrap();
        d.groups.iter().find(|g| g.name == name).unwrap().id.clone()
    };
    let (web, app) = (id("web"), id("app"));
    assert!(dot.starts_with("digraph sg {"), "{dot}");
    // The tier: web's members reach app on 8080; anywhere reaches web on
    // 443; the admins list on 22; each group to its interface, by host.
    assert!(
        dot.contains(&format!("\"{web}\" -> \"{app}\" [label=\"tcp/8080\"]")),
        "{dot}"
    );
    assert!(
        dot.contains(&format!("\"0.0.0.0/0\" -> \"{web}\" [label=\"tcp/443\"]")),
        "{dot}"
    );
    assert!(dot.contains("label=\"host h1\""), "{dot}");
    assert!(dot.contains("shape=folder, label=\"admins"), "{dot}");
    let (code, svg) = agent_cli(&["graph", "-c", &f, "--svg"]);
    assert_eq!(code, 0);
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    for text in ["web", "app", "tcp/8080", "host h2", "admins"] {
        assert!(
            svg.contains(&format!(">{text}<")),
            "{text} not drawn:\n{svg}"
        );
    }
}

/// The console's pages as headless Chromium shows them (tests/src/cdp.py),
/// each saved as a screenshot under `target/tmp/console/`.
fn browse(ns: &Netns, key: Key, pages: &[(&str, &str)]) -> Value {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&out).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/cdp.py");
    let mut c = ns.command("/usr/bin/python3");
    c.arg(&script)
        .arg("http://127.0.0.1:9734")
        .args([key.id, key.secret])
        .arg(&out)
        .args(pages.iter().map(|(n, p)| format!("{n}={p}")));
    let v: Value =
        serde_json::from_str(&sh(&mut c).expect("chromium over the DevTools protocol")).unwrap();
    for (name, _) in pages {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 2000,
            "{name}.png"
        );
    }
    v
}

fn rows<'a>(page: &'a Value, table: &str) -> &'a Vec<Value> {
    page["tables"][table]
        .as_array()
        .unwrap_or_else(|| panic!("no table {table} in {page}"))
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn the_console_shows_in_chromium_what_the_api_says() {
    if !kernel_available("observe") {
        return;
    }
    let pair = Pair::new("oc").unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let logs = TempDir::new().unwrap();
    let settings = logs.0.join("flow-logs.yaml");
    let log = logs.0.join("default.log");
    std::fs::write(
        &settings,
        format!(
            "flow_logs:\n  - {{destination: {}, max_aggregation_interval: 60}}\n",
            log.display()
        ),
    )
    .unwrap();
    let state = TempDir::new().unwrap();
    let s = settings.display().to_string();
    let _agent = Agent::start_managed_with(
        &pair.server,
        &state.0,
        CONFIG,
        &["--api", "127.0.0.1:8733", "--console", "--flow-logs", &s],
    )
    .unwrap();
    // Without a key, or with a wrong secret: 401.
    let status = |auth: &str| {
        let mut c = pair.server.command("/usr/bin/python3");
        c.arg("-c").arg(format!(
            "import base64, urllib.request\nh = {{'Authorization': 'Basic ' + base64.b64encode({auth:?}.encode()).decode()}} if {auth:?} else {{}}\ntry:\n    print(urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:9734/groups', headers=h)).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)"
        ));
        sh(&mut c).unwrap().trim().to_string()
    };
    assert_eq!(status(""), "401");
    assert_eq!(status(&format!("{}:not-the-secret", ADMIN.id)), "401");
    assert_eq!(status(&format!("{}:{}", READER.id, READER.secret)), "200");

    // Traffic for the flow log: an allowed connection, a denied probe; the
    // records appear when the minute's window closes.
    assert_eq!(probe_server(&pair, 8080), Seen::Pass);
    assert_eq!(
        tcp_probe(
            &pair.client,
            addr(SERVER_V4, 9000),
            Duration::from_millis(300)
        )
        .unwrap(),
        Seen::Dropped
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(75), || read().contains(" REJECT ")),
        "no flow records"
    );
    let file_before = read();
    let seen = browse(
        &pair.server,
        READER,
        &[
            ("overview", "/"),
            ("groups", "/groups"),
            ("interfaces", "/interfaces"),
            ("tiers", "/tiers"),
            ("flows", "/flows"),
            ("rejected-9000", "/flows?action=REJECT&port=9000"),
            ("audit", "/audit"),
        ],
    );

    // Groups and their rules: the ids describe-security-group-rules gives.
    let described = aws(&pair.server, ADMIN, &["describe-security-groups"]).ok();
    let mut want: Vec<String> = described["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GroupId"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let groups = rows(&seen["groups"], "groups");
    let mut shown: Vec<String> = groups
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    shown.sort();
    assert_eq!(shown, want);
    let rules = aws(&pair.server, ADMIN, &["describe-security-group-rules"]).ok();
    for g in groups {
        let id = g["id"].as_str().unwrap();
        let mut of: Vec<String> = rules["SecurityGroupRules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["GroupId"] == id)
            .map(|r| r["SecurityGroupRuleId"].as_str().unwrap().to_string())
            .collect();
        of.sort();
        assert_eq!(strings(&g["rules"]), of, "the rules of {id}");
    }
    // Interfaces and their groups, as describe-network-interfaces.
    let enis = aws(&pair.server, ADMIN, &["describe-network-interfaces"]).ok();
    let shown = rows(&seen["interfaces"], "interfaces");
    assert_eq!(
        shown.len(),
        enis["NetworkInterfaces"].as_array().unwrap().len()
    );
    for e in enis["NetworkInterfaces"].as_array().unwrap() {
        let id = e["NetworkInterfaceId"].as_str().unwrap();
        let row = shown
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not shown"));
        let mut g: Vec<String> = e["Groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["GroupId"].as_str().unwrap().to_string())
            .collect();
        g.sort();
        assert_eq!(strings(&row["groups"]), g);
    }
    // The flow records: the ones the flow log file holds, field by field.
    // (A window that closed while the browser looked may be in either.)
    let parse = |text: &str| -> std::collections::BTreeSet<Vec<String>> {
        text.lines()
            .map(|l| l.split(' ').skip(2).map(String::from).collect())
            .collect()
    };
    let (before, after) = (parse(&file_before), parse(&read()));
    let file = if flow_rows(&seen, "flows") == before {
        before
    } else {
        after
    };
    assert_eq!(flow_rows(&seen, "flows"), file);
    let rejected = flow_rows(&seen, "rejected-9000");
    assert!(!rejected.is_empty());
    assert_eq!(
        rejected,
        file.iter()
            .filter(|r| r[10] == "REJECT" && (r[3] == "9000" || r[4] == "9000"))
            .cloned()
            .collect()
    );
    // The audit findings, as DescribeAuditFindings gives them.
    let mut audit: Vec<(String, String)> = rows(&seen["audit"], "findings")
        .iter()
        .map(|r| {
            let kind = r["cells"][1].as_str().unwrap();
            let (k, g) = kind.split_once(": ").unwrap_or((kind, ""));
            (k.to_string(), g.to_string())
        })
        .collect();
    audit.sort();
    assert_eq!(Ok(audit), api_findings(&pair.server, READER));
    // The tiers: Graphviz's SVG, inline, naming the groups.
    let texts = strings(&seen["tiers"]["svg"]);
    assert!(
        texts.iter().any(|t| t == "app") && texts.iter().any(|t| t == "spare"),
        "{texts:?}"
    );
    // The allowance: available + in use = the table's size.
    let o = rows(&seen["overview"], "allowance");
    let n = |i: usize| o[i]["cells"][1].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(n(0) + n(1), n(2));
    assert_eq!(n(2), 262_144);
}

/// The flow records a page shows, as the file's fields after the account.
fn flow_rows(seen: &Value, page: &str) -> std::collections::BTreeSet<Vec<String>> {
    rows(&seen[page], "flows")
        .iter()
        .map(|r| strings_in_order(&r["cells"]))
        .collect()
}

fn strings_in_order(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}
