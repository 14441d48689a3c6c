//! v1 memory notifications as runc's NotifyOOM and NotifyMemoryPressure
//! register them: an eventfd per event, bound to `memory.oom_control` or
//! `memory.pressure_level` through `cgroup.event_control`. The kernel also
//! signals each eventfd when the cgroup is removed.
use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::super::notify::{io_error, Notification, PressureLevel, Source};
use super::super::{Error, Result};

/// Pressure levels listened to: `low` fires on any reclaim, too often to
/// be news.
const LEVELS: [PressureLevel; 2] = [PressureLevel::Medium, PressureLevel::Critical];

struct Registration {
    efd: EventFd,
    // The kernel holds the file for as long as the registration lives.
    _file: File,
}

pub(in crate::cgroups) struct V1Notify {
    dir: PathBuf,
    oom: Registration,
    pressure: Vec<(PressureLevel, Registration)>,
}

impl V1Notify {
    /// Registers for OOM and pressure events on the memory directory `dir`.
    pub fn new(dir: &Path) -> Result<V1Notify> {
        let oom = register(dir, "memory.oom_control", None)?;
        let pressure = LEVELS
            .iter()
            .map(|l| Ok((*l, register(dir, "memory.pressure_level", Some(l.name()))?)))
            .collect::<Result<_>>()?;
        Ok(V1Notify {
            dir: dir.to_path_buf(),
            oom,
            pressure,
        })
    }
}

fn register(dir: &Path, file: &str, arg: Option<&str>) -> Result<Registration> {
    let path = dir.join(file);
    let target = File::open(&path).map_err(|source| Error::Io {
        path: path.clone(),
        op: "open for notifications".into(),
        source,
    })?;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| io_error(&path, "eventfd", e))?;
    let mut line = format!("{} {}", efd.as_raw_fd(), target.as_raw_fd());
    if let Some(a) = arg {
        line = format!("{line} {a}");
    }
    let control = dir.join("cgroup.event_control");
    fs::write(&control, line).map_err(|source| Error::Io {
        path: control,
        op: format!("register for {file} events"),
        source,
    })?;
    Ok(Registration { efd, _file: target })
}

/// Whether the eventfd was signalled (reading resets it).
fn fired(r: &Registration) -> bool {
    r.efd.read().is_ok_and(|n| n > 0)
}

impl Source for V1Notify {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(&self.oom)
            .chain(self.pressure.iter().map(|(_, r)| r))
            .map(|r| r.efd.as_fd())
            .collect()
    }

    fn drain(&mut self) -> Result<Option<Vec<Notification>>> {
        let oom = fired(&self.oom);
        let level = self
            .pressure
            .iter()
            .filter(|(_, r)| fired(r))
            .map(|(l, _)| *l)
            .max();
        // Removal signals every eventfd: that is the end, not an event.
        if !self.dir.join("memory.oom_control").exists() {
            return Ok(None);
        }
        let mut out = Vec::new();
        if oom {
            out.push(Notification::Oom);
        }
        out.extend(level.map(Notification::MemoryPressure));
        Ok(Some(out))
    }
}
