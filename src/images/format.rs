//! The CRIU image file format, read natively.
//!
//! Every image file (criu/image.c) starts with a head magic word:
//! `IMG_COMMON_MAGIC` for ordinary images, `IMG_SERVICE_MAGIC` for service
//! files (`stats-dump`, `irmap-cache`), none for `inventory.img`. Then comes
//! the image's own magic (criu/include/magic.h), then a sequence of entries,
//! each a little-endian u32 length followed by that many bytes of protobuf.
//! Raw images (`pages-N.img`) have no header at all.
//!
//! The reader is streaming: only one entry is held in memory at a time, and
//! an entry longer than the bytes left in the file (or than
//! [`MAX_ENTRY_BYTES`]) is reported before anything is allocated for it.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

pub use crate::criu::image::{IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

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

/// Sequential reader of one image file's entries.
pub struct EntryReader<R> {
    path: PathBuf,
    input: R,
    offset: u64,
    len: u64,
    /// Estimated memory of the entries decoded so far.
    decoded: u64,
}

impl EntryReader<BufReader<File>> {
    /// Opens `path` and checks its magics.
    pub fn open(path: &Path, magic: u32) -> Result<Self> {
        let io = |e| ImageError::new(path, 0, ErrorKind::Io(e));
        let f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        EntryReader::new(path, BufReader::new(f), len, magic)
    }
}

impl<R: Read> EntryReader<R> {
    /// Reads the magics of an image of `len` bytes from `input`.
    pub fn new(path: &Path, input: R, len: u64, magic: u32) -> Result<Self> {
        let mut r = EntryReader {
            path: path.to_path_buf(),
            input,
            offset: 0,
            len,
            decoded: 0,
        };
        if let Some(expected) = head_magic_for(magic) {
            let found = r.read_u32("head magic")?;
            if found != expected {
                return Err(r.err_at(0, ErrorKind::BadHeadMagic { found, expected }));
            }
        }
        let at = r.offset;
        let found = r.read_u32("magic")?;
        if found != magic {
            return Err(r.err_at(
                at,
                ErrorKind::BadMagic {
                    found,
                    expected: magic,
                    image: image_name(magic),
                },
            ));
        }
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err_at(&self, offset: u64, kind: ErrorKind) -> ImageError {
        ImageError::new(&self.path, offset, kind)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let at = self.offset;
        let available = self.len.saturating_sub(at);
        if (buf.len() as u64) > available {
            return Err(self.err_at(
                at,
                ErrorKind::Truncated {
                    what,
                    needed: buf.len() as u64,
                    available,
                },
            ));
        }
        self.input.read_exact(buf).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ErrorKind::Truncated {
                    what,
                    needed: buf.len() as u64,
                    available,
                }
            } else {
                ErrorKind::Io(e)
            };
            self.err_at(at, kind)
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_u32(&mut self, what: &'static str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The next raw entry and the offset of its length word, or `None` at
    /// the end of the file.
    pub fn next_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let at = self.offset;
        let len = self.read_u32("entry length")?;
        if len > MAX_ENTRY_BYTES {
            return Err(self.err_at(
                at,
                ErrorKind::EntryTooLarge {
                    len,
                    max: MAX_ENTRY_BYTES,
                },
            ));
        }
        let available = self.len - self.offset;
        if u64::from(len) > available {
            return Err(self.err_at(
                at,
                ErrorKind::Truncated {
                    what: "entry",
                    needed: len.into(),
                    available,
                },
            ));
        }
        let mut buf = vec![0u8; len as usize];
        // Offsets in errors point at the entry's length word.
        self.read_exact(&mut buf, "entry")
            .map_err(|e| ImageError { offset: at, ..e })?;
        Ok(Some((at, buf)))
    }

    /// Offset of the next entry's length word.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decodes the next entry as `M`. The entries one reader decodes may
    /// take [`MAX_FILE_DECODED_BYTES`] together (the callers keep them).
    pub fn next<M: protobuf::MessageFull>(&mut self, what: &'static str) -> Result<Option<M>> {
        let Some((at, bytes)) = self.next_raw()? else {
            return Ok(None);
        };
        let cost = estimate::<M>(&bytes);
        self.decoded = self.decoded.saturating_add(cost);
        // One entry too large is told as such (by decode).
        if cost <= MAX_DECODED_BYTES && self.decoded > MAX_FILE_DECODED_BYTES {
            return Err(self.err_at(
                at,
                ErrorKind::FileDecodedTooLarge {
                    what,
                    max: MAX_FILE_DECODED_BYTES,
                },
            ));
        }
        decode(&self.path, at, &bytes, what).map(Some)
    }

    /// Decodes every remaining entry as `M`.
    pub fn collect<M: protobuf::MessageFull>(&mut self, what: &'static str) -> Result<Vec<M>> {
        let mut out = Vec::new();
        while let Some(m) = self.next(what)? {
            out.push(m);
        }
        Ok(out)
    }
}

pub(crate) fn decode<M: protobuf::MessageFull>(
    path: &Path,
    at: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<M> {
    if !fits_in_memory::<M>(bytes) {
        return Err(ImageError::new(
            path,
            at,
            ErrorKind::DecodedTooLarge {
                what,
                max: MAX_DECODED_BYTES,
            },
        ));
    }
    M::parse_from_bytes(bytes)
        .map_err(|source| ImageError::new(path, at, ErrorKind::Decode { what, source }))
}

/// Whether `bytes` decoded as `M` stays within [`MAX_DECODED_BYTES`]
/// (malformed bytes pass: the decoder reports them).
pub(crate) fn fits_in_memory<M: protobuf::MessageFull>(bytes: &[u8]) -> bool {
    estimate::<M>(bytes) <= MAX_DECODED_BYTES
}

/// Upper estimate of the memory `bytes` takes decoded as `M` (0 for
/// malformed bytes, which the decoder refuses).
pub(crate) fn estimate<M: protobuf::MessageFull>(bytes: &[u8]) -> u64 {
    decoded_cost(bytes, &M::descriptor(), 0).unwrap_or(0)
}

/// Upper estimate of a decoded field: an `Option` of a word, a `String`
/// or `Vec` header, a boxed message pointer.
const FIELD_BYTES: u64 = 24;
/// An unknown field is kept in a map entry of four vectors (measured at
/// about 350 bytes each, the map's growth included).
const UNKNOWN_FIELD_BYTES: u64 = 512;
/// Nesting the protobuf decoder refuses beyond.
const MAX_DEPTH: u32 = 100;

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The wire type a field of protobuf type `t` is written with.
fn wire_type_of(t: protobuf::descriptor::field_descriptor_proto::Type) -> u64 {
    use protobuf::descriptor::field_descriptor_proto::Type::*;
    match t {
        TYPE_DOUBLE | TYPE_FIXED64 | TYPE_SFIXED64 => 1,
        TYPE_FLOAT | TYPE_FIXED32 | TYPE_SFIXED32 => 5,
        TYPE_STRING | TYPE_BYTES | TYPE_MESSAGE => 2,
        TYPE_GROUP => 3,
        _ => 0,
    }
}

/// Skips a group (as the decoder does: up to its end tag or the end of
/// the input).
fn skip_group(b: &[u8], i: &mut usize, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    while *i < b.len() {
        match varint(b, i)? & 7 {
            0 => {
                varint(b, i)?;
            }
            1 => *i = i.checked_add(8)?,
            5 => *i = i.checked_add(4)?,
            2 => {
                let len = usize::try_from(varint(b, i)?).ok()?;
                *i = i.checked_add(len)?;
            }
            3 => skip_group(b, i, depth + 1)?,
            4 => return Some(()),
            _ => return None,
        }
        if *i > b.len() {
            return None;
        }
    }
    Some(())
}

/// Estimates the memory `bytes` takes decoded as a `desc` message, walking
/// the wire format with the schema the way the decoder does (a field with
/// an unexpected wire type is kept as an unknown field). `None` for bytes
/// the decoder refuses too. Linear in the input: each byte is read once
/// per message that encloses it, and the schema's nesting is shallow.
pub(crate) fn decoded_cost(
    bytes: &[u8],
    desc: &protobuf::reflect::MessageDescriptor,
    depth: u32,
) -> Option<u64> {
    use protobuf::descriptor::field_descriptor_proto::{Label, Type};
    use protobuf::reflect::{RuntimeFieldType, RuntimeType};
    if depth > MAX_DEPTH {
        return None;
    }
    let mut cost = FIELD_BYTES * (desc.fields().count() as u64 + 2);
    let mut i = 0;
    while i < bytes.len() {
        let tag = varint(bytes, &mut i)?;
        let wire = tag & 7;
        let field = desc.field_by_number(u32::try_from(tag >> 3).ok()?);
        let len = match wire {
            0 => {
                varint(bytes, &mut i)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => varint(bytes, &mut i)?,
            3 => {
                skip_group(bytes, &mut i, depth + 1)?;
                cost += UNKNOWN_FIELD_BYTES;
                continue;
            }
            _ => return None,
        };
        let end = i.checked_add(usize::try_from(len).ok()?)?;
        let body = bytes.get(i..end)?;
        i = end;
        let Some(f) = field else {
            cost += UNKNOWN_FIELD_BYTES + len;
            continue;
        };
        let ty = f.proto().type_();
        let repeated = f.proto().label() == Label::LABEL_REPEATED;
        let packed = repeated && wire == 2 && wire_type_of(ty) != 2;
        if wire != wire_type_of(ty) && !packed {
            cost += UNKNOWN_FIELD_BYTES + len;
            continue;
        }
        cost += match f.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(d))
            | RuntimeFieldType::Repeated(RuntimeType::Message(d)) => {
                FIELD_BYTES + decoded_cost(body, &d, depth + 1)?
            }
            // Packed scalars: up to eight bytes per byte on the wire.
            _ if packed => FIELD_BYTES + 8 * len,
            _ if ty == Type::TYPE_STRING || ty == Type::TYPE_BYTES => FIELD_BYTES + len,
            _ if repeated => 8,
            // Singular scalars live in the message itself.
            _ => 0,
        };
    }
    Some(cost)
}

/// Every entry of the image at `path`.
pub fn read_all<M: protobuf::MessageFull>(
    path: &Path,
    magic: u32,
    what: &'static str,
) -> Result<Vec<M>> {
    EntryReader::open(path, magic)?.collect(what)
}

/// The single entry of the image at `path`.
pub fn read_one<M: protobuf::MessageFull>(
    path: &Path,
    magic: u32,
    what: &'static str,
) -> Result<M> {
    let mut r = EntryReader::open(path, magic)?;
    let at = r.offset;
    let first = r.next::<M>(what)?;
    let Some(first) = first else {
        return Err(ImageError::new(
            path,
            at,
            ErrorKind::EntryCount {
                what,
                expected: "one",
                found: 0,
            },
        ));
    };
    let extra_at = r.offset;
    if r.next_raw()?.is_some() {
        return Err(ImageError::new(
            path,
            extra_at,
            ErrorKind::EntryCount {
                what,
                expected: "one",
                found: 2,
            },
        ));
    }
    Ok(first)
}

/// Encodes entries in CRIU's layout (for tests and tools writing images).
pub fn encode<M: protobuf::Message>(magic: u32, entries: &[&M]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(head) = head_magic_for(magic) {
        out.extend_from_slice(&head.to_le_bytes());
    }
    out.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        let body = e.write_to_bytes().expect("encodable message");
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::task::Pstree_entry;

    fn entry(pid: u32) -> Pstree_entry {
        let mut e = Pstree_entry::new();
        e.set_pid(pid);
        e.set_ppid(0);
        e.set_pgid(pid);
        e.set_sid(pid);
        e
    }

    #[test]
    fn reads_entries_and_reports_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pstree.img");
        let bytes = encode(PSTREE_MAGIC, &[&entry(1), &entry(2)]);
        std::fs::write(&p, &bytes).unwrap();
        let all: Vec<Pstree_entry> = read_all(&p, PSTREE_MAGIC, "pstree entry").unwrap();
        assert_eq!(all.iter().map(|e| e.pid()).collect::<Vec<_>>(), vec![1, 2]);
        let err = read_one::<Pstree_entry>(&p, PSTREE_MAGIC, "pstree entry").unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::EntryCount { found: 2, .. }),
            "{err}"
        );

        // An oversized length word is caught before allocating.
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        let err = read_all::<Pstree_entry>(&p, PSTREE_MAGIC, "pstree entry").unwrap_err();
        assert!(matches!(err.kind, ErrorKind::EntryTooLarge { .. }), "{err}");
        assert_eq!(err.offset, 8);
        let msg = err.to_string();
        assert!(
            msg.contains("pstree.img") && msg.contains("offset 8"),
            "{msg}"
        );

        // A wrong image type names what was expected.
        std::fs::write(&p, &bytes).unwrap();
        let err = read_all::<Pstree_entry>(&p, CORE_MAGIC, "core entry").unwrap_err();
        assert!(err.to_string().contains("(core)"), "{err}");
        assert_eq!(err.offset, 4);
    }
}
