//! Flow logs (docs/observe.md): what each interface accepted and rejected,
//! as VPC Flow Logs records, aggregated per window of 60 or 600 s.
//!
//! The datapath counts packets per tracked flow and writes flow events
//! (starts, TCP ends, rejects within a per-CPU rate) to a ring buffer; this
//! task reads the ring, walks the tracking table every few seconds for the
//! counts, and at each window's end writes one record per flow and
//! direction, NODATA for an idle interface and SKIPDATA for one whose
//! events were dropped.

mod format;
mod sink;
mod window;

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData, RingBuf};
use serde::Deserialize;
use sg_common::{FlowEvent, FlowLogCfg, names};
use tokio::{io::unix::AsyncFd, sync::oneshot, sync::watch};

pub use format::{Action, DEFAULT_FORMAT, FlowPart, Format, Record, Status};

use crate::{
    api::Snapshot,
    datapath::{Maps, flow_clock_ns},
    metrics::METRICS,
};
use sink::Sink;
use window::{IfaceInfo, Seen, Tracker, Window};

/// How often the tracking table is walked for counts. Shorter than the
/// shortest idle timeout (10 s, a reset flow's), so a flow's last packets
/// are counted before the sweeper can remove it.
const WALK_EVERY: Duration = Duration::from_secs(5);

/// How long the worker rests after reading the ring before it reads again.
/// A wakeup per event would cost a context switch on the CPUs that carry
/// the traffic for every new flow; resting batches the events instead (the
/// kernel wakes a reader only when it has caught up, so a resting reader is
/// not woken at all). The ring's 1 MiB holds ~14,500 events: ~60 ms of a
/// reject flood with the token bucket wide open, well above this rest.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// The records written last, newest last, for the console: at most
/// [`RECENT_MAX`], each once however many flow logs wrote it.
pub static RECENT: LazyLock<Mutex<VecDeque<Record>>> = LazyLock::new(Mutex::default);
pub const RECENT_MAX: usize = 5000;

fn remember(records: Vec<Record>) {
    let Ok(mut recent) = RECENT.lock() else {
        return;
    };
    for r in records {
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(r);
    }
}

/// The flow-log settings file (`sg-agent run --flow-logs FILE`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Reject events each CPU may write per second (a token bucket).
    #[serde(default = "default_rate")]
    pub reject_events_per_second: u32,
    /// The bucket's depth: rejects written in a burst, per CPU.
    #[serde(default = "default_rate")]
    pub reject_burst: u32,
    pub flow_logs: Vec<Spec>,
}

fn default_rate() -> u32 {
    1000
}

/// One flow log, after AWS's `CreateFlowLogs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A file path, or `-` (or `stdout`) for standard output.
    pub destination: String,
    /// Interfaces (`eni-…` ids or Linux names) whose traffic is logged;
    /// empty: every interface this agent enforces.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub log_format: Option<String>,
    /// Seconds: 60 or 600, as AWS offers (AWS's default is 600).
    #[serde(default = "default_interval")]
    pub max_aggregation_interval: u64,
    /// A file destination is rotated past this size.
    #[serde(default = "default_max_bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept (`NAME.1` … `NAME.N`).
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_interval() -> u64 {
    600
}
fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_max_files() -> usize {
    5
}

impl Settings {
    /// Reads and checks the file; every error names it and the field.
    pub fn load(path: &Path) -> Result<Settings> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?;
        let s: Settings = serde_yaml::from_str(&text).map_err(|e| anyhow!("{shown}: {e}"))?;
        if s.reject_events_per_second == 0 || s.reject_burst == 0 {
            bail!("{shown}: reject_events_per_second and reject_burst must be at least 1");
        }
        for (i, f) in s.flow_logs.iter().enumerate() {
            let at = format!("{shown}: flow_logs[{i}]");
            if ![60, 600].contains(&f.max_aggregation_interval) {
                bail!(
                    "{at}: max_aggregation_interval: {} is not 60 or 600 (InvalidParameterValue)",
                    f.max_aggregation_interval
                );
            }
            Format::parse(f.log_format.as_deref().unwrap_or(DEFAULT_FORMAT))
                .map_err(|e| anyhow!("{at}: {e}"))?;
            if f.destination.is_empty() || f.max_file_bytes == 0 || f.max_files == 0 {
                bail!("{at}: destination, max_file_bytes and max_files must not be empty or 0");
            }
        }
        Ok(s)
    }
}

/// One flow log at work.
struct Log {
    spec: Spec,
    format: Format,
    sink: Sink,
    window: Window,
    /// Unix seconds.
    window_start: u64,
    /// Interfaces logged by this flow log (ifindex), as of the last walk.
    ifaces: BTreeMap<u32, IfaceInfo>,
}

impl Log {
    fn window_end(&self) -> u64 {
        let i = self.spec.max_aggregation_interval;
        (self.window_start / i + 1) * i
    }

    fn selects(&self, i: &crate::model::Interface) -> bool {
        self.spec.interfaces.is_empty()
            || self
                .spec
                .interfaces
                .iter()
                .any(|s| *s == i.id || *s == i.name)
    }
}

/// The running flow logs; `stop` writes the open windows and turns the
/// datapath's reporting off.
pub struct FlowLogs {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FlowLogs {
    /// Turns the datapath's reporting on (the agent has loaded it under
    /// `pin_dir`) and starts logging.
    pub fn start(
        pin_dir: &Path,
        settings: Settings,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<FlowLogs> {
        let maps = Maps::open(pin_dir)?;
        let ring = RingBuf::try_from(Map::from_map_data(MapData::from_pin(
            pin_dir.join(names::EVENTS),
        )?)?)?;
        // SAFETY: the RingBuf owns its map's fd, which stays open and the
        // same for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow!("polling the flow event ring buffer: {e}"))?;
        let now = unix_now();
        let mut logs = Vec::new();
        for spec in settings.flow_logs {
            let format = Format::parse(spec.log_format.as_deref().unwrap_or(DEFAULT_FORMAT))
                .map_err(|e| anyhow!("{e}"))?;
            let sink = Sink::open(&spec.destination, spec.max_file_bytes, spec.max_files)?;
            logs.push(Log {
                window_start: now,
                spec,
                format,
                sink,
                window: Window::default(),
                ifaces: BTreeMap::new(),
            });
        }
        let per_cpu = settings.reject_events_per_second as u64;
        let cfg = FlowLogCfg {
            enabled: 1,
            _pad: 0,
            ns_per_event: 1_000_000_000 / per_cpu,
            burst_ns: 1_000_000_000 / per_cpu * settings.reject_burst as u64,
        };
        set_cfg(pin_dir, cfg)?;
        let (stop, stopped) = oneshot::channel();
        let mut w = Worker {
            pin_dir: pin_dir.to_path_buf(),
            maps,
            tracker: Tracker::default(),
            logs,
            snapshot,
            last_walk: flow_clock_ns(),
        };
        let task = tokio::spawn(async move { w.run(ring, stopped).await });
        Ok(FlowLogs { stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Writes `FLOWLOG`'s value.
fn set_cfg(pin_dir: &Path, cfg: FlowLogCfg) -> Result<()> {
    let map = MapData::from_pin(pin_dir.join(names::FLOWLOG))?;
    let mut a: Array<MapData, FlowLogCfg> = Array::try_from(Map::from_map_data(map)?)?;
    a.set(0, cfg, 0)?;
    Ok(())
}

/// Turns the datapath's flow reporting off (no flow logs configured, or an
/// earlier agent's left on).
pub fn disable(pin_dir: &Path) -> Result<()> {
    set_cfg(pin_dir, FlowLogCfg::default())
}

struct Worker {
    pin_dir: PathBuf,
    maps: Maps,
    tracker: Tracker,
    logs: Vec<Log>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The flow clock at the last walk.
    last_walk: u64,
}

impl Worker {
    async fn run(
        &mut self,
        mut ring: AsyncFd<RingBuf<MapData>>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let mut walk = tokio::time::interval(WALK_EVERY);
        let rest = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(rest);
        let mut resting = false;
        loop {
            let next = self
                .logs
                .iter()
                .map(Log::window_end)
                .min()
                .unwrap_or(u64::MAX);
            let until = Duration::from_secs(next.saturating_sub(unix_now()));
            tokio::select! {
                _ = &mut stopped => break,
                () = &mut rest, if resting => resting = false,
                r = ring.readable_mut(), if !resting => match r {
                    Ok(mut guard) => {
                        self.drain(guard.get_inner_mut());
                        guard.clear_ready();
                        rest.as_mut().reset(tokio::time::Instant::now() + DRAIN_EVERY);
                        resting = true;
                    }
                    Err(e) => {
                        log::error!("flow logs: reading the ring buffer: {e}");
                        break;
                    }
                },
                _ = walk.tick() => self.walk(),
                _ = tokio::time::sleep(until) => {
                    self.walk();
                    self.close(false);
                }
            }
        }
        // Stopping: what the open windows hold is written, not lost.
        self.drain(ring.get_mut());
        self.walk();
        self.close(true);
        if let Err(e) = disable(&self.pin_dir) {
            log::warn!("flow logs: turning the datapath's reporting off: {e:#}");
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut seen = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the datapath writes whole FlowEvents (plain data).
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if ev.kind == sg_common::EVENT_END {
                // Its counts now: a flush or the sweeper may remove the
                // entry before the next walk.
                let key = window::event_key(&ev);
                if let Some(v) = self.maps.tracked_flow(&key) {
                    seen.extend(self.tracker.ended(&key, &v, self.last_walk));
                }
                continue;
            }
            seen.extend(self.tracker.event(&ev));
        }
        self.dispatch(&seen);
    }

    /// Which interfaces each flow log covers, from the state in force.
    fn resolve(&mut self) -> HashSet<u32> {
        let snap = self.snapshot.borrow().clone();
        let d = &snap.desired;
        let mut all = HashSet::new();
        for log in &mut self.logs {
            let selected: Vec<_> = d.local().filter(|i| log.selects(i)).collect();
            log.ifaces.clear();
            for i in selected {
                if let Ok(ifindex) = nix::net::if_::if_nametoindex(i.name.as_str()) {
                    log.ifaces.insert(
                        ifindex,
                        IfaceInfo {
                            interface_id: i.id.clone(),
                            vpc_id: i.vpc.clone(),
                            account_id: d.account_id.clone(),
                        },
                    );
                    all.insert(ifindex);
                }
            }
        }
        all
    }

    fn walk(&mut self) {
        let logged = self.resolve();
        let since = self.last_walk;
        self.last_walk = flow_clock_ns();
        let flows = self
            .maps
            .tracked()
            .filter(|(k, _)| logged.contains(&k.ifindex));
        let skipped: Vec<(u32, u64)> = match self.maps.stats() {
            Ok(s) => s
                .iter()
                .filter(|s| logged.contains(&s.ifindex))
                .map(|s| {
                    (
                        s.ifindex,
                        s.dirs[0].events_skipped + s.dirs[1].events_skipped,
                    )
                })
                .collect(),
            Err(e) => {
                log::warn!("flow logs: reading the counters: {e:#}");
                Vec::new()
            }
        };
        let seen = self.tracker.walk(flows, skipped.into_iter(), since);
        self.dispatch(&seen);
    }

    fn dispatch(&mut self, seen: &[Seen]) {
        for s in seen {
            let ifindex = match s {
                Seen::Flow(id, _) => id.ifindex,
                Seen::Skipped(i, _) => *i,
            };
            for log in &mut self.logs {
                if log.ifaces.contains_key(&ifindex) {
                    log.window.add(s);
                }
            }
        }
    }

    /// Writes the windows that are over (all of them when `all`).
    fn close(&mut self, all: bool) {
        let now = unix_now();
        let mut written = Vec::new();
        let mut seen = HashSet::new();
        let offset = now as i128 * 1_000_000_000 - flow_clock_ns() as i128;
        let to_unix = |ns: u64| ((ns as i128 + offset).max(0) / 1_000_000_000) as u64;
        for log in &mut self.logs {
            let end = log.window_end();
            if !all && now < end {
                continue;
            }
            let end = end.min(now.max(log.window_start));
            let window = std::mem::take(&mut log.window);
            let records = window.close(log.window_start, end, &log.ifaces, to_unix);
            log.window_start = end;
            let lines: Vec<String> = records.iter().map(|r| log.format.render(r)).collect();
            match log.sink.write(&lines) {
                Ok(()) => {
                    METRICS.flowlog_records.inc_by(lines.len() as u64);
                }
                Err(e) => {
                    METRICS.flowlog_write_errors.inc();
                    log::error!("flow log {}: writing: {e}", log.spec.destination);
                }
            }
            let skipped = records
                .iter()
                .filter(|r| r.status == format::Status::SkipData)
                .count();
            METRICS.flowlog_skipdata.inc_by(skipped as u64);
            for r in records {
                if seen.insert(r.clone()) {
                    written.push(r);
                }
            }
        }
        remember(written);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
