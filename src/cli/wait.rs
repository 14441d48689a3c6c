//! Foreground waiting: forward the signals ferry receives to the container
//! process and return its exit status like a shell would.
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the forwarded signals; call before creating the child so none is
/// lost (the child unblocks them for itself).
pub fn block_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded()), None);
}

/// Waits for `child`, forwarding signals to `target`; returns the exit code
/// (128 + signal number when killed).
pub fn wait_forwarding(child: Pid, target: Pid) -> i32 {
    wait_forwarding_resizing(child, target, None)
}

/// As [`wait_forwarding`]; with `resize`, SIGWINCH calls it instead of
/// being forwarded (a relayed terminal takes the caller's new size).
pub fn wait_forwarding_resizing(child: Pid, target: Pid, resize: Option<&dyn Fn()>) -> i32 {
    let set = forwarded();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(_) => return 255,
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => match (sig, resize) {
                (Signal::SIGWINCH, Some(resize)) => resize(),
                _ => {
                    let _ = kill(target, sig);
                }
            },
        }
    }
}
