//! Shipping a directory tree (a container's rootfs, a CRIU images
//! directory) over a [`Channel`], in passes.
//!
//! The sender walks the tree without following symlinks and streams one
//! entry at a time: a control message describing the entry, and for a
//! regular file its content in [`CHUNK`]-sized data
//! frames, so memory use does not depend on file sizes. It preserves mode,
//! ownership, modification time, symlinks, hard links, fifos and device
//! nodes (extended attributes are not shipped). Sockets are skipped.
//!
//! Each pass returns a [`Manifest`]. A later pass given that manifest
//! sends only entries whose type, size, mtime, ctime, mode, owner, inode
//! or link target changed, and deletions for entries that are gone: the
//! first pass runs while the container runs, the delta while it is frozen.
//!
//! The receiver treats the stream as hostile. Every path must be relative
//! and made of plain components (no `..`, `.`, empty or over-long names);
//! every parent directory is opened component by component with
//! `O_NOFOLLOW | O_DIRECTORY` from the staging root, so a symlink received
//! earlier can never be followed; hard links may only point at regular
//! files received in this transfer; entry count, total size, name and path
//! lengths and depth are bounded by [`Limits`]; a file must carry exactly
//! the bytes it declared. Everything is written into a fresh staging
//! directory next to the destination and renamed into place by
//! [`TreeReceiver::commit`] (or moved in entry by entry by
//! [`TreeReceiver::commit_merge`]); dropping an uncommitted receiver
//! removes the staging directory.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{
    fchmod, fstatat, futimens, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    fchown, fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags,
};
use serde::{Deserialize, Serialize};

use crate::transport::{Channel, TransportError};
use crate::wire::{Compression, FrameType, CHUNK};

/// A path or symlink target as bytes; JSON carries it as a string when it
/// is UTF-8 and as an array of bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Name {
    Utf8(String),
    Raw(Vec<u8>),
}

impl Name {
    pub fn from_bytes(b: &[u8]) -> Name {
        match std::str::from_utf8(b) {
            Ok(s) => Name::Utf8(s.to_string()),
            Err(_) => Name::Raw(b.to_vec()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Utf8(s) => s.as_bytes(),
            Name::Raw(b) => b,
        }
    }
}

/// Type of a shipped entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Another name for a regular file sent earlier (`target` is its path).
    Hardlink,
    Fifo,
    Char,
    Block,
}

/// One entry's header on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// Relative path; `.` is the root of the tree.
    pub path: Name,
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Content bytes that follow (regular files only).
    #[serde(default)]
    pub size: u64,
    /// Symlink target, or hard link's first path.
    #[serde(default)]
    pub target: Option<Name>,
    /// Device number (character and block devices).
    #[serde(default)]
    pub rdev: u64,
}

/// Control messages of a tree transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tree", rename_all = "snake_case")]
pub enum TreeMsg {
    Begin {
        pass: u32,
    },
    /// A regular file's entry is followed by its data frames and an end frame.
    Entry(EntryHeader),
    Delete {
        path: Name,
    },
    /// End of the pass, with what was sent (checked by the receiver).
    Finish {
        entries: u64,
        bytes: u64,
    },
    /// The sender failed; the receiver discards the transfer.
    Abort {
        reason: String,
    },
}

/// What the receiver accepts at most (over all passes together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_name_len: usize,
    pub max_path_len: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 2_000_000,
            max_bytes: 256 << 30,
            max_name_len: 255,
            max_path_len: 4096,
            max_depth: 128,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("refusing path {path:?} from the peer: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("refusing path {path:?} from the peer: {component:?} is a symlink or not a directory, and is never followed")]
    ThroughLink { path: String, component: String },
    #[error("refusing hard link {path:?} to {target:?}: the target is not a regular file received in this transfer")]
    BadHardlink { path: String, target: String },
    #[error("refusing transfer: {what} limit exceeded ({value} > {limit})")]
    Limit {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("file {path:?} declared {declared} bytes but {got} arrived")]
    SizeMismatch {
        path: String,
        declared: u64,
        got: u64,
    },
    #[error("pass summary mismatch: sender counted {sent_entries} entries/{sent_bytes} bytes, {got_entries}/{got_bytes} arrived")]
    Summary {
        sent_entries: u64,
        sent_bytes: u64,
        got_entries: u64,
        got_bytes: u64,
    },
    #[error("unexpected message in a tree transfer: {0}")]
    Protocol(String),
    #[error("the sender aborted the transfer: {0}")]
    SenderAborted(String),
    #[error("{path} exists and is not an empty directory")]
    NotEmpty { path: PathBuf },
    #[error("{path} already exists in {}; refusing to overwrite it", dir.display())]
    Conflict { path: String, dir: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn io_err(op: &'static str, path: impl AsRef<[u8]>) -> impl FnOnce(io::Error) -> FilesError {
    let path = show(path.as_ref());
    move |source| FilesError::Io { op, path, source }
}

fn nix_err(op: &'static str, path: impl AsRef<[u8]>) -> impl FnOnce(Errno) -> FilesError {
    let path = show(path.as_ref());
    move |e| FilesError::Io {
        op,
        path,
        source: io::Error::from(e),
    }
}

// ---------------------------------------------------------------------------
// Sender

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

/// How to send.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub compression: Compression,
    /// Do not descend into directories on another filesystem (mounts).
    pub one_file_system: bool,
    /// Relative paths not to send (nor anything below them).
    pub exclude: Vec<PathBuf>,
    /// The pass number, echoed to the receiver.
    pub pass: u32,
}

/// What a pass sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendStats {
    /// Entries in the tree.
    pub scanned: u64,
    /// Entries sent (new or changed).
    pub entries: u64,
    /// Content bytes of the files sent.
    pub bytes: u64,
    /// Bytes put on the wire (after compression, headers included).
    pub wire_bytes: u64,
    pub deleted: u64,
    /// Sockets and other things that cannot be shipped.
    pub skipped: u64,
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

struct Walked {
    rel: Vec<u8>,
    abs: PathBuf,
    stamp: Stamp,
    nlink: u64,
}

/// Walks `root` in pre-order, sorted by name, never following symlinks.
fn walk(root: &Path, opts: &SendOptions, skipped: &mut u64) -> Result<Vec<Walked>, FilesError> {
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
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(&abs_dir)
            .map_err(io_err("list", abs_dir.as_os_str().as_bytes()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("list", abs_dir.as_os_str().as_bytes()))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let mut rel = rel_dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            if excluded.contains(&rel) {
                continue;
            }
            let abs = abs_dir.join(&name);
            let md = match fs::symlink_metadata(&abs) {
                Ok(md) => md,
                // Gone since listed (the tree may be live): the next pass
                // sees it or not.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", abs.as_os_str().as_bytes())(e)),
            };
            let Some(kind) = kind_of(&md) else {
                *skipped += 1;
                continue;
            };
            let target = if kind == Kind::Symlink {
                match fs::read_link(&abs) {
                    Ok(t) => Some(t.into_os_string().into_vec()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("readlink", abs.as_os_str().as_bytes())(e)),
                }
            } else {
                None
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

/// Orders paths so that a directory comes right before its contents.
fn cmp_paths(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

fn header(rel: &[u8], s: &Stamp, kind: Kind, target: Option<&[u8]>) -> EntryHeader {
    EntryHeader {
        path: Name::from_bytes(rel),
        kind,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        mtime: s.mtime.0,
        mtime_nsec: s.mtime.1,
        size: if kind == Kind::File { s.size } else { 0 },
        target: target.map(Name::from_bytes),
        rdev: s.rdev,
    }
}

/// Streams one file's first `size` bytes (zero-padded if it shrank while
/// being read; its changed stamp makes the next pass send it again).
fn send_content(
    ch: &mut Channel,
    abs: &Path,
    size: u64,
    compression: Compression,
    stats: &mut SendStats,
    progress: &mut dyn FnMut(u64),
) -> Result<(), FilesError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(abs)
        .map_err(io_err("open", abs.as_os_str().as_bytes()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let mut got = 0;
        while got < want {
            match f.read(&mut buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", abs.as_os_str().as_bytes())(e)),
            }
        }
        if got < want {
            buf[got..want].fill(0);
        }
        stats.wire_bytes += ch.send_data(&buf[..want], compression)? as u64;
        left -= want as u64;
        stats.bytes += want as u64;
        progress(want as u64);
    }
    ch.send_end()?;
    stats.wire_bytes += crate::wire::HEADER_LEN as u64;
    Ok(())
}

/// Sends one pass of the tree at `root`. With `previous` (the manifest of
/// the last pass), only what changed is sent, plus deletions. `progress`
/// is called with each chunk's byte count. On a local error the receiver
/// is told to abort.
pub fn send_tree(
    ch: &mut Channel,
    root: &Path,
    previous: Option<&Manifest>,
    opts: &SendOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(Manifest, SendStats), FilesError> {
    let result = send_tree_inner(ch, root, previous, opts, progress);
    if let Err(e) = &result {
        if !matches!(e, FilesError::Transport(_)) {
            let _ = ch.send(&TreeMsg::Abort {
                reason: e.to_string(),
            });
        }
    }
    result
}

fn send_tree_inner(
    ch: &mut Channel,
    root: &Path,
    previous: Option<&Manifest>,
    opts: &SendOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(Manifest, SendStats), FilesError> {
    let mut stats = SendStats::default();
    let walked = walk(root, opts, &mut stats.skipped)?;
    stats.scanned = walked.len() as u64;
    ch.send(&TreeMsg::Begin { pass: opts.pass })?;

    let mut manifest = Manifest::default();
    for w in &walked {
        manifest.entries.insert(w.rel.clone(), w.stamp.clone());
    }
    // Deletions first, deepest first, so directories are empty when their
    // turn comes.
    if let Some(prev) = previous {
        let mut gone: Vec<&Vec<u8>> = prev
            .entries
            .keys()
            .filter(|k| !manifest.entries.contains_key(*k))
            .collect();
        gone.sort_by(|a, b| cmp_paths(b, a));
        for path in gone {
            ch.send(&TreeMsg::Delete {
                path: Name::from_bytes(path),
            })?;
            stats.deleted += 1;
        }
    }

    // First path of each multiply-linked inode, and whether it was sent.
    let mut first_link: HashMap<(u64, u64), (Vec<u8>, bool)> = HashMap::new();
    for w in &walked {
        let changed = previous.is_none_or(|p| p.entries.get(&w.rel) != Some(&w.stamp));
        let s = &w.stamp;
        if s.kind == Kind::File && w.nlink > 1 {
            let key = (s.dev, s.ino);
            if let Some((first, first_sent)) = first_link.get(&key) {
                if changed || *first_sent {
                    ch.send(&TreeMsg::Entry(header(
                        &w.rel,
                        s,
                        Kind::Hardlink,
                        Some(first),
                    )))?;
                    stats.entries += 1;
                }
                continue;
            }
            first_link.insert(key, (w.rel.clone(), changed));
        }
        if !changed {
            continue;
        }
        ch.send(&TreeMsg::Entry(header(
            &w.rel,
            s,
            s.kind,
            s.target.as_deref(),
        )))?;
        stats.entries += 1;
        if s.kind == Kind::File {
            send_content(ch, &w.abs, s.size, opts.compression, &mut stats, progress)?;
        }
    }
    ch.send(&TreeMsg::Finish {
        entries: stats.entries,
        bytes: stats.bytes,
    })?;
    Ok((manifest, stats))
}

// ---------------------------------------------------------------------------
// Receiver

/// What one received pass contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveStats {
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
}

/// Splits and checks a relative path from the peer. `.` is the root (no
/// components).
fn check_path<'a>(raw: &'a [u8], limits: &Limits) -> Result<Vec<&'a [u8]>, FilesError> {
    let bad = |reason| FilesError::UnsafePath {
        path: show(raw),
        reason,
    };
    if raw == b"." {
        return Ok(Vec::new());
    }
    if raw.is_empty() {
        return Err(bad("empty path"));
    }
    if raw.len() > limits.max_path_len {
        return Err(bad("path too long"));
    }
    if raw[0] == b'/' {
        return Err(bad("absolute path"));
    }
    if raw.contains(&0) {
        return Err(bad("NUL byte in path"));
    }
    let parts: Vec<&[u8]> = raw.split(|c| *c == b'/').collect();
    for p in &parts {
        match *p {
            b"" => return Err(bad("empty path component")),
            b"." => return Err(bad("'.' path component")),
            b".." => return Err(bad("'..' path component")),
            p if p.len() > limits.max_name_len => return Err(bad("name too long")),
            _ => {}
        }
    }
    if parts.len() > limits.max_depth {
        return Err(bad("path too deep"));
    }
    Ok(parts)
}

fn timespec(sec: i64, nsec: i64) -> TimeSpec {
    TimeSpec::new(sec, nsec.clamp(0, 999_999_999))
}

const OMIT: TimeSpec = TimeSpec::new(0, libc::UTIME_OMIT);

/// Receives trees into a staging directory; see the module docs.
#[derive(Debug)]
pub struct TreeReceiver {
    dest: PathBuf,
    staging: PathBuf,
    root: Option<OwnedFd>,
    limits: Limits,
    /// Regular files created so far (valid hard link targets).
    files: HashSet<Vec<u8>>,
    entries: u64,
    bytes: u64,
    /// Last parent directory opened: (path, fd).
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory metadata, applied at the end of each pass.
    dir_meta: Vec<EntryHeader>,
    preserve_owner: bool,
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

    fn root(&self) -> &OwnedFd {
        self.root.as_ref().expect("staging root is open")
    }

    /// Opens the directory made of `parts` without following anything.
    fn open_dir(&mut self, full: &[u8], parts: &[&[u8]]) -> Result<OwnedFd, FilesError> {
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
    fn remove_existing(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        full: &[u8],
    ) -> Result<bool, FilesError> {
        let st = match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
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
        if self.entries > self.limits.max_entries {
            return Err(FilesError::Limit {
                what: "entry count",
                value: self.entries,
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), FilesError> {
        self.bytes += n;
        if self.bytes > self.limits.max_bytes {
            return Err(FilesError::Limit {
                what: "total size",
                value: self.bytes,
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
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
                            reason: "cannot delete the root",
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

    fn entry(
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
                    reason: "the root must be a directory",
                });
            }
            self.dir_meta.push(h.clone());
            return Ok(0);
        };
        let name: &[u8] = name;
        let dir = self.open_dir(raw, parents)?;
        let mode = Mode::from_bits_truncate(h.mode & 0o7777);
        match h.kind {
            Kind::Dir => {
                match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                            == SFlag::S_IFDIR => {}
                    Ok(_) => {
                        self.remove_existing(&dir, name, raw)?;
                        mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                            .map_err(nix_err("mkdir", raw))?;
                    }
                    Err(Errno::ENOENT) => {
                        mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                            .map_err(nix_err("mkdir", raw))?
                    }
                    Err(e) => return Err(nix_err("stat", raw)(e)),
                }
                self.dir_meta.push(h.clone());
                Ok(0)
            }
            Kind::File => {
                if h.size > self.limits.max_bytes.saturating_sub(self.bytes) {
                    return Err(FilesError::Limit {
                        what: "total size",
                        value: self.bytes.saturating_add(h.size),
                        limit: self.limits.max_bytes,
                    });
                }
                self.remove_existing(&dir, name, raw)?;
                let fd = openat(
                    dir.as_fd(),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(nix_err("create", raw))?;
                let mut f = File::from(fd);
                let mut got = 0u64;
                loop {
                    let frame = ch.recv_frame()?;
                    match frame.kind {
                        FrameType::Data | FrameType::DataZstd => {
                            got += frame.payload.len() as u64;
                            if got > h.size {
                                return Err(FilesError::SizeMismatch {
                                    path: show(raw),
                                    declared: h.size,
                                    got,
                                });
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
                    return Err(FilesError::SizeMismatch {
                        path: show(raw),
                        declared: h.size,
                        got,
                    });
                }
                self.add_bytes(got)?;
                if self.preserve_owner {
                    fchown(
                        f.as_fd(),
                        Some(Uid::from_raw(h.uid)),
                        Some(Gid::from_raw(h.gid)),
                    )
                    .map_err(nix_err("chown", raw))?;
                }
                fchmod(f.as_fd(), mode).map_err(nix_err("chmod", raw))?;
                futimens(f.as_fd(), &OMIT, &timespec(h.mtime, h.mtime_nsec))
                    .map_err(nix_err("set times", raw))?;
                self.files.insert(raw.to_vec());
                Ok(got)
            }
            Kind::Hardlink => {
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
                linkat(
                    tdir.as_fd(),
                    *tname,
                    dir.as_fd(),
                    name,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(nix_err("link", raw))?;
                self.files.insert(raw.to_vec());
                Ok(0)
            }
            Kind::Symlink => {
                let target = h.target.as_ref().map(|t| t.as_bytes()).unwrap_or(b"");
                if target.is_empty()
                    || target.contains(&0)
                    || target.len() > self.limits.max_path_len
                {
                    return Err(FilesError::UnsafePath {
                        path: show(raw),
                        reason: "invalid symlink target",
                    });
                }
                self.remove_existing(&dir, name, raw)?;
                symlinkat(OsStr::from_bytes(target), dir.as_fd(), name)
                    .map_err(nix_err("symlink", raw))?;
                self.finish_node(&dir, name, raw, h, false)?;
                Ok(0)
            }
            Kind::Fifo | Kind::Char | Kind::Block => {
                self.remove_existing(&dir, name, raw)?;
                match h.kind {
                    Kind::Fifo => {
                        mkfifoat(dir.as_fd(), name, mode).map_err(nix_err("mkfifo", raw))?
                    }
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
                self.finish_node(&dir, name, raw, h, true)?;
                Ok(0)
            }
        }
    }

    /// Owner, mode and times of a node that has no open fd, without
    /// following it.
    fn finish_node(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        raw: &[u8],
        h: &EntryHeader,
        chmod: bool,
    ) -> Result<(), FilesError> {
        if self.preserve_owner {
            fchownat(
                dir.as_fd(),
                name,
                Some(Uid::from_raw(h.uid)),
                Some(Gid::from_raw(h.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(nix_err("chown", raw))?;
        }
        if chmod {
            // A fifo or device node: open it? No: opening a fifo blocks
            // and a device node has side effects. fchmodat follows only
            // symlinks, and this is not one (we just created it).
            nix::sys::stat::fchmodat(
                dir.as_fd(),
                name,
                Mode::from_bits_truncate(h.mode & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
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
    fn apply_dir_meta(&mut self) -> Result<(), FilesError> {
        let mut metas = std::mem::take(&mut self.dir_meta);
        metas.sort_by(|a, b| cmp_paths(b.path.as_bytes(), a.path.as_bytes()));
        for h in metas {
            let raw = h.path.as_bytes();
            let parts = check_path(raw, &self.limits)?;
            let fd = self.open_dir(raw, &parts)?;
            if self.preserve_owner {
                fchown(
                    fd.as_fd(),
                    Some(Uid::from_raw(h.uid)),
                    Some(Gid::from_raw(h.gid)),
                )
                .map_err(nix_err("chown", raw))?;
            }
            fchmod(fd.as_fd(), Mode::from_bits_truncate(h.mode & 0o7777))
                .map_err(nix_err("chmod", raw))?;
            futimens(fd.as_fd(), &OMIT, &timespec(h.mtime, h.mtime_nsec))
                .map_err(nix_err("set times", raw))?;
        }
        self.cache = None;
        Ok(())
    }

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
            match fstatat(
                dest_fd.as_fd(),
                nb,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
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

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    fn raw_path() -> impl Strategy<Value = Vec<u8>> {
        let seg = prop_oneof![
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(Vec::new()),
            Just(b"a\0b".to_vec()),
            Just(vec![b'n'; 256]),
            "[a-z]{1,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 1..5),
        ];
        (
            any::<bool>(),
            proptest::collection::vec(seg, 1..6),
            prop_oneof![Just(1usize), Just(30), Just(200)],
        )
            .prop_map(|(abs, segs, repeat)| {
                let one = segs.join(&b'/');
                let mut v = if abs { b"/".to_vec() } else { Vec::new() };
                v.extend_from_slice(&vec![one; repeat].join(&b'/'));
                v
            })
    }

    proptest! {
        /// What the receiver accepts from a peer is a relative path of plain
        /// components within the limits, and nothing else.
        #[test]
        fn accepted_paths_are_plain_and_bounded(raw in raw_path()) {
            let limits = Limits::default();
            match check_path(&raw, &limits) {
                Ok(parts) => {
                    prop_assert!(raw.len() <= limits.max_path_len);
                    prop_assert!(parts.len() <= limits.max_depth);
                    prop_assert!(!raw.starts_with(b"/") && !raw.contains(&0));
                    for p in &parts {
                        prop_assert!(!p.is_empty() && *p != b"." && *p != b"..");
                        prop_assert!(p.len() <= limits.max_name_len && !p.contains(&b'/'));
                    }
                    if raw == b"." {
                        prop_assert!(parts.is_empty());
                    } else {
                        prop_assert_eq!(parts.join(&b'/'), raw);
                    }
                }
                Err(e) => prop_assert!(matches!(e, FilesError::UnsafePath { .. }), "{}", e),
            }
        }

        /// Names round-trip through the JSON of a control message, UTF-8
        /// or not.
        #[test]
        fn names_round_trip(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = Name::from_bytes(&raw);
            let back: Name = serde_json::from_slice(&serde_json::to_vec(&n).unwrap()).unwrap();
            prop_assert_eq!(back.as_bytes(), &raw[..]);
        }
    }
}
