//! Where the datapath's state lives between agents, and who owns it: the pin
//! directory on bpffs, a lock that makes one agent its only owner, and the
//! check that the bpffs holding it outlives the agent.

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use sg_common::LAYOUT_VERSION;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// Where bpffs is conventionally mounted (and where systemd mounts it).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The default pin directory: versioned by map layout, and per network
/// namespace, since interfaces (and their ifindexes) are.
pub fn default_pin_dir() -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(PathBuf::from(format!(
        "{BPFFS_ROOT}/sg/v{LAYOUT_VERSION}/net-{}",
        ns.ino()
    )))
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure the pins under `dir` outlive this process: the bpffs holding
/// them must not be one that goes away with the agent's mount namespace.
/// Mounts bpffs at /sys/fs/bpf when it is missing there (it is not mounted
/// at boot everywhere), but only in a mount namespace that outlives us.
///
/// `ip netns exec` runs its command in a mount namespace of its own, with a
/// fresh /sys: a bpffs mounted there dies with the last process inside, and
/// with it the pinned links, which leaves the interfaces unfiltered.
pub fn prepare(dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    let mount_point = if dir.starts_with(root) {
        root.to_path_buf()
    } else {
        // The nearest existing ancestor: what the pins would sit on.
        dir.ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"))
            .to_path_buf()
    };
    let ns = MountNs::own()?;
    let bpffs = is_bpffs(&mount_point);
    if ns.outlives_us() {
        if !bpffs && mount_point == root {
            std::fs::create_dir_all(root).ok();
            nix::mount::mount(
                Some("bpf"),
                root,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting bpffs at /sys/fs/bpf")?;
            log::info!("mounted bpffs at /sys/fs/bpf");
        }
        return Ok(());
    }
    let how = "run sg-agent in the host's mount namespace with only the network namespace \
               entered (`nsenter --net=/run/netns/NAME sg-agent ...`, not `ip netns exec`), \
               or give --pin-dir a bpffs mounted where it outlives the agent";
    if !bpffs {
        bail!(
            "{} is not on bpffs, and this process runs in a mount namespace of its own (as \
             under `ip netns exec`): a bpffs mounted here would vanish with sg-agent, and with \
             it the programs, leaving the interfaces unfiltered; {how}",
            mount_point.display()
        );
    }
    let dev = std::fs::metadata(&mount_point)?.dev();
    match ns.bpffs_elsewhere(dev) {
        Some(false) => bail!(
            "the bpffs at {} is mounted only in this process's own mount namespace (as under \
             `ip netns exec`): it would vanish with sg-agent, and with it the programs, leaving \
             the interfaces unfiltered; {how}",
            mount_point.display()
        ),
        Some(true) => Ok(()),
        None => {
            log::debug!(
                "cannot see another mount namespace to tell whether the bpffs at {} outlives \
                 this one (a container's only process?); trusting it",
                mount_point.display()
            );
            Ok(())
        }
    }
}

/// This process's mount namespace, and the processes it can see.
struct MountNs {
    own: PathBuf,
    /// Processes that are neither this one nor one of its ancestors.
    others: Vec<u32>,
}

impl MountNs {
    fn own() -> Result<MountNs> {
        let own = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
        let mut ancestry = vec![std::process::id()];
        let mut pid = std::process::id();
        while let Some(ppid) = parent_of(pid).filter(|p| *p > 0 && !ancestry.contains(p)) {
            ancestry.push(ppid);
            pid = ppid;
        }
        let others = std::fs::read_dir("/proc")
            .context("reading /proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| !ancestry.contains(p))
            .collect();
        Ok(MountNs { own, others })
    }

    fn ns_of(pid: u32) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
    }

    /// Some process other than us and our ancestors lives in our mount
    /// namespace (the host's has kernel threads): it does not end with us.
    fn outlives_us(&self) -> bool {
        self.others
            .iter()
            .any(|p| Self::ns_of(*p).as_ref() == Some(&self.own))
    }

    /// Whether another mount namespace mounts the bpffs of device `dev`
    /// (then it outlives ours); `None` when no other namespace is visible.
    fn bpffs_elsewhere(&self, dev: u64) -> Option<bool> {
        let want = format!(
            "{}:{}",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        );
        let mut seen = std::collections::HashSet::new();
        for p in &self.others {
            let Some(ns) = Self::ns_of(*p) else { continue };
            if ns == self.own || !seen.insert(ns) {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/{p}/mountinfo")) else {
                continue;
            };
            // "ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS] - FSTYPE SOURCE OPTS"
            let found = info.lines().any(|l| {
                let mut f = l.split_whitespace();
                f.nth(2) == Some(want.as_str())
                    && l.split(" - ").nth(1).and_then(|t| t.split(' ').next()) == Some("bpf")
            });
            if found {
                return Some(true);
            }
        }
        (!seen.is_empty()).then_some(false)
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// An exclusive lock on a pin directory, held for an agent's life (or a
/// command's that changes the pins with no agent running): the kernel drops
/// it when the process ends, however it ends.
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinLock {
    /// Takes the lock on `dir` (created if needed), or fails naming the
    /// process that holds it.
    pub fn take(dir: &Path) -> Result<PinLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PinLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another sg-agent ({}) already owns {}: one agent per pin directory (stop it \
                 first, or give this one another network namespace or --pin-dir)",
                holder(dir).map_or("PID unknown".to_string(), |p| format!("PID {p}")),
                dir.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", dir.display())),
        }
    }
}

/// The PID holding the lock on `dir`, from the kernel's table of locks.
pub fn holder(dir: &Path) -> Option<u32> {
    let meta = std::fs::metadata(dir).ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    // "1: FLOCK  ADVISORY  WRITE 1234 00:27:5678 0 EOF"
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
}
