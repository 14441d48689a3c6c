//! Making each kind of received entry in the staging directory, never
//! through a symlink: every node is made relative to its parent's fd.
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat, Gid, Uid};

use super::msg::{EntryHeader, Kind};
use super::receive::{check_path, TreeReceiver};
use super::walk::cmp_paths;
use super::{io_err, nix_err, show, FilesError};
use crate::transport::Channel;
use crate::wire::FrameType;

fn timespec(sec: i64, nsec: i64) -> TimeSpec {
    TimeSpec::new(sec, nsec.clamp(0, 999_999_999))
}

const OMIT: TimeSpec = TimeSpec::new(0, libc::UTIME_OMIT);

fn mode_of(h: &EntryHeader) -> Mode {
    Mode::from_bits_truncate(h.mode & 0o7777)
}

fn is_dir(mode: libc::mode_t) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

impl TreeReceiver {
    /// Makes one entry; returns the content bytes received.
    pub(super) fn entry(
        &mut self,
        ch: &mut Channel,
        h: &EntryHeader,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, FilesError> {
        let raw = h.path.as_bytes();
        let parts = check_path(raw, &self.limits)?;
        let Some((name, parents)) = parts.split_last() else {
            if h.kind != Kind::Dir {
                return Err(FilesError::UnsafePath {
                    path: ".".into(),
                    reason: "the root must be a directory".into(),
                });
            }
            self.dir_meta.push(h.clone());
            return Ok(0);
        };
        if h.kind == Kind::Hardlink {
            self.hardlink(h, name, parents)?;
            return Ok(0);
        }
        let dir = self.open_dir(raw, parents)?;
        match h.kind {
            Kind::Dir => self.dir(&dir, name, h)?,
            Kind::File => return self.file(ch, &dir, name, h, progress),
            Kind::Symlink => self.symlink(&dir, name, h)?,
            Kind::Fifo | Kind::Char | Kind::Block => self.special(&dir, name, h)?,
            Kind::Hardlink => unreachable!("handled above"),
        }
        Ok(0)
    }

    /// A directory: kept if one is there (its contents may be a previous
    /// pass's), else made; its metadata is applied at the end of the pass.
    fn dir(&mut self, dir: &OwnedFd, name: &[u8], h: &EntryHeader) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(st.st_mode) => {}
            Ok(_) | Err(Errno::ENOENT) => {
                self.remove_existing(dir, name, raw)?;
                mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                    .map_err(nix_err("mkdir", raw))?;
            }
            Err(e) => return Err(nix_err("stat", raw)(e)),
        }
        self.dir_meta.push(h.clone());
        Ok(())
    }

    /// A regular file and exactly the bytes it declared.
    fn file(
        &mut self,
        ch: &mut Channel,
        dir: &OwnedFd,
        name: &[u8],
        h: &EntryHeader,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, FilesError> {
        let raw = h.path.as_bytes();
        if h.size > self.limits.max_bytes.saturating_sub(self.bytes) {
            return Err(FilesError::Limit {
                what: "total size",
                value: self.bytes.saturating_add(h.size),
                limit: self.limits.max_bytes,
            });
        }
        self.remove_existing(dir, name, raw)?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(nix_err("create", raw))?;
        let mut f = File::from(fd);
        let got = receive_content(ch, &mut f, h, progress)?;
        self.add_bytes(got)?;
        self.set_meta(f.as_fd(), h)?;
        self.files.insert(raw.to_vec());
        Ok(got)
    }

    /// Another name for a regular file received in this transfer.
    fn hardlink(
        &mut self,
        h: &EntryHeader,
        name: &[u8],
        parents: &[&[u8]],
    ) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        let target = h.target.as_ref().map(|t| t.as_bytes()).unwrap_or(b"");
        let bad = || FilesError::BadHardlink {
            path: show(raw),
            target: show(target),
        };
        let tparts = check_path(target, &self.limits).map_err(|_| bad())?;
        if !self.files.contains(target) {
            return Err(bad());
        }
        let (tname, tparents) = tparts.split_last().ok_or_else(bad)?;
        let tdir = self.open_dir(target, tparents)?;
        let dir = self.open_dir(raw, parents)?;
        self.remove_existing(&dir, name, raw)?;
        linkat(tdir.as_fd(), *tname, dir.as_fd(), name, AtFlags::empty())
            .map_err(nix_err("link", raw))?;
        self.files.insert(raw.to_vec());
        Ok(())
    }

    fn symlink(&mut self, dir: &OwnedFd, name: &[u8], h: &EntryHeader) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        let target = h.target.as_ref().map(|t| t.as_bytes()).unwrap_or(b"");
        if target.is_empty() || target.contains(&0) || target.len() > self.limits.max_path_len {
            return Err(FilesError::UnsafePath {
                path: show(raw),
                reason: "invalid symlink target".into(),
            });
        }
        self.remove_existing(dir, name, raw)?;
        symlinkat(OsStr::from_bytes(target), dir.as_fd(), name).map_err(nix_err("symlink", raw))?;
        self.finish_node(dir, name, h, false)
    }

    /// A fifo or a device node.
    fn special(&mut self, dir: &OwnedFd, name: &[u8], h: &EntryHeader) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        self.remove_existing(dir, name, raw)?;
        let mode = mode_of(h);
        match h.kind {
            Kind::Fifo => mkfifoat(dir.as_fd(), name, mode).map_err(nix_err("mkfifo", raw))?,
            k => {
                let t = if k == Kind::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                mknodat(dir.as_fd(), name, t, mode, h.rdev as libc::dev_t)
                    .map_err(nix_err("mknod", raw))?
            }
        }
        self.finish_node(dir, name, h, true)
    }

    /// Owner, mode and times through an open fd (files, directories).
    fn set_meta(&self, fd: std::os::fd::BorrowedFd, h: &EntryHeader) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        if self.preserve_owner {
            fchown(fd, Some(Uid::from_raw(h.uid)), Some(Gid::from_raw(h.gid)))
                .map_err(nix_err("chown", raw))?;
        }
        fchmod(fd, mode_of(h)).map_err(nix_err("chmod", raw))?;
        futimens(fd, &OMIT, &timespec(h.mtime, h.mtime_nsec)).map_err(nix_err("set times", raw))
    }

    /// Owner, mode and times of a node that has no open fd, without
    /// following it.
    fn finish_node(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        h: &EntryHeader,
        chmod: bool,
    ) -> Result<(), FilesError> {
        let raw = h.path.as_bytes();
        if self.preserve_owner {
            fchownat(
                dir.as_fd(),
                name,
                Some(Uid::from_raw(h.uid)),
                Some(Gid::from_raw(h.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(nix_err("chown", raw))?;
        }
        if chmod {
            // A fifo or device node: open it? No: opening a fifo blocks
            // and a device node has side effects. fchmodat follows only
            // symlinks, and this is not one (we just created it).
            fchmodat(dir.as_fd(), name, mode_of(h), FchmodatFlags::FollowSymlink)
                .map_err(nix_err("chmod", raw))?;
        }
        utimensat(
            dir.as_fd(),
            name,
            &OMIT,
            &timespec(h.mtime, h.mtime_nsec),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(nix_err("set times", raw))?;
        Ok(())
    }

    /// Applies directory owner/mode/times, deepest first (so setting a
    /// directory's mtime is not undone by creating its children).
    pub(super) fn apply_dir_meta(&mut self) -> Result<(), FilesError> {
        let mut metas = std::mem::take(&mut self.dir_meta);
        metas.sort_by(|a, b| cmp_paths(b.path.as_bytes(), a.path.as_bytes()));
        for h in metas {
            let raw = h.path.as_bytes();
            let parts = check_path(raw, &self.limits)?;
            let fd = self.open_dir(raw, &parts)?;
            self.set_meta(fd.as_fd(), &h)?;
        }
        self.cache = None;
        Ok(())
    }
}

/// Writes a file's data frames into `f` up to its end frame: exactly the
/// size its header declared, no more (checked as it arrives), no less.
fn receive_content(
    ch: &mut Channel,
    f: &mut File,
    h: &EntryHeader,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, FilesError> {
    let raw = h.path.as_bytes();
    let mismatch = |got| FilesError::SizeMismatch {
        path: show(raw),
        declared: h.size,
        got,
    };
    let mut got = 0u64;
    loop {
        let frame = ch.recv_frame()?;
        match frame.kind {
            FrameType::Data | FrameType::DataZstd => {
                got += frame.payload.len() as u64;
                if got > h.size {
                    return Err(mismatch(got));
                }
                f.write_all(&frame.payload).map_err(io_err("write", raw))?;
                progress(frame.payload.len() as u64);
            }
            FrameType::End => break,
            FrameType::Control => {
                return Err(FilesError::Protocol(format!(
                    "control message inside the data of {}",
                    show(raw)
                )))
            }
        }
    }
    if got != h.size {
        return Err(mismatch(got));
    }
    Ok(got)
}
