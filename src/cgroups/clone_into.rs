//! Forking straight into a cgroup v2 directory (`clone3` with
//! `CLONE_INTO_CGROUP`, Linux 5.7), as crun does.
//!
//! A write to `cgroup.procs` takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing, and that waits for an RCU grace
//! period unless another move happened moments before: 13-40 ms in the
//! stock-kernel guest, on the path of every create and every restore. A
//! process forked into the cgroup only takes the lock's read side.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::unistd::Pid;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of [`fork_into`] this is.
pub enum Forked {
    Child,
    Parent(Pid),
}

/// Forks (with the extra clone `flags`, e.g. namespaces) into the cgroup
/// whose directory `cgroup` is open; the child's exit signal is SIGCHLD.
/// Fails where the kernel, or a seccomp filter, does not offer it
/// (`ENOSYS`, `E2BIG` before 5.7, ...) and where the cgroup refuses the
/// process: callers then fork as before and move it, which reports the
/// cgroup's own error.
///
/// # Safety
/// As `fork`, and more: glibc's fork handlers do not run, so in a process
/// with other threads the child may only make async-signal-safe calls (no
/// allocation, no locks, no `setgroups` through glibc, which waits for the
/// parent's other threads) until it execs or exits. The child must never
/// return into the caller's frames (see [`child_body`]).
pub unsafe fn fork_into(cgroup: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<Forked> {
    let args = CloneArgs {
        // The namespace bits are all in the low 32.
        flags: CLONE_INTO_CGROUP | u64::from(flags as u32),
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the caller upholds fork's rules; `args` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Runs a forked child's `body`, which execs or exits; a panic in it ends
/// the child with status 127 instead of unwinding into the parent's frames
/// copied onto its stack (whose destructors would undo the parent's work).
pub fn child_body(body: impl FnOnce() -> std::convert::Infallible) -> ! {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    // SAFETY: ends this process without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

/// Whether this process has one thread: a child of [`fork_into`] may then
/// allocate (no other thread can hold a lock of the allocator).
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_args_are_the_kernels_version_2() {
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }
}
