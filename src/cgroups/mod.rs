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
//! On v1 and hybrid hosts the v1 hierarchies are used (one directory per
//! mounted controller, keyed by controller name, `name=systemd` included); on
//! a pure v2 host there is one directory, keyed `unified`.
pub mod devices_bpf;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup::Cgroup as RsCgroup;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies::{self, V1, V2};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, Hierarchy, MaxValue};
use cgroups_rs::CgroupPid;
use oci_spec::runtime::{
    LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};
use serde::{Deserialize, Serialize};

mod reuse;

/// Key of the single directory on a pure cgroup v2 host.
pub const UNIFIED_KEY: &str = "unified";

/// How long [`Cgroup::freeze`] waits for the kernel to report FROZEN.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The kernel did not finish freezing in time; the cgroup was thawed again.
    #[error("cgroup {}: not frozen after {waited_ms} ms (kernel state {state:?}), thawed it again; a task may be stuck in uninterruptible sleep", path.display())]
    FreezeTimeout {
        path: PathBuf,
        waited_ms: u64,
        state: FreezerState,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where a container's cgroup lives, resolved once at create time so later
/// commands (run from any cgroup) find the same directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDescriptor {
    /// The path as configured (`linux.cgroupsPath`) or defaulted.
    pub path: String,
    /// true on a pure cgroup v2 host.
    pub unified: bool,
    /// Controller name (or "unified") → absolute directory.
    pub dirs: BTreeMap<String, PathBuf>,
}

impl CgroupDescriptor {
    /// Resolves `path` (see [`Cgroup::create`]) for every hierarchy the
    /// caller sees, creating nothing.
    pub fn resolve(path: &str) -> Result<CgroupDescriptor> {
        let unified = hierarchies::is_cgroup2_unified_mode();
        let mounts = host_mounts(unified);
        let own_file = Path::new("/proc/self/cgroup");
        let own_text = fs::read_to_string(own_file).map_err(|source| Error::Io {
            path: own_file.to_path_buf(),
            op: "read the caller's cgroups".into(),
            source,
        })?;
        let own = parse_proc_cgroup(&own_text);
        let dirs = resolve_dirs(path, &mounts, &own)?;
        Ok(CgroupDescriptor {
            path: path.to_string(),
            unified,
            dirs,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// Usage counters. A limit of "max" (unlimited) is reported as `u64::MAX`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    pub memory_limit: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
}

pub struct Cgroup {
    desc: CgroupDescriptor,
    inner: RsCgroup,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("desc", &self.desc).finish()
    }
}

/// One mounted hierarchy as seen by the caller.
#[derive(Debug, Clone)]
struct Mount {
    /// Controller name as in `/proc/self/cgroup` ("" for v2).
    key: String,
    /// Key stored in the descriptor.
    name: String,
    mount_point: PathBuf,
    mount_root: PathBuf,
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
    /// caller can record them before any exists).
    pub fn create_from(
        desc: CgroupDescriptor,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup> {
        let path = desc.path.clone();
        let path = path.as_str();
        // Remember what did not exist yet so a failure removes only that.
        let mut fresh: Vec<(PathBuf, PathBuf)> = Vec::new();
        for dir in unique_dirs(&desc.dirs) {
            if let Some(top) = topmost_missing(&dir) {
                fresh.push((dir, top));
            }
        }
        let result = (|| {
            let inner = build_inner(&desc)?;
            inner
                .create()
                .map_err(|e| backend(Path::new(path), "create", e))?;
            let cg = Cgroup { desc, inner };
            if let Some(r) = resources {
                cg.apply(r)?;
            }
            Ok(cg)
        })();
        if result.is_err() {
            for (dir, top) in &fresh {
                remove_created(dir, top);
            }
        }
        result
    }

    /// Opens an existing cgroup from its descriptor (state.json).
    pub fn load(desc: &CgroupDescriptor) -> Result<Cgroup> {
        let inner = build_inner(desc)?;
        Ok(Cgroup {
            desc: desc.clone(),
            inner,
        })
    }

    pub fn descriptor(&self) -> &CgroupDescriptor {
        &self.desc
    }

    /// The directory of one controller (`"unified"` on a v2 host).
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.desc.dirs.get(controller).map(PathBuf::as_path)
    }

    /// Moves the whole process `pid` (all its threads) into the cgroup.
    pub fn add_task(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            return Err(self.invalid(format!("cannot add pid {pid}: not a process id")));
        }
        self.inner
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| backend(self.main_dir(), &format!("add process {pid}"), e))
    }

    /// Applies memory, cpu, cpuset, pids, devices (v1) and unified (v2)
    /// settings. Settings that cannot be applied here are an error, never
    /// skipped.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        self.check_supported(r)?;
        if let Some(m) = r.memory() {
            self.apply_memory(m)?;
        }
        if let Some(c) = r.cpu() {
            self.apply_cpu(c)?;
        }
        if let Some(p) = r.pids() {
            let ctl = self.controller::<PidController>("pids")?;
            let limit = p.limit();
            let v = if limit <= 0 {
                MaxValue::Max
            } else {
                MaxValue::Value(limit)
            };
            ctl.set_pid_max(v)
                .map_err(|e| refused(ctl.path(), "pids.limit", limit, e))?;
        }
        if let Some(devices) = r.devices() {
            self.apply_devices(devices)?;
        }
        if let Some(u) = r.unified() {
            self.apply_unified(u)?;
        }
        Ok(())
    }

    /// Freezes every process and returns only once the kernel reports the
    /// cgroup FROZEN. If that does not happen within 10 s the cgroup is
    /// thawed again and an error returned.
    pub fn freeze(&self) -> Result<()> {
        if self.desc.unified {
            return self.freeze_v2();
        }
        let ctl = self.controller::<FreezerController>("freezer")?;
        let start = Instant::now();
        let mut step = Duration::from_millis(1);
        ctl.freeze()
            .map_err(|e| backend(ctl.path(), "request freeze", e))?;
        loop {
            let state = self.freezer_state()?;
            if state == FreezerState::Frozen {
                return Ok(());
            }
            if start.elapsed() >= FREEZE_TIMEOUT {
                return self.freeze_timed_out(ctl.path(), start, state);
            }
            // v1 has no change notification for freezer.state.
            thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(10));
            // Writing again on v1 picks up tasks forked while freezing.
            ctl.freeze()
                .map_err(|e| backend(ctl.path(), "request freeze", e))?;
        }
    }

    /// v2: request the freeze through `cgroup.freeze`, then sleep in poll(2)
    /// on `cgroup.events`, which the kernel signals when `frozen` changes.
    fn freeze_v2(&self) -> Result<()> {
        use std::os::fd::AsFd;
        let dir = self.main_dir().to_path_buf();
        let events_path = dir.join("cgroup.events");
        let events = fs::File::open(&events_path).map_err(|source| Error::Io {
            path: events_path.clone(),
            op: "open".into(),
            source,
        })?;
        fs::write(dir.join("cgroup.freeze"), "1").map_err(|source| Error::Io {
            path: dir.join("cgroup.freeze"),
            op: "request freeze".into(),
            source,
        })?;
        let start = Instant::now();
        loop {
            let state = self.freezer_state()?;
            if state == FreezerState::Frozen {
                return Ok(());
            }
            let left = FREEZE_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return self.freeze_timed_out(&dir, start, state);
            }
            let mut fds = [nix::poll::PollFd::new(
                events.as_fd(),
                nix::poll::PollFlags::POLLPRI,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: events_path,
                        op: "wait for the freeze".into(),
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Thaws a cgroup that did not freeze in time and says so.
    fn freeze_timed_out(&self, path: &Path, start: Instant, state: FreezerState) -> Result<()> {
        let thaw = self.thaw();
        let err = Error::FreezeTimeout {
            path: path.to_path_buf(),
            waited_ms: start.elapsed().as_millis() as u64,
            state,
        };
        thaw?;
        Err(err)
    }

    pub fn thaw(&self) -> Result<()> {
        let ctl = self.controller::<FreezerController>("freezer")?;
        ctl.thaw().map_err(|e| backend(ctl.path(), "thaw", e))
    }

    /// The state as the kernel reports it (not the requested one).
    pub fn freezer_state(&self) -> Result<FreezerState> {
        if self.desc.unified {
            let dir = self.main_dir();
            let requested = read_file(&dir.join("cgroup.freeze"))?;
            let events = read_file(&dir.join("cgroup.events"))?;
            Ok(parse_v2_freezer(&requested, &events))
        } else {
            let dir = self.dir_of("freezer")?;
            let file = dir.join("freezer.state");
            let text = read_file(&file)?;
            parse_v1_freezer(&text).ok_or_else(|| Error::Cgroup {
                path: file.display().to_string(),
                message: format!("unexpected freezer state {:?}", text.trim()),
            })
        }
    }

    /// Every process in the cgroup (union over all controller directories).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut set = BTreeSet::new();
        for dir in unique_dirs(&self.desc.dirs) {
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
        if self.desc.unified {
            let dir = self.main_dir().to_path_buf();
            let mut s = Stats::default();
            let cpu = read_file(&dir.join("cpu.stat"))?;
            let kv = parse_flat_keyed(&cpu);
            s.cpu_usage_ns = kv.get("usage_usec").copied().unwrap_or(0) * 1000;
            s.cpu_user_ns = kv.get("user_usec").copied().unwrap_or(0) * 1000;
            s.cpu_system_ns = kv.get("system_usec").copied().unwrap_or(0) * 1000;
            if dir.join("memory.current").exists() {
                s.memory_usage = read_u64(&dir.join("memory.current"))?;
                s.memory_limit = read_u64(&dir.join("memory.max"))?;
                let peak = dir.join("memory.peak");
                if peak.exists() {
                    s.memory_max_usage = read_u64(&peak)?;
                }
            }
            if dir.join("pids.current").exists() {
                s.pids_current = read_u64(&dir.join("pids.current"))?;
                s.pids_limit = read_u64(&dir.join("pids.max"))?;
            }
            Ok(s)
        } else {
            let mut s = Stats::default();
            if let Some(d) = self.desc.dirs.get("cpuacct") {
                s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"))?;
                s.cpu_user_ns = read_u64(&d.join("cpuacct.usage_user"))?;
                s.cpu_system_ns = read_u64(&d.join("cpuacct.usage_sys"))?;
            }
            if let Some(d) = self.desc.dirs.get("memory") {
                s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"))?;
                s.memory_max_usage = read_u64(&d.join("memory.max_usage_in_bytes"))?;
                s.memory_limit = read_u64(&d.join("memory.limit_in_bytes"))?;
            }
            if let Some(d) = self.desc.dirs.get("pids") {
                s.pids_current = read_u64(&d.join("pids.current"))?;
                s.pids_limit = read_u64(&d.join("pids.max"))?;
            }
            Ok(s)
        }
    }

    /// Removes every directory of the cgroup (retrying briefly while the
    /// kernel still reports it busy); directories already gone are fine.
    /// The cgroup must be empty.
    pub fn remove(&self) -> Result<()> {
        let left = || -> Vec<PathBuf> {
            unique_dirs(&self.desc.dirs)
                .into_iter()
                .filter(|d| d.exists())
                .collect()
        };
        let mut delay = Duration::from_millis(5);
        for attempt in 0..5 {
            // cgroups-rs retries busy directories itself on v1; its errors
            // are judged by what is left afterwards.
            let _ = self.inner.delete();
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
                                unique_dirs(&self.desc.dirs).len()
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

    // ----- helpers -----

    fn invalid(&self, message: String) -> Error {
        Error::Cgroup {
            path: self.desc.path.clone(),
            message,
        }
    }

    fn main_dir(&self) -> &Path {
        self.desc
            .dirs
            .get(UNIFIED_KEY)
            .or_else(|| self.desc.dirs.get("freezer"))
            .or_else(|| self.desc.dirs.values().next())
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/"))
    }

    fn dir_of(&self, controller: &str) -> Result<&Path> {
        let key = if self.desc.unified {
            UNIFIED_KEY
        } else {
            controller
        };
        self.dir(key).ok_or_else(|| Error::Unsupported {
            path: self.desc.path.clone(),
            setting: format!("the {controller} controller"),
            why: "on this host (it is not mounted)".into(),
        })
    }

    fn controller<'a, T>(&'a self, name: &str) -> Result<&'a T>
    where
        &'a T: From<&'a cgroups_rs::fs::Subsystem>,
        T: Controller + cgroups_rs::fs::ControllIdentifier,
    {
        self.inner
            .controller_of::<T>()
            .ok_or_else(|| Error::Unsupported {
                path: self.desc.path.clone(),
                setting: format!("the {name} controller"),
                why: if self.desc.unified {
                    "here (not listed in cgroup.controllers of the v2 root)".into()
                } else {
                    "here (no v1 hierarchy is mounted for it)".into()
                },
            })
    }

    fn unsupported(&self, setting: &str, why: &str) -> Error {
        Error::Unsupported {
            path: self.desc.path.clone(),
            setting: setting.to_string(),
            why: why.to_string(),
        }
    }

    fn check_supported(&self, r: &LinuxResources) -> Result<()> {
        let by_ferry = "by ferry";
        if r.block_io().is_some() {
            return Err(self.unsupported("linux.resources.blockIO", by_ferry));
        }
        if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(self.unsupported("linux.resources.hugepageLimits", by_ferry));
        }
        if r.network().is_some() {
            return Err(self.unsupported("linux.resources.network", by_ferry));
        }
        if r.rdma().as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(self.unsupported("linux.resources.rdma", by_ferry));
        }
        if r.unified().as_ref().is_some_and(|v| !v.is_empty()) && !self.desc.unified {
            return Err(self.unsupported(
                "linux.resources.unified",
                "on a cgroup v1 host (it needs cgroup v2)",
            ));
        }
        if let Some(m) = r.memory() {
            if m.kernel().is_some() {
                return Err(self.unsupported(
                    "linux.resources.memory.kernel",
                    "(kernel memory limits are deprecated by the kernel)",
                ));
            }
            if m.kernel_tcp().is_some() {
                return Err(self.unsupported("linux.resources.memory.kernelTCP", by_ferry));
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(self.unsupported("linux.resources.memory.disableOOMKiller", by_ferry));
            }
            if m.use_hierarchy() == Some(false) {
                return Err(self.unsupported(
                    "linux.resources.memory.useHierarchy=false",
                    "(the kernel always accounts hierarchically)",
                ));
            }
            if m.check_before_update() == Some(true) {
                return Err(self.unsupported("linux.resources.memory.checkBeforeUpdate", by_ferry));
            }
            if self.desc.unified && m.swappiness().is_some() {
                return Err(self.unsupported(
                    "linux.resources.memory.swappiness",
                    "on cgroup v2 (the kernel has no per-cgroup swappiness there)",
                ));
            }
        }
        if let Some(c) = r.cpu() {
            if c.idle().is_some() {
                return Err(self.unsupported("linux.resources.cpu.idle", by_ferry));
            }
            if c.burst().is_some() {
                return Err(self.unsupported("linux.resources.cpu.burst", by_ferry));
            }
            if self.desc.unified
                && (c.realtime_runtime().is_some() || c.realtime_period().is_some())
            {
                return Err(self.unsupported(
                    "linux.resources.cpu.realtimeRuntime/realtimePeriod",
                    "on cgroup v2",
                ));
            }
        }
        Ok(())
    }

    fn apply_memory(&self, m: &LinuxMemory) -> Result<()> {
        if m.limit().is_none()
            && m.reservation().is_none()
            && m.swap().is_none()
            && m.swappiness().is_none()
        {
            return Ok(());
        }
        let ctl = self.controller::<MemController>("memory")?;
        let dir = ctl.path();
        if let Some(res) = m.reservation() {
            ctl.set_soft_limit(res)
                .map_err(|e| refused(dir, "memory.reservation", res, e))?;
        }
        match (m.limit(), m.swap()) {
            (Some(limit), None) => ctl
                .set_limit(limit)
                .map_err(|e| refused(dir, "memory.limit", limit, e))?,
            (limit, Some(swap)) if self.desc.unified => {
                let Some(limit) = limit else {
                    return Err(self.unsupported(
                        "linux.resources.memory.swap without memory.limit",
                        "on cgroup v2 (swap is memory+swap; give the limit too)",
                    ));
                };
                if let Err(e) = ctl.set_limit(limit) {
                    return Err(refused(dir, "memory.limit", limit, e));
                }
                let swap_only = if swap < 0 || limit < 0 {
                    -1
                } else if swap < limit {
                    return Err(self.invalid(format!(
                        "memory.swap ({swap}) is smaller than memory.limit ({limit}); swap counts memory plus swap, make it >= the limit"
                    )));
                } else {
                    swap - limit
                };
                ctl.set_memswap_limit(swap_only)
                    .map_err(|e| refused(dir, "memory.swap", swap, e))?;
            }
            (limit, Some(swap)) => {
                // memory.memsw must stay >= memory.limit: order the writes
                // so that holds in between.
                let lim = || -> Result<()> {
                    if let Some(limit) = limit {
                        ctl.set_limit(limit)
                            .map_err(|e| refused(dir, "memory.limit", limit, e))?;
                    }
                    Ok(())
                };
                let sw = || {
                    ctl.set_memswap_limit(swap)
                        .map_err(|e| refused(dir, "memory.swap", swap, e))
                };
                if lim().is_err() {
                    sw()?;
                    lim()?;
                } else {
                    sw()?;
                }
            }
            (None, None) => {}
        }
        if let Some(sw) = m.swappiness() {
            ctl.set_swappiness(sw)
                .map_err(|e| refused(dir, "memory.swappiness", sw, e))?;
        }
        Ok(())
    }

    fn apply_cpu(&self, c: &LinuxCpu) -> Result<()> {
        let any_cpu = c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.realtime_runtime().is_some()
            || c.realtime_period().is_some();
        if any_cpu {
            let ctl = self.controller::<CpuController>("cpu")?;
            let dir = ctl.path();
            if let Some(shares) = c.shares() {
                let v = if self.desc.unified {
                    shares_to_weight(shares)
                } else {
                    shares
                };
                ctl.set_shares(v)
                    .map_err(|e| refused(dir, "cpu.shares", shares, e))?;
            }
            if self.desc.unified {
                if c.quota().is_some() || c.period().is_some() {
                    ctl.set_cfs_quota_and_period(c.quota(), c.period())
                        .map_err(|e| {
                            refused(
                                dir,
                                "cpu.quota/period",
                                format!("{:?}/{:?}", c.quota(), c.period()),
                                e,
                            )
                        })?;
                }
            } else {
                if let Some(p) = c.period() {
                    ctl.set_cfs_period(p)
                        .map_err(|e| refused(dir, "cpu.period", p, e))?;
                }
                if let Some(q) = c.quota() {
                    ctl.set_cfs_quota(q)
                        .map_err(|e| refused(dir, "cpu.quota", q, e))?;
                }
                if let Some(p) = c.realtime_period() {
                    ctl.set_rt_period_us(p)
                        .map_err(|e| refused(dir, "cpu.realtimePeriod", p, e))?;
                }
                if let Some(r) = c.realtime_runtime() {
                    ctl.set_rt_runtime(r)
                        .map_err(|e| refused(dir, "cpu.realtimeRuntime", r, e))?;
                }
            }
        }
        let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
        let mems = c.mems().as_deref().filter(|s| !s.is_empty());
        if cpus.is_some() || mems.is_some() {
            let ctl = self.controller::<CpuSetController>("cpuset")?;
            if let Some(cpus) = cpus {
                ctl.set_cpus(cpus)
                    .map_err(|e| refused(ctl.path(), "cpu.cpus", cpus, e))?;
            }
            if let Some(mems) = mems {
                ctl.set_mems(mems)
                    .map_err(|e| refused(ctl.path(), "cpu.mems", mems, e))?;
            }
        }
        Ok(())
    }

    /// Device rules as runc applies them: the config's rules in order, then
    /// the nodes every container gets (OCI "default devices", created by the
    /// runtime), which stay usable whatever the rules deny (podman sends a
    /// bare "deny all" and relies on this). On v1 they are written to the
    /// devices controller; on v2 they become an eBPF program.
    fn apply_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let mut all = rules
            .iter()
            .map(|r| self.device_rule(r))
            .collect::<Result<Vec<_>>>()?;
        all.extend(
            DEFAULT_ALLOWED_DEVICES
                .iter()
                .map(|&(kind, major, minor, access)| devices_bpf::Rule {
                    allow: true,
                    kind: Some(kind),
                    major,
                    minor,
                    access,
                }),
        );
        if self.desc.unified {
            let dir = self.main_dir();
            return devices_bpf::apply(dir, &all).map_err(|e| Error::Controller {
                path: dir.to_path_buf(),
                op: "linux.resources.devices".into(),
                detail: e.to_string(),
            });
        }
        let ctl = self.controller::<DevicesController>("devices")?;
        for rule in &all {
            let typ = match rule.kind {
                None => DeviceType::All,
                Some(devices_bpf::Kind::Char) => DeviceType::Char,
                Some(devices_bpf::Kind::Block) => DeviceType::Block,
            };
            let access: String = [
                (devices_bpf::ACC_READ, 'r'),
                (devices_bpf::ACC_WRITE, 'w'),
                (devices_bpf::ACC_MKNOD, 'm'),
            ]
            .iter()
            .filter(|(bit, _)| rule.access & bit != 0)
            .map(|(_, c)| c)
            .collect();
            let perms = DevicePermissions::from_str(&access).expect("letters from rwm");
            let major = rule.major.map_or(-1, i64::from);
            let minor = rule.minor.map_or(-1, i64::from);
            let what = format!("devices {} {major}:{minor} {access}", typ.to_char());
            let res = if rule.allow {
                ctl.allow_device(typ, major, minor, &perms)
            } else {
                ctl.deny_device(typ, major, minor, &perms)
            };
            res.map_err(|e| refused(ctl.path(), "devices", what, e))?;
        }
        Ok(())
    }

    /// One `linux.resources.devices` entry, checked.
    fn device_rule(&self, rule: &LinuxDeviceCgroup) -> Result<devices_bpf::Rule> {
        let kind = match rule.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(devices_bpf::Kind::Char),
            Some(LinuxDeviceType::B) => Some(devices_bpf::Kind::Block),
            Some(LinuxDeviceType::P) => {
                return Err(self.invalid(
                    "device rule of type 'p' (fifo) cannot be expressed in the devices cgroup; use a, b or c".into(),
                ))
            }
        };
        let access = rule.access().clone().unwrap_or_default();
        let bits = devices_bpf::parse_access(&access).ok_or_else(|| {
            self.invalid(format!(
                "device rule access {access:?} is invalid; use letters from \"rwm\""
            ))
        })?;
        let number = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                    self.invalid(format!(
                        "device rule {what} {n} is out of range; use 0..4294967295 or -1 for any"
                    ))
                }),
            }
        };
        Ok(devices_bpf::Rule {
            allow: rule.allow(),
            kind,
            major: number(rule.major(), "major")?,
            minor: number(rule.minor(), "minor")?,
            access: bits,
        })
    }

    fn apply_unified(&self, u: &HashMap<String, String>) -> Result<()> {
        let dir = self.main_dir().to_path_buf();
        for (k, v) in u {
            if k.is_empty() || k.contains('/') || k.starts_with('.') {
                return Err(self.invalid(format!(
                    "linux.resources.unified key {k:?} is not a cgroup file name"
                )));
            }
            let file = dir.join(k);
            fs::write(&file, v).map_err(|source| Error::Refused {
                path: dir.clone(),
                setting: format!("unified.{k}"),
                value: v.clone(),
                detail: source.to_string(),
                hint: "see the kernel's cgroup-v2 documentation for the file",
            })?;
        }
        Ok(())
    }
}

/// Converts cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// runc's always-allowed devices: mknod of any node, the default nodes
/// (null, zero, full, random, urandom, tty, console, ptmx), pty slaves and tun.
const DEFAULT_ALLOWED_DEVICES: &[(devices_bpf::Kind, Option<u32>, Option<u32>, u32)] = {
    use devices_bpf::Kind::{Block, Char};
    use devices_bpf::{ACC_MKNOD as M, ACC_READ as R, ACC_WRITE as W};
    &[
        (Char, None, None, M),
        (Block, None, None, M),
        (Char, Some(1), Some(3), R | W | M),
        (Char, Some(1), Some(5), R | W | M),
        (Char, Some(1), Some(7), R | W | M),
        (Char, Some(1), Some(8), R | W | M),
        (Char, Some(1), Some(9), R | W | M),
        (Char, Some(5), Some(0), R | W | M),
        (Char, Some(5), Some(1), R | W | M),
        (Char, Some(5), Some(2), R | W | M),
        (Char, Some(136), None, R | W | M),
        (Char, Some(10), Some(200), R | W | M),
    ]
};

fn backend(path: &Path, op: &str, e: cgroups_rs::fs::error::Error) -> Error {
    Error::Controller {
        path: path.to_path_buf(),
        op: op.to_string(),
        detail: describe(&e),
    }
}

fn refused(
    path: &Path,
    setting: &str,
    value: impl std::fmt::Display,
    e: cgroups_rs::fs::error::Error,
) -> Error {
    let hint = match setting {
        "cpu.quota" => "quota must be -1 or at least 1000 us",
        "cpu.period" => "period must be between 1000 us and 1 s",
        "cpu.shares" => "shares must be 2..262144",
        "memory.limit" | "memory.swap" => {
            "the limit must be above current usage, and memory+swap >= memory"
        }
        "cpu.cpus" | "cpu.mems" => "list CPUs/nodes that exist and the parent cgroup allows",
        _ => "see the kernel's cgroup documentation",
    };
    Error::Refused {
        path: path.to_path_buf(),
        setting: setting.to_string(),
        value: value.to_string(),
        detail: describe(&e),
        hint,
    }
}

fn describe(e: &cgroups_rs::fs::error::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(cause) => format!("{}: {}", e.kind(), cause),
        None => e.kind().to_string(),
    }
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "read".into(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    parse_u64_or_max(&text).ok_or_else(|| Error::Cgroup {
        path: path.display().to_string(),
        message: format!("expected a number or \"max\", found {:?}", text.trim()),
    })
}

fn parse_u64_or_max(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}

fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn parse_v1_freezer(text: &str) -> Option<FreezerState> {
    match text.trim() {
        "THAWED" => Some(FreezerState::Thawed),
        "FREEZING" => Some(FreezerState::Freezing),
        "FROZEN" => Some(FreezerState::Frozen),
        _ => None,
    }
}

fn parse_v2_freezer(requested: &str, events: &str) -> FreezerState {
    let frozen = events
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"]);
    match (requested.trim() == "1", frozen) {
        (_, true) if requested.trim() == "1" => FreezerState::Frozen,
        (true, false) => FreezerState::Freezing,
        // Thaw requested but not yet done counts as not frozen.
        _ => FreezerState::Thawed,
    }
}

/// `/proc/<pid>/cgroup` → controller (or "" for v2) → path.
fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            m.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                m.insert(c.to_string(), path.to_string());
            }
        }
    }
    m
}

fn host_mounts(unified: bool) -> Vec<Mount> {
    if unified {
        let v2 = V2::new();
        return vec![Mount {
            key: String::new(),
            name: UNIFIED_KEY.into(),
            mount_point: v2.root(),
            mount_root: PathBuf::from("/"),
        }];
    }
    V1::new()
        .subsystems()
        .into_iter()
        .map(|s| {
            let c = s.to_controller();
            Mount {
                key: s.controller_name(),
                name: s.controller_name(),
                mount_point: c.path().to_path_buf(),
                mount_root: c.base().to_path_buf(),
            }
        })
        .collect()
}

/// Checks a configured cgroup path and returns its components.
fn path_components(path: &str) -> Result<Vec<String>> {
    let bad = |message: String| Error::Cgroup {
        path: path.to_string(),
        message,
    };
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {
                return Err(bad(
                    "\".\" and \"..\" are not allowed in a cgroup path; give a plain path like /ferry/<id>".into(),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(bad(
            "the path names no cgroup (empty or the hierarchy root); give a path like /ferry/<id>"
                .into(),
        ));
    }
    Ok(out)
}

/// Resolves `path` for every hierarchy: absolute from the mount point,
/// relative below the caller's own cgroup (`own`, from /proc/self/cgroup).
fn resolve_dirs(
    path: &str,
    mounts: &[Mount],
    own: &HashMap<String, String>,
) -> Result<BTreeMap<String, PathBuf>> {
    let comps = path_components(path)?;
    if mounts.is_empty() {
        return Err(Error::Cgroup {
            path: path.to_string(),
            message: "no cgroup hierarchy is mounted; mount cgroup2 on /sys/fs/cgroup".into(),
        });
    }
    let absolute = path.starts_with('/');
    let mut dirs = BTreeMap::new();
    for m in mounts {
        let mut dir = m.mount_point.clone();
        if !absolute {
            let mine = own.get(&m.key).ok_or_else(|| Error::Cgroup {
                path: path.to_string(),
                message: format!(
                    "the caller's cgroup for controller {:?} is not in /proc/self/cgroup; use an absolute cgroup path",
                    m.name
                ),
            })?;
            let mine = Path::new(mine);
            let below_root = mine.strip_prefix(&m.mount_root).unwrap_or(mine);
            for c in below_root.components() {
                if let Component::Normal(s) = c {
                    dir.push(s);
                }
            }
        }
        for c in &comps {
            dir.push(c);
        }
        dirs.insert(m.name.clone(), dir);
    }
    Ok(dirs)
}

/// Builds the cgroups-rs handle whose controller paths are exactly `desc.dirs`.
fn build_inner(desc: &CgroupDescriptor) -> Result<RsCgroup> {
    let bad = |message: String| Error::Cgroup {
        path: desc.path.clone(),
        message,
    };
    if desc.unified {
        let hier = V2::new();
        let dir = desc
            .dirs
            .get(UNIFIED_KEY)
            .ok_or_else(|| bad("descriptor has no \"unified\" directory".into()))?;
        let rel = dir
            .strip_prefix(hier.root())
            .map_err(|_| {
                bad(format!(
                    "{} is not below {}",
                    dir.display(),
                    hier.root().display()
                ))
            })?
            .to_path_buf();
        if rel.as_os_str().is_empty() {
            return Err(bad("refusing to use the v2 root cgroup".into()));
        }
        if !hierarchies::is_cgroup2_unified_mode() {
            return Err(bad(
                "it was made on a cgroup v2 host but this host is not pure v2".into(),
            ));
        }
        return Ok(RsCgroup::load(Box::new(hier), rel));
    }
    if hierarchies::is_cgroup2_unified_mode() {
        return Err(bad(
            "it was made for cgroup v1 hierarchies but this host is pure v2".into(),
        ));
    }
    let hier = V1::new();
    let leaf = desc
        .dirs
        .values()
        .next()
        .and_then(|d| d.file_name())
        .ok_or_else(|| bad("descriptor lists no directories".into()))?
        .to_owned();
    let mut parents = HashMap::new();
    for sub in hier.subsystems() {
        let name = sub.controller_name();
        let mount_point = sub.to_controller().path().to_path_buf();
        let dir = desc.dirs.get(&name).ok_or_else(|| {
            bad(format!(
                "descriptor has no directory for mounted controller {name:?}; the host's hierarchies changed since create"
            ))
        })?;
        if dir.file_name() != Some(leaf.as_os_str()) {
            return Err(bad(format!(
                "directory {} does not end in {:?} like the others",
                dir.display(),
                leaf
            )));
        }
        let rel = dir.strip_prefix(&mount_point).map_err(|_| {
            bad(format!(
                "{} is not below {}",
                dir.display(),
                mount_point.display()
            ))
        })?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        parents.insert(name, parent.to_string_lossy().into_owned());
    }
    let cg = RsCgroup::load_with_relative_paths(Box::new(hier), Path::new(&leaf), parents);
    for sub in cg.subsystems() {
        let name = sub.controller_name();
        if desc.dirs.get(&name).map(PathBuf::as_path) != Some(sub.to_controller().path()) {
            return Err(bad(format!(
                "controller {name} resolved to {} instead of the recorded directory",
                sub.to_controller().path().display()
            )));
        }
    }
    Ok(cg)
}

fn unique_dirs(dirs: &BTreeMap<String, PathBuf>) -> Vec<PathBuf> {
    let set: BTreeSet<&PathBuf> = dirs.values().collect();
    set.into_iter().cloned().collect()
}

/// The highest ancestor of `dir` (or `dir` itself) that does not exist yet.
fn topmost_missing(dir: &Path) -> Option<PathBuf> {
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
fn remove_created(dir: &Path, top: &Path) {
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

    fn v1_mounts() -> Vec<Mount> {
        ["memory", "cpu", "name=systemd"]
            .iter()
            .map(|c| Mount {
                key: c.to_string(),
                name: c.to_string(),
                mount_point: PathBuf::from("/fake/cg").join(c.trim_start_matches("name=")),
                mount_root: PathBuf::from("/"),
            })
            .collect()
    }

    fn v2_mounts(root: &str) -> Vec<Mount> {
        vec![Mount {
            key: String::new(),
            name: UNIFIED_KEY.into(),
            mount_point: PathBuf::from(root),
            mount_root: PathBuf::from("/"),
        }]
    }

    #[test]
    fn proc_cgroup_parsing() {
        let m = parse_proc_cgroup(
            "4:memory:/a/b\n2:cpu,cpuacct:/x:with:colons\n1:name=systemd:/\n0::/user.slice/s\n",
        );
        assert_eq!(m["memory"], "/a/b");
        assert_eq!(m["cpu"], "/x:with:colons");
        assert_eq!(m["cpuacct"], "/x:with:colons");
        assert_eq!(m["name=systemd"], "/");
        assert_eq!(m[""], "/user.slice/s");
    }

    #[test]
    fn v1_absolute_and_relative_per_controller() {
        let own = parse_proc_cgroup("4:memory:/api/123\n1:cpu:/\n9:name=systemd:/sys\n");
        let abs = resolve_dirs("/ferry/c1", &v1_mounts(), &own).unwrap();
        assert_eq!(abs["memory"], PathBuf::from("/fake/cg/memory/ferry/c1"));
        assert_eq!(abs["cpu"], PathBuf::from("/fake/cg/cpu/ferry/c1"));
        let rel = resolve_dirs("ferry/c1", &v1_mounts(), &own).unwrap();
        assert_eq!(
            rel["memory"],
            PathBuf::from("/fake/cg/memory/api/123/ferry/c1")
        );
        assert_eq!(rel["cpu"], PathBuf::from("/fake/cg/cpu/ferry/c1"));
        assert_eq!(
            rel["name=systemd"],
            PathBuf::from("/fake/cg/systemd/sys/ferry/c1")
        );
    }

    #[test]
    fn v1_mount_root_is_stripped() {
        let mounts = vec![Mount {
            key: "memory".into(),
            name: "memory".into(),
            mount_point: PathBuf::from("/fake/cg/memory"),
            mount_root: PathBuf::from("/outer"),
        }];
        let own = parse_proc_cgroup("4:memory:/outer/inner\n");
        let rel = resolve_dirs("c", &mounts, &own).unwrap();
        assert_eq!(rel["memory"], PathBuf::from("/fake/cg/memory/inner/c"));
    }

    #[test]
    fn v2_with_fake_root() {
        let own = parse_proc_cgroup("0::/user.slice/session-1.scope\n");
        let abs = resolve_dirs("/ferry/x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(abs.len(), 1);
        assert_eq!(abs[UNIFIED_KEY], PathBuf::from("/tmp/fakecg/ferry/x"));
        let rel = resolve_dirs("x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(
            rel[UNIFIED_KEY],
            PathBuf::from("/tmp/fakecg/user.slice/session-1.scope/x")
        );
        // Caller at the v2 root.
        let own = parse_proc_cgroup("0::/\n");
        let rel = resolve_dirs("x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(rel[UNIFIED_KEY], PathBuf::from("/tmp/fakecg/x"));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let own = parse_proc_cgroup("0::/\n");
        for p in ["", "/", "../x", "/a/../b", "./a"] {
            let err = resolve_dirs(p, &v2_mounts("/r"), &own).unwrap_err();
            assert!(matches!(err, Error::Cgroup { .. }), "{p}: {err}");
        }
        let err = resolve_dirs("x", &v1_mounts(), &parse_proc_cgroup("4:memory:/\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"cpu\""), "{err}");
        assert!(resolve_dirs("/x", &[], &own).is_err());
    }

    #[test]
    fn freezer_parsing() {
        assert_eq!(parse_v1_freezer("FROZEN\n"), Some(FreezerState::Frozen));
        assert_eq!(parse_v1_freezer("FREEZING\n"), Some(FreezerState::Freezing));
        assert_eq!(parse_v1_freezer("THAWED\n"), Some(FreezerState::Thawed));
        assert_eq!(parse_v1_freezer("what"), None);
        let ev_frozen = "populated 1\nfrozen 1\n";
        let ev_not = "populated 1\nfrozen 0\n";
        assert_eq!(parse_v2_freezer("1\n", ev_frozen), FreezerState::Frozen);
        assert_eq!(parse_v2_freezer("1\n", ev_not), FreezerState::Freezing);
        assert_eq!(parse_v2_freezer("0\n", ev_not), FreezerState::Thawed);
        assert_eq!(parse_v2_freezer("0\n", ev_frozen), FreezerState::Thawed);
    }

    #[test]
    fn numbers_and_weights() {
        assert_eq!(parse_u64_or_max("max\n"), Some(u64::MAX));
        assert_eq!(parse_u64_or_max("42\n"), Some(42));
        assert_eq!(parse_u64_or_max("x"), None);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        let kv = parse_flat_keyed("usage_usec 10\nuser_usec 7\nsystem_usec 3\n");
        assert_eq!(kv["usage_usec"], 10);
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

#[cfg(test)]
mod path_prop_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// linux.cgroupsPath comes from config.json: whatever it says, the
        /// directories it resolves to lie strictly below each hierarchy's
        /// mount point (never the root, never outside).
        #[test]
        fn cgroup_dirs_stay_below_the_mount(
            segs in proptest::collection::vec(prop_oneof![
                Just(".."), Just("."), Just(""), Just("/"), Just("a\0b"),
                Just("ferry"), Just("x"), Just("//"),
            ], 0..6),
            abs in any::<bool>(),
        ) {
            let path = format!("{}{}", if abs { "/" } else { "" }, segs.join("/"));
            let mounts = vec![Mount {
                key: "memory".into(),
                name: "memory".into(),
                mount_point: PathBuf::from("/fake/cg/memory"),
                mount_root: PathBuf::from("/"),
            }];
            let own = parse_proc_cgroup("4:memory:/user/me\n");
            if let Ok(dirs) = resolve_dirs(&path, &mounts, &own) {
                for dir in dirs.values() {
                    let below = dir.strip_prefix("/fake/cg/memory").unwrap();
                    prop_assert!(below.components().count() > 0, "{path:?} -> {}", dir.display());
                    prop_assert!(
                        below.components().all(|c| matches!(c, Component::Normal(_))),
                        "{path:?} -> {}", dir.display()
                    );
                }
            }
        }
    }
}
