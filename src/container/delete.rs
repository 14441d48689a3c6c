//! `delete`: remove a stopped container (or any, with force).
//!
//! With force this also removes what a create, restore or checkpoint left
//! when it was killed half-way: every process in the container's cgroup
//! (and its init, recorded before it joined the cgroup), the mounts below
//! the state directory (the rootfs bind CRIU restores into: unmounted,
//! never deleted through), the cgroup directories, the veth, and CRIU's
//! network lock. The state directory goes last and is removed without
//! crossing any mount.
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Container, Error, Result, Status};
use crate::criu::netlock;
use crate::hooks::{self, Kind};
use crate::state::StateDir;

/// How long processes get to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a veth of a container whose creation was cut short gets to
/// vanish with its network namespace.
const VETH_TIMEOUT: Duration = Duration::from_secs(10);

impl Container {
    /// Removes processes (with `force`), veth, cgroup, state and the bundle
    /// a `restore --import` built. Returns poststop hook failures as
    /// warnings.
    pub fn delete(self, force: bool) -> Result<Vec<hooks::Error>> {
        let (root, id) = (self.root.clone(), self.state.id.clone());
        let warnings = self.delete_keeping_import(force)?;
        remove_imported(&root, &id)?;
        Ok(warnings)
    }

    /// [`delete`](Self::delete), but an imported bundle stays: a checkpoint
    /// that ended the container exports it and restores from it again.
    pub(crate) fn delete_keeping_import(mut self, force: bool) -> Result<Vec<hooks::Error>> {
        let _span = tracing::info_span!("delete", id = %self.id(), force).entered();
        let _lock = match self.dir.lock() {
            Ok(l) => l,
            // Removed since it was loaded (another delete, or a checkpoint
            // that ended it): nothing left to delete.
            Err(_) if !self.dir.path.exists() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // What the file says now, under the lock (a create may have
        // finished, or another delete removed it, while we waited).
        match self.dir.load()? {
            Some(s) => self.state = s,
            None if !self.dir.path.exists() => return Ok(Vec::new()),
            None => {}
        }
        let status = self.status();
        if !force && !matches!(status, Status::Stopped | Status::Created) {
            let hint = if status == Status::Creating {
                "its creation was interrupted"
            } else {
                "it must be stopped first"
            };
            return Err(self.wrong_state(status, hint));
        }
        let cgroup = self.cgroup()?;
        if status != Status::Stopped {
            if let Some(cg) = &cgroup {
                // A frozen cgroup cannot die; thaw it after queueing SIGKILL.
                for pid in cg.pids().unwrap_or_default() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = cg.thaw();
            }
            if self.state.pid > 0
                && crate::proc::is_alive(self.state.pid, self.state.pid_start_time)
            {
                let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
            }
        }
        self.wait_gone(&cgroup)?;
        remove_criu_lock(&self.dir);
        if status == Status::Creating {
            unmount_criu_yards(&self.dir)?;
        }
        if status == Status::Creating {
            // A pair made just before the kill is not recorded yet; it dies
            // with the namespace of its container end (asynchronously):
            // wait for that rather than guess whose the name is.
            let planned = crate::network::VethConfig::from_annotations(&self.state.annotations)
                .ok()
                .flatten();
            if let Some(v) = planned.as_ref().or(self.state.veth.as_ref()) {
                let end = Instant::now() + VETH_TIMEOUT;
                while crate::network::link_exists_on_host(&v.host_if) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if let Some(v) = &self.state.veth {
            crate::network::remove(v)?;
        }
        if let Some(cg) = &cgroup {
            cg.remove()?;
        }
        let warnings = if status == Status::Creating {
            // Never created: no poststop.
            Vec::new()
        } else {
            let state_json = {
                let mut s = self.oci_state();
                s.status = Status::Stopped;
                serde_json::to_string(&s).expect("state serializes")
            };
            hooks::run_all(
                self.state.config.hooks().as_ref(),
                Kind::Poststop,
                &state_json,
            )
        };
        self.dir.remove()?;
        Ok(warnings)
    }

    /// Waits (bounded) until the init and every cgroup member are gone;
    /// names what is still alive otherwise.
    fn wait_gone(&self, cgroup: &Option<crate::cgroups::Cgroup>) -> Result<()> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let init_alive = self.state.pid > 0
                && crate::proc::is_alive(self.state.pid, self.state.pid_start_time);
            let members = cgroup
                .as_ref()
                .map(|c| c.pids().unwrap_or_default())
                .unwrap_or_default();
            if !init_alive && members.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut left = members;
                if init_alive {
                    left.push(self.state.pid);
                }
                return Err(Error::StillAlive {
                    id: self.state.id.clone(),
                    pids: left,
                    waited: KILL_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Removes the network lock a killed or failed CRIU run left (recorded in
/// the state directory), where it can still be reached. Best effort: a
/// lock in a container's namespace goes with the namespace anyway.
pub(crate) fn remove_criu_lock(dir: &StateDir) {
    let Some(rec) = dir.criu_lock() else {
        return;
    };
    let here = match rec.netns_pid {
        // The container's namespace, while its process is still there.
        Some(pid) if netlock::netns_inode(Some(pid)) == Some(rec.netns) => Some(Some(pid)),
        Some(_) => None,
        None if netlock::netns_inode(None) == Some(rec.netns) => Some(None),
        None => {
            tracing::warn!(run_id = %rec.run_id, "CRIU's network lock is in another network namespace than this ferry's; not removed");
            None
        }
    };
    if let Some(netns_pid) = here {
        match netlock::remove(&rec.run_id, rec.method, netns_pid) {
            Ok(removed) => {
                for r in removed {
                    tracing::info!(what = %r, run_id = %rec.run_id, "removed CRIU's network lock");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, run_id = %rec.run_id, "cannot remove CRIU's network lock");
                return;
            }
        }
    }
    dir.clear_criu_lock();
}

/// In the state directory: the work directory of the container's CRIU
/// restore (where CRIU mounts its cgroup yard).
pub(crate) const CRIU_WORK_FILE: &str = "criu-work";

/// Unmounts and removes the cgroup yards (`.criu.cgyard.*`) a killed CRIU
/// restore left in its recorded work directory; nothing else there is
/// touched, nor anything while another criu works in that directory (a
/// restore of the same image: its yard cannot be told from ours).
fn unmount_criu_yards(dir: &StateDir) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(work) = std::fs::read(dir.file(CRIU_WORK_FILE)) else {
        return Ok(());
    };
    let work = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&work));
    if criu_works_in(&work) {
        tracing::warn!(work = %work.display(), "another criu works there; its cgroup yards are left alone");
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(&work) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if !e.file_name().as_bytes().starts_with(b".criu.cgyard.") {
            continue;
        }
        let yard = e.path();
        crate::fs_remove::unmount_below(&yard).map_err(|source| Error::CgroupYard {
            path: yard.clone(),
            source,
        })?;
        if let Err(e) = std::fs::remove_dir(&yard) {
            tracing::warn!(error = %e, yard = %yard.display(), "cannot remove CRIU's cgroup yard");
        }
    }
    Ok(())
}

/// Whether a running criu has `dir` as its working directory.
fn criu_works_in(dir: &std::path::Path) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "criu")
            && std::fs::read_link(p.join("cwd")).is_ok_and(|c| c == dir)
    })
}

/// Removes a container directory whose creation never got as far as its
/// first state.json: nothing else of it can exist beyond the directory.
pub fn remove_incomplete(root: &std::path::Path, id: &str) -> Result<()> {
    let dir = crate::state::StateDir::new(root, id);
    let _lock = dir.lock()?;
    if dir.load()?.is_some() {
        return Err(Error::CreatedMeanwhile(id.to_string()));
    }
    dir.remove()?;
    remove_imported(root, id)
}

fn remove_imported(root: &std::path::Path, id: &str) -> Result<()> {
    crate::imports::remove(root, id).map_err(|e| Error::Io {
        context: format!("container {id}"),
        source: std::io::Error::other(e),
    })
}
