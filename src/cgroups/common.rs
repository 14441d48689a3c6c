//! What the v1 and v2 backends share: the [`CgroupManager`] trait each of
//! them implements, the handle both work through (the descriptor plus the
//! cgroups-rs cgroup), and small file and directory helpers.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup::Cgroup as RsCgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxResources};

use super::devices::Rule;
use super::error::backend;
use super::{CgroupDescriptor, Error, FreezerState, Notifier, Result, Stats, UNIFIED_KEY};

/// How long a freeze waits for the kernel to report FROZEN.
pub(super) const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cgroup of one version: what differs between v1 and v2. Everything
/// else (creating, adding tasks, listing, thawing, removing, the order in
/// which resources are applied) is the same for both and done through
/// [`Handle`].
pub(super) trait CgroupManager: Resources + Freezer + Send + Sync {
    fn handle(&self) -> &Handle;
    fn stats(&self) -> Result<Stats>;
    /// OOM (and, where the version has them, memory-pressure) notifications.
    fn notifier(&self) -> Result<Notifier>;
}

/// The settings whose files or meaning differ between versions.
pub(super) trait Resources {
    /// Refuses the settings this version cannot apply (after the checks
    /// both versions share), before anything is written.
    fn check(&self, r: &LinuxResources) -> Result<()>;
    /// Writes `memory.limit` and `memory.swap`, which mean different
    /// things on v1 (swap = memory+swap) and v2 (swap alone).
    fn set_limit_and_swap(&self, ctl: &MemController, lim: Option<i64>, swap: i64) -> Result<()>;
    /// Writes shares, quota, period and the realtime settings.
    fn set_cpu(&self, ctl: &CpuController, c: &LinuxCpu) -> Result<()>;
    /// Installs the device rules (already checked, defaults appended).
    fn set_devices(&self, rules: &[Rule]) -> Result<()>;
    /// Writes `linux.resources.unified` (file name → value).
    fn set_unified(&self, u: &HashMap<String, String>) -> Result<()>;
    /// Writes `linux.resources.memory.kernelTCP` (v1 only; v2 refuses it
    /// in its check).
    fn set_kernel_tcp(&self, limit: i64) -> Result<()>;
    /// Writes `linux.resources.blockIO`: weights and throttles.
    fn set_block_io(&self, b: &LinuxBlockIo) -> Result<()>;
}

/// Freezing, which each version requests and observes its own way.
pub(super) trait Freezer {
    /// Freezes and returns once the kernel reports FROZEN (or thaws again
    /// and fails after [`FREEZE_TIMEOUT`]).
    fn freeze(&self) -> Result<()>;
    /// The state as the kernel reports it (not the requested one).
    fn freezer_state(&self) -> Result<FreezerState>;
}

/// The descriptor and the cgroups-rs cgroup whose controller paths are
/// exactly the descriptor's directories.
pub(super) struct Handle {
    pub desc: CgroupDescriptor,
    pub inner: RsCgroup,
    /// Why a controller cgroups-rs does not offer is missing, in this
    /// version's terms.
    missing: &'static str,
}

impl Handle {
    pub fn new(desc: CgroupDescriptor, inner: RsCgroup, missing: &'static str) -> Handle {
        Handle {
            desc,
            inner,
            missing,
        }
    }

    pub fn invalid(&self, message: String) -> Error {
        Error::Cgroup {
            path: self.desc.path.clone(),
            message,
        }
    }

    pub fn unsupported(&self, setting: &str, why: &str) -> Error {
        Error::Unsupported {
            path: self.desc.path.clone(),
            setting: setting.to_string(),
            why: why.to_string(),
        }
    }

    /// Refuses the first `(present, setting, why)` whose setting is present.
    pub fn refuse_any(&self, settings: &[(bool, &str, &str)]) -> Result<()> {
        match settings.iter().find(|(present, ..)| *present) {
            Some((_, setting, why)) => Err(self.unsupported(setting, why)),
            None => Ok(()),
        }
    }

    /// The directory named in messages: the v2 one, else the freezer's.
    pub fn main_dir(&self) -> &Path {
        self.desc
            .dirs
            .get(UNIFIED_KEY)
            .or_else(|| self.desc.dirs.get("freezer"))
            .or_else(|| self.desc.dirs.values().next())
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/"))
    }

    pub fn controller<'a, T>(&'a self, name: &str) -> Result<&'a T>
    where
        &'a T: From<&'a cgroups_rs::fs::Subsystem>,
        T: Controller + cgroups_rs::fs::ControllIdentifier,
    {
        self.inner
            .controller_of::<T>()
            .ok_or_else(|| self.unsupported(&format!("the {name} controller"), self.missing))
    }

    pub fn thaw(&self) -> Result<()> {
        let ctl = self.controller::<FreezerController>("freezer")?;
        ctl.thaw().map_err(|e| backend(ctl.path(), "thaw", e))
    }

    /// Thaws a cgroup that did not freeze in time and says so.
    pub fn freeze_timed_out(&self, path: &Path, start: Instant, state: FreezerState) -> Result<()> {
        let thaw = self.thaw();
        let err = Error::FreezeTimeout {
            path: path.to_path_buf(),
            waited_ms: start.elapsed().as_millis() as u64,
            state,
        };
        thaw?;
        Err(err)
    }
}

pub(super) fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "read".into(),
        source,
    })
}

pub(super) fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    parse_u64_or_max(&text).ok_or_else(|| Error::Cgroup {
        path: path.display().to_string(),
        message: format!("expected a number or \"max\", found {:?}", text.trim()),
    })
}

pub(super) fn parse_u64_or_max(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}

/// Writes `value` to the file `name` of `dir`, opened by the kernel
/// beneath `dir` (no symlinks, no `..`, no other mount): a name from a
/// config cannot reach a file outside the cgroup.
pub(super) fn write_beneath(dir: &Path, name: &str, value: &str) -> io::Result<()> {
    let d = fs::File::open(dir)?;
    crate::beneath::write(&d, name, value).map_err(io::Error::from)
}

/// Each directory once (v1 hierarchies may share one, as cpu,cpuacct do).
pub(super) fn unique_dirs(dirs: &BTreeMap<String, PathBuf>) -> Vec<PathBuf> {
    let set: BTreeSet<&PathBuf> = dirs.values().collect();
    set.into_iter().cloned().collect()
}

/// Removes the cgroups below `dir`, deepest first, as a container that
/// manages its own subtree (cgroup namespace, nsdelegate) leaves them:
/// `dir` itself can only go once they are gone. Only directories of the
/// same filesystem, only by rmdir (which the kernel refuses for a cgroup
/// that still has processes or children); failures show in what is left.
pub(super) fn remove_children(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(dir) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() && meta.dev() == top.dev() {
            remove_children(&e.path());
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// The highest ancestor of `dir` (or `dir` itself) that does not exist yet.
pub(super) fn topmost_missing(dir: &Path) -> Option<PathBuf> {
    if dir.exists() {
        return None;
    }
    let mut top = dir.to_path_buf();
    while let Some(parent) = top.parent() {
        if parent.exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    Some(top)
}

/// Removes `dir` and its parents up to and including `top` (all made by us).
pub(super) fn remove_created(dir: &Path, top: &Path) {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        let mut delay = Duration::from_millis(2);
        for _ in 0..5 {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) => {
                    thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        if d == top {
            break;
        }
        cur = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_or_max() {
        assert_eq!(parse_u64_or_max("max\n"), Some(u64::MAX));
        assert_eq!(parse_u64_or_max("42\n"), Some(42));
        assert_eq!(parse_u64_or_max("x"), None);
    }

    #[test]
    fn topmost_missing_finds_first_new_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b/c");
        assert_eq!(topmost_missing(&d), Some(tmp.path().join("a")));
        fs::create_dir_all(&d).unwrap();
        assert_eq!(topmost_missing(&d), None);
        remove_created(&d, &tmp.path().join("a"));
        assert!(!tmp.path().join("a").exists());
    }
}
