//! `kill`: signal the init, or every process of the container with `all`.
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{sys, Container, Result, Status};

/// Parses "KILL", "SIGKILL", "kill" or "9".
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

impl Container {
    pub fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, "there is no process to signal"));
        }
        if all {
            if let Some(cg) = self.cgroup()? {
                for pid in cg.pids()? {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
                return Ok(());
            }
        }
        kill(Pid::from_raw(self.state.pid), signal).map_err(sys(format!("kill {}", self.state.pid)))
    }
}
