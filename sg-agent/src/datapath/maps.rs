//! The pinned maps: opened by name from the loaded object or from their
//! pins (`sg-agent stats`, `flush`, `detach` in another process).

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use sg_common::{
    AddrKey4, AddrKey6, CtKey, CtVal, FragKey, IfaceCfg, Lens, PolicyKey, PolicyVal, Stats, names,
};

use super::links::unpin_links_at;

/// The maps, pinned under one directory: the agent's working set, and what
/// `sg-agent stats`/`flush` open from another process.
pub struct Maps {
    pub dir: PathBuf,
    pub(super) ifaces: HashMap<MapData, u32, IfaceCfg>,
    pub(super) addr4: HashMap<MapData, AddrKey4, u32>,
    pub(super) addr6: HashMap<MapData, AddrKey6, u32>,
    pub(super) lens: Array<MapData, Lens>,
    pub(super) policy: HashMap<MapData, PolicyKey, PolicyVal>,
    pub(super) ct: HashMap<MapData, CtKey, CtVal>,
    pub(super) frags: HashMap<MapData, FragKey, u64>,
    pub(super) ct_inserted: PerCpuArray<MapData, u64>,
    pub(super) ct_removed: Array<MapData, u64>,
    pub(super) stats: PerCpuArray<MapData, Stats>,
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
    pub(super) fn build(dir: &Path, mut get: impl FnMut(&str) -> Result<Map>) -> Result<Maps> {
        Ok(Maps {
            dir: dir.to_path_buf(),
            ifaces: HashMap::try_from(get(names::IFACES)?)?,
            addr4: HashMap::try_from(get(names::ADDR4)?)?,
            addr6: HashMap::try_from(get(names::ADDR6)?)?,
            lens: Array::try_from(get(names::LENS)?)?,
            policy: HashMap::try_from(get(names::POLICY)?)?,
            ct: HashMap::try_from(get(names::CT)?)?,
            frags: HashMap::try_from(get(names::FRAGS)?)?,
            ct_inserted: PerCpuArray::try_from(get(names::CT_INSERTED)?)?,
            ct_removed: Array::try_from(get(names::CT_REMOVED)?)?,
            stats: PerCpuArray::try_from(get(names::STATS)?)?,
        })
    }

    /// Entries of the shared address map (both families) and of the
    /// policy map: the figures of "state grows with addresses + rules".
    pub fn policy_sizes(&self) -> (usize, usize) {
        let addrs = self.addr4.keys().count() + self.addr6.keys().count();
        (addrs, self.policy.keys().count())
    }

    pub fn iface_cfgs(&self) -> StdHashMap<u32, IfaceCfg> {
        self.ifaces.iter().filter_map(|r| r.ok()).collect()
    }

    pub(super) fn unpin_links(&self, ifindex: u32) {
        unpin_links_at(&self.dir, ifindex);
    }

    /// Stops enforcing on an interface: its links unpinned (which detaches
    /// them), its configuration removed; returns the configuration it had.
    /// Its policy entries stay for `collect_garbage` (or, with no agent
    /// running, the next agent's).
    pub fn unconfigure(&mut self, ifindex: u32) -> Option<IfaceCfg> {
        let cfg = self.ifaces.get(&ifindex, 0).ok();
        self.unpin_links(ifindex);
        let _ = self.ifaces.remove(&ifindex);
        cfg
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
        for name in names::MAPS {
            let _ = std::fs::remove_file(dir.join(name));
        }
        let _ = std::fs::remove_dir(links);
        let _ = std::fs::remove_dir(dir);
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
}
