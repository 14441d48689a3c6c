//! `ps`: the container's processes, from its cgroup.
use serde::Serialize;

use super::{Container, Result, Status};

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub state: String,
    pub cmd: String,
}

impl Container {
    pub fn processes(&self) -> Result<Vec<ProcessInfo>> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, "it has no processes"));
        }
        let mut pids = self.cgroup_or_err()?.pids()?;
        pids.sort_unstable();
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ppid: crate::proc::ppid(pid).unwrap_or(0),
                state: crate::proc::state(pid)
                    .map(String::from)
                    .unwrap_or_default(),
                cmd: crate::proc::cmdline(pid),
            })
            .collect())
    }
}
