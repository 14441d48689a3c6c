//! The kernel's perf hooks, turned on ahead of CRIU's hardware breakpoints.
//!
//! CRIU stops each task at its `rt_sigreturn` on a hardware breakpoint when it cures a dump's
//! parasite and when it resumes a restored tree. A breakpoint is a perf event, and the first
//! perf event on a host with none running turns on the scheduler's perf hooks and waits for an
//! RCU grace period (`account_event`): 6-21 ms of frozen time on these machines, in about half
//! of the dumps and in every restore with no CRIU run in the second before it. The hooks stay on
//! while any such event exists, and for a second after the last one goes.
//!
//! [`Warm::begin`] opens a placeholder event (the software "dummy" event, which counts nothing,
//! on ferry's own process) on a thread of its own, so that the grace period passes while ferry
//! and CRIU do their other work, and keeps it open until dropped: CRIU's breakpoints then find
//! the hooks on. CRIU's other way, stepping each task syscall by syscall to its sigreturn, costs
//! about 1.8 ms per task here, more than the grace period for a tree of a dozen tasks.
//!
//! Nothing here can fail a request: where the event cannot be opened (no perf, or not allowed)
//! CRIU waits for the grace period as it always did.
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread::JoinHandle;

/// `PERF_TYPE_SOFTWARE`.
const TYPE_SOFTWARE: u32 = 1;
/// `PERF_COUNT_SW_DUMMY`: counts nothing.
const COUNT_SW_DUMMY: u64 = 9;
/// `PERF_ATTR_SIZE_VER0`: the first 64 bytes of `struct perf_event_attr`, all this needs.
const ATTR_SIZE: usize = 64;
/// The `disabled` bit of the attribute flags (offset 40).
const FLAG_DISABLED: u64 = 1;
/// `PERF_FLAG_FD_CLOEXEC`.
const FD_CLOEXEC: libc::c_ulong = 8;

/// The placeholder event, open (or being opened) until dropped.
pub struct Warm {
    thread: Option<JoinHandle<Option<OwnedFd>>>,
    event: Option<OwnedFd>,
}

impl Warm {
    /// Opens the placeholder event in the background.
    pub fn begin() -> Warm {
        let thread = std::thread::Builder::new()
            .name("perf-hooks".into())
            .spawn(|| open_dummy().ok())
            .ok();
        Warm {
            thread,
            event: None,
        }
    }

    /// Waits until the event is open; whether it could be.
    fn is_open(&mut self) -> bool {
        if let Some(t) = self.thread.take() {
            self.event = t.join().ok().flatten();
        }
        self.event.is_some()
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        // The event closes with its descriptor.
        self.is_open();
    }
}

/// Whether this process can turn the hooks on ahead (for `ferry check`), or why not.
pub fn available() -> Result<(), String> {
    open_dummy()
        .map(drop)
        .map_err(|e| format!("perf_event_open: {e}"))
}

/// A disabled dummy event on this process, on any CPU: what makes the kernel turn its perf
/// hooks on. Blocks for the grace period when they were off.
fn open_dummy() -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&TYPE_SOFTWARE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&COUNT_SW_DUMMY.to_ne_bytes());
    attr[40..48].copy_from_slice(&FLAG_DISABLED.to_ne_bytes());
    let pid = std::process::id() as libc::pid_t;
    // SAFETY: perf_event_open(2) with an attribute buffer of the size it states; the result is
    // checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            pid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn perf_events() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[perf_event]")
            })
            .count()
    }

    /// The event is open while the guard lives (as root, where perf is allowed), and gone with
    /// it.
    #[test]
    fn the_placeholder_event_lives_as_long_as_its_guard() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("perf events need root or CAP_PERFMON here");
            return;
        }
        let before = perf_events();
        let mut warm = Warm::begin();
        assert!(warm.is_open(), "perf_event_open of a dummy event failed");
        let fd = warm.event.as_ref().unwrap().as_raw_fd();
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .to_string_lossy(),
            "anon_inode:[perf_event]"
        );
        drop(warm);
        assert_eq!(perf_events(), before, "the event outlived its guard");
    }
}
