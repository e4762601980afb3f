//! The agent's handle on the eBPF object: loading, writing compiled policy
//! into the maps, attaching with tcx, sweeping idle flows, reading counters.

use std::{collections::HashMap as StdHashMap, net::IpAddr, time::Duration};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use ipnet::IpNet;
use sg_common::{
    ADDR_KEY_POLICY_BITS, AddrKey4, AddrKey6, CtKey, CtVal, FragKey, IFACE_HOST_SIDE,
    IFACE_RELATED_ICMP, IfaceCfg, PortKey, PortVal, Reason, STATS_SLOTS, Stats, timeout_ns,
};

use crate::{
    compile::Compiled,
    config::{AttachMode, Timeouts},
};

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg"));

pub const PROG_INGRESS: &str = "sg_tc_ingress";
pub const PROG_EGRESS: &str = "sg_tc_egress";

/// Spare entries per CPU list, so that replacing an expired entry (which
/// briefly needs a second node) never makes a full list evict.
const CT_SLACK_PER_CPU: u32 = 64;

pub struct Datapath {
    ebpf: Ebpf,
    ifaces: HashMap<MapData, u32, IfaceCfg>,
    addr4: LpmTrie<MapData, AddrKey4, u32>,
    addr6: LpmTrie<MapData, AddrKey6, u32>,
    ports: LpmTrie<MapData, PortKey, PortVal>,
    ct: HashMap<MapData, CtKey, CtVal>,
    frags: HashMap<MapData, FragKey, u64>,
    ct_removed: Array<MapData, u64>,
    stats: PerCpuArray<MapData, Stats>,
    next_policy: u32,
    next_class: u32,
    next_slot: u32,
    free_slots: Vec<u32>,
    links: StdHashMap<u32, Vec<(&'static str, SchedClassifierLinkId)>>,
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
    /// Loads the programs and creates the maps, sized for `max_flows`.
    pub fn load(max_flows: u32) -> Result<Self> {
        raise_memlock();
        let ncpus = aya::util::nr_cpus().map_err(|(f, e)| anyhow!("{f}: {e}"))? as u32;
        let ct_entries = max_flows
            .checked_add(CT_SLACK_PER_CPU)
            .and_then(|n| n.checked_mul(ncpus))
            .context("conntrack.max_flows is too large for this many CPUs")?;
        let limit = max_flows as u64;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CT", ct_entries)
            .override_global("CT_LIMIT", &limit, true)
            .override_global("NR_CPUS", &ncpus, true)
            .load(OBJECT)
            .context("loading the eBPF object")?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        Ok(Datapath {
            ifaces: HashMap::try_from(take("IFACES")?)?,
            addr4: LpmTrie::try_from(take("ADDR4")?)?,
            addr6: LpmTrie::try_from(take("ADDR6")?)?,
            ports: LpmTrie::try_from(take("PORTS")?)?,
            ct: HashMap::try_from(take("CT")?)?,
            frags: HashMap::try_from(take("FRAGS")?)?,
            ct_removed: Array::try_from(take("CT_REMOVED")?)?,
            stats: PerCpuArray::try_from(take("STATS")?)?,
            ebpf,
            next_policy: 1,
            next_class: 1,
            next_slot: 1,
            free_slots: Vec::new(),
            links: StdHashMap::new(),
            installed: StdHashMap::new(),
            retiring: Vec::new(),
        })
    }

    /// Writes `compiled` under fresh ids, points the interface at it in one
    /// map update, then removes the entries of the policy it replaced. Each
    /// packet therefore sees the whole old or the whole new policy.
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
        let slot = match self.ifaces.get(&iface.ifindex, 0) {
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
        if let Err(e) = self.ifaces.insert(iface.ifindex, cfg, 0) {
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
                self.ports
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
                        self.addr4
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
                        self.addr6
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
            let _ = self.addr4.remove(k);
        }
        for k in &w.addr6 {
            let _ = self.addr6.remove(k);
        }
        for k in &w.ports {
            let _ = self.ports.remove(k);
        }
    }

    /// Stops enforcing on an interface: detaches, then drops its
    /// configuration and policy. Its tracked flows go with the next sweep.
    pub fn forget(&mut self, ifindex: u32) {
        self.detach(ifindex);
        if let Ok(cfg) = self.ifaces.get(&ifindex, 0) {
            self.free_slots.push(cfg.stats_slot);
        }
        let _ = self.ifaces.remove(&ifindex);
        if let Some(old) = self.installed.remove(&ifindex) {
            self.retiring.push(old);
        }
    }

    /// Attaches both programs to `name` with tcx.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<()> {
        let mut links = Vec::new();
        for (prog_name, hook) in [
            (PROG_INGRESS, TcAttachType::Ingress),
            (PROG_EGRESS, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .context("program missing")?
                .try_into()?;
            let id = prog
                .attach(name, hook)
                .with_context(|| format!("attaching {prog_name} to {name} with tcx"))?;
            links.push((prog_name, id));
        }
        self.links.insert(ifindex, links);
        Ok(())
    }

    fn detach(&mut self, ifindex: u32) {
        for (prog_name, id) in self.links.remove(&ifindex).unwrap_or_default() {
            if let Some(Ok(prog)) = self
                .ebpf
                .program_mut(prog_name)
                .map(<&mut SchedClassifier>::try_from)
                && let Err(e) = prog.detach(id)
            {
                log::warn!("detaching {prog_name}: {e}");
            }
        }
    }

    /// Detaches everything this agent attached.
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.links.keys().copied().collect();
        for ifindex in all {
            self.detach(ifindex);
        }
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.links.contains_key(&ifindex)
    }

    /// Interfaces with a policy installed.
    pub fn interfaces(&self) -> Vec<u32> {
        self.installed.keys().copied().collect()
    }

    /// Deletes tracked flows idle past their timeout; returns how many.
    pub fn sweep(&mut self) -> Result<u64> {
        let now = boottime_ns();
        let cfgs: StdHashMap<u32, IfaceCfg> = self.ifaces.iter().filter_map(|r| r.ok()).collect();
        let mut stale = Vec::new();
        for item in self.ct.iter() {
            let Ok((k, v)) = item else { continue };
            let expired = match cfgs.get(&k.ifindex) {
                Some(cfg) => now.saturating_sub(v.last_seen_ns) > timeout_ns(cfg, v.state, v.flags),
                // The interface is gone: its flows can never pass again.
                None => true,
            };
            if expired {
                stale.push(k);
            }
        }
        let mut removed = 0;
        for k in stale {
            if self.ct.remove(&k).is_ok() {
                removed += 1;
            }
        }
        self.count_removed(removed)?;
        Ok(removed)
    }

    /// Counters of an interface (inbound, outbound), summed over CPUs.
    pub fn stats(&self, ifindex: u32) -> Result<[Stats; 2]> {
        let slot = self.ifaces.get(&ifindex, 0)?.stats_slot;
        let mut out = [Stats::default(); 2];
        for (dir, s) in out.iter_mut().enumerate() {
            for cpu in self.stats.get(&(slot * 2 + dir as u32), 0)?.iter() {
                s.accepted_packets += cpu.accepted_packets;
                s.accepted_bytes += cpu.accepted_bytes;
                s.rejected_packets += cpu.rejected_packets;
                s.rejected_bytes += cpu.rejected_bytes;
                s.flows_created += cpu.flows_created;
                s.flows_refused += cpu.flows_refused;
                for r in Reason::ALL {
                    s.drops[r as usize] += cpu.drops[r as usize];
                }
            }
        }
        Ok(out)
    }

    /// Deletes the tracked flows of `ifindex` (all interfaces: `None`), the
    /// operator's way to cut flows that rule removal leaves running
    /// (SEMANTICS §3). Returns how many went.
    pub fn flush(&mut self, ifindex: Option<u32>) -> Result<u64> {
        let keys: Vec<CtKey> = self
            .ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| ifindex.is_none_or(|i| k.ifindex == i))
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
            .filter(|k| ifindex.is_none_or(|i| k.ifindex == i))
            .collect();
        for k in frags {
            let _ = self.frags.remove(&k);
        }
        self.count_removed(removed)?;
        Ok(removed)
    }

    fn count_removed(&mut self, n: u64) -> Result<()> {
        if n > 0 {
            let total = self.ct_removed.get(&0, 0)? + n;
            self.ct_removed.set(0, total, 0)?;
        }
        Ok(())
    }

    /// Datagrams whose first fragment passed, for tests.
    pub fn fragments(&self, ifindex: u32) -> Vec<FragKey> {
        self.frags
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.ifindex == ifindex)
            .collect()
    }

    /// Runs one program on `frame` with `BPF_PROG_TEST_RUN` (the loopback
    /// device's ifindex, 1) `repeat` times; returns the program's return value
    /// and the kernel's mean time per run.
    pub fn test_run(&self, ingress: bool, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &SchedClassifier = self
            .ebpf
            .program(if ingress { PROG_INGRESS } else { PROG_EGRESS })
            .context("program missing")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration))
    }

    /// Tracked flows of an interface, for logs and tests.
    pub fn flows(&self, ifindex: u32) -> Vec<(CtKey, CtVal)> {
        self.ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| k.ifindex == ifindex)
            .collect()
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The clock `bpf_ktime_get_boot_ns` reads.
pub fn boottime_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
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

/// Renders a conntrack key's address for logs.
pub fn ct_addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == sg_common::FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}
