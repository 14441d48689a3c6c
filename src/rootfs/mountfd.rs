//! Mounts held by file descriptor (the kernel's mount API): a bind is a
//! cloned tree (`open_tree`), a new filesystem is configured and created
//! (`fsopen` / `fsconfig` / `fsmount`), and either is attached onto a
//! resolved target descriptor (`move_mount`). Attributes and propagation are
//! then set on the mount's own descriptor (`mount_setattr`), so no path is
//! looked up again after it was resolved.
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::options::{Attrs, Propagation};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn errno() -> nix::errno::Errno {
    nix::errno::Errno::last()
}

fn cstring(s: &[u8]) -> nix::Result<CString> {
    CString::new(s).map_err(|_| nix::errno::Errno::EINVAL)
}

fn fd_result(ret: libc::c_long) -> nix::Result<OwnedFd> {
    if ret < 0 {
        return Err(errno());
    }
    // SAFETY: the syscall returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// A mount held by descriptor: detached until [`MountFd::attach`], and
/// still naming the same mount after it.
#[derive(Debug)]
pub struct MountFd(OwnedFd);

impl AsFd for MountFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl MountFd {
    /// A copy of the mount at `source` (a host path), with the mounts
    /// below it when `recursive` (`rbind`).
    pub fn clone_tree(source: &Path, recursive: bool) -> nix::Result<MountFd> {
        let path = cstring(source.as_os_str().as_encoded_bytes())?;
        let rec = if recursive { libc::AT_RECURSIVE } else { 0 } as libc::c_uint;
        // SAFETY: valid C string; flags as documented for open_tree(2).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
            )
        };
        fd_result(ret).map(MountFd)
    }

    /// A copy of the mount at an open descriptor (a bind of that file).
    pub fn clone_fd(fd: BorrowedFd<'_>, recursive: bool) -> nix::Result<MountFd> {
        let rec = if recursive { libc::AT_RECURSIVE } else { 0 } as libc::c_uint;
        // SAFETY: empty C string with AT_EMPTY_PATH names `fd` itself.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                fd.as_raw_fd(),
                c"".as_ptr(),
                OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_EMPTY_PATH as libc::c_uint
                    | rec,
            )
        };
        fd_result(ret).map(MountFd)
    }

    /// A new filesystem of type `fstype`, with `source`, superblock flags and
    /// parameters (`key` or `key=value`); mount attributes are set after
    /// ([`MountFd::set_attrs`]). The error carries the kernel's own message
    /// for a parameter it refused.
    pub fn new_fs(
        fstype: &str,
        source: Option<&str>,
        flags: &[String],
        params: &[String],
    ) -> Result<MountFd, FsError> {
        let fail = |stage: String, fs: Option<&OwnedFd>| {
            let errno = errno();
            FsError {
                stage,
                errno,
                kernel: fs.map(read_log).unwrap_or_default(),
            }
        };
        let name = cstring(fstype.as_bytes()).map_err(|errno| FsError {
            stage: "type".into(),
            errno,
            kernel: String::new(),
        })?;
        // SAFETY: valid C string.
        let ret = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        let fs =
            fd_result(ret).map_err(|_| fail(format!("opening filesystem type {fstype}"), None))?;
        let config = |cmd: libc::c_uint, key: Option<&str>, value: Option<&str>| {
            let key = key.map(|k| cstring(k.as_bytes())).transpose()?;
            let value = value.map(|v| cstring(v.as_bytes())).transpose()?;
            // SAFETY: valid C strings or NULL, as fsconfig(2) takes them.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    cmd,
                    key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
                    value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
                    0,
                )
            };
            if ret < 0 {
                Err(errno())
            } else {
                Ok(())
            }
        };
        if let Some(s) = source.filter(|s| !s.is_empty()) {
            config(FSCONFIG_SET_STRING, Some("source"), Some(s))
                .map_err(|_| fail(format!("source {s}"), Some(&fs)))?;
        }
        for f in flags {
            config(FSCONFIG_SET_FLAG, Some(f), None)
                .map_err(|_| fail(format!("option {f}"), Some(&fs)))?;
        }
        for p in params {
            let r = match p.split_once('=') {
                Some((k, v)) => config(FSCONFIG_SET_STRING, Some(k), Some(v)),
                None => config(FSCONFIG_SET_FLAG, Some(p), None),
            };
            r.map_err(|_| fail(format!("option {p}"), Some(&fs)))?;
        }
        config(FSCONFIG_CMD_CREATE, None, None)
            .map_err(|_| fail("creating the filesystem".into(), Some(&fs)))?;
        // SAFETY: fs is a configured filesystem context.
        let ret = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        fd_result(ret)
            .map(MountFd)
            .map_err(|_| fail("mounting the filesystem".into(), Some(&fs)))
    }

    /// Attaches this mount onto `target` (a descriptor resolved in the
    /// rootfs): the target is used as is, never looked up again.
    pub fn attach(&self, target: BorrowedFd<'_>) -> nix::Result<()> {
        // SAFETY: empty paths with *_EMPTY_PATH name the two descriptors.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if ret < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// Sets and clears attributes, on this mount or (`recursive`) on it and
    /// every mount below it.
    pub fn set_attrs(&self, attrs: Attrs, recursive: bool) -> nix::Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        self.setattr(
            MountAttr {
                attr_set: attrs.set,
                attr_clr: attrs.clear,
                ..Default::default()
            },
            recursive,
        )
    }

    pub fn set_propagation(&self, p: Propagation) -> nix::Result<()> {
        self.setattr(
            MountAttr {
                propagation: p.kind,
                ..Default::default()
            },
            p.recursive,
        )
    }

    fn setattr(&self, attr: MountAttr, recursive: bool) -> nix::Result<()> {
        let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: attr is a MOUNT_ATTR_SIZE_VER0 struct we own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                flags as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if ret < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }
}

/// A new filesystem the kernel refused: at which step, why, and the
/// filesystem's own message when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {errno}{}", if kernel.is_empty() { String::new() } else { format!(" ({kernel})") })]
pub struct FsError {
    pub stage: String,
    pub errno: nix::errno::Errno,
    pub kernel: String,
}

/// The error lines ("e ...") a filesystem context logged.
fn read_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                if let Some(m) = msg.strip_prefix("e ") {
                    lines.push(m.trim().to_string());
                }
            }
            _ => break,
        }
    }
    lines.join("; ")
}
