//! A terminal as the process's controlling terminal and stdio.
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::{Failure, Result};

/// Makes `slave` the controlling terminal of the calling session leader and
/// its stdin, stdout and stderr.
pub fn attach(slave: BorrowedFd<'_>) -> Result<()> {
    let fd = slave.as_raw_fd();
    // SAFETY: TIOCSCTTY takes an int argument; dup2 onto our own stdio.
    unsafe {
        if libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
            return Err(Failure::sys(
                "console",
                "console: set controlling terminal",
                Errno::last(),
            ));
        }
        for target in 0..3 {
            if libc::dup2(fd, target) < 0 {
                return Err(Failure::sys("console", "console: dup2 pty", Errno::last()));
            }
        }
    }
    Ok(())
}
