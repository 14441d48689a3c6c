//! Sending one pass of a tree.
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::msg::{EntryHeader, Kind, Name, TreeMsg};
use super::walk::{cmp_paths, walk, Manifest, Stamp, Walked};
use super::{io_err, FilesError};
use crate::transport::Channel;
use crate::wire::{Compression, CHUNK};

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
    let mut stats = SendStats::default();
    let result = walk(root, opts, &mut stats.skipped)
        .and_then(|walked| send_pass(ch, &walked, previous, opts, stats, progress));
    if let Err(e) = &result {
        if !matches!(e, FilesError::Transport(_)) {
            let _ = ch.send(&TreeMsg::Abort {
                reason: e.to_string(),
            });
        }
    }
    result
}

/// Sends what `walked` holds that changed since `previous`.
fn send_pass(
    ch: &mut Channel,
    walked: &[Walked],
    previous: Option<&Manifest>,
    opts: &SendOptions,
    mut stats: SendStats,
    progress: &mut dyn FnMut(u64),
) -> Result<(Manifest, SendStats), FilesError> {
    stats.scanned = walked.len() as u64;
    ch.send(&TreeMsg::Begin { pass: opts.pass })?;

    let mut manifest = Manifest::default();
    for w in walked {
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
    for w in walked {
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
