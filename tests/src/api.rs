//! Driving an agent's EC2 API as users do: the AWS CLI (`/usr/bin/aws`,
//! Debian's awscli) and boto3 (Debian's python3-boto3), run inside the
//! agent's network namespace against its loopback endpoint.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::*;

pub const ACCOUNT: &str = "123456789012";
pub const ENDPOINT: &str = "http://127.0.0.1:8733";

/// An access key of the test credentials.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub id: &'static str,
    pub secret: &'static str,
}

pub const ADMIN: Key = Key {
    id: "AKIASGTESTADMIN00001",
    secret: "sgtestsecretadmin0000000000000000000000",
};
pub const READER: Key = Key {
    id: "AKIASGTESTREADONLY01",
    secret: "sgtestsecretreadonly00000000000000000000",
};
/// Not in the credentials file.
pub const STRANGER: Key = Key {
    id: "AKIASGTESTUNKNOWN001",
    secret: "sgtestsecretunknown000000000000000000000",
};

/// Writes the credentials file the test agents use: ADMIN (full), READER
/// (read-only).
pub fn write_credentials(dir: &Path) -> Result<std::path::PathBuf> {
    let p = dir.join("credentials.yaml");
    std::fs::write(
        &p,
        format!(
            "account_id: \"{ACCOUNT}\"\nregion: us-east-1\nkeys:\n  - {{access_key_id: {}, secret_access_key: {}, user: admin, access: full}}\n  - {{access_key_id: {}, secret_access_key: {}, user: auditor, access: read-only}}\n",
            ADMIN.id, ADMIN.secret, READER.id, READER.secret
        ),
    )?;
    Ok(p)
}

fn client_env(c: &mut Command, key: Key) {
    c.env("AWS_ACCESS_KEY_ID", key.id)
        .env("AWS_SECRET_ACCESS_KEY", key.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        // The first answer, as the server gave it: no client-side retries
        // (a 503 from a fleet whose store is down would be retried).
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_SESSION_TOKEN");
}

/// What a client call gave: the JSON output, or AWS's error code and text.
#[derive(Debug)]
pub enum Answer {
    Ok(Value),
    Err { code: String, text: String },
}

impl Answer {
    pub fn ok(self) -> Value {
        match self {
            Answer::Ok(v) => v,
            Answer::Err { text, .. } => panic!("the call failed: {text}"),
        }
    }

    /// The error code, panicking if the call succeeded.
    pub fn code(&self) -> &str {
        match self {
            Answer::Ok(v) => panic!("the call succeeded: {v}"),
            Answer::Err { code, .. } => code,
        }
    }
}

/// `aws ec2 ARGS...` with `key`, inside `ns`, against the agent's endpoint.
pub fn aws(ns: &Netns, key: Key, args: &[&str]) -> Answer {
    let bin = Path::new("/usr/bin/aws");
    assert!(
        bin.exists(),
        "/usr/bin/aws is missing: `cargo xtask setup` installs Debian's awscli"
    );
    let mut c = ns.command(bin);
    client_env(&mut c, key);
    c.args(["--endpoint-url", ENDPOINT, "--output", "json", "ec2"])
        .args(args);
    let out = c.output().expect("running aws");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        let v = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::String(stdout))
        };
        return Answer::Ok(v);
    }
    // "An error occurred (Code) when calling ..."
    let code = stderr
        .split_once("An error occurred (")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(c, _)| c.to_string())
        .unwrap_or_else(|| "NoCode".into());
    Answer::Err { code, text: stderr }
}

/// A Python 3 command (Debian's, with boto3) running `script` inside `ns`;
/// the script sees `ENDPOINT`, `ec2(key_id, secret)` making a boto3 client
/// (no retries), and `code(f)`, the AWS error code of calling `f`.
pub fn boto3_command(ns: &Netns, key: Key, script: &str) -> Command {
    let prelude = format!(
        "import json, boto3, botocore, botocore.config\nENDPOINT = {ENDPOINT:?}\ndef ec2(k={:?}, s={:?}):\n    cfg = botocore.config.Config(retries={{'max_attempts': 1}}, connect_timeout=2, read_timeout=10)\n    return boto3.client('ec2', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id=k, aws_secret_access_key=s, config=cfg)\ndef code(f):\n    try:\n        f()\n        return 'OK'\n    except botocore.exceptions.ClientError as e:\n        return e.response['Error']['Code']\n",
        key.id, key.secret
    );
    let mut c = ns.command("/usr/bin/python3");
    client_env(&mut c, key);
    c.arg("-c").arg(format!("{prelude}{script}"));
    c
}

/// Runs [`boto3_command`]; the script prints one JSON value, returned.
pub fn boto3(ns: &Netns, key: Key, script: &str) -> Result<Value> {
    let out = boto3_command(ns, key, script)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "python3 failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("not JSON: {text}"))
}

/// The audit trail of the agent whose state directory is `state`.
pub fn lookup_events(state: &Path, args: &[&str]) -> Vec<Value> {
    let out = sh(Command::new(agent_bin())
        .args(["lookup-events", "--state-dir"])
        .arg(state)
        .args(args))
    .expect("sg-agent lookup-events");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// The API tests' two namespaces: `app` on the server's eth0; `clients` on an interface of another host
/// (absent here, so only its address matters), holding the client's address.
pub const API_SEED: &str = r#"
security_groups:
  - {name: app, description: the server}
  - {name: clients, description: who may call}
network_interfaces:
  - {interface: eth0, private_ipv4: [10.77.0.2], groups: [app]}
  - {interface: ghost0, id: eni-00000000000000c11, private_ipv4: [10.77.0.1], groups: [clients], optional: true}
"#;

/// The id of the group named `name` (in the default VPC), asked with the CLI.
pub fn group_id(ns: &Netns, name: &str) -> String {
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

/// The id of the interface host `host` enforces (its `sg:host` tag), as
/// `ns`'s API lists it.
pub fn eni_of(ns: &Netns, host: &str) -> String {
    let v = aws(ns, ADMIN, &["describe-network-interfaces"]).ok();
    let i = v["NetworkInterfaces"].as_array().unwrap().iter().find(|i| {
        i["TagSet"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "sg:host" && t["Value"] == host)
    });
    i.unwrap_or_else(|| panic!("{host}'s interface in {v}"))["NetworkInterfaceId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `aws ec2 modify-network-interface-attribute`: interface `eni` is in
/// `groups` (ids) and no other.
pub fn set_groups(ns: &Netns, eni: &str, groups: &[&str]) {
    let mut args = vec![
        "modify-network-interface-attribute",
        "--network-interface-id",
        eni,
        "--groups",
    ];
    args.extend_from_slice(groups);
    aws(ns, ADMIN, &args).ok();
}

/// A TCP connection attempt from the client to the server's `port`.
pub fn probe_server(pair: &Pair, port: u16) -> Seen {
    tcp_probe(
        &pair.client,
        addr(SERVER_V4, port),
        std::time::Duration::from_secs(2),
    )
    .unwrap()
}

/// Python helpers for boto3 scripts: `send(body, key, secret, when, sent)`
/// signs a request with botocore's own signer (at `when`, if given) and
/// sends `sent` (the body, if not given) as it is; `err(xml)` is its code.
pub const SIGNED_PY: &str = r#"
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
