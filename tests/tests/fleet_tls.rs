//! A fleet whose etcd speaks TLS only and asks clients for a certificate of
//! its CA (docs/fleet.md): `sg-agent api` and a watch-only agent reach it
//! with `--etcd-ca`, `--etcd-cert` and `--etcd-key`; a client without a
//! certificate, or with another CA's, is refused.

use std::time::Duration;

use sg_tests::*;

const SEED: &str = r#"
security_groups:
  - {name: web, description: web tier}
network_interfaces:
  - {interface: w0, host: host-a, private_ipv4: [10.80.1.2], groups: [web], optional: true}
"#;

#[test]
fn agents_reach_etcd_over_tls_with_client_certificates_and_strangers_are_refused() {
    if !kernel_available(
        "agents_reach_etcd_over_tls_with_client_certificates_and_strangers_are_refused",
    ) {
        return;
    }
    let certs = TempDir::new().unwrap();
    make_certs(&certs.0).unwrap();
    let etcd = EtcdCluster::start_tls("tls", &certs.0).unwrap();
    let file = |n: &str| certs.0.join(n).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
    let tls = ["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let url = etcd.url();
    let dir = TempDir::new().unwrap();
    let creds = write_credentials(&dir.0).unwrap().display().to_string();
    let mut args = vec!["--state", &url, "--api-credentials", &creds];
    args.extend(tls);
    let _api = Agent::spawn(&etcd.ns, TempDir::new().unwrap(), "api", SEED, &args, &[]).unwrap();
    let mut args = vec!["--watch-only", "--host-id", "host-a", "--state", &url];
    args.extend(tls);
    let watcher = Agent::spawn(&etcd.ns, TempDir::new().unwrap(), "run", "", &args, &[]).unwrap();

    // A change through the API reaches the watcher over TLS.
    let web = group_id(&etcd.ns, "web");
    aws(
        &etcd.ns,
        ADMIN,
        &[
            "authorize-security-group-ingress",
            "--group-id",
            &web,
            "--protocol",
            "tcp",
            "--port",
            "443",
            "--cidr",
            "10.0.0.0/8",
        ],
    )
    .ok();
    assert!(
        wait_until(Duration::from_secs(5), || watcher
            .log()
            .contains("took the store's change")),
        "{}",
        watcher.log()
    );

    // The trail, read with the certificate; refused without one, and with
    // another CA's.
    let lookup = |extra: &[&str]| {
        sh(etcd
            .ns
            .command(agent_bin())
            .args([
                "lookup-events",
                "--state",
                &url,
                "--event-name",
                "AuthorizeSecurityGroupIngress",
            ])
            .args(extra))
    };
    assert!(lookup(&tls).unwrap().contains(&web));
    let (other, other_key) = (file("stranger.pem"), file("stranger-key.pem"));
    for extra in [
        vec!["--etcd-ca", ca.as_str()],
        vec![
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &other,
            "--etcd-key",
            &other_key,
        ],
        vec![],
    ] {
        let e = lookup(&extra).expect_err("refused").to_string();
        assert!(e.contains("etcd"), "{extra:?}: {e}");
    }
}
