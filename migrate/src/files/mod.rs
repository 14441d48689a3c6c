//! Shipping a directory tree (a container's rootfs, a CRIU images
//! directory) over a [`Channel`](crate::transport::Channel), in passes.
//!
//! The sender walks the tree without following symlinks and streams one
//! entry at a time: a control message describing the entry, and for a
//! regular file its content in [`CHUNK`](crate::wire::CHUNK)-sized data
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
//!
//! The parts: the wire types (`msg`), walking a tree into a [`Manifest`]
//! (`walk`), sending a pass (`send`), receiving one (`receive`, each kind
//! of node made in `nodes`) and putting the result in place (`commit`).
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::transport::TransportError;

mod commit;
mod msg;
mod nodes;
mod receive;
mod send;
mod walk;

pub use commit::remove_stale_staging;
pub use msg::{EntryHeader, Kind, Limits, Name, TreeMsg};
pub use receive::{ReceiveStats, TreeReceiver};
pub use send::{send_tree, SendOptions, SendStats};
pub use walk::{Manifest, Stamp};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("refusing path {path:?} from the peer: {reason}")]
    UnsafePath { path: String, reason: String },
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

pub(crate) fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl AsRef<[u8]>,
) -> impl FnOnce(io::Error) -> FilesError {
    let path = show(path.as_ref());
    move |source| FilesError::Io { op, path, source }
}

pub(crate) fn nix_err(
    op: &'static str,
    path: impl AsRef<[u8]>,
) -> impl FnOnce(Errno) -> FilesError {
    let path = show(path.as_ref());
    move |e| FilesError::Io {
        op,
        path,
        source: io::Error::from(e),
    }
}

#[cfg(test)]
mod prop_tests {
    use super::receive::check_path;
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
