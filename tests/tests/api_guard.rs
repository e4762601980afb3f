//! Who may call the EC2 API, and what a hostile caller gets: forged,
//! stale, tampered and unauthorised requests are refused, audited and
//! change nothing under a probe loop; beyond loopback only TLS is spoken;
//! adversarial and random bodies get AWS's errors, never a crash.

use std::time::Duration;

use serde_json::Value;
use sg_tests::*;

#[test]
fn forged_and_unauthorised_calls_are_refused_audited_and_change_nothing() {
    if !kernel_available("forged_and_unauthorised_calls_are_refused_audited_and_change_nothing") {
        return;
    }
    let pair = Pair::new("apisig").unwrap();
    let denied = tcp_echo_server(&pair.server, addr(SERVER_V4, 9000)).unwrap();
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let ns = &pair.server;
    let app = group_id(ns, "app");
    let before = aws(ns, READER, &["describe-security-groups"]).ok();
    let probes = ProbeLoop::start(&pair.client, denied).unwrap();
    let open = format!(
        "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId={app}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=9000&IpPermissions.1.ToPort=9000&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0"
    );
    let script = format!(
        "{SIGNED_PY}\nbody = {open:?}\nprint(json.dumps({{\n 'wrong_secret': err(send(body, {admin:?}, 'not-the-secret-at-all-000000')),\n 'unknown_key': err(send(body, {stranger:?}, {stranger_s:?})),\n 'stale': err(send(body, {admin:?}, {admin_s:?}, when=datetime.datetime.utcnow() - datetime.timedelta(minutes=20))),\n 'tampered': err(send(body.replace('9000', '8000'), {admin:?}, {admin_s:?}, sent=body)),\n 'read_only': err(send(body, {reader:?}, {reader_s:?})),\n 'unsigned': err(send_unsigned(body)),\n}}))",
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
    let refused = Agent::start_managed_with(&pair.server, &state.0, API_SEED, &["--api", &listen])
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("needs TLS"), "{refused}");
    // The server's group lets the API's port in from the client.
    let seed = API_SEED.replace(
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
    let _agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let ns = &pair.server;
    let script = format!(
        r#"{SIGNED_PY}
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
