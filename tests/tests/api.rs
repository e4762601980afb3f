//! The EC2 API driven by real clients (the AWS CLI, boto3), against an agent
//! enforcing between two namespaces: each acknowledged change is in the
//! kernel when the call returns; references and prefix lists are followed;
//! AWS's error codes come back; refused and forged calls change nothing and
//! are in the audit trail.

use std::time::Duration;

use serde_json::Value;
use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// `app` on the server's eth0; `clients` on an interface of another host
/// (absent here, so only its address matters), holding the client's address.
const SEED: &str = r#"
security_groups:
  - {name: app, description: the server}
  - {name: clients, description: who may call}
network_interfaces:
  - {interface: eth0, private_ipv4: [10.77.0.2], groups: [app]}
  - {interface: ghost0, id: eni-00000000000000c11, private_ipv4: [10.77.0.1], groups: [clients], optional: true}
"#;

fn group_id(ns: &Netns, name: &str) -> String {
    let v = aws(
        ns,
        ADMIN,
        &[
            "describe-security-groups",
            "--filters",
            &format!("Name=group-name,Values={name}"),
        ],
    )
    .ok();
    v["SecurityGroups"][0]["GroupId"]
        .as_str()
        .unwrap_or_else(|| panic!("no group {name}: {v}"))
        .to_string()
}

fn probe(pair: &Pair, port: u16) -> Seen {
    tcp_probe(&pair.client, addr(SERVER_V4, port), T).unwrap()
}

#[test]
fn aws_cli_changes_are_in_the_kernel_when_the_call_returns() {
    if !kernel_available("aws_cli_changes_are_in_the_kernel_when_the_call_returns") {
        return;
    }
    let pair = Pair::new("apicli").unwrap();
    for port in [8080, 9090] {
        tcp_echo_server(&pair.server, addr(SERVER_V4, port)).unwrap();
    }
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let (app, clients) = (group_id(ns, "app"), group_id(ns, "clients"));
    assert_eq!(probe(&pair, 8080), Seen::Dropped, "no rule yet");

    // Authorize: the answer comes once the kernel enforces it.
    let r = aws(ns, ADMIN, &["authorize-security-group-ingress", "--group-id", &app, "--ip-permissions", "IpProtocol=tcp,FromPort=8080,ToPort=8080,IpRanges=[{CidrIp=10.77.0.0/24,Description=lan}]"]).ok();
    let rule = r["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r["SecurityGroupRules"][0]["CidrIpv4"], "10.77.0.0/24");
    assert_eq!(
        probe(&pair, 8080),
        Seen::Pass,
        "allowed as soon as the call returned"
    );

    // Revoke by rule id: new connections denied, a tracked one goes on.
    let stream = Stream::start(&pair.client, addr(SERVER_V4, 8080)).unwrap();
    aws(
        ns,
        ADMIN,
        &[
            "revoke-security-group-ingress",
            "--group-id",
            &app,
            "--security-group-rule-ids",
            &rule,
        ],
    )
    .ok();
    assert_eq!(
        probe(&pair, 8080),
        Seen::Dropped,
        "denied as soon as the revoke returned"
    );
    let before = stream.echoed();
    assert!(
        wait_until(T, || stream.echoed() > before + 65536),
        "the tracked flow continues"
    );
    stream.finish().expect("the tracked flow is not cut");

    // A group reference follows its members.
    aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--ip-permissions",
            &format!(
                "IpProtocol=tcp,FromPort=8080,ToPort=8080,UserIdGroupPairs=[{{GroupId={clients}}}]"
            ),
        ],
    )
    .ok();
    assert_eq!(
        probe(&pair, 8080),
        Seen::Pass,
        "the client is a member of clients"
    );
    let default = group_id(ns, "default");
    aws(
        ns,
        ADMIN,
        &[
            "modify-network-interface-attribute",
            "--network-interface-id",
            "eni-00000000000000c11",
            "--groups",
            &default,
        ],
    )
    .ok();
    assert_eq!(probe(&pair, 8080), Seen::Dropped, "no longer a member");

    // A prefix list follows its entries; its version guards changes.
    let pl = aws(
        ns,
        ADMIN,
        &[
            "create-managed-prefix-list",
            "--prefix-list-name",
            "callers",
            "--max-entries",
            "5",
            "--address-family",
            "IPv4",
            "--entries",
            "Cidr=10.77.0.1/32,Description=client",
        ],
    )
    .ok();
    let pl = pl["PrefixList"]["PrefixListId"]
        .as_str()
        .unwrap()
        .to_string();
    aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--ip-permissions",
            &format!(
                "IpProtocol=tcp,FromPort=9090,ToPort=9090,PrefixListIds=[{{PrefixListId={pl}}}]"
            ),
        ],
    )
    .ok();
    assert_eq!(probe(&pair, 9090), Seen::Pass);
    let m = aws(
        ns,
        ADMIN,
        &[
            "modify-managed-prefix-list",
            "--prefix-list-id",
            &pl,
            "--current-version",
            "1",
            "--remove-entries",
            "Cidr=10.77.0.1/32",
        ],
    )
    .ok();
    assert_eq!(m["PrefixList"]["Version"], 2);
    assert_eq!(probe(&pair, 9090), Seen::Dropped, "the entry is gone");
    let stale = aws(
        ns,
        ADMIN,
        &[
            "modify-managed-prefix-list",
            "--prefix-list-id",
            &pl,
            "--current-version",
            "1",
            "--add-entries",
            "Cidr=0.0.0.0/0",
        ],
    );
    assert_eq!(stale.code(), "PrefixListVersionMismatch");
    assert_eq!(
        probe(&pair, 9090),
        Seen::Dropped,
        "a refused change changes nothing"
    );

    // The audit trail has every change, who made it, what it answered.
    let ev = lookup_events(
        &agent.state,
        &["--event-name", "AuthorizeSecurityGroupIngress"],
    );
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| e["userIdentity"]["accessKeyId"] == ADMIN.id
                && e["eventSource"] == "ec2.amazonaws.com")
    );
    assert_eq!(
        ev[0]["responseElements"]["SecurityGroupRules"][0]["SecurityGroupRuleId"],
        rule.as_str()
    );
    let by_rule = lookup_events(&agent.state, &["--resource", &rule]);
    assert_eq!(by_rule.len(), 2, "authorized, then revoked: {by_rule:?}");
    let refused = lookup_events(&agent.state, &["--event-name", "ModifyManagedPrefixList"]);
    assert_eq!(
        refused.last().unwrap()["errorCode"],
        "PrefixListVersionMismatch"
    );
}

#[test]
fn boto3_pages_filters_and_gets_awss_error_codes() {
    if !kernel_available("boto3_pages_filters_and_gets_awss_error_codes") {
        return;
    }
    let pair = Pair::new("apiboto").unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let v = boto3(&pair.server, ADMIN, r#"
c = ec2()
ids = [c.create_security_group(GroupName=f't-{i}', Description='paged', TagSpecifications=[{'ResourceType': 'security-group', 'Tags': [{'Key': 'Name', 'Value': f't-{i}'}]}])['GroupId'] for i in range(7)]
p1 = c.describe_security_groups(MaxResults=5)
p2 = c.describe_security_groups(MaxResults=5, NextToken=p1['NextToken'])
everything = c.describe_security_groups()
tagged = c.describe_security_groups(Filters=[{'Name': 'tag:Name', 'Values': ['t-3']}])['SecurityGroups']
c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.9.0.0/16'}]}])
by_port = c.describe_security_groups(Filters=[{'Name': 'ip-permission.from-port', 'Values': ['53']}, {'Name': 'ip-permission.protocol', 'Values': ['udp']}])['SecurityGroups']
rules = c.describe_security_group_rules(Filters=[{'Name': 'group-id', 'Values': [ids[0]]}])['SecurityGroupRules']
app = c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['app']}])['SecurityGroups'][0]['GroupId']
default = c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['default']}])['SecurityGroups'][0]['GroupId']
eni = c.describe_network_interfaces(Filters=[{'Name': 'tag:sg:interface', 'Values': ['eth0']}])['NetworkInterfaces'][0]['NetworkInterfaceId']
vpc = c.create_vpc(CidrBlock='10.50.0.0/16')['Vpc']['VpcId']
other = c.create_security_group(GroupName='far', Description='in another VPC', VpcId=vpc)['GroupId']
perm = [{'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 2, 'IpRanges': [{'CidrIp': '10.1.0.0/16'}]}]
sixty_one = [{'IpProtocol': 'tcp', 'FromPort': 7, 'ToPort': 7, 'IpRanges': [{'CidrIp': f'10.{i}.0.0/16'} for i in range(61)]}]
codes = {
  'InvalidGroup.NotFound': code(lambda: c.describe_security_groups(GroupIds=['sg-0123456789abcdef0'])),
  'InvalidGroup.Duplicate': code(lambda: c.create_security_group(GroupName='t-1', Description='again')),
  'InvalidPermission.Duplicate': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.9.0.0/16'}]}])),
  'InvalidPermission.NotFound': code(lambda: c.revoke_security_group_ingress(GroupId=other, IpPermissions=perm)),
  'CannotDelete': code(lambda: c.delete_security_group(GroupId=default)),
  'DependencyViolation': code(lambda: c.delete_security_group(GroupId=app)),
  'RulesPerSecurityGroupLimitExceeded': code(lambda: c.authorize_security_group_ingress(GroupId=ids[1], IpPermissions=sixty_one)),
  'SecurityGroupsPerInterfaceLimitExceeded': code(lambda: c.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=ids[:6])),
  'InvalidParameterValue': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 5, 'ToPort': 5, 'IpRanges': [{'CidrIp': '10.0.0.0/33'}]}])),
  'DryRunOperation': code(lambda: c.delete_security_group(GroupId=ids[6], DryRun=True)),
  'InvalidAction': code(lambda: c.describe_instances()),
  'InvalidVpcID.NotFound': code(lambda: c.create_security_group(GroupName='x', Description='x', VpcId='vpc-0123456789abcdef0')),
  'InvalidSecurityGroupRuleId.NotFound': code(lambda: c.revoke_security_group_ingress(GroupId=ids[0], SecurityGroupRuleIds=['sgr-0123456789abcdef0'])),
  'InvalidPrefixListID.NotFound': code(lambda: c.get_managed_prefix_list_entries(PrefixListId='pl-0123456789abcdef0')),
  'MissingParameter': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0])),
}
def message(f):
    try:
        f()
        return 'OK'
    except botocore.exceptions.ClientError as e:
        return e.response['Error']['Message']
where = message(lambda: c.authorize_security_group_ingress(GroupId=ids[2], IpPermissions=[perm[0], {'IpProtocol': 'tcp', 'FromPort': 5, 'ToPort': 5, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}, {'CidrIp': '10.0.0.0/33'}]}]))
still = [g['GroupId'] for g in c.describe_security_groups()['SecurityGroups']]
print(json.dumps({'p1': len(p1['SecurityGroups']), 'next': 'NextToken' in p1, 'p2': len(p2['SecurityGroups']), 'p2next': 'NextToken' in p2,
  'all': len(everything['SecurityGroups']), 'allnext': 'NextToken' in everything, 'tagged': [g['GroupName'] for g in tagged],
  'by_port': [g['GroupId'] for g in by_port], 'rules': len(rules), 'ids': ids, 'codes': codes, 'dry_run_kept': ids[6] in still, 'where': where}))
"#).unwrap();
    // default, app, clients, seven t-N: ten groups, paged 5 + 5.
    assert_eq!(
        (v["p1"].as_u64(), v["next"].as_bool()),
        (Some(5), Some(true)),
        "{v}"
    );
    assert_eq!(
        (v["p2"].as_u64(), v["p2next"].as_bool()),
        (Some(5), Some(false)),
        "{v}"
    );
    assert_eq!(
        (v["all"].as_u64(), v["allnext"].as_bool()),
        (Some(10), Some(false)),
        "pages only when asked: {v}"
    );
    assert_eq!(v["tagged"], serde_json::json!(["t-3"]));
    assert_eq!(v["by_port"], serde_json::json!([v["ids"][0]]));
    assert_eq!(
        v["rules"], 3,
        "the new rule and the default egress, IPv4 and IPv6: {v}"
    );
    for (expected, got) in v["codes"].as_object().unwrap() {
        assert_eq!(got, expected, "{v}");
    }
    assert_eq!(v["dry_run_kept"], true, "a dry run changes nothing");
    let at = v["where"].as_str().unwrap();
    assert!(
        at.starts_with("IpPermissions.2.IpRanges.2.CidrIp: "),
        "the parameter is named: {at}"
    );
}

/// A request signed with botocore's own signer, then sent as given.
const RAW: &str = r#"
import urllib.request, datetime, botocore.auth as A
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
def send(body, key, secret, when=None, sent=None):
    req = AWSRequest(method='POST', url=ENDPOINT + '/', data=body, headers={'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8'})
    real = A.datetime
    if when:
        class F(datetime.datetime):
            @classmethod
            def utcnow(cls): return when
        A.datetime = type('m', (), {'datetime': F})
    try:
        A.SigV4Auth(Credentials(key, secret), 'ec2', 'us-east-1').add_auth(req)
    finally:
        A.datetime = real
    r = urllib.request.Request(ENDPOINT + '/', data=(sent or body).encode(), headers=dict(req.headers.items()), method='POST')
    try:
        return urllib.request.urlopen(r).read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
def err(xml):
    return xml.split('<Code>')[1].split('</Code>')[0] if '<Code>' in xml else 'OK'
"#;

#[test]
fn forged_and_unauthorised_calls_are_refused_audited_and_change_nothing() {
    if !kernel_available("forged_and_unauthorised_calls_are_refused_audited_and_change_nothing") {
        return;
    }
    let pair = Pair::new("apisig").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    let before = aws(ns, READER, &["describe-security-groups"]).ok();
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    let open = format!(
        "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId={app}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=9000&IpPermissions.1.ToPort=9000&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0"
    );
    let script = format!(
        "{RAW}\nbody = {open:?}\nprint(json.dumps({{\n 'wrong_secret': err(send(body, {admin:?}, 'not-the-secret-at-all-000000')),\n 'unknown_key': err(send(body, {stranger:?}, {stranger_s:?})),\n 'stale': err(send(body, {admin:?}, {admin_s:?}, when=datetime.datetime.utcnow() - datetime.timedelta(minutes=20))),\n 'tampered': err(send(body.replace('9000', '8000'), {admin:?}, {admin_s:?}, sent=body)),\n 'read_only': err(send(body, {reader:?}, {reader_s:?})),\n 'unsigned': err(send_unsigned(body)),\n}}))",
        admin = ADMIN.id,
        admin_s = ADMIN.secret,
        stranger = STRANGER.id,
        stranger_s = STRANGER.secret,
        reader = READER.id,
        reader_s = READER.secret,
    );
    let script = format!(
        "def send_unsigned(body):\n    import urllib.request\n    try:\n        return urllib.request.urlopen(urllib.request.Request(ENDPOINT + '/', data=body.encode(), method='POST', headers={{'Content-Type': 'application/x-www-form-urlencoded'}})).read().decode()\n    except urllib.error.HTTPError as e:\n        return e.read().decode()\n{script}"
    );
    let v = boto3(ns, ADMIN, &script).unwrap();
    assert_eq!(v["wrong_secret"], "SignatureDoesNotMatch", "{v}");
    assert_eq!(v["unknown_key"], "AuthFailure", "{v}");
    assert_eq!(v["stale"], "RequestExpired", "{v}");
    assert_eq!(v["tampered"], "SignatureDoesNotMatch", "{v}");
    assert_eq!(v["read_only"], "UnauthorizedOperation", "{v}");
    assert_eq!(v["unsigned"], "MissingAuthenticationToken", "{v}");
    assert_eq!(
        aws(ns, READER, &["describe-security-groups"]).ok(),
        before,
        "the state is unchanged"
    );
    // The probes go on a little after the last refusal.
    std::thread::sleep(Duration::from_millis(500));
    let (tries, passed) = probes.finish();
    assert!(tries > 5, "the probe loop ran ({tries})");
    assert_eq!(
        passed, 0,
        "no forged call opened tcp/9000, even for a moment"
    );
    let refused: Vec<Value> = lookup_events(
        &agent.state,
        &["--event-name", "AuthorizeSecurityGroupIngress"],
    );
    let codes: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["errorCode"].as_str())
        .collect();
    for c in [
        "SignatureDoesNotMatch",
        "AuthFailure",
        "RequestExpired",
        "UnauthorizedOperation",
        "MissingAuthenticationToken",
    ] {
        assert!(codes.contains(&c), "{c} audited: {codes:?}");
    }
    assert!(
        refused.iter().all(|e| e["errorCode"].is_string()),
        "nothing was accepted: {refused:?}"
    );
}

#[test]
fn file_mode_serves_reads_and_refuses_changes() {
    if !kernel_available("file_mode_serves_reads_and_refuses_changes") {
        return;
    }
    let pair = Pair::new("apifile").unwrap();
    let dir = TempDir::new().unwrap();
    let creds = write_credentials(&dir.0).unwrap().display().to_string();
    let agent = Agent::start_in(
        &pair.server,
        dir,
        SEED,
        &["--api", "127.0.0.1:8733", "--api-credentials", &creds],
    )
    .unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    let r = aws(
        ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &app,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "0.0.0.0/0",
        ],
    );
    assert_eq!(r.code(), "UnsupportedOperation");
    assert_eq!(probe(&pair, 22), Seen::Dropped);
    // A reload taken is a record of the trail, saying what changed.
    let grown = SEED.replace(
        "{name: clients, description: who may call}",
        "{name: clients, description: who may call}\n  - {name: extra, description: new}",
    );
    assert!(agent.reload(&grown).unwrap());
    let ev = lookup_events(&agent.state, &["--event-name", "ApplyConfiguration"]);
    let extra = group_id(ns, "extra");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0]["responseElements"]["changed"]["security_groups"]["added"],
        serde_json::json!([extra])
    );
    let refused = lookup_events(
        &agent.state,
        &["--event-name", "AuthorizeSecurityGroupIngress"],
    );
    assert_eq!(refused[0]["errorCode"], "UnsupportedOperation");
}

#[test]
fn apply_f_replaces_the_managed_state_through_the_same_validation() {
    if !kernel_available("apply_f_replaces_the_managed_state_through_the_same_validation") {
        return;
    }
    let pair = Pair::new("apiapply").unwrap();
    tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let apply = |text: &str| {
        let f = state.0.join("apply.yaml");
        std::fs::write(&f, text).unwrap();
        ns.command(agent_bin())
            .args(["apply", "-f"])
            .arg(&f)
            .output()
            .unwrap()
    };
    let app_with = |cidr: &str| {
        SEED.replace(
            "{name: app, description: the server}",
            &format!("{{name: app, description: the server, ingress: [{{ip_protocol: tcp, from_port: 8080, to_port: 8080, ip_ranges: [{cidr}]}}]}}"),
        )
    };
    // A broken file is refused whole; the state in force stays.
    let bad = apply(&app_with("10.77.0.0/33"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid IPv4 CIDR"),
        "{bad:?}"
    );
    assert_eq!(probe(&pair, 8080), Seen::Dropped);
    let good = apply(&app_with("10.77.0.0/24"));
    assert!(good.status.success(), "{good:?}");
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("security_groups changed"),
        "{good:?}"
    );
    assert_eq!(
        probe(&pair, 8080),
        Seen::Pass,
        "enforced when apply returns"
    );
    let app = group_id(ns, "app");
    let rules = aws(
        ns,
        READER,
        &[
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={app}"),
        ],
    )
    .ok();
    assert!(
        rules["SecurityGroupRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["FromPort"] == 8080),
        "{rules}"
    );
    assert_eq!(
        lookup_events(&state.0, &["--event-name", "ApplyConfiguration"]).len(),
        2,
        "the seed, then the apply"
    );
}

#[test]
fn a_crash_in_a_burst_of_changes_loses_nothing_acknowledged() {
    if !kernel_available("a_crash_in_a_burst_of_changes_loses_nothing_acknowledged") {
        return;
    }
    let pair = Pair::new("apicrash").unwrap();
    let state = TempDir::new().unwrap();
    let mut agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    // Four clients authorize ports 20000.. as fast as they are answered,
    // printing each acknowledged port at once.
    let script = format!(
        r#"
import threading, sys
def worker(t):
    c = ec2()
    for i in range(t, 4000, 4):
        p = 20000 + i
        try:
            c.authorize_security_group_ingress(GroupId={app:?}, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': p, 'ToPort': p, 'IpRanges': [{{'CidrIp': '10.77.0.0/24'}}]}}])
        except Exception:
            return
        print(p, flush=True)
ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print('null')
"#
    );
    let burst = boto3_command(ns, ADMIN, &script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = burst.wait_with_output().unwrap();
    let acked: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(
        acked.len() >= 4,
        "the burst was under way when the agent died ({} acknowledged)",
        acked.len()
    );

    let _again = Agent::start_managed(ns, &state.0, SEED).unwrap();
    let rules = aws(
        ns,
        READER,
        &[
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={app}"),
        ],
    )
    .ok();
    let stored: std::collections::BTreeSet<u16> = rules["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsEgress"] == false)
        .filter_map(|r| r["FromPort"].as_u64().map(|p| p as u16))
        .collect();
    for p in &acked {
        assert!(stored.contains(p), "acknowledged port {p} was lost");
    }
    // At most one change per client was committed and not yet answered.
    let unacked: Vec<&u16> = stored.iter().filter(|p| !acked.contains(p)).collect();
    assert!(
        unacked.len() <= 4,
        "committed but never acknowledged: {unacked:?}"
    );
    // Every stored change has its record, made in the same transaction.
    let ok = lookup_events(
        &state.0,
        &[
            "--event-name",
            "AuthorizeSecurityGroupIngress",
            "--max-results",
            "10000",
        ],
    )
    .into_iter()
    .filter(|e| e["errorCode"].is_null())
    .count();
    assert_eq!(ok, stored.len(), "one audit record per committed change");
    // The kernel enforces exactly the stored state.
    let last = *stored.iter().max().unwrap();
    let never = last + 1;
    for (port, want) in [
        (acked[0], Seen::Pass),
        (last, Seen::Pass),
        (never, Seen::Dropped),
    ] {
        tcp_echo_server(ns, addr(SERVER_V4, port)).unwrap();
        assert_eq!(probe(&pair, port), want, "port {port} after the restart");
    }
}

#[test]
fn beyond_loopback_the_api_speaks_tls_only() {
    if !kernel_available("beyond_loopback_the_api_speaks_tls_only") {
        return;
    }
    let pair = Pair::new("apitls").unwrap();
    let dir = TempDir::new().unwrap();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    sh(std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sg-api",
        ])
        .args(["-addext", &format!("subjectAltName=IP:{SERVER_V4}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))
    .unwrap();
    let listen = format!("{SERVER_V4}:8733");
    // Without TLS, an address beyond loopback is refused at start.
    let state = TempDir::new().unwrap();
    let refused = Agent::start_managed_with(&pair.server, &state.0, SEED, &["--api", &listen])
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("needs TLS"), "{refused}");
    // The server's group lets the API's port in from the client.
    let seed = SEED.replace(
        "{name: app, description: the server}",
        "{name: app, description: the server, ingress: [{ip_protocol: tcp, from_port: 8733, to_port: 8733, ip_ranges: [10.77.0.0/24]}]}",
    );
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let _agent = Agent::start_managed_with(
        &pair.server,
        &state.0,
        &seed,
        &["--api", &listen, "--api-tls-cert", &c, "--api-tls-key", &k],
    )
    .unwrap();
    let call = |endpoint: &str| {
        let mut cmd = pair.client.command("/usr/bin/aws");
        cmd.env("AWS_ACCESS_KEY_ID", ADMIN.id)
            .env("AWS_SECRET_ACCESS_KEY", ADMIN.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args([
                "--endpoint-url",
                endpoint,
                "--ca-bundle",
                &c,
                "--cli-read-timeout",
                "5",
                "--cli-connect-timeout",
                "5",
            ])
            .args(["ec2", "describe-vpcs", "--output", "json"]);
        cmd.output().unwrap()
    };
    let ok = call(&format!("https://{listen}"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"IsDefault\": true"));
    let plain = call(&format!("http://{listen}"));
    assert!(!plain.status.success(), "plain HTTP is not answered");
}

#[test]
fn adversarial_bodies_get_awss_errors_never_a_crash() {
    if !kernel_available("adversarial_bodies_get_awss_errors_never_a_crash") {
        return;
    }
    let pair = Pair::new("apifuzz").unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let script = format!(
        r#"{RAW}
import random
random.seed(11)
K, S = {k:?}, {s:?}
def status(body):
    req = AWSRequest(method='POST', url=ENDPOINT + '/', data=body, headers={{'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8'}})
    A.SigV4Auth(Credentials(K, S), 'ec2', 'us-east-1').add_auth(req)
    r = urllib.request.Request(ENDPOINT + '/', data=body if isinstance(body, bytes) else body.encode(), headers=dict(req.headers.items()), method='POST')
    try:
        resp = urllib.request.urlopen(r)
        return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
base = 'Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId=sg-0123456789abcdef0'
cases = {{
  'many': base + ''.join(f'&TagSpecification.1.Tag.{{i}}.Key=k{{i}}' for i in range(1, 25001)),
  'huge_index': base + '&IpPermissions.99999999999.IpProtocol=tcp',
  'deep': base + '&IpPermissions.1.IpRanges.1.CidrIp.A.B.C.D.E=1',
  'scalar_list': base + '&IpPermissions=tcp',
  'bad_int': base + '&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=eighty',
  'bad_escapes': 'Action=%zz%ff&Version=%',
  'no_action': 'Version=2016-11-15',
  'big': 'Action=DescribeVpcs&Version=2016-11-15&Pad=' + 'x' * (3 << 20),
}}
out = {{}}
for name, body in cases.items():
    st, text = status(body)
    out[name] = [st, err(text)]
random_ok = True
for i in range(200):
    n = random.randint(0, 400)
    body = bytes(random.randrange(256) for _ in range(n))
    st, text = status(body)
    if st >= 500 or '<Code>' not in text:
        random_ok = [st, text[:200]]
        break
out['random'] = random_ok
print(json.dumps(out))
"#,
        k = ADMIN.id,
        s = ADMIN.secret
    );
    let v = boto3(ns, ADMIN, &script).unwrap();
    let want = [
        ("many", 400, "InvalidParameterValue"),
        ("huge_index", 400, "UnknownParameter"),
        ("deep", 400, "UnknownParameter"),
        ("scalar_list", 400, "InvalidParameterValue"),
        ("bad_int", 400, "InvalidParameterValue"),
        ("bad_escapes", 400, "InvalidAction"),
        ("no_action", 400, "MissingParameter"),
        ("big", 413, "RequestEntityTooLarge"),
    ];
    for (case, status, code) in want {
        assert_eq!(v[case], serde_json::json!([status, code]), "{case}: {v}");
    }
    assert_eq!(v["random"], true, "random bodies: {v}");
    // And the agent still answers.
    aws(ns, READER, &["describe-vpcs"]).ok();
}

#[test]
fn boto3_tags_descriptions_stale_references_and_conntrack_timeouts() {
    if !kernel_available("boto3_tags_descriptions_stale_references_and_conntrack_timeouts") {
        return;
    }
    let pair = Pair::new("apimore").unwrap();
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let started = sg_agent::api::audit::now();
    let script = r#"
c = ec2()
one = lambda name: c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': [name]}])['SecurityGroups'][0]
app = one('app')['GroupId']
eni = c.describe_network_interfaces(Filters=[{'Name': 'tag:sg:interface', 'Values': ['eth0']}])['NetworkInterfaces'][0]['NetworkInterfaceId']
vpc = c.create_vpc(CidrBlock='10.51.0.0/16', TagSpecifications=[{'ResourceType': 'vpc', 'Tags': [{'Key': 'Name', 'Value': 'b'}]}])['Vpc']['VpcId']
far = c.create_security_group(GroupName='far', Description='in vpc b', VpcId=vpc)['GroupId']
pl = c.create_managed_prefix_list(PrefixListName='pl', MaxEntries=2, AddressFamily='IPv4', Entries=[{'Cidr': '10.1.0.0/16'}])['PrefixList']['PrefixListId']
# A reference across VPCs that are not peered: kept, stale, matching nothing.
c.authorize_security_group_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 5000, 'ToPort': 5000, 'UserIdGroupPairs': [{'GroupId': far, 'VpcId': vpc}]}])
stale = c.describe_stale_security_groups(VpcId=one('app')['VpcId'])['StaleSecurityGroupSet']
refs = c.describe_security_group_references(GroupId=[far])['SecurityGroupReferenceSet']
# Descriptions: by permission, then by rule id.
c.authorize_security_group_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.2.0.0/16', 'Description': 'v1'}]}])
c.update_security_group_rule_descriptions_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.2.0.0/16', 'Description': 'v2'}]}])
rule = [r for r in c.describe_security_group_rules(Filters=[{'Name': 'group-id', 'Values': [app]}])['SecurityGroupRules'] if r.get('FromPort') == 53][0]
by_perm = rule.get('Description')
c.update_security_group_rule_descriptions_ingress(GroupId=app, SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': rule['SecurityGroupRuleId'], 'Description': 'v3'}])
c.modify_security_group_rules(GroupId=app, SecurityGroupRules=[{'SecurityGroupRuleId': rule['SecurityGroupRuleId'], 'SecurityGroupRule': {'IpProtocol': 'udp', 'FromPort': 54, 'ToPort': 54, 'CidrIpv4': '10.2.0.0/16', 'Description': 'v4'}}])
after = c.describe_security_group_rules(SecurityGroupRuleIds=[rule['SecurityGroupRuleId']])['SecurityGroupRules'][0]
# Tags on every kind.
for rid in [vpc, pl, eni, rule['SecurityGroupRuleId'], app]:
    c.create_tags(Resources=[rid], Tags=[{'Key': 'team', 'Value': 'net'}])
tagged = sorted(t['ResourceType'] for t in c.describe_tags(Filters=[{'Name': 'key', 'Values': ['team']}])['Tags'])
c.delete_tags(Resources=[pl], Tags=[{'Key': 'team'}])
left = sorted(t['ResourceId'] for t in c.describe_tags(Filters=[{'Name': 'key', 'Values': ['team']}])['Tags'])
# Connection-tracking timeouts of an interface (newer than Debian's
# botocore: sent as the current SDKs serialise them).
K, S = c._request_signer._credentials.access_key, c._request_signer._credentials.secret_key
mod = 'Action=ModifyNetworkInterfaceAttribute&Version=2016-11-15&NetworkInterfaceId=' + eni
set_ct = err(send(mod + '&ConnectionTrackingSpecification.TcpEstablishedTimeout=3600&ConnectionTrackingSpecification.UdpTimeout=60', K, S))
shown = send('Action=DescribeNetworkInterfaces&Version=2016-11-15&NetworkInterfaceId.1=' + eni, K, S)
ct = {'TcpEstablishedTimeout': 3600 if '<tcpEstablishedTimeout>3600</tcpEstablishedTimeout>' in shown else shown, 'UdpTimeout': 60 if '<udpTimeout>60</udpTimeout>' in shown else shown, 'set': set_ct}
bad_ct = err(send(mod + '&ConnectionTrackingSpecification.UdpTimeout=5', K, S))
# Rebinding an interface object to another Linux interface.
c.create_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface', 'Value': 'ghost1'}])
bound = [t['Value'] for t in c.describe_network_interfaces(NetworkInterfaceIds=['eni-00000000000000c11'])['NetworkInterfaces'][0]['TagSet'] if t['Key'] == 'sg:interface']
unbind = code(lambda: c.delete_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface'}]))
bad_name = code(lambda: c.create_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface', 'Value': 'a/b'}]))
who = boto3.client('sts', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id=c._request_signer._credentials.access_key, aws_secret_access_key=c._request_signer._credentials.secret_key).get_caller_identity()
print(json.dumps({'stale': [(g['GroupId'], [p['UserIdGroupPairs'][0]['GroupId'] for p in g['StaleIpPermissions']]) for g in stale],
  'refs': [(r['GroupId'], r['ReferencingVpcId']) for r in refs], 'app': app, 'far': far, 'app_vpc': one('app')['VpcId'],
  'by_perm': by_perm, 'after': [after['FromPort'], after.get('Description'), after['SecurityGroupRuleId'] == rule['SecurityGroupRuleId']],
  'tagged': tagged, 'left': left, 'pl': pl, 'ct': ct, 'bad_ct': bad_ct, 'who': [who['Account'], who['Arn']], 'bound': bound, 'unbind': unbind, 'bad_name': bad_name}))
"#;
    let v = boto3(&pair.server, ADMIN, &format!("{RAW}\n{script}")).unwrap();
    let (app, far) = (v["app"].as_str().unwrap(), v["far"].as_str().unwrap());
    assert_eq!(v["stale"], serde_json::json!([[app, [far]]]), "{v}");
    assert_eq!(v["refs"], serde_json::json!([[far, v["app_vpc"]]]), "{v}");
    assert_eq!(v["by_perm"], "v2", "{v}");
    assert_eq!(
        v["after"],
        serde_json::json!([54, "v4", true]),
        "modified in place, same id: {v}"
    );
    assert_eq!(
        v["tagged"],
        serde_json::json!([
            "network-interface",
            "prefix-list",
            "security-group",
            "security-group-rule",
            "vpc"
        ]),
        "{v}"
    );
    assert!(!v["left"].as_array().unwrap().contains(&v["pl"]), "{v}");
    assert_eq!(v["ct"]["set"], "OK", "{v}");
    assert_eq!(v["ct"]["TcpEstablishedTimeout"], 3600, "{v}");
    assert_eq!(v["ct"]["UdpTimeout"], 60, "{v}");
    assert_eq!(
        v["bad_ct"], "InvalidParameterValue",
        "AWS's bounds on timeouts: {v}"
    );
    assert_eq!(
        v["who"],
        serde_json::json!([ACCOUNT, "arn:aws:iam::123456789012:user/admin"]),
        "{v}"
    );
    assert_eq!(v["bound"], serde_json::json!(["ghost1"]), "rebound: {v}");
    assert_eq!(v["unbind"], "InvalidParameterValue", "{v}");
    assert_eq!(v["bad_name"], "InvalidParameterValue", "{v}");
    // The trail filters by time, as `aws cloudtrail lookup-events` does.
    let since = lookup_events(
        &agent.state,
        &["--start-time", &started, "--event-name", "CreateTags"],
    );
    assert_eq!(
        since.len(),
        7,
        "five tags, a rebinding, a refused one: {since:?}"
    );
    let none = lookup_events(&agent.state, &["--end-time", "2000-01-01T00:00:00Z"]);
    assert!(none.is_empty());
}
