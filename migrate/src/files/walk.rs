//! Walking a tree into what a pass saw of it.
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::msg::Kind;
use super::send::SendOptions;
use super::{io_err, FilesError};

/// What a pass saw of one entry, to detect changes in the next pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub kind: Kind,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
}

/// The entries a pass saw, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<Vec<u8>, Stamp>,
}

impl Manifest {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn kind_of(md: &fs::Metadata) -> Option<Kind> {
    let ft = md.file_type();
    Some(if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else {
        return None;
    })
}

fn stamp(md: &fs::Metadata, kind: Kind, target: Option<Vec<u8>>) -> Stamp {
    Stamp {
        kind,
        size: if kind == Kind::File { md.len() } else { 0 },
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        dev: md.dev(),
        ino: md.ino(),
        rdev: md.rdev(),
        target,
    }
}

pub(super) struct Walked {
    pub(super) rel: Vec<u8>,
    pub(super) abs: PathBuf,
    pub(super) stamp: Stamp,
    pub(super) nlink: u64,
}

/// Walks `root` in pre-order, sorted by name, never following symlinks.
pub(super) fn walk(
    root: &Path,
    opts: &SendOptions,
    skipped: &mut u64,
) -> Result<Vec<Walked>, FilesError> {
    let rmd = fs::symlink_metadata(root).map_err(io_err("stat", root.as_os_str().as_bytes()))?;
    if !rmd.is_dir() {
        return Err(FilesError::Io {
            op: "walk",
            path: root.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let excluded: HashSet<Vec<u8>> = opts
        .exclude
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    let root_dev = rmd.dev();
    let mut out = vec![Walked {
        rel: b".".to_vec(),
        abs: root.to_path_buf(),
        stamp: stamp(&rmd, Kind::Dir, None),
        nlink: rmd.nlink(),
    }];
    // Stack of directories to list: (relative path, absolute path).
    let mut stack: Vec<(Vec<u8>, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    while let Some((rel_dir, abs_dir)) = stack.pop() {
        let mut subdirs = Vec::new();
        for name in list_sorted(&abs_dir)? {
            let mut rel = rel_dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            if excluded.contains(&rel) {
                continue;
            }
            let abs = abs_dir.join(&name);
            let Some(Found { md, kind, target }) = stat_entry(&abs, skipped)? else {
                continue;
            };
            if kind == Kind::Dir && !(opts.one_file_system && md.dev() != root_dev) {
                subdirs.push((rel.clone(), abs.clone()));
            }
            out.push(Walked {
                rel,
                abs,
                stamp: stamp(&md, kind, target),
                nlink: md.nlink(),
            });
        }
        // Pre-order: push in reverse so the first subdirectory is listed
        // next. Entries of a directory are emitted before its subtrees,
        // so sort afterwards to get a plain path order.
        stack.extend(subdirs.into_iter().rev());
    }
    out[1..].sort_by(|a, b| cmp_paths(&a.rel, &b.rel));
    Ok(out)
}

/// The names in `dir`, sorted.
fn list_sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, FilesError> {
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
        .map_err(io_err("list", dir.as_os_str().as_bytes()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("list", dir.as_os_str().as_bytes()))?;
    names.sort();
    Ok(names)
}

/// An entry found by [`stat_entry`].
struct Found {
    md: fs::Metadata,
    kind: Kind,
    /// A symlink's target.
    target: Option<Vec<u8>>,
}

/// What `abs` is: its metadata, kind and (for a symlink) target. `None`
/// when it is gone since listed (the tree may be live: the next pass sees
/// it or not) or of a kind not sent (counted in `skipped`).
fn stat_entry(abs: &Path, skipped: &mut u64) -> Result<Option<Found>, FilesError> {
    let md = match fs::symlink_metadata(abs) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat", abs.as_os_str().as_bytes())(e)),
    };
    let Some(kind) = kind_of(&md) else {
        *skipped += 1;
        return Ok(None);
    };
    let target = if kind == Kind::Symlink {
        match fs::read_link(abs) {
            Ok(t) => Some(t.into_os_string().into_vec()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("readlink", abs.as_os_str().as_bytes())(e)),
        }
    } else {
        None
    };
    Ok(Some(Found { md, kind, target }))
}

/// Orders paths so that a directory comes right before its contents.
pub(super) fn cmp_paths(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}
