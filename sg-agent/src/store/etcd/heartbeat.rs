//! A fleet's heartbeats in etcd (docs/fleet.md, "Heartbeats"): each agent's
//! lease-bound key, the time of its last beat, and every host's, as the
//! API shows them.

use std::time::Duration;

use etcd_client::GetOptions;

use super::Etcd;

/// This host's heartbeat: how often it is written, and how long it lives
/// without (the lease's time to live).
const BEAT_EVERY: Duration = Duration::from_secs(2);
const BEAT_TTL: i64 = 10;

/// A fleet's hosts: when each last beat (RFC 3339) and whether its lease
/// still lives, as the heartbeat task last read them.
pub type Heartbeats =
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, (String, bool)>>>;

impl Etcd {
    /// Writes `host`'s heartbeat, when given: `{prefix}/v1/hosts/{host}`
    /// under a lease that expires `BEAT_TTL` s after the last beat (a host
    /// that vanishes drops out by itself), and its time at
    /// `{prefix}/v1/beats/{host}`, which stays; keeps `seen`, when given,
    /// filled with every host's (what the API shows: an agent that serves
    /// none does not read them, which in a fleet of hundreds would be
    /// hundreds of reads of every host's beat per beat); until the store
    /// goes.
    pub fn heartbeat(&self, host: Option<String>, seen: Option<Heartbeats>) {
        let clients = self.clients.clone();
        let keys = host.map(|h| {
            (
                self.at.key(&format!("hosts/{h}")),
                self.at.key(&format!("beats/{h}")),
            )
        });
        let (lives, lasts) = (self.at.key("hosts/"), self.at.key("beats/"));
        self.rt.spawn(async move {
            let mut lease: Option<(
                i64,
                etcd_client::LeaseKeeper,
                etcd_client::LeaseKeepAliveStream,
            )> = None;
            let mut pinned = 0usize;
            let mut tick = tokio::time::interval(BEAT_EVERY);
            loop {
                tick.tick().await;
                let mut c = clients[pinned % clients.len()].clone();
                let beat = async {
                    if let Some((live, last)) = &keys {
                        if lease.is_none() {
                            let id = c.lease_grant(BEAT_TTL, None).await?.id();
                            let (k, s) = c.lease_keep_alive(id).await?;
                            lease = Some((id, k, s));
                        }
                        let (id, keeper, stream) = lease.as_mut().expect("granted");
                        keeper.keep_alive().await?;
                        stream.message().await?;
                        let now = time::OffsetDateTime::now_utc()
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default();
                        let opts = etcd_client::PutOptions::new().with_lease(*id);
                        c.put(live.clone(), now.clone(), Some(opts)).await?;
                        c.put(last.clone(), now, None).await?;
                    }
                    if seen.is_none() {
                        return Ok(None);
                    }
                    let prefix = Some(GetOptions::new().with_prefix());
                    let alive = c.get(lives.clone(), prefix.clone()).await?;
                    let alive: Vec<&str> = alive
                        .kvs()
                        .iter()
                        .filter_map(|kv| kv.key_str().ok()?.strip_prefix(lives.as_str()))
                        .collect();
                    let beats = c.get(lasts.clone(), prefix).await?;
                    let mut hosts = std::collections::BTreeMap::new();
                    for kv in beats.kvs() {
                        if let Some(h) = kv.key_str()?.strip_prefix(lasts.as_str()) {
                            let t = kv.value_str()?.to_string();
                            hosts.insert(h.to_string(), (t, alive.contains(&h)));
                        }
                    }
                    Ok::<_, etcd_client::Error>(Some(hosts))
                };
                match beat.await {
                    Ok(Some(hosts)) => {
                        if let Some(seen) = &seen {
                            *seen.write().expect("heartbeats") = hosts;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!("heartbeat to etcd: {e}");
                        lease = None;
                        pinned += 1;
                    }
                }
            }
        });
    }
}
