//! Writing a file named by untrusted input beneath a directory: the kernel
//! resolves the name (`openat2` with `RESOLVE_BENEATH`, no symlinks, no
//! magic links, no other mount), so it cannot reach a file outside.
use std::os::fd::AsFd;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

/// Writes `value` to `name` beneath `dir` in one write(2), as the kernel's
/// setting files (cgroup, /proc/sys) expect.
pub fn write(dir: impl AsFd, name: &(impl nix::NixPath + ?Sized), value: &str) -> nix::Result<()> {
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = openat2(dir.as_fd(), name, how)?;
    let n = nix::unistd::write(&fd, value.as_bytes())?;
    if n != value.len() {
        // A setting file takes a value whole or not at all.
        return Err(nix::errno::Errno::EIO);
    }
    Ok(())
}
