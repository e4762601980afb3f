//! The agent's handle on the eBPF object, by kernel object: loading the
//! programs (here), the pinned maps (`maps`), policy entries and their ids
//! (`policy`), links (`links`), tracked flows (`conntrack`), counters
//! (`counters`). docs/datapath.md describes the design.

mod conntrack;
mod counters;
mod inplace;
mod links;
mod maps;
mod policy;
mod stage;
mod state;
mod txn;

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};

pub use conntrack::{FlowMatch, ct_addr, ct_slack, flow_clock_ns};
pub use counters::IfaceStats;
pub use maps::Maps;
pub use policy::{Change, Writes};

use crate::{
    model::IngressHook,
    pins::{self, PinLock},
};
use sg_common::{PolicyKey, names};
use state::State;

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg"));

pub use sg_common::names::{PROG_EGRESS, PROG_INGRESS, PROG_PASS, PROG_XDP};

/// The programs an agent attaches: ingress, egress, XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programs {
    pub ingress: &'static str,
    pub egress: &'static str,
    pub xdp: &'static str,
}

impl Programs {
    /// With flow logs, the programs that report flows (docs/observe.md).
    pub fn new(flow_logs: bool) -> Programs {
        use sg_common::names::{PROG_EGRESS_LOG, PROG_INGRESS_LOG, PROG_XDP_LOG};
        if flow_logs {
            Programs {
                ingress: PROG_INGRESS_LOG,
                egress: PROG_EGRESS_LOG,
                xdp: PROG_XDP_LOG,
            }
        } else {
            Programs {
                ingress: PROG_INGRESS,
                egress: PROG_EGRESS,
                xdp: PROG_XDP,
            }
        }
    }
}

pub struct Datapath {
    /// This agent owns the pin directory for as long as it runs.
    _lock: PinLock,
    ebpf: Ebpf,
    pub maps: Maps,
    /// The mirror of the policy state the maps hold.
    state: State,
    next_slot: u32,
    free_slots: Vec<u32>,
    /// Interfaces whose links this agent holds (pinned under `dir/links`),
    /// with their ingress hook.
    links: StdHashMap<u32, IngressHook>,
    /// Replaced policies' entries, with when they were replaced.
    retiring: Vec<(std::time::Instant, Vec<PolicyKey>)>,
    /// The programs attached.
    progs: Programs,
}

impl Datapath {
    /// Loads the programs with the maps pinned under `dir`: maps already
    /// pinned there (an earlier agent's) are reused with their contents, so a
    /// restarted agent carries on with the flows and policy in force.
    pub fn load(max_flows: u32, dir: &Path) -> Result<Self> {
        Self::load_with(max_flows, dir, Programs::new(false))
    }

    /// As [`Datapath::load`], attaching `progs` (which replace whatever
    /// programs the pinned links held).
    pub fn load_with(max_flows: u32, dir: &Path, progs: Programs) -> Result<Self> {
        raise_memlock();
        pins::prepare(dir)?;
        let lock = PinLock::take(dir)?;
        std::fs::create_dir_all(dir.join("links"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let ncpus = aya::util::nr_cpus().map_err(|(f, e)| anyhow!("{f}: {e}"))? as u32;
        let ct_entries = max_flows
            .checked_add(ct_slack(ncpus))
            .context("conntrack.max_flows is too large")?;
        let limit = max_flows as u64;
        let paths: Vec<(&str, PathBuf)> = names::MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::CT, ct_entries)
            .override_global(names::CT_LIMIT, &limit, true)
            .override_global(names::NR_CPUS, &ncpus, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        for name in [progs.ingress, progs.egress] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(progs.xdp)
            .with_context(|| format!("program {} missing", progs.xdp))?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("loading program {} (verifier)", progs.xdp))?;
        let maps = Maps::build(dir, |name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        })?;
        // Continue from whatever an earlier agent left in force, so that new
        // policy never overwrites entries a live packet may use.
        let state = State::read(&maps);
        let next_slot = 1 + maps
            .iface_cfgs()
            .values()
            .map(|c| c.stats_slot)
            .max()
            .unwrap_or(0);
        Ok(Datapath {
            _lock: lock,
            ebpf,
            maps,
            state,
            next_slot,
            free_slots: Vec::new(),
            links: StdHashMap::new(),
            retiring: Vec::new(),
            progs,
        })
    }

    /// Detaches everything and removes every pin: enforcement stops. Every
    /// link is pinned under the directory, so unpinning them all detaches
    /// them all.
    pub fn stop(self) {
        self.maps.remove_pins();
    }

    /// Runs one program on `frame` with `BPF_PROG_TEST_RUN` (the loopback
    /// device's ifindex, 1) `repeat` times; returns the program's return value
    /// and the kernel's mean time per run.
    pub fn test_run(&self, ingress: bool, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        self.test_run_named(
            if ingress { PROG_INGRESS } else { PROG_EGRESS },
            frame,
            repeat,
        )
    }

    /// Loads the benchmarks' programs: the pass-everything baseline, the
    /// one-lookup floor and the pipeline's stages.
    pub fn load_baseline(&mut self) -> Result<()> {
        let baseline = [PROG_PASS, names::PROG_FLOOR];
        self.load_programs(baseline.iter().chain(&names::PROG_STAGES).copied())
    }

    /// Loads more of the object's classifiers (the benchmarks compare
    /// programs on the same maps).
    pub fn load_programs<'a>(&mut self, progs: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for name in progs {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        Ok(())
    }

    /// Pins a loaded program, so another thread can open it to run it.
    pub fn pin_program(&mut self, name: &str, path: &Path) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .context("program missing")?
            .try_into()?;
        prog.pin(path)?;
        Ok(())
    }

    /// As [`Datapath::test_run`], for any loaded program of the object.
    pub fn test_run_named(&self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        match self.ebpf.program(name).context("program missing")? {
            aya::programs::Program::Xdp(p) => test_run(p, frame, repeat),
            other => test_run(<&SchedClassifier>::try_from(other)?, frame, repeat),
        }
    }
}

/// `BPF_PROG_TEST_RUN` of `prog` on `frame`, `repeat` times.
pub fn test_run<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<(u32, Duration)>
where
    P: for<'a> aya::programs::TestRun<
            Opts<'a> = aya::programs::TestRunOptions<'a>,
            Result = aya::programs::TestRunResult,
        >,
{
    use aya::programs::TestRunOptions;
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    Ok((r.return_value, r.duration))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large
/// tables load there too (harmless on newer kernels).
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not lift RLIMIT_MEMLOCK");
    }
}

/// The name of the interface with `ifindex` in this network namespace, if
/// there is one. (nix's `if_indextoname` cannot tell: it checks libc's
/// null return against -1, and so names a missing interface "".)
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname(3) needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use sg_common::names;

    /// The eBPF side declares its maps and programs by identifier; the names
    /// the agent uses must be those (no kernel needed: the ELF is parsed).
    #[test]
    fn the_object_declares_the_shared_names() {
        let obj = aya_obj::Object::parse(super::OBJECT).expect("the embedded object parses");
        for m in names::MAPS {
            assert!(obj.maps.contains_key(m), "no map {m} in the object");
        }
        for p in [
            names::PROG_INGRESS,
            names::PROG_EGRESS,
            names::PROG_XDP,
            names::PROG_PASS,
            names::PROG_FLOOR,
        ]
        .into_iter()
        .chain(names::PROG_STAGES)
        {
            assert!(obj.programs.contains_key(p), "no program {p} in the object");
        }
        let text = String::from_utf8_lossy(super::OBJECT);
        for g in [names::CT_LIMIT, names::NR_CPUS] {
            assert!(text.contains(g), "no global {g} in the object");
        }
    }
}
