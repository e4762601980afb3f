//! Following the configuration file with inotify: its directory is watched,
//! so that a rename over the file (how complete files are published) is told
//! apart from a write in place (which may be half done). See
//! [`crate::reload`] for what each means.

use std::{
    ffi::OsString,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::reload::Trigger;

/// Events that arrive this close together are one change.
const SETTLE: Duration = Duration::from_millis(50);

/// What happened to the file, once the events settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its content may have changed, seen through this trigger.
    Content(Trigger),
    /// It was deleted or renamed away.
    Removed,
}

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Watch {
    fd: AsyncFd<Fd>,
    /// Names in the file's directory whose events concern it: the file, and
    /// when it is a symlink into its own directory, the link's first
    /// component (a Kubernetes ConfigMap swaps `..data`).
    names: Vec<OsString>,
    /// The burst seen so far, and when it settles (kept across calls, so
    /// that a caller cancelling `next` often does not postpone it).
    pending: Option<(Change, tokio::time::Instant)>,
}

impl Watch {
    pub fn new(path: &Path) -> Result<Watch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_os_string();
        let mut names = vec![name];
        if let Ok(target) = std::fs::read_link(path)
            && target.is_relative()
            && let Some(first) = target.components().next()
        {
            names.push(first.as_os_str().to_os_string());
        }
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .context("inotify_init")?;
        ino.add_watch(
            &dir,
            AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ATTRIB,
        )
        .with_context(|| format!("watching {}", dir.display()))?;
        // SAFETY: the inotify descriptor is owned by `Fd`, open until the
        // AsyncFd drops it, and `as_raw_fd` always returns that one.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering inotify: {e}"))?;
        Ok(Watch {
            fd,
            names,
            pending: None,
        })
    }

    /// Waits for the next change to the file. The last event of a burst
    /// decides: a rename followed by writes in place is a write in place.
    /// Cancel-safe: a burst seen but not yet settled is kept for the next
    /// call.
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            let events = match self.pending {
                None => self.read().await?,
                Some((c, at)) => match tokio::time::timeout_at(at, self.read()).await {
                    Ok(events) => events?,
                    Err(_) => {
                        self.pending = None;
                        return Ok(c);
                    }
                },
            };
            if let Some(c) = events.last() {
                // Each event of the burst pushes the settling on.
                self.pending = Some((*c, tokio::time::Instant::now() + SETTLE));
            }
        }
    }

    /// The relevant changes of one read.
    async fn read(&self) -> Result<Vec<Change>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) => {
                    return Ok(events
                        .into_iter()
                        .filter_map(|e| self.classify(e.mask, e.name.as_deref()))
                        .collect());
                }
                Ok(Err(e)) => return Err(e).context("reading inotify events"),
                Err(_would_block) => continue,
            }
        }
    }

    fn classify(&self, mask: AddWatchFlags, name: Option<&std::ffi::OsStr>) -> Option<Change> {
        // Lost events: nothing proves the file whole.
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            return Some(Change::Content(Trigger::InPlace));
        }
        if !self.names.iter().any(|n| Some(n.as_os_str()) == name) {
            return None;
        }
        Some(if mask.contains(AddWatchFlags::IN_MOVED_TO) {
            Change::Content(Trigger::Renamed)
        } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
            Change::Removed
        } else {
            Change::Content(Trigger::InPlace)
        })
    }
}
