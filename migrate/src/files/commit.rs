//! Putting a received tree in place, and removing what a killed receiver
//! left.
use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, AtFlags, RenameFlags};
use nix::sys::stat::fstatat;

use super::receive::TreeReceiver;
use super::{io_err, nix_err, show, FilesError};

impl TreeReceiver {
    /// Renames the staging directory to the destination, which must not
    /// exist or be an empty directory.
    pub fn commit(mut self) -> Result<PathBuf, FilesError> {
        match fs::read_dir(&self.dest) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(FilesError::NotEmpty {
                        path: self.dest.clone(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("list", self.dest.as_os_str().as_bytes())(e)),
        }
        self.cache = None;
        self.root = None;
        // rename(2) replaces an empty directory atomically.
        fs::rename(&self.staging, &self.dest).map_err(io_err(
            "rename into place",
            self.dest.as_os_str().as_bytes(),
        ))?;
        self.staging = PathBuf::new();
        Ok(self.dest.clone())
    }

    /// Moves each top-level entry of the staging directory into the
    /// existing destination directory, refusing to replace anything there
    /// (except an identical symlink), then removes the staging directory.
    /// The root's own metadata is not applied.
    pub fn commit_merge(mut self) -> Result<PathBuf, FilesError> {
        self.cache = None;
        let dest =
            File::open(&self.dest).map_err(io_err("open", self.dest.as_os_str().as_bytes()))?;
        let dest_fd: OwnedFd = dest.into();
        let root = self.root().try_clone().map_err(io_err("dup", b"."))?;
        let mut names: Vec<_> = fs::read_dir(&self.staging)
            .map_err(io_err("list", self.staging.as_os_str().as_bytes()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("list", self.staging.as_os_str().as_bytes()))?;
        names.sort();
        // Check everything first, so a conflict moves nothing.
        let mut skip = HashSet::new();
        for n in &names {
            let nb = n.as_bytes();
            match fstatat(dest_fd.as_fd(), nb, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(nix_err("stat", nb)(e)),
                Ok(_) => {
                    let same_link = matches!(
                        (
                            nix::fcntl::readlinkat(dest_fd.as_fd(), nb),
                            nix::fcntl::readlinkat(root.as_fd(), nb)
                        ),
                        (Ok(a), Ok(b)) if a == b
                    );
                    if !same_link {
                        return Err(FilesError::Conflict {
                            path: show(nb),
                            dir: self.dest.clone(),
                        });
                    }
                    skip.insert(n.clone());
                }
            }
        }
        for n in &names {
            if skip.contains(n) {
                continue;
            }
            let nb = n.as_bytes();
            renameat2(
                root.as_fd(),
                nb,
                dest_fd.as_fd(),
                nb,
                RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(nix_err("move into place", nb))?;
        }
        drop(root);
        self.root = None;
        let staging = std::mem::take(&mut self.staging);
        crate::remove::remove_tree(&staging)
            .map_err(io::Error::other)
            .map_err(io_err("remove", staging.as_os_str().as_bytes()))?;
        Ok(self.dest.clone())
    }
}

/// Removes staging directories left in `dir` by receivers of processes
/// that no longer exist (a destination agent that was killed). Returns the
/// paths removed.
pub fn remove_stale_staging(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let Some((_, tail)) = name.rsplit_once(".partial-") else {
            continue;
        };
        let Some(pid) = tail.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || !crate::host::pid_gone(pid) {
            continue;
        }
        if e.file_type()?.is_dir() {
            crate::remove::remove_tree(&e.path()).map_err(io::Error::other)?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

impl Drop for TreeReceiver {
    fn drop(&mut self) {
        self.cache = None;
        self.root = None;
        if !self.staging.as_os_str().is_empty() {
            // Never follows symlinks nor enters a mount.
            if let Err(e) = crate::remove::remove_tree(&self.staging) {
                tracing::warn!(dir = %self.staging.display(), error = %e, "cannot remove staging directory");
            }
        }
    }
}
