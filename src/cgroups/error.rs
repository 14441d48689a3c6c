//! The errors of the cgroup layer, and how cgroups-rs failures become them.
use std::io;
use std::path::{Path, PathBuf};

use super::FreezerState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cgroup path or descriptor is unusable.
    #[error("cgroup {path}: {message}")]
    Cgroup { path: String, message: String },
    /// Reading or writing a cgroup file or directory failed.
    #[error("cgroup {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: String,
        #[source]
        source: io::Error,
    },
    /// A cgroups-rs operation failed (the detail carries the kernel's answer).
    #[error("cgroup {}: {op}: {detail}", path.display())]
    Controller {
        path: PathBuf,
        op: String,
        detail: String,
    },
    /// A requested resource the kernel refused.
    #[error("cgroup {}: {setting} = {value} refused: {detail}; use a value the kernel accepts ({hint})", path.display())]
    Refused {
        path: PathBuf,
        setting: String,
        value: String,
        detail: String,
        hint: &'static str,
    },
    /// A requested resource this runtime cannot apply on this host.
    #[error("cgroup {path}: {setting} is not supported {why}; remove it from linux.resources")]
    Unsupported {
        path: String,
        setting: String,
        why: String,
    },
    /// An existing cgroup a new container may not be put into.
    #[error("cgroup {}: {why}; {fix}", path.display())]
    InUse {
        path: PathBuf,
        why: String,
        fix: &'static str,
    },
    /// The systemd driver failed (no systemd, bad path, a bus call).
    #[error(transparent)]
    Systemd(Box<super::systemd::Error>),
    /// The kernel did not finish freezing in time; the cgroup was thawed again.
    #[error("cgroup {}: not frozen after {waited_ms} ms (kernel state {state:?}), thawed it again; a task may be stuck in uninterruptible sleep", path.display())]
    FreezeTimeout {
        path: PathBuf,
        waited_ms: u64,
        state: FreezerState,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<super::systemd::Error> for Error {
    fn from(e: super::systemd::Error) -> Error {
        Error::Systemd(Box::new(e))
    }
}

/// A cgroups-rs operation `op` on `path` failed.
pub(super) fn backend(path: &Path, op: &str, e: cgroups_rs::fs::error::Error) -> Error {
    Error::Controller {
        path: path.to_path_buf(),
        op: op.to_string(),
        detail: describe(&e),
    }
}

/// The kernel refused `value` for `setting`; the hint says what it accepts.
pub(super) fn refused(
    path: &Path,
    setting: &str,
    value: impl std::fmt::Display,
    e: cgroups_rs::fs::error::Error,
) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        setting: setting.to_string(),
        value: value.to_string(),
        detail: describe(&e),
        hint: hint(setting),
    }
}

/// Writes `value`, if there is one, through `write`; a refusal names
/// `setting` and the value as the config gave it.
pub(super) fn set<T: Copy + std::fmt::Display>(
    dir: &Path,
    setting: &str,
    value: Option<T>,
    write: impl FnOnce(T) -> cgroups_rs::fs::error::Result<()>,
) -> Result<()> {
    match value {
        Some(v) => write(v).map_err(|e| refused(dir, setting, v, e)),
        None => Ok(()),
    }
}

/// Writes `value` to the cgroup file `dir/file`; a refusal names
/// `setting` (as linux.resources spells it) and the value.
pub(super) fn write_setting(dir: &Path, file: &str, setting: &str, value: &str) -> Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| refusal(dir, file, setting, value, e))
}

fn refusal(dir: &Path, file: &str, setting: &str, value: &str, e: io::Error) -> Error {
    Error::Refused {
        path: dir.join(file),
        setting: setting.to_string(),
        value: value.to_string(),
        detail: e.to_string(),
        hint: hint(setting),
    }
}

/// Writes `first` then `second` (file, setting, value), in the order runc
/// uses for pairs the kernel checks against each other (cfs period and
/// quota, rt period and runtime): when the kernel refuses `first` with
/// EINVAL because the current `second` does not fit it, `second` is written
/// and `first` retried, so every step stays within the parent's limits.
pub(super) fn write_pair(
    dir: &Path,
    first: Option<(&str, &str, String)>,
    second: Option<(&str, &str, String)>,
) -> Result<()> {
    let mut retry = None;
    if let Some((file, setting, value)) = &first {
        match std::fs::write(dir.join(file), value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                if second.is_none() {
                    return Err(refusal(dir, file, setting, value, e));
                }
                retry = first.clone()
            }
            Err(e) => return Err(refusal(dir, file, setting, value, e)),
        }
    }
    if let Some((file, setting, value)) = &second {
        write_setting(dir, file, setting, value)?;
    }
    match retry {
        Some((file, setting, value)) => write_setting(dir, file, setting, &value),
        None => Ok(()),
    }
}

fn hint(setting: &str) -> &'static str {
    match setting {
        "cpu.quota" => "quota must be -1 or at least 1000 us, and fit the parent's quota",
        "cpu.period" => "period must be between 1000 us and 1 s",
        "cpu.realtimePeriod" | "cpu.realtimeRuntime" => {
            "runtime must be <= period and fit the parent's realtime runtime"
        }
        "cpu.shares" => "shares must be 2..262144",
        "memory.limit" | "memory.swap" => {
            "the limit must be above current usage, and memory+swap >= memory"
        }
        "cpu.cpus" | "cpu.mems" => "list CPUs/nodes that exist and the parent cgroup allows",
        s if s.starts_with("blockIO.weightDevice") => {
            "weights are 1..1000, for a device whose I/O scheduler is bfq (/sys/dev/block/MAJ:MIN/queue/scheduler)"
        }
        s if s.starts_with("blockIO.") && s.contains("eight") => {
            "weights are 10..1000 (BFQ: 1..1000)"
        }
        s if s.starts_with("blockIO.throttle") => {
            "name a whole block device that exists (major:minor of a disk)"
        }
        _ => "see the kernel's cgroup documentation",
    }
}

fn describe(e: &cgroups_rs::fs::error::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(cause) => format!("{}: {}", e.kind(), cause),
        None => e.kind().to_string(),
    }
}
