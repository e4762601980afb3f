//! `sg-api-bench`: the EC2 API's cost, measured as a client sees it, against
//! an agent that enforces what it accepts (run by `cargo xtask bench` inside
//! the agent's network namespace). A call is answered only once its change
//! is in the kernel's maps and committed, so a call's round trip bounds the
//! time from its arrival to its enforcement.
//!
//! Prints one JSON object: latency percentiles of authorize and revoke
//! (sequential), sustained authorize/revoke pairs per second (concurrent
//! clients), and reads per second (`DescribeSecurityGroups` of every group).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use sg_agent::api::sigv4::{Credential, sign};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8733")]
    host: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    secret: String,
    /// The group whose rules are authorized and revoked.
    #[arg(long)]
    group: String,
    /// Sequential authorize/revoke pairs timed for the latency figures.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Seconds of each throughput test.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrent clients in the throughput tests.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

struct Client {
    agent: ureq::Agent,
    args: Arc<Args>,
}

impl Client {
    fn new(args: Arc<Args>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Client { agent, args }
    }

    /// One signed call; fails unless EC2 answers 200.
    fn call(&self, body: &str) -> Result<Vec<u8>> {
        let a = &self.args;
        let cred = Credential {
            access_key: a.key.clone(),
            date: String::new(),
            region: "us-east-1".into(),
            service: "ec2".into(),
        };
        let headers = sign(
            &a.host,
            body.as_bytes(),
            &cred,
            &a.secret,
            time::OffsetDateTime::now_utc(),
        );
        let mut req = self.agent.post(format!("http://{}/", a.host));
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k.as_str(), v.to_str()?);
            }
        }
        let mut resp = req.send(body)?;
        let status = resp.status();
        // Bytes, not text: decoding a large answer as UTF-8 on the way in
        // made the client, not the agent, the bench's bottleneck.
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?;
        if status != 200 {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    fn rule(&self, action: &str, port: u16) -> Result<()> {
        let body = format!(
            "Action={action}&Version=2016-11-15&GroupId={}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort={port}&IpPermissions.1.ToPort={port}&IpPermissions.1.IpRanges.1.CidrIp=192.0.2.0%2F24",
            self.args.group
        );
        self.call(&body).map(|_| ())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn spread(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({"p50": percentile(&v, 0.5), "p99": percentile(&v, 0.99), "max": v[v.len() - 1], "n": v.len()})
}

/// Runs `f(client, i)` on `clients` threads for `seconds`; calls per second.
fn sustained(args: &Arc<Args>, f: fn(&Client, u64) -> Result<()>) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|t| {
            let (stop, done, c) = (stop.clone(), done.clone(), Client::new(args.clone()));
            std::thread::spawn(move || -> Result<()> {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(&c, t as u64 * 1_000_000 + i)?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let c = Client::new(args.clone());
    c.call("Action=DescribeVpcs&Version=2016-11-15")
        .context("the API answers")?;
    let (mut auth, mut revoke) = (Vec::new(), Vec::new());
    for i in 0..args.calls {
        let port = 20000 + (i % 20000) as u16;
        let t = Instant::now();
        c.rule("AuthorizeSecurityGroupIngress", port)?;
        auth.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.rule("RevokeSecurityGroupIngress", port)?;
        revoke.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Each client its own ports: pairs never collide.
    let pairs = sustained(&args, |c, i| {
        let port = 1024 + (i % 16384) as u16 + (i / 1_000_000) as u16 * 16384 % 40000;
        c.rule("AuthorizeSecurityGroupIngress", port)?;
        c.rule("RevokeSecurityGroupIngress", port)
    })?;
    let reads = sustained(&args, |c, _| {
        c.call("Action=DescribeSecurityGroups&Version=2016-11-15")
            .map(|_| ())
    })?;
    println!(
        "{}",
        json!({
            "authorize_ms": spread(auth),
            "revoke_ms": spread(revoke),
            "pairs_per_s": pairs,
            "mutating_calls_per_s": pairs * 2.0,
            "reads_per_s": reads,
            "clients": args.clients,
        })
    );
    Ok(())
}
