//! The one reader of CRIU image files, for the CRIU client (stats,
//! inventory) and for inspecting and checking image directories.
//!
//! Every image file (criu/image.c) starts with a head magic word:
//! `IMG_COMMON_MAGIC` for ordinary images, `IMG_SERVICE_MAGIC` for service
//! files (`stats-dump`, `irmap-cache`), none for `inventory.img`. Then comes
//! the image's own magic (criu/include/magic.h), then a sequence of entries,
//! each a native-endian (little-endian on every CRIU target ferry runs on)
//! u32 length followed by that many bytes of protobuf. Raw images
//! (`pages-N.img`) have no header at all.
//!
//! The reader is bounded and streaming: only one entry is held in memory at
//! a time, an entry longer than the bytes left in the file (or than
//! [`MAX_ENTRY_BYTES`]) is reported before anything is allocated for it, and
//! what entries would take decoded is estimated before they are decoded.
use std::path::PathBuf;

mod cost;
mod reader;
#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
pub(crate) use cost::decoded_cost;
pub use reader::{encode, read_all, read_one, read_single, EntryReader};

pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
pub const FDINFO_MAGIC: u32 = 0x5621_3732;
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
pub const CORE_MAGIC: u32 = 0x5505_3847;
pub const IDS_MAGIC: u32 = 0x5443_2030;
pub const MM_MAGIC: u32 = 0x5749_2820;
pub const FS_MAGIC: u32 = 0x5140_3912;
pub const FILES_MAGIC: u32 = 0x5630_3138;
pub const MNTS_MAGIC: u32 = 0x5556_3928;
pub const UTSNS_MAGIC: u32 = 0x5447_3203;
pub const STATS_MAGIC: u32 = 0x5709_3306;
pub const IRMAP_CACHE_MAGIC: u32 = 0x5700_4059;
pub const CGROUP_MAGIC: u32 = 0x5938_3330;

/// No single protobuf entry ferry decodes is anywhere near this; a larger
/// length word means a corrupt (or hostile) file.
pub const MAX_ENTRY_BYTES: u32 = 64 << 20;

/// Most memory one decoded entry may take, estimated from its wire form
/// before decoding. A repeated sub-message costs two bytes on the wire and
/// a few hundred decoded, so an entry within [`MAX_ENTRY_BYTES`] could
/// otherwise decode into gigabytes; a real mm entry of 65530 mappings (the
/// kernel's default limit) is estimated at 20 MiB.
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// Most memory the entries of one image file may take decoded, together
/// (the same estimate): files.img of 100000 open files, or a pagemap of
/// half a million runs, stay below.
pub const MAX_FILE_DECODED_BYTES: u64 = 128 << 20;

/// Largest file [`read_single`] opens: the files CRIU leaves for its caller
/// (inventory, stats) are a few hundred bytes, and an imported archive may
/// hold a hostile one of any size.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// A problem in one image file, with the byte offset where it was found.
#[derive(Debug, thiserror::Error)]
#[error("CRIU image {}: {kind} at offset {offset}", path.display())]
pub struct ImageError {
    pub path: PathBuf,
    pub offset: u64,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("head magic {found:#010x} is not {expected:#010x}")]
    BadHeadMagic { found: u32, expected: u32 },
    #[error("magic {found:#010x} is not {expected:#010x} ({image})")]
    BadMagic {
        found: u32,
        expected: u32,
        image: &'static str,
    },
    #[error("truncated: {what} needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("entry length {len} exceeds the {max}-byte limit")]
    EntryTooLarge { len: u32, max: u32 },
    #[error("file exceeds the {max}-byte limit for this image")]
    FileTooLarge { max: u64 },
    #[error("{what} would take over {max} bytes of memory decoded")]
    DecodedTooLarge { what: &'static str, max: u64 },
    #[error("the file's {what}s would take over {max} bytes of memory decoded")]
    FileDecodedTooLarge { what: &'static str, max: u64 },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: protobuf::Error,
    },
    #[error("expected {expected} {what}, found {found}")]
    EntryCount {
        what: &'static str,
        expected: &'static str,
        found: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    pub fn new(path: impl Into<PathBuf>, offset: u64, kind: ErrorKind) -> ImageError {
        ImageError {
            path: path.into(),
            offset,
            kind,
        }
    }

    /// True when the file does not exist (an image CRIU did not write).
    pub fn is_missing(&self) -> bool {
        matches!(&self.kind, ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// What kind of image a magic belongs to, for messages.
pub fn image_name(magic: u32) -> &'static str {
    match magic {
        INVENTORY_MAGIC => "inventory",
        PSTREE_MAGIC => "pstree",
        FDINFO_MAGIC => "fdinfo",
        PAGEMAP_MAGIC => "pagemap",
        CORE_MAGIC => "core",
        MM_MAGIC => "mm",
        IDS_MAGIC => "ids",
        FS_MAGIC => "fs",
        FILES_MAGIC => "files",
        MNTS_MAGIC => "mountpoints",
        UTSNS_MAGIC => "utsns",
        STATS_MAGIC => "stats",
        IRMAP_CACHE_MAGIC => "irmap-cache",
        CGROUP_MAGIC => "cgroup",
        _ => "image",
    }
}

/// The head magic CRIU writes in front of an image with `magic`.
pub fn head_magic_for(magic: u32) -> Option<u32> {
    match magic {
        INVENTORY_MAGIC => None,
        STATS_MAGIC | IRMAP_CACHE_MAGIC => Some(IMG_SERVICE_MAGIC),
        _ => Some(IMG_COMMON_MAGIC),
    }
}
