//! Memory notifications for `events`: OOM kills and memory pressure, each
//! version from its own source (v1 eventfds on `cgroup.event_control`, v2
//! inotify on `memory.events`), waited for together with a timeout so the
//! caller can interleave its periodic statistics.
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use super::{Error, Result};

/// The `memory.pressure_level` levels (v1), lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PressureLevel {
    Low,
    Medium,
    Critical,
}

impl PressureLevel {
    pub(super) fn name(self) -> &'static str {
        match self {
            PressureLevel::Low => "low",
            PressureLevel::Medium => "medium",
            PressureLevel::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// The OOM killer acted in the cgroup.
    Oom,
    /// The kernel reports memory pressure at this level (the highest that
    /// fired since the last wait).
    MemoryPressure(PressureLevel),
}

/// One version's notification source.
pub(super) trait Source: Send {
    /// Descriptors that become readable when something happened.
    fn fds(&self) -> Vec<BorrowedFd<'_>>;
    /// Reads what happened; `None` once the cgroup is gone.
    fn drain(&mut self) -> Result<Option<Vec<Notification>>>;
}

/// The notifications of one cgroup, registered once (see [`super::Cgroup::notifier`]).
pub struct Notifier {
    source: Box<dyn Source>,
}

impl Notifier {
    pub(super) fn new(source: Box<dyn Source>) -> Notifier {
        Notifier { source }
    }

    /// For a cgroup without a memory controller: nothing ever happens.
    pub(super) fn none() -> Notifier {
        Notifier::new(Box::new(Nothing))
    }

    /// Waits up to `timeout` (at most a minute) and returns what happened
    /// (nothing on timeout), or `None` once the cgroup is gone.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Vec<Notification>>> {
        let ms = timeout.as_millis().min(60_000) as u16;
        {
            let fds = self.source.fds();
            let mut pfds: Vec<PollFd> = fds
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
                .collect();
            match poll(&mut pfds, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => return Ok(Some(Vec::new())),
                Ok(_) => {}
                Err(e) => return Err(io_error(Path::new("poll"), "wait for notifications", e)),
            }
        }
        self.source.drain()
    }
}

struct Nothing;

impl Source for Nothing {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
    fn drain(&mut self) -> Result<Option<Vec<Notification>>> {
        Ok(Some(Vec::new()))
    }
}

pub(super) fn io_error(path: &Path, op: &str, e: Errno) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        op: op.to_string(),
        source: e.into(),
    }
}
