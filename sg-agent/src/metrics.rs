//! Prometheus metrics (`sg-agent run --metrics ADDR`, docs/observe.md):
//! the datapath's counters per interface and direction, read from the
//! pinned maps at each scrape, and the agent's own counters.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, LazyLock},
};

use anyhow::{Context, Result};
use axum::{Router, http::header, response::IntoResponse};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use sg_common::Reason;
use tokio::sync::watch;

use crate::{
    api::Snapshot,
    datapath::{IfaceStats, Maps, ifname},
};

/// The agent's own counters, incremented where things happen.
pub struct Metrics {
    pub policy_applies: Counter,
    pub policy_apply_seconds: Histogram,
    pub reload_errors: Counter,
    pub api_errors: Family<Vec<(String, String)>, Counter>,
    pub flowlog_records: Counter,
    pub flowlog_skipdata: Counter,
    pub flowlog_write_errors: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    policy_applies: Counter::default(),
    // 100 µs to ~6.5 s.
    policy_apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
    reload_errors: Counter::default(),
    api_errors: Family::default(),
    flowlog_records: Counter::default(),
    flowlog_skipdata: Counter::default(),
    flowlog_write_errors: Counter::default(),
});

/// Counts an API error answer by its HTTP status.
pub fn api_error(status: u16) {
    METRICS
        .api_errors
        .get_or_create(&vec![("status".to_string(), status.to_string())])
        .inc();
}

/// Reads the datapath's counters at each scrape.
struct Datapath {
    pin_dir: PathBuf,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The tracking table's allowance.
    max_flows: u64,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

type Labels = Vec<(String, String)>;

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels, M)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Datapath {
    /// The interface labels of each configured ifindex.
    fn labels(&self, s: &IfaceStats) -> Labels {
        let name = ifname(s.ifindex).unwrap_or_else(|| format!("ifindex{}", s.ifindex));
        let snap = self.snapshot.borrow();
        let id = snap
            .desired
            .local()
            .find(|i| i.name == name)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        vec![
            ("interface".to_string(), name),
            ("interface_id".to_string(), id),
        ]
    }
}

impl Collector for Datapath {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Ok(maps) = Maps::open(&self.pin_dir) else {
            return Ok(());
        };
        let stats = maps.stats().unwrap_or_default();
        let in_use = maps.flows_in_use();
        let with = |base: &Labels, extra: &[(&str, &str)]| -> Labels {
            let mut l = base.clone();
            l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            l
        };
        let (mut packets, mut bytes, mut drops, mut flows, mut created, mut skipped) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut exceeded = 0;
        for s in &stats {
            let base = self.labels(s);
            flows.push((base.clone(), ConstGauge::new(s.flows_in_use as i64)));
            for (d, dir) in ["inbound", "outbound"].iter().enumerate() {
                let st = &s.dirs[d];
                for (action, p, b) in [
                    ("accept", st.accepted_packets, st.accepted_bytes),
                    ("reject", st.rejected_packets, st.rejected_bytes),
                ] {
                    let l = with(&base, &[("direction", dir), ("action", action)]);
                    packets.push((l.clone(), ConstCounter::new(p)));
                    bytes.push((l, ConstCounter::new(b)));
                }
                for r in Reason::ALL {
                    let l = with(&base, &[("direction", dir), ("reason", r.name())]);
                    drops.push((l, ConstCounter::new(st.drops[r as usize])));
                }
                let l = with(&base, &[("direction", dir)]);
                created.push((l.clone(), ConstCounter::new(st.flows_created)));
                skipped.push((l, ConstCounter::new(st.events_skipped)));
                exceeded += st.flows_refused;
            }
        }
        use MetricType::{Counter as C, Gauge as G};
        family(
            &mut enc,
            "sg_packets",
            "Packets by interface, direction (relative to the workload) and verdict.",
            C,
            &packets,
        )?;
        family(
            &mut enc,
            "sg_bytes",
            "Bytes by interface, direction and verdict.",
            C,
            &bytes,
        )?;
        family(
            &mut enc,
            "sg_drops",
            "Rejected packets by reason.",
            C,
            &drops,
        )?;
        family(
            &mut enc,
            "sg_tracked_flows",
            "Tracked flows of the interface in the table now.",
            G,
            &flows,
        )?;
        family(
            &mut enc,
            "sg_flows_created",
            "Flows the tracking table took.",
            C,
            &created,
        )?;
        family(
            &mut enc,
            "sg_flow_events_skipped",
            "Flow events not written (over the reject rate, or the ring buffer full): flow logs' SKIPDATA.",
            C,
            &skipped,
        )?;
        let none: Labels = Vec::new();
        family(
            &mut enc,
            "conntrack_allowance_available",
            "Tracked flows that can still be created before the allowance is reached (AWS's name).",
            G,
            &[(
                none.clone(),
                ConstGauge::new(self.max_flows.saturating_sub(in_use) as i64),
            )],
        )?;
        family(
            &mut enc,
            "conntrack_allowance_exceeded",
            "New flows refused because the tracking table was at its allowance (AWS's name).",
            C,
            &[(none, ConstCounter::new(exceeded))],
        )?;
        Ok(())
    }
}

/// The registry: the agent's counters and the datapath's.
fn registry(
    pin_dir: PathBuf,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    max_flows: u64,
) -> Registry {
    let mut r = Registry::default();
    let m = &*METRICS;
    r.register(
        "sg_policy_applies",
        "Policy changes made in the datapath.",
        m.policy_applies.clone(),
    );
    r.register(
        "sg_policy_apply_seconds",
        "Time to compile and install a change, from the state taken to the datapath enforcing it.",
        m.policy_apply_seconds.clone(),
    );
    r.register(
        "sg_reload_errors",
        "Configurations or states refused (the policy in force stayed).",
        m.reload_errors.clone(),
    );
    r.register(
        "sg_api_errors",
        "EC2 API calls answered with an error, by HTTP status.",
        m.api_errors.clone(),
    );
    r.register(
        "sg_flow_log_records",
        "Flow log records written.",
        m.flowlog_records.clone(),
    );
    r.register(
        "sg_flow_log_skipdata",
        "SKIPDATA flow log records written.",
        m.flowlog_skipdata.clone(),
    );
    r.register(
        "sg_flow_log_write_errors",
        "Flow log windows that could not be written.",
        m.flowlog_write_errors.clone(),
    );
    r.register_collector(Box::new(Datapath {
        pin_dir,
        snapshot,
        max_flows,
    }));
    r
}

/// Binds `listen` (failing now) and serves `/metrics` in the Prometheus
/// text format until the process ends.
pub async fn serve(
    listen: SocketAddr,
    pin_dir: PathBuf,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    max_flows: u64,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint to {listen}"))?;
    let addr = listener.local_addr()?;
    let reg = Arc::new(registry(pin_dir, snapshot, max_flows));
    let app = Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let reg = reg.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut body, &reg) {
                    Ok(()) => (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("the metrics endpoint stopped: {e}");
        }
    });
    log::info!("metrics on http://{addr}/metrics");
    Ok(addr)
}
