//! One state for many hosts (docs/fleet.md): an interface that names a host
//! is enforced by that host's agent only, and its addresses are members of
//! its groups on every host.

use std::time::Duration;

use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// The db on host "db-host" (this namespace's eth0) admits the web group;
/// the web member is an interface of host "web-host", which has an eth0 of
/// its own: the client's address.
const FLEET: &str = r#"
security_groups:
  - name: web
    description: web tier
  - name: db
    description: db tier
    ingress:
      - {ip_protocol: tcp, from_port: 5432, to_port: 5432, user_id_group_pairs: [web]}
network_interfaces:
  - {interface: eth0, host: db-host, private_ipv4: [10.77.0.2], groups: [db]}
  - {interface: eth0, host: web-host, private_ipv4: [10.77.0.1], groups: [web]}
"#;

#[test]
fn a_member_on_another_host_is_allowed_and_only_this_hosts_interfaces_are_enforced() {
    if !kernel_available(
        "a_member_on_another_host_is_allowed_and_only_this_hosts_interfaces_are_enforced",
    ) {
        return;
    }
    let pair = Pair::new("fleet").unwrap();
    let db = tcp_echo_server(&pair.server, addr(SERVER_V4, 5432)).unwrap();
    let other = tcp_echo_server(&pair.server, addr(SERVER_V4, 8080)).unwrap();
    {
        let agent = Agent::start_with(&pair.server, FLEET, &["--host-id", "db-host"]).unwrap();
        // The web member lives on web-host: its address is in the group.
        assert_eq!(tcp_probe(&pair.client, db, T).unwrap(), Seen::Pass);
        assert_eq!(tcp_probe(&pair.client, other, T).unwrap(), Seen::Dropped);
        let log = agent.log();
        assert!(
            log.contains("enforcing on 1 interface(s)")
                || log.contains("running with 1 interface(s)"),
            "one of the two eth0s is this host's:\n{log}"
        );
        assert!(
            !log.contains("not here"),
            "web-host's eth0 is not missing here:\n{log}"
        );
    }
    // The same state read as web-host: this eth0 is web-host's, whose group
    // admits nothing; db-host's policy (5432 from web) is not taken here.
    let _agent = Agent::start_with(&pair.server, FLEET, &["--host-id", "web-host"]).unwrap();
    assert_eq!(tcp_probe(&pair.client, db, T).unwrap(), Seen::Dropped);
    assert_eq!(tcp_probe(&pair.client, other, T).unwrap(), Seen::Dropped);
}
