//! Receiving passes of a tree into a staging directory.
use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use super::msg::{EntryHeader, Limits, TreeMsg};
use super::{io_err, nix_err, show, FilesError};
use crate::transport::Channel;
use crate::untrusted_path;

/// What one received pass contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveStats {
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
}

/// Splits and checks a relative path from the peer with the crate's one
/// checker for untrusted paths. `.` is the root (no components).
pub(crate) fn check_path<'a>(raw: &'a [u8], limits: &Limits) -> Result<Vec<&'a [u8]>, FilesError> {
    let rules = untrusted_path::Rules {
        max_path_len: limits.max_path_len,
        max_name_len: limits.max_name_len,
        max_depth: limits.max_depth,
        skip_dot_and_empty: false,
    };
    untrusted_path::check(raw, &rules).map_err(|why| FilesError::UnsafePath {
        path: show(raw),
        reason: why.to_string(),
    })
}

/// Receives trees into a staging directory; see the module docs.
#[derive(Debug)]
pub struct TreeReceiver {
    pub(super) dest: PathBuf,
    pub(super) staging: PathBuf,
    pub(super) root: Option<OwnedFd>,
    pub(super) limits: Limits,
    /// Regular files created so far (valid hard link targets).
    pub(super) files: HashSet<Vec<u8>>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
    /// Last parent directory opened: (path, fd).
    pub(super) cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory metadata, applied at the end of each pass.
    pub(super) dir_meta: Vec<EntryHeader>,
    pub(super) preserve_owner: bool,
}

impl TreeReceiver {
    /// Prepares to receive into `dest`, which must not exist yet (or be an
    /// empty directory) for [`commit`](Self::commit), or be an existing
    /// directory for [`commit_merge`](Self::commit_merge). Its parent must
    /// exist. The staging directory is created next to it.
    pub fn new(dest: &Path, limits: Limits) -> Result<TreeReceiver, FilesError> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest.file_name().ok_or_else(|| FilesError::Io {
            op: "receive into",
            path: dest.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let staging = parent.join(format!(
            ".{}.partial-{}-{nanos:08x}",
            name.to_string_lossy(),
            std::process::id()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io_err("create staging dir", staging.as_os_str().as_bytes()))?;
        let mut r = TreeReceiver {
            dest: dest.to_path_buf(),
            staging: staging.clone(),
            root: None,
            limits,
            files: HashSet::new(),
            entries: 0,
            bytes: 0,
            cache: None,
            dir_meta: Vec::new(),
            preserve_owner: nix::unistd::geteuid().is_root(),
        };
        let fd = File::open(&staging)
            .map_err(io_err("open staging dir", staging.as_os_str().as_bytes()))?;
        r.root = Some(fd.into());
        Ok(r)
    }

    /// The staging directory (removed unless committed).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    pub(super) fn root(&self) -> &OwnedFd {
        self.root.as_ref().expect("staging root is open")
    }

    /// Opens the directory made of `parts` without following anything.
    pub(super) fn open_dir(&mut self, full: &[u8], parts: &[&[u8]]) -> Result<OwnedFd, FilesError> {
        let key = parts.join(&b'/');
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return fd.try_clone().map_err(io_err("dup", &key));
            }
        }
        let mut fd = self.root().try_clone().map_err(io_err("dup", b"."))?;
        for p in parts {
            fd = openat(
                fd.as_fd(),
                *p,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => FilesError::ThroughLink {
                    path: show(full),
                    component: show(p),
                },
                e => nix_err("open directory", full)(e),
            })?;
        }
        let keep = fd.try_clone().map_err(io_err("dup", &key))?;
        self.cache = Some((key, keep));
        Ok(fd)
    }

    /// Removes whatever is at `name` in `dir` (an empty directory, or any
    /// non-directory). Returns whether something was there.
    pub(super) fn remove_existing(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        full: &[u8],
    ) -> Result<bool, FilesError> {
        let st = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(nix_err("stat", full)(e)),
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let flag = if is_dir {
            self.cache = None;
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(dir.as_fd(), name, flag).map_err(nix_err("remove", full))?;
        self.files.remove(full);
        Ok(true)
    }

    fn count_entry(&mut self) -> Result<(), FilesError> {
        self.entries += 1;
        within("entry count", self.entries, self.limits.max_entries)
    }

    pub(super) fn add_bytes(&mut self, n: u64) -> Result<(), FilesError> {
        self.bytes += n;
        within("total size", self.bytes, self.limits.max_bytes)
    }

    /// Receives one pass (up to the sender's `Finish`). On error the
    /// transfer is unusable: drop the receiver to remove the staging dir.
    pub fn receive(
        &mut self,
        ch: &mut Channel,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ReceiveStats, FilesError> {
        let mut stats = ReceiveStats::default();
        let mut first = true;
        loop {
            let msg: TreeMsg = ch.recv()?;
            match msg {
                TreeMsg::Begin { .. } if first => {}
                TreeMsg::Begin { .. } => {
                    return Err(FilesError::Protocol("second begin in one pass".into()))
                }
                TreeMsg::Entry(h) => {
                    self.count_entry()?;
                    let n = self.entry(ch, &h, progress)?;
                    stats.entries += 1;
                    stats.bytes += n;
                }
                TreeMsg::Delete { path } => {
                    let raw = path.as_bytes();
                    let parts = check_path(raw, &self.limits)?;
                    let Some((name, parents)) = parts.split_last() else {
                        return Err(FilesError::UnsafePath {
                            path: ".".into(),
                            reason: "cannot delete the root".into(),
                        });
                    };
                    let dir = self.open_dir(raw, parents)?;
                    self.remove_existing(&dir, name, raw)?;
                    stats.deleted += 1;
                }
                TreeMsg::Finish { entries, bytes } => {
                    if entries != stats.entries || bytes != stats.bytes {
                        return Err(FilesError::Summary {
                            sent_entries: entries,
                            sent_bytes: bytes,
                            got_entries: stats.entries,
                            got_bytes: stats.bytes,
                        });
                    }
                    self.apply_dir_meta()?;
                    return Ok(stats);
                }
                TreeMsg::Abort { reason } => return Err(FilesError::SenderAborted(reason)),
            }
            first = false;
        }
    }
}

/// `value` of `what` so far, refused over `limit`.
fn within(what: &'static str, value: u64, limit: u64) -> Result<(), FilesError> {
    if value > limit {
        return Err(FilesError::Limit { what, value, limit });
    }
    Ok(())
}
