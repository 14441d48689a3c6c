//! Descriptors made in another process's network namespace.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Runs `make` in the network namespace of `pid`: a socket belongs to the
/// namespace it was made in. A short-lived thread enters the namespace,
/// makes it and ends.
pub fn make_in_netns_of(
    pid: i32,
    make: impl FnOnce() -> io::Result<OwnedFd> + Send,
) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a descriptor we own; setns changes
            // only this thread, which ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            make()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
