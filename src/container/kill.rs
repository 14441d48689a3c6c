//! `kill`: signal the init, or every process of the container with `all`.
use std::os::fd::AsRawFd;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{sys, Container, Result, Status};

/// What `kill` sends: a signal, or nothing (signal 0, the probe that
/// asks only whether the container's init is alive, as kill(2) does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSignal {
    Probe,
    Signal(Signal),
}

/// Parses "KILL", "SIGKILL", "kill", "9" or "0".
pub fn parse_signal(s: &str) -> Option<KillSignal> {
    if let Ok(n) = s.parse::<i32>() {
        if n == 0 {
            return Some(KillSignal::Probe);
        }
        return Signal::try_from(n).ok().map(KillSignal::Signal);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok().map(KillSignal::Signal)
}

/// runc's words for a kill of a stopped container, which engines match
/// (containerd's shim treats it as "process already finished").
const NOT_RUNNING: &str = "container not running, there is no process to signal";

impl Container {
    pub fn kill(&self, signal: KillSignal, all: bool) -> Result<()> {
        let _span = tracing::info_span!("kill", id = %self.id(), ?signal, all).entered();
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, NOT_RUNNING));
        }
        let signal = match signal {
            // The init was just found alive (same pid, same start time).
            KillSignal::Probe => return Ok(()),
            KillSignal::Signal(s) => s,
        };
        if all {
            if let Some(cg) = self.cgroup()? {
                return self.kill_all(&cg, signal, status);
            }
        }
        self.signal_init(signal)
    }

    /// Signals the init through a pidfd taken while it is verified to be
    /// our init (pid and start time): a pid reused after the init exited
    /// cannot receive the signal.
    fn signal_init(&self, signal: Signal) -> Result<()> {
        let pid = self.state.pid;
        let Ok(fd) = crate::proc::pidfd_open(pid) else {
            // Kernels before 5.3: the plain pid, checked just before.
            return kill(Pid::from_raw(pid), signal).map_err(sys(format!("kill {pid}")));
        };
        if !crate::proc::is_alive(pid, self.state.pid_start_time) {
            return Err(self.wrong_state(Status::Stopped, NOT_RUNNING));
        }
        // SAFETY: pidfd_send_signal on our descriptor, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal as i32,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            return Err(sys(format!("kill {pid}"))(nix::errno::Errno::last()));
        }
        Ok(())
    }

    /// Signals every process of the cgroup while it is frozen (as runc
    /// does), so none can exit and have its pid reused in between; a
    /// paused container stays paused.
    fn kill_all(&self, cg: &crate::cgroups::Cgroup, signal: Signal, status: Status) -> Result<()> {
        let _lock = self.dir.lock()?;
        let freeze = status != Status::Paused && cg.freeze().is_ok();
        let pids = cg.pids();
        if let Ok(pids) = &pids {
            for pid in pids {
                let _ = kill(Pid::from_raw(*pid), signal);
            }
        }
        if freeze {
            cg.thaw()?;
        }
        pids?;
        Ok(())
    }
}
