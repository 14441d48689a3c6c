//! Container cgroups on v1, hybrid and v2 hosts, through cgroups-rs.
//!
//! A container's cgroup is named by one path (`linux.cgroupsPath`):
//!
//! * an absolute path (`/ferry/abc`) is taken from the root of every hierarchy;
//! * a relative path (`ferry/abc`) is placed below the cgroup the *calling*
//!   process is in, looked up per controller in `/proc/self/cgroup` (on v1
//!   hosts the caller can sit at different places in different hierarchies).
//!
//! The directories are resolved once, at [`Cgroup::create`], and kept in a
//! [`CgroupDescriptor`] (stored in the container state) so that later commands
//! run from any cgroup reopen exactly the same directories with
//! [`Cgroup::load`].
//!
//! Which version a host uses is probed once ([`CgroupLayout::host`]). On v1
//! and hybrid hosts the v1 hierarchies are used (one directory per mounted
//! controller, keyed by controller name, `name=systemd` included); on a pure
//! v2 host there is one directory, keyed `unified`. Each version is a
//! backend of its own (`v1/`, `v2/`) behind one trait (`CgroupManager`);
//! this module and the files beside it hold what both do alike.
//!
//! With the systemd driver ([`Driver::Systemd`], `systemd/`) the directory
//! is a transient scope systemd makes when the first process joins; the
//! v2 backend then works in it as in any other.
pub mod clone_into;
mod common;
mod descriptor;
mod devices;
mod error;
mod layout;
mod notify;
mod resources;
mod reuse;
mod stats;
pub mod systemd;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use cgroups_rs::CgroupPid;
use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use common::{
    read_file, remove_children, remove_created, topmost_missing, unique_dirs, CgroupManager,
};
pub use descriptor::{mount_subdir, CgroupDescriptor};
use error::backend;
pub use error::{Error, Result};
pub use layout::{memberships, CgroupLayout, Membership};
pub use notify::{Notification, Notifier, PressureLevel};
pub use stats::{
    hugepage_sizes, Blkio, BlkioEntry, Cpu, CpuSet, CpuUsage, Hugetlb, Memory, MemoryEntry, Pids,
    Stats, Throttling,
};
pub use v2::devices_bpf;

/// Key of the single directory on a pure cgroup v2 host.
pub const UNIFIED_KEY: &str = "unified";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// Who makes a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Driver {
    /// ferry, through the cgroupfs.
    #[default]
    Cgroupfs,
    /// systemd, as a transient scope (`--systemd-cgroup`).
    Systemd,
}

/// A container's cgroup: its directories, through the backend of the
/// version they belong to.
pub struct Cgroup {
    backend: Box<dyn CgroupManager>,
    /// systemd driver: the resources to apply once the scope is started by
    /// the first [`Cgroup::add_task`]; `None` once it runs.
    unstarted: Mutex<Option<Option<LinuxResources>>>,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup")
            .field("desc", self.descriptor())
            .finish()
    }
}

impl Cgroup {
    /// Creates (or reuses) the cgroup for `path` (absolute = from each hierarchy
    /// root; relative = below the caller's own cgroup, per controller) and
    /// applies `resources`. If anything fails, the directories this call made
    /// are removed again.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        Cgroup::create_from(CgroupDescriptor::resolve(path)?, resources)
    }

    /// Like [`Cgroup::create`] for directories already resolved (so a
    /// caller can record them before any exists). A systemd scope is only
    /// made, with `resources`, when the first process joins.
    pub fn create_from(
        desc: CgroupDescriptor,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup> {
        if desc.systemd.is_some() {
            let cg = Cgroup::load(&desc)?;
            *cg.unstarted.lock().expect("not poisoned") = Some(resources.cloned());
            return Ok(cg);
        }
        // Remember what did not exist yet so a failure removes only that.
        let fresh: Vec<(PathBuf, PathBuf)> = unique_dirs(&desc.dirs)
            .into_iter()
            .filter_map(|dir| topmost_missing(&dir).map(|top| (dir, top)))
            .collect();
        let result = Cgroup::load(&desc).and_then(|cg| {
            cg.inner()
                .create()
                .map_err(|e| backend(Path::new(&desc.path), "create", e))?;
            if let Some(r) = resources {
                cg.apply(r)?;
            }
            Ok(cg)
        });
        if result.is_err() {
            for (dir, top) in &fresh {
                remove_created(dir, top);
            }
        }
        result
    }

    /// Opens an existing cgroup from its descriptor (state.json).
    pub fn load(desc: &CgroupDescriptor) -> Result<Cgroup> {
        let backend: Box<dyn CgroupManager> = if desc.is_v2() {
            Box::new(v2::V2::load(desc)?)
        } else {
            Box::new(v1::V1::load(desc)?)
        };
        Ok(Cgroup {
            backend,
            unstarted: Mutex::new(None),
        })
    }

    pub fn descriptor(&self) -> &CgroupDescriptor {
        &self.backend.handle().desc
    }

    /// The directory a new process can be forked into
    /// ([`clone_into::fork_into`]) instead of being moved afterwards: the
    /// cgroup v2 directory of the cgroupfs driver. `None` on v1 (one directory per
    /// hierarchy) and for a systemd scope (systemd starts it with the
    /// process), or when it cannot be opened: the caller then moves the
    /// process with [`Cgroup::add_task`].
    pub fn clone_target(&self) -> Option<std::os::fd::OwnedFd> {
        let desc = self.descriptor();
        if !desc.is_v2() || desc.systemd.is_some() {
            return None;
        }
        let dir = desc.dirs.get(UNIFIED_KEY)?;
        nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }

    /// Forks (with the extra clone `flags`) straight into the cgroup where
    /// [`Cgroup::clone_target`] names a directory and the kernel takes it
    /// ([`clone_into::fork_into`]); `None` when not forked (nothing was
    /// made): the caller forks as before and moves the child with
    /// [`Cgroup::add_task`], which reports what the cgroup refuses.
    ///
    /// # Safety
    /// As [`clone_into::fork_into`].
    pub unsafe fn fork_into(&self, flags: libc::c_int) -> Option<clone_into::Forked> {
        use std::os::fd::AsFd;
        let dir = self.clone_target()?;
        // SAFETY: the caller upholds fork_into's rules.
        match unsafe { clone_into::fork_into(dir.as_fd(), flags) } {
            Ok(forked) => Some(forked),
            Err(e) => {
                tracing::debug!(error = %e, "not forked into the cgroup: moved once it runs");
                None
            }
        }
    }

    /// Moves the whole process `pid` (all its threads) into the cgroup.
    /// The first process of a systemd scope starts it.
    pub fn add_task(&self, pid: i32) -> Result<()> {
        let h = self.backend.handle();
        if pid <= 0 {
            return Err(h.invalid(format!("cannot add pid {pid}: not a process id")));
        }
        if let Some(scope) = &self.descriptor().systemd {
            let mut unstarted = self.unstarted.lock().expect("not poisoned");
            if let Some(resources) = unstarted.take() {
                if let Err(e) = systemd::start(scope, pid, resources.as_ref()) {
                    *unstarted = Some(resources);
                    return Err(e.into());
                }
                // The unit is up: a failure from here on leaves it for
                // the caller's remove() to stop.
                if let Some(r) = &resources {
                    resources::apply(self.backend.as_ref(), r)?;
                }
                return Ok(());
            }
        }
        self.inner()
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| backend(h.main_dir(), &format!("add process {pid}"), e))
    }

    /// Applies memory, cpu, cpuset, pids, devices (v1) and unified (v2)
    /// settings. Settings that cannot be applied here are an error, never
    /// skipped.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(scope) = &self.descriptor().systemd {
            systemd::set(scope, r)?;
        }
        resources::apply(self.backend.as_ref(), r)
    }

    /// Freezes every process and returns only once the kernel reports the
    /// cgroup FROZEN. If that does not happen within 10 s the cgroup is
    /// thawed again and an error returned.
    pub fn freeze(&self) -> Result<()> {
        self.backend.freeze()
    }

    pub fn thaw(&self) -> Result<()> {
        if self.unstarted() {
            return Ok(());
        }
        self.backend.handle().thaw()
    }

    /// A systemd scope not started yet: no directory, no process.
    fn unstarted(&self) -> bool {
        self.unstarted.lock().expect("not poisoned").is_some()
    }

    /// The state as the kernel reports it (not the requested one).
    pub fn freezer_state(&self) -> Result<FreezerState> {
        self.backend.freezer_state()
    }

    /// Every process in the cgroup (union over all controller directories).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut set = BTreeSet::new();
        if self.unstarted() {
            return Ok(Vec::new());
        }
        for dir in unique_dirs(&self.descriptor().dirs) {
            let file = dir.join("cgroup.procs");
            for line in read_file(&file)?.lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let pid = line.parse::<i32>().map_err(|e| Error::Cgroup {
                    path: file.display().to_string(),
                    message: format!("bad pid {line:?}: {e}"),
                })?;
                set.insert(pid);
            }
        }
        Ok(set.into_iter().collect())
    }

    pub fn stats(&self) -> Result<Stats> {
        self.backend.stats()
    }

    /// Registers for OOM and memory-pressure notifications (as runc's
    /// NotifyOOM and NotifyMemoryPressure); [`Notifier::wait`] reports them.
    pub fn notifier(&self) -> Result<Notifier> {
        self.backend.notifier()
    }

    /// Removes every directory of the cgroup (retrying briefly while the
    /// kernel still reports it busy); directories already gone are fine.
    /// The cgroup must be empty. A systemd scope is stopped first.
    pub fn remove(&self) -> Result<()> {
        if let (Some(scope), false) = (&self.descriptor().systemd, self.unstarted()) {
            systemd::stop(scope)?;
        }
        let all = unique_dirs(&self.descriptor().dirs);
        let left = || -> Vec<PathBuf> { all.iter().filter(|d| d.exists()).cloned().collect() };
        let mut delay = Duration::from_millis(5);
        for attempt in 0..5 {
            for dir in &all {
                remove_children(dir);
            }
            // cgroups-rs retries busy directories itself on v1; its errors
            // are judged by what is left afterwards.
            let _ = self.inner().delete();
            let remaining = left();
            let Some(first) = remaining.first() else {
                return Ok(());
            };
            if attempt == 4 {
                if let Err(source) = fs::remove_dir(first) {
                    if source.kind() != io::ErrorKind::NotFound {
                        return Err(Error::Io {
                            path: first.clone(),
                            op: format!(
                                "remove ({} of {} directories left; are processes still inside?)",
                                remaining.len(),
                                all.len()
                            ),
                            source,
                        });
                    }
                }
            }
            thread::sleep(delay);
            delay *= 2;
        }
        match left().first() {
            None => Ok(()),
            Some(first) => Err(Error::Cgroup {
                path: first.display().to_string(),
                message: "directory still present after removal; remove it by hand".into(),
            }),
        }
    }

    fn inner(&self) -> &cgroups_rs::fs::cgroup::Cgroup {
        &self.backend.handle().inner
    }
}
