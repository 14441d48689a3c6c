//! Keeps the caller's append-mode stdio in append mode across a restore.
//!
//! A recorded stdio pipe replaced by the caller's fd (inherit_fd) gets the
//! pipe's file status flags back from CRIU (`F_SETFL` with the image's
//! flags, after reopening it through /proc), so a log file the caller
//! opened with `O_APPEND` loses it: in the restored container, and in the
//! caller too where the open file is shared. The container then writes at
//! its file offset (0 for a reopened file: over the log's start), and a
//! later migration refuses a stdout that is a file not in append mode.
//! Measured with `ferry serve`, whose stdout is the migrated container's.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// Which of this process's fds 0-2 are regular files in append mode, and
/// which files, recorded before CRIU can change them.
#[derive(Debug, Default)]
pub struct AppendStdio([Option<(u64, u64)>; 3]);

fn status_flags(fd: RawFd) -> Option<i32> {
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    (f >= 0).then_some(f)
}

fn add_append(fd: RawFd) -> std::io::Result<()> {
    let flags = status_flags(fd).ok_or_else(std::io::Error::last_os_error)?;
    if flags & libc::O_APPEND != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL on a descriptor this process holds.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A duplicate of `pid`'s `fd` in this process (pidfd_getfd).
fn steal(pid: i32, fd: RawFd) -> std::io::Result<OwnedFd> {
    let pidfd = crate::proc::pidfd_open(pid)?;
    // SAFETY: plain syscall; the descriptor returned is new and ours.
    unsafe {
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(got as RawFd))
    }
}

impl AppendStdio {
    /// This process's append-mode regular files among fds 0-2.
    pub fn record() -> AppendStdio {
        let mut files = [None; 3];
        for (fd, slot) in files.iter_mut().enumerate() {
            let append = status_flags(fd as RawFd).is_some_and(|f| f & libc::O_APPEND != 0);
            let meta = std::fs::metadata(format!("/proc/self/fd/{fd}"));
            if let (true, Ok(m)) = (append, meta) {
                if m.is_file() {
                    *slot = Some((m.dev(), m.ino()));
                }
            }
        }
        AppendStdio(files)
    }

    /// Puts `O_APPEND` back on the restored `pid`'s fds 0-2 that are the
    /// recorded files, and on this process's own.
    pub fn reapply(&self, pid: i32) -> std::io::Result<()> {
        for (fd, file) in self.0.iter().enumerate() {
            let Some(file) = file else { continue };
            let fd = fd as RawFd;
            add_append(fd)?;
            let theirs = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"));
            if theirs.is_ok_and(|m| (m.dev(), m.ino()) == *file) {
                add_append(steal(pid, fd)?.as_raw_fd())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_goes_back_on_a_childs_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        // A child holding the same open file, its append flag cleared (as
        // CRIU's F_SETFL does).
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .stdout(f.try_clone().unwrap())
            .spawn()
            .unwrap();
        let raw = f.as_raw_fd();
        let flags = status_flags(raw).unwrap();
        // SAFETY: clears O_APPEND on a descriptor of this test.
        unsafe { libc::fcntl(raw, libc::F_SETFL, flags & !libc::O_APPEND) };
        let pid = child.id() as i32;
        assert_eq!(
            status_flags(steal(pid, 1).unwrap().as_raw_fd()).unwrap() & libc::O_APPEND,
            0
        );
        let theirs = steal(pid, 1).unwrap();
        add_append(theirs.as_raw_fd()).unwrap();
        assert_ne!(status_flags(raw).unwrap() & libc::O_APPEND, 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
