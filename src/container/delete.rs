//! `delete`: remove a stopped container (or any, with force).
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Container, Result, Status};
use crate::hooks::{self, Kind};

impl Container {
    /// Removes processes (with `force`), veth, cgroup and state. Returns
    /// poststop hook failures as warnings.
    pub fn delete(self, force: bool) -> Result<Vec<hooks::Error>> {
        let _lock = self.dir.lock()?;
        let status = self.status();
        if !force && !matches!(status, Status::Stopped | Status::Created) {
            return Err(self.wrong_state(
                status,
                "stop it first (`ferry kill`) or use `ferry delete --force`",
            ));
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
            let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
        }
        self.wait_gone(&cgroup);
        if let Some(v) = &self.state.veth {
            crate::network::remove(v)?;
        }
        if let Some(cg) = &cgroup {
            cg.remove()?;
        }
        let state_json = {
            let mut s = self.oci_state();
            s.status = Status::Stopped;
            serde_json::to_string(&s).expect("state serializes")
        };
        let warnings = hooks::run_all(
            self.state.config.hooks().as_ref(),
            Kind::Poststop,
            &state_json,
        );
        self.dir.remove()?;
        Ok(warnings)
    }

    /// Waits (bounded) until the init and every cgroup member are gone.
    fn wait_gone(&self, cgroup: &Option<crate::cgroups::Cgroup>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let init_gone = !crate::proc::is_alive(self.state.pid, self.state.pid_start_time);
            let cg_empty = cgroup
                .as_ref()
                .map(|c| c.pids().map(|p| p.is_empty()).unwrap_or(true))
                .unwrap_or(true);
            if init_gone && cg_empty {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Removes a container directory whose creation never finished (no
/// state.json): nothing else of it can exist beyond the directory.
pub fn remove_incomplete(root: &std::path::Path, id: &str) -> Result<()> {
    let dir = crate::state::StateDir::new(root, id);
    let _lock = dir.lock()?;
    if dir.load()?.is_some() {
        return Err(super::Error::Usage(format!(
            "container {id} finished creating meanwhile; run the command again"
        )));
    }
    dir.remove()?;
    Ok(())
}
