//! The agent's handle on the eBPF object: loading, writing compiled policy
//! into the maps, attaching with tcx, sweeping idle flows, reading counters.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use sg_common::{
    ADDR_KEY_POLICY_BITS, AddrKey4, AddrKey6, CtKey, CtVal, FragKey, IFACE_HOST_SIDE,
    IFACE_RELATED_ICMP, IfaceCfg, PortKey, PortVal, Reason, STATS_SLOTS, Stats, timeout_ns,
};

use crate::{
    compile::Compiled,
    config::{AttachMode, IngressHook, Timeouts},
    pins::{self, PinLock},
};

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg"));

pub const PROG_INGRESS: &str = "sg_tc_ingress";
pub const PROG_EGRESS: &str = "sg_tc_egress";
/// The baseline: passes everything (benchmarks only).
pub const PROG_PASS: &str = "sg_tc_pass";
/// The ingress decision at XDP.
pub const PROG_XDP: &str = "sg_xdp";

/// Entries beyond the allowance. The table is a preallocated hash whose free
/// elements sit on per-CPU lists that an allocating CPU steals from when its
/// own is empty (`kernel/bpf/percpu_freelist.c`, `___pcpu_freelist_pop`), so
/// every element is usable from any CPU, and replacing an existing key takes
/// one of the map's per-CPU `extra_elems` (`kernel/bpf/hashtab.c`), not a free
/// element: the kernel needs no slack. The datapath's own check needs a
/// little: each CPU may be between the allowance check and its insert in two
/// contexts at once (a program in task context interrupted by one in
/// softirq), and the sweeper re-bases the count so that it errs high, never
/// low (`Maps::sweep`).
pub fn ct_slack(ncpus: u32) -> u32 {
    2 * ncpus
}

/// The maps, pinned under one directory: the agent's working set, and what
/// `sg-agent stats`/`flush` open from another process.
pub struct Maps {
    pub dir: PathBuf,
    ifaces: HashMap<MapData, u32, IfaceCfg>,
    addr4: LpmTrie<MapData, AddrKey4, u32>,
    addr6: LpmTrie<MapData, AddrKey6, u32>,
    ports: LpmTrie<MapData, PortKey, PortVal>,
    ct: HashMap<MapData, CtKey, CtVal>,
    frags: HashMap<MapData, FragKey, u64>,
    ct_inserted: PerCpuArray<MapData, u64>,
    ct_removed: Array<MapData, u64>,
    stats: PerCpuArray<MapData, Stats>,
}

/// Every map of the object, by name; each is pinned as `<dir>/<name>`.
const MAP_NAMES: [&str; 9] = [
    "IFACES",
    "ADDR4",
    "ADDR6",
    "PORTS",
    "CT",
    "FRAGS",
    "CT_INSERTED",
    "CT_REMOVED",
    "STATS",
];

pub struct Datapath {
    /// This agent owns the pin directory for as long as it runs.
    _lock: PinLock,
    ebpf: Ebpf,
    pub maps: Maps,
    next_policy: u32,
    next_class: u32,
    next_slot: u32,
    free_slots: Vec<u32>,
    /// Interfaces whose links this agent holds (pinned under `dir/links`),
    /// with their ingress hook.
    links: StdHashMap<u32, IngressHook>,
    installed: StdHashMap<u32, Installed>,
    retiring: Vec<Installed>,
}

/// Keys one interface's policy occupies, to remove when it is replaced.
#[derive(Default)]
struct Installed {
    addr4: Vec<Key<AddrKey4>>,
    addr6: Vec<Key<AddrKey6>>,
    ports: Vec<Key<PortKey>>,
}

/// How long replaced policy entries stay after the swap (see `install`).
const RETIRE_GRACE: Duration = Duration::from_millis(20);

/// An interface as the datapath knows it.
pub struct IfaceSpec<'a> {
    pub name: &'a str,
    pub ifindex: u32,
    pub attach: AttachMode,
    pub timeouts: Timeouts,
    pub related_icmp: bool,
}

impl Datapath {
    /// Loads the programs with the maps pinned under `dir`: maps already
    /// pinned there (an earlier agent's) are reused with their contents, so a
    /// restarted agent carries on with the flows and policy in force.
    pub fn load(max_flows: u32, dir: &Path) -> Result<Self> {
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
        let paths: Vec<(&str, PathBuf)> = MAP_NAMES.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("CT", ct_entries)
            .override_global("CT_LIMIT", &limit, true)
            .override_global("NR_CPUS", &ncpus, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .context("program sg_xdp missing")?
            .try_into()?;
        xdp.load().context("loading program sg_xdp (verifier)")?;
        let maps = Maps::build(dir, |name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        })?;
        // Continue the ids of whatever an earlier agent left in force, so
        // that new policy never overwrites entries a live packet may use.
        let cfgs = maps.iface_cfgs();
        let next_policy = 1 + cfgs.values().flat_map(|c| c.policy).max().unwrap_or(0);
        let next_slot = 1 + cfgs.values().map(|c| c.stats_slot).max().unwrap_or(0);
        let next_class = 1 + maps
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| k.data().class)
            .max()
            .unwrap_or(0);
        Ok(Datapath {
            _lock: lock,
            ebpf,
            maps,
            next_policy,
            next_class,
            next_slot,
            free_slots: Vec::new(),
            links: StdHashMap::new(),
            installed: StdHashMap::new(),
            retiring: Vec::new(),
        })
    }

    /// Writes `compiled` under fresh ids, points the interface at it in one
    /// map update; the entries of the policy it replaced go at the next
    /// [`Datapath::retire`]. Each packet therefore sees the whole old or the
    /// whole new policy.
    pub fn install(&mut self, iface: &IfaceSpec<'_>, compiled: &Compiled) -> Result<()> {
        let mut written = Installed::default();
        let result = self.write_policy(compiled, &mut written);
        let policy = match result {
            Ok(policy) => policy,
            Err(e) => {
                // Nothing points at the new ids yet: take them back out.
                self.remove_entries(&written);
                return Err(e);
            }
        };
        let slot = match self.maps.ifaces.get(&iface.ifindex, 0) {
            Ok(old) => old.stats_slot,
            Err(_) => match self.free_slots.pop() {
                Some(s) => s,
                None if self.next_slot < STATS_SLOTS => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                None => {
                    self.remove_entries(&written);
                    return Err(anyhow!("more than {} interfaces", STATS_SLOTS - 1));
                }
            },
        };
        let mut flags = 0;
        if iface.attach == AttachMode::Host {
            flags |= IFACE_HOST_SIDE;
        }
        if iface.related_icmp {
            flags |= IFACE_RELATED_ICMP;
        }
        let cfg = IfaceCfg {
            policy,
            stats_slot: slot,
            flags,
            all_response: compiled.all_response,
            tcp_established: iface.timeouts.tcp_established,
            udp_stream: iface.timeouts.udp_stream,
            udp: iface.timeouts.udp,
        };
        if let Err(e) = self.maps.ifaces.insert(iface.ifindex, cfg, 0) {
            self.remove_entries(&written);
            return Err(e).with_context(|| format!("configuring interface {}", iface.name));
        }
        if let Some(old) = self.installed.insert(iface.ifindex, written) {
            self.retiring.push(old);
        }
        Ok(())
    }

    /// Removes the entries of replaced policies. A packet that read an old
    /// configuration just before its swap may still be looking its entries
    /// up; programs run for microseconds, so a short wait outlasts them all.
    pub fn retire(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        std::thread::sleep(RETIRE_GRACE);
        for old in std::mem::take(&mut self.retiring) {
            self.remove_entries(&old);
        }
    }

    fn write_policy(&mut self, compiled: &Compiled, w: &mut Installed) -> Result<[u32; 4]> {
        let class_base = self.next_class;
        self.next_class += compiled.classes.len() as u32;
        for (i, entries) in compiled.classes.iter().enumerate() {
            let class = class_base + i as u32;
            for e in entries {
                let key = Key::new(
                    e.prefix_len,
                    PortKey {
                        class,
                        proto: e.proto,
                        port_be: e.port.to_be_bytes(),
                        _pad: 0,
                    },
                );
                self.maps
                    .ports
                    .insert(&key, PortVal { flags: e.flags }, 0)
                    .context("writing the port trie")?;
                w.ports.push(key);
            }
        }
        let mut policy = [0u32; 4];
        for (idx, addrs) in compiled.addrs.iter().enumerate() {
            if addrs.is_empty() {
                continue;
            }
            let id = self.next_policy;
            self.next_policy += 1;
            policy[idx] = id;
            for a in addrs {
                let class = class_base + a.class as u32;
                let bits = ADDR_KEY_POLICY_BITS + a.net.prefix_len() as u32;
                match a.net {
                    IpNet::V4(n) => {
                        let key = Key::new(
                            bits,
                            AddrKey4 {
                                policy: id,
                                addr: n.network().octets(),
                            },
                        );
                        self.maps
                            .addr4
                            .insert(&key, class, 0)
                            .context("writing the IPv4 address trie")?;
                        w.addr4.push(key);
                    }
                    IpNet::V6(n) => {
                        let key = Key::new(
                            bits,
                            AddrKey6 {
                                policy: id,
                                addr: n.network().octets(),
                            },
                        );
                        self.maps
                            .addr6
                            .insert(&key, class, 0)
                            .context("writing the IPv6 address trie")?;
                        w.addr6.push(key);
                    }
                }
            }
        }
        Ok(policy)
    }

    fn remove_entries(&mut self, w: &Installed) {
        for k in &w.addr4 {
            let _ = self.maps.addr4.remove(k);
        }
        for k in &w.addr6 {
            let _ = self.maps.addr6.remove(k);
        }
        for k in &w.ports {
            let _ = self.maps.ports.remove(k);
        }
    }

    /// Stops enforcing on an interface: detaches, then drops its
    /// configuration and policy. Its tracked flows go with the next sweep.
    pub fn forget(&mut self, ifindex: u32) {
        self.detach(ifindex);
        if let Ok(cfg) = self.maps.ifaces.get(&ifindex, 0) {
            self.free_slots.push(cfg.stats_slot);
        }
        let _ = self.maps.ifaces.remove(&ifindex);
        if let Some(old) = self.installed.remove(&ifindex) {
            self.retiring.push(old);
        }
    }

    /// Attaches the programs to `name`: egress with tcx, ingress with tcx or
    /// XDP, each link pinned under `dir/links`. Where an earlier agent's link
    /// is pinned, the new program replaces the old one inside it atomically:
    /// enforcement never pauses. A changed ingress hook is attached before
    /// the old one goes, so no packet passes unjudged.
    pub fn attach(&mut self, name: &str, ifindex: u32, ingress: IngressHook) -> Result<()> {
        match ingress {
            IngressHook::Tcx => self.attach_tc(name, ifindex, TcAttachType::Ingress)?,
            IngressHook::Xdp => self.attach_xdp(name, ifindex)?,
        }
        self.attach_tc(name, ifindex, TcAttachType::Egress)?;
        let other = match ingress {
            IngressHook::Tcx => LINK_XDP,
            IngressHook::Xdp => LINK_TC_INGRESS,
        };
        unpin_link(&link_pin_at(&self.maps.dir, ifindex, other));
        self.links.insert(ifindex, ingress);
        Ok(())
    }

    fn attach_tc(&mut self, name: &str, ifindex: u32, hook: TcAttachType) -> Result<()> {
        let (prog_name, kind) = if hook == TcAttachType::Ingress {
            (PROG_INGRESS, LINK_TC_INGRESS)
        } else {
            (PROG_EGRESS, LINK_TC_EGRESS)
        };
        let pin = link_pin_at(&self.maps.dir, ifindex, kind);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog_name)
            .context("program missing")?
            .try_into()?;
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(old) => adopt(
                name,
                prog_name,
                &pin,
                prog.attach_to_link(SchedClassifierLink::try_from(FdLink::from(old))?),
            ),
            Err(_) => None,
        };
        let fresh = adopted.is_none();
        let id = match adopted {
            Some(id) => id,
            None => prog
                .attach(name, hook)
                .with_context(|| format!("attaching {prog_name} to {name} with tcx"))?,
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        if fresh {
            link.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        // Dropping our handle leaves the link to its pin.
        Ok(())
    }

    fn attach_xdp(&mut self, name: &str, ifindex: u32) -> Result<()> {
        let pin = link_pin_at(&self.maps.dir, ifindex, LINK_XDP);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_XDP)
            .context("program missing")?
            .try_into()?;
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(old) => adopt(
                name,
                PROG_XDP,
                &pin,
                prog.attach_to_link(XdpLink::try_from(FdLink::from(old))?),
            ),
            Err(_) => None,
        };
        let fresh = adopted.is_none();
        let id = match adopted {
            Some(id) => id,
            None => prog
                .attach(name, XdpMode::Default)
                .with_context(|| format!("attaching {PROG_XDP} to {name} with XDP"))?,
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        if fresh {
            link.pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }

    fn detach(&mut self, ifindex: u32) {
        self.links.remove(&ifindex);
        self.maps.unpin_links(ifindex);
    }

    /// Detaches everything and removes every pin: enforcement stops.
    pub fn stop(mut self) {
        let all: Vec<u32> = self.links.keys().copied().collect();
        for ifindex in all {
            self.detach(ifindex);
        }
        self.maps.remove_pins();
    }

    /// The ingress hook this agent attached to the interface, if any.
    pub fn attached_hook(&self, ifindex: u32) -> Option<IngressHook> {
        self.links.get(&ifindex).copied()
    }

    /// Removes policy entries that no interface configuration refers to
    /// (what an earlier agent left behind once this one installed its own,
    /// or what a detach left), and the configurations of interfaces that no
    /// longer exist. An interface that exists keeps whatever it has: leaving
    /// it out of the configuration does not detach it.
    pub fn collect_garbage(&mut self) {
        for (ifindex, _) in self.maps.iface_cfgs() {
            if ifname(ifindex).is_none() {
                self.maps.unpin_links(ifindex);
                let _ = self.maps.ifaces.remove(&ifindex);
            }
        }
        let live: HashSet<u32> = self
            .maps
            .iface_cfgs()
            .values()
            .flat_map(|c| c.policy)
            .collect();
        let a4: Vec<_> = self
            .maps
            .addr4
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !live.contains(&k.data().policy))
            .collect();
        let a6: Vec<_> = self
            .maps
            .addr6
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !live.contains(&k.data().policy))
            .collect();
        let mut classes: HashSet<u32> = HashSet::new();
        for (k, v) in self.maps.addr4.iter().filter_map(|r| r.ok()) {
            if live.contains(&k.data().policy) {
                classes.insert(v);
            }
        }
        for (k, v) in self.maps.addr6.iter().filter_map(|r| r.ok()) {
            if live.contains(&k.data().policy) {
                classes.insert(v);
            }
        }
        let ports: Vec<_> = self
            .maps
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !classes.contains(&k.data().class))
            .collect();
        let n = a4.len() + a6.len() + ports.len();
        std::thread::sleep(RETIRE_GRACE);
        for k in a4 {
            let _ = self.maps.addr4.remove(&k);
        }
        for k in a6 {
            let _ = self.maps.addr6.remove(&k);
        }
        for k in ports {
            let _ = self.maps.ports.remove(&k);
        }
        if n > 0 {
            log::info!("removed {n} policy entries no interface uses");
        }
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

    /// Loads the pass-everything program, the benchmarks' baseline.
    pub fn load_baseline(&mut self) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PASS)
            .context("program missing")?
            .try_into()?;
        prog.load()?;
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

/// Which tracked flows `Maps::flush` deletes: those matching every field given.
#[derive(Debug, Clone, Default)]
pub struct FlowMatch {
    pub ifindex: Option<u32>,
    /// The peer's address lies in this block.
    pub peer: Option<IpNet>,
    pub protocol: Option<u8>,
    /// Either end's port (TCP and UDP).
    pub port: Option<u16>,
}

impl FlowMatch {
    pub fn matches(&self, k: &CtKey) -> bool {
        let port = |p: u16| u16::from_be_bytes(p.to_ne_bytes());
        self.ifindex.is_none_or(|i| k.ifindex == i)
            && self
                .peer
                .is_none_or(|n| n.contains(&ct_addr(k.family, &k.remote)))
            && self.protocol.is_none_or(|p| k.proto == p)
            && self.port.is_none_or(|p| {
                matches!(k.proto, sg_common::PROTO_TCP | sg_common::PROTO_UDP)
                    && (port(k.local_port) == p || port(k.remote_port) == p)
            })
    }
}

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfaceStats {
    pub ifindex: u32,
    /// Inbound, outbound.
    pub dirs: [Stats; 2],
    /// Tracked flows of the interface in the table now.
    pub flows_in_use: u64,
}

impl Maps {
    /// Opens the maps an agent pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Maps> {
        Maps::build(dir, |name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "opening {}: is sg-agent running here (or was it given another --pin-dir)?",
                    path.display()
                )
            })?;
            Ok(Map::from_map_data(data)?)
        })
    }

    /// The typed maps, each got by name from `get`.
    fn build(dir: &Path, mut get: impl FnMut(&str) -> Result<Map>) -> Result<Maps> {
        Ok(Maps {
            dir: dir.to_path_buf(),
            ifaces: HashMap::try_from(get("IFACES")?)?,
            addr4: LpmTrie::try_from(get("ADDR4")?)?,
            addr6: LpmTrie::try_from(get("ADDR6")?)?,
            ports: LpmTrie::try_from(get("PORTS")?)?,
            ct: HashMap::try_from(get("CT")?)?,
            frags: HashMap::try_from(get("FRAGS")?)?,
            ct_inserted: PerCpuArray::try_from(get("CT_INSERTED")?)?,
            ct_removed: Array::try_from(get("CT_REMOVED")?)?,
            stats: PerCpuArray::try_from(get("STATS")?)?,
        })
    }

    pub fn iface_cfgs(&self) -> StdHashMap<u32, IfaceCfg> {
        self.ifaces.iter().filter_map(|r| r.ok()).collect()
    }

    fn unpin_links(&self, ifindex: u32) {
        unpin_links_at(&self.dir, ifindex);
    }

    /// Stops enforcing on an interface with no agent running: its links
    /// unpinned, its configuration removed (the next agent collects its
    /// policy entries). Returns whether it was enforced.
    pub fn detach_offline(&mut self, ifindex: u32) -> bool {
        let known = self.ifaces.get(&ifindex, 0).is_ok();
        self.unpin_links(ifindex);
        let _ = self.ifaces.remove(&ifindex);
        known
    }

    /// Removes every pin under `dir` (links first, so they detach).
    pub fn remove_pins(&self) {
        Self::remove_pins_at(&self.dir);
    }

    /// Removes the pins an agent left under `dir`, without opening its maps.
    pub fn remove_pins_at(dir: &Path) {
        let links = dir.join("links");
        let ifindexes: Vec<u32> = std::fs::read_dir(&links)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.split('-').next()?.parse().ok())
            .collect();
        for ifindex in ifindexes {
            unpin_links_at(dir, ifindex);
        }
        for name in MAP_NAMES {
            let _ = std::fs::remove_file(dir.join(name));
        }
        let _ = std::fs::remove_dir(links);
        let _ = std::fs::remove_dir(dir);
    }

    /// Deletes tracked flows idle past their timeout; returns how many. Also
    /// re-bases the flow count the datapath checks against the table's
    /// contents, so that nothing (a flush, an eviction) makes it drift.
    pub fn sweep(&mut self) -> Result<u64> {
        let now = flow_clock_ns();
        // Read before the walk: flows created during it then make the count
        // too high for one sweep, never too low.
        let inserted = self.inserted();
        let cfgs = self.iface_cfgs();
        let mut stale = Vec::new();
        let mut live = 0u64;
        for item in self.ct.iter() {
            let Ok((k, v)) = item else { continue };
            let expired = match cfgs.get(&k.ifindex) {
                Some(cfg) => now.saturating_sub(v.last_seen_ns) > timeout_ns(cfg, v.state, v.flags),
                // The interface is gone: its flows can never pass again.
                None => true,
            };
            if expired {
                stale.push(k);
            } else {
                live += 1;
            }
        }
        let mut removed = 0;
        for k in stale {
            if self.ct.remove(&k).is_ok() {
                removed += 1;
            }
        }
        self.ct_removed.set(0, inserted.saturating_sub(live), 0)?;
        Ok(removed)
    }

    fn inserted(&self) -> u64 {
        self.ct_inserted
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Tracked flows the datapath counts against the allowance.
    pub fn flows_in_use(&self) -> u64 {
        self.inserted()
            .saturating_sub(self.ct_removed.get(&0, 0).unwrap_or(0))
    }

    /// Counters of every configured interface, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<IfaceStats>> {
        let mut flows: StdHashMap<u32, u64> = StdHashMap::new();
        for k in self.ct.keys().filter_map(|k| k.ok()) {
            *flows.entry(k.ifindex).or_default() += 1;
        }
        let mut out = Vec::new();
        for (ifindex, cfg) in self.iface_cfgs() {
            let mut s = IfaceStats {
                ifindex,
                flows_in_use: flows.get(&ifindex).copied().unwrap_or(0),
                ..Default::default()
            };
            for (dir, d) in s.dirs.iter_mut().enumerate() {
                for cpu in self
                    .stats
                    .get(&(cfg.stats_slot * 2 + dir as u32), 0)?
                    .iter()
                {
                    d.accepted_packets += cpu.accepted_packets;
                    d.accepted_bytes += cpu.accepted_bytes;
                    d.rejected_packets += cpu.rejected_packets;
                    d.rejected_bytes += cpu.rejected_bytes;
                    d.flows_created += cpu.flows_created;
                    d.flows_refused += cpu.flows_refused;
                    for r in Reason::ALL {
                        d.drops[r as usize] += cpu.drops[r as usize];
                    }
                }
            }
            out.push(s);
        }
        out.sort_by_key(|s| s.ifindex);
        Ok(out)
    }

    /// Deletes the tracked flows that `m` matches, the operator's way to cut
    /// flows that rule removal leaves running (docs/contract.md §3). Returns how
    /// many went. The flow count follows at the agent's next sweep.
    pub fn flush(&mut self, m: &FlowMatch) -> Result<u64> {
        let keys: Vec<CtKey> = self
            .ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| m.matches(k))
            .collect();
        let mut removed = 0;
        for k in keys {
            if self.ct.remove(&k).is_ok() {
                removed += 1;
            }
        }
        let frags: Vec<FragKey> = self
            .frags
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| m.ifindex.is_none_or(|i| k.ifindex == i))
            .collect();
        for k in frags {
            let _ = self.frags.remove(&k);
        }
        Ok(removed)
    }

    /// Inserts a tracked flow (benchmarks fill the table this way).
    pub fn insert_flow(&mut self, key: &CtKey, val: &CtVal) -> Result<()> {
        self.ct.insert(key, val, 0)?;
        Ok(())
    }

    /// The kernel's own accounting of a pinned map's memory (`memlock` in
    /// the map's fdinfo), in bytes.
    pub fn memlock(&self, name: &str) -> Result<u64> {
        use std::os::fd::{AsFd, AsRawFd};
        let info = aya::maps::MapInfo::from_pin(self.dir.join(name))?;
        let fd = info.fd()?;
        let text =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no memlock for map {name}"))
    }

    /// Datagrams whose first fragment passed, for tests.
    pub fn fragments(&self, ifindex: u32) -> Vec<FragKey> {
        self.frags
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.ifindex == ifindex)
            .collect()
    }

    /// Tracked flows of an interface.
    pub fn flows(&self, ifindex: u32) -> Vec<(CtKey, CtVal)> {
        self.ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| k.ifindex == ifindex)
            .collect()
    }
}

/// Names of an interface's link pins, `<ifindex>-<kind>`.
const LINK_TC_INGRESS: &str = "ingress";
const LINK_TC_EGRESS: &str = "egress";
const LINK_XDP: &str = "xdp";

fn link_pin_at(dir: &Path, ifindex: u32, kind: &str) -> PathBuf {
    dir.join("links").join(format!("{ifindex}-{kind}"))
}

/// The outcome of replacing the program inside an earlier agent's link.
fn adopt<I>(
    name: &str,
    prog: &str,
    pin: &Path,
    replaced: Result<I, aya::programs::ProgramError>,
) -> Option<I> {
    match replaced {
        Ok(id) => {
            log::info!(
                "{name}: adopted the pinned {prog} link; the new program replaced the old in place"
            );
            Some(id)
        }
        Err(e) => {
            // The device went away with its link: start afresh.
            log::warn!(
                "{name}: pinned link {} is stale ({e}); attaching anew",
                pin.display()
            );
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// Detaches a link: unpinned, the last handle closes it.
fn unpin_link(pin: &Path) {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            if let Err(e) = link.unpin() {
                log::warn!("unpinning {}: {e}", pin.display());
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(pin);
        }
    }
}

/// Detaches all of an interface's links.
fn unpin_links_at(dir: &Path, ifindex: u32) {
    for kind in [LINK_TC_INGRESS, LINK_TC_EGRESS, LINK_XDP] {
        unpin_link(&link_pin_at(dir, ifindex, kind));
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

/// The clock the datapath stamps flows with (`bpf_ktime_get_coarse_ns`,
/// CLOCK_MONOTONIC at tick resolution).
pub fn flow_clock_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32).as_nanos() as u64
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

/// A conntrack or fragment key's address as an `IpAddr`.
pub fn ct_addr(family: u8, a: &sg_common::Addr) -> IpAddr {
    let b = sg_common::addr_bytes(a);
    if family == sg_common::FAMILY_V4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}
