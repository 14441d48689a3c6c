//! A terminal as the process's controlling terminal and stdio.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use super::{Failure, Result};
use crate::rootfs::RootDir;

/// A new pty of the devpts mounted at `root`'s /dev/pts (the container's
/// own, as with runc, so the terminal belongs to the container and has a
/// name in it): its number, master and slave.
pub fn open_in(root: &RootDir) -> Result<(u32, OwnedFd, OwnedFd)> {
    let master: OwnedFd = root
        .open_file(
            Path::new("/dev/pts/ptmx"),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
        .map_err(|e| {
            let why = format!("console: {e} (is devpts mounted with newinstance?)");
            Failure::new("console", why)
        })?
        .into();
    let last = |what: &str| Failure::sys("console", format!("console: {what}"), Errno::last());
    // SAFETY: plain ioctl calls on descriptors this function owns.
    unsafe {
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(last("unlock pty"));
        }
        let mut n: libc::c_uint = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) != 0 {
            return Err(last("pty number"));
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(last("open pty slave"));
        }
        Ok((n, master, OwnedFd::from_raw_fd(slave)))
    }
}

/// Gives the terminal process.consoleSize, if set (as runc does).
pub fn size(master: &OwnedFd, process: &oci_spec::runtime::Process) -> Result<()> {
    let Some(size) = process.console_size() else {
        return Ok(());
    };
    crate::console::set_size(master, size.height(), size.width())
        .map_err(|e| Failure::new("console", format!("console: {e}")))
}

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
