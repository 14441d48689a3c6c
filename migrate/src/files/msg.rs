//! What a tree transfer puts on the wire, and the receiver's limits.
use serde::{Deserialize, Serialize};

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
