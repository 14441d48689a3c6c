//! Recursive removal that never crosses into another mount.
//!
//! `std::fs::remove_dir_all` happily descends into a bind mount below the
//! directory it removes and empties whatever is mounted there (a
//! container's rootfs, say). [`remove_tree`] walks with directory
//! descriptors (`openat` with `O_NOFOLLOW`, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`, `unlinkat` relative to the parent's descriptor)
//! and refuses to enter a directory that is on another device or has
//! another mount id (`statx` `STATX_MNT_ID`) than the top directory. What
//! it refused is left in place, whole, and named in the error.
//!
//! It lives in this crate, the bottom of the workspace, so the runtime and
//! the migration agents use the same code.
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Something below the tree is another mount; it and its parents were kept.
    #[error("{}: is a mount point (or another filesystem), left in place with its parents; unmount it and remove the rest by hand", .path.display())]
    MountPoint { path: PathBuf },
    #[error("{}: {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: Errno,
    },
}

/// What the walk must not cross.
struct Guard {
    home: Place,
    /// Every mount point, when mount ids are not available.
    mount_points: Vec<PathBuf>,
}

/// Mount points of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    parse_mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Mount points (field 5) of a mountinfo text, `\NNN` escapes undone.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            let b = p.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let esc = (b[i] == b'\\' && i + 4 <= b.len())
                    .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
                    .flatten()
                    .and_then(|o| u8::from_str_radix(o, 8).ok());
                match esc {
                    Some(v) => {
                        out.push(v);
                        i += 4;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            PathBuf::from(OsStr::from_bytes(&out))
        })
        .collect()
}

/// Where a directory is: device and mount id (0 when statx cannot tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    dev: u64,
    mnt_id: u64,
}

fn place(fd: BorrowedFd<'_>) -> Result<Place, Errno> {
    // SAFETY: statx on an fd with AT_EMPTY_PATH fills `buf`; all-zero is a
    // valid statx value.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &mut buf,
        )
    };
    if r != 0 {
        return Err(Errno::last());
    }
    let dev = libc::makedev(buf.stx_dev_major, buf.stx_dev_minor);
    let mnt_id = if buf.stx_mask & libc::STATX_MNT_ID != 0 {
        buf.stx_mnt_id
    } else {
        0
    };
    Ok(Place { dev, mnt_id })
}

fn open_dir_at(dir: Option<BorrowedFd<'_>>, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // SAFETY: openat with a valid C string; the result is a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD),
            name.as_ptr(),
            flags.bits(),
            Mode::empty().bits(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: openat just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes `path` and everything below it that is on the same mount.
/// A missing `path` is fine. A symlink at `path` is removed, not followed.
/// Mounts found below are left untouched (and so are their parents) and
/// reported as [`RemoveError::MountPoint`] after everything else is gone.
pub fn remove_tree(path: &Path) -> Result<(), RemoveError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source: Errno| RemoveError::Io {
            path: p,
            op,
            source,
        }
    };
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| RemoveError::Io {
        path: path.to_path_buf(),
        op: "path",
        source: Errno::EINVAL,
    })?;
    let top = match open_dir_at(None, &c) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        // A symlink or a file: remove the name itself.
        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
            return match nix::unistd::unlink(path) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(io("unlink", path)(e)),
            }
        }
        Err(e) => return Err(io("open", path)(e)),
    };
    let home = place(top.as_fd()).map_err(io("statx", path))?;
    // Without mount ids (kernels before 5.8) a bind mount of the same
    // filesystem is recognised by its path in mountinfo instead.
    let guard = Guard {
        home,
        mount_points: if home.mnt_id == 0 {
            mount_points()
        } else {
            Vec::new()
        },
    };
    let mut kept = Vec::new();
    let walk_from = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    empty_dir(top.as_fd(), &walk_from, &guard, &mut kept)?;
    drop(top);
    if let Some(first) = kept.into_iter().next() {
        return Err(RemoveError::MountPoint { path: first });
    }
    match std::fs::remove_dir(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0))) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        // The top directory is itself a mount point.
        Err(Errno::EBUSY) => Err(RemoveError::MountPoint {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io("rmdir", path)(e)),
    }
}

/// Empties the directory open as `dir` (at `path`), recording in `kept`
/// the mount points it did not enter. Returns whether it is now empty.
fn empty_dir(
    dir: BorrowedFd<'_>,
    path: &Path,
    guard: &Guard,
    kept: &mut Vec<PathBuf>,
) -> Result<bool, RemoveError> {
    let home = guard.home;
    let io = |op: &'static str, p: PathBuf| {
        move |source: Errno| RemoveError::Io {
            path: p,
            op,
            source,
        }
    };
    // Read every name first: unlinking while reading can skip entries.
    let names: Vec<CString> = {
        let dup = nix::unistd::dup(dir).map_err(io("dup", path.to_path_buf()))?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(io("readdir", path.to_path_buf()))?;
        let mut names = Vec::new();
        for e in d.iter() {
            let e = e.map_err(io("readdir", path.to_path_buf()))?;
            let n = e.file_name();
            if n.to_bytes() == b"." || n.to_bytes() == b".." {
                continue;
            }
            names.push(n.to_owned());
        }
        names
    };
    let mut empty = true;
    for name in names {
        let child = path.join(OsStr::from_bytes(name.to_bytes()));
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io("stat", child)(e)),
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir {
            match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io("unlink", child)(e)),
            }
            continue;
        }
        if st.st_dev != home.dev {
            kept.push(child);
            empty = false;
            continue;
        }
        let sub = match open_dir_at(Some(dir), &name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io("open", child)(e)),
        };
        let here = place(sub.as_fd()).map_err(io("statx", child.clone()))?;
        if here != home || guard.mount_points.contains(&child) {
            kept.push(child);
            empty = false;
            continue;
        }
        if !empty_dir(sub.as_fd(), &child, guard, kept)? {
            empty = false;
            continue;
        }
        drop(sub);
        match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            // Mounted on between our check and now: keep it.
            Err(Errno::EBUSY) => {
                kept.push(child);
                empty = false;
            }
            Err(e) => return Err(io("rmdir", child)(e)),
        }
    }
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw - ext3 /dev/root rw\n\
                    37 35 98:0 / /run/ferry/c1/criu-root rw shared:1 - ext4 /dev/vda rw\n\
                    38 35 98:0 / /a\\134b\\011 rw - ext4 /dev/vda rw\n\
                    39 35 98:0 / /tail\\ rw - ext4 /dev/vda rw\n";
        assert_eq!(
            parse_mount_points(text),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/run/ferry/c1/criu-root"),
                PathBuf::from("/a\\b\t"),
                PathBuf::from("/tail\\"),
            ]
        );
    }

    #[test]
    fn removes_a_tree_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let t = tmp.path().join("t");
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        std::fs::write(t.join("a/b/c/f"), b"1").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, t.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&t.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").exists());
        // Missing is fine; a symlink at the top is removed, not followed.
        remove_tree(&t).unwrap();
        let top_link = tmp.path().join("toplink");
        std::os::unix::fs::symlink(&outside, &top_link).unwrap();
        remove_tree(&top_link).unwrap();
        assert!(top_link.symlink_metadata().is_err());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn never_crosses_a_bind_mount() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("bind mounts need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/precious"), b"keep me").unwrap();
        let t = tmp.path().join("state");
        let mnt = t.join("x/mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::write(t.join("x/other"), b"go").unwrap();
        std::fs::create_dir_all(t.join("y")).unwrap();
        // The same filesystem: st_dev alone would not tell.
        let bind = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&data)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(bind.success());
        let err = remove_tree(&t).unwrap_err();
        let still = mnt.join("sub/precious").exists();
        let umount = std::process::Command::new("umount")
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(umount.success());
        assert!(
            matches!(err, RemoveError::MountPoint { ref path } if *path == mnt),
            "{err}"
        );
        assert!(still, "files below the mount were removed");
        assert_eq!(
            std::fs::read(data.join("sub/precious")).unwrap(),
            b"keep me"
        );
        assert!(!t.join("x/other").exists() && !t.join("y").exists());
        remove_tree(&t).unwrap();
        assert!(!t.exists());
    }
}
