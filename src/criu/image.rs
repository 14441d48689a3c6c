//! Reader for CRIU protobuf image files.
//!
//! Layout (criu/image.c, criu/protobuf.c): a head magic (`IMG_COMMON_MAGIC`,
//! or `IMG_SERVICE_MAGIC` for service files such as stats; none for the
//! inventory), the image's own magic, then entries, each a native-endian
//! (little-endian on every CRIU target ferry runs on) u32 length followed by
//! that many bytes of protobuf.
use std::io::Read;
use std::path::{Path, PathBuf};

pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub const STATS_MAGIC: u32 = 0x5709_3306;
pub const IRMAP_CACHE_MAGIC: u32 = 0x5700_4059;
pub const PSTREE_MAGIC: u32 = 0x5027_3030;

/// Largest image file read whole: the files read here (inventory, stats)
/// are a few hundred bytes, and an imported archive may hold a hostile one
/// of any size.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The head magic CRIU writes in front of an image with `magic`.
pub fn head_magic_for(magic: u32) -> Option<u32> {
    match magic {
        INVENTORY_MAGIC => None,
        STATS_MAGIC | IRMAP_CACHE_MAGIC => Some(IMG_SERVICE_MAGIC),
        _ => Some(IMG_COMMON_MAGIC),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("CRIU image {}: {kind} at offset {offset}", path.display())]
pub struct ImageError {
    pub path: PathBuf,
    pub offset: u64,
    pub kind: ImageErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageErrorKind {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("head magic {found:#010x} is not {expected:#010x}")]
    BadHeadMagic { found: u32, expected: u32 },
    #[error("magic {found:#010x} is not {expected:#010x}")]
    BadMagic { found: u32, expected: u32 },
    #[error("truncated: {what} needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("cannot decode entry: {0}")]
    Decode(#[source] protobuf::Error),
    #[error("expected {expected} entries, found {found}")]
    EntryCount { expected: usize, found: usize },
    #[error("file exceeds the {max}-byte limit for this image")]
    TooLarge { max: u64 },
    #[error("entry would take over {max} bytes of memory decoded")]
    DecodedTooLarge { max: u64 },
}

/// Decodes every entry of the image file at `path`, checking that it is an
/// image with `expected_magic`.
pub fn read_entries<M: protobuf::MessageFull>(
    path: &Path,
    expected_magic: u32,
) -> Result<Vec<M>, ImageError> {
    let err = |offset, kind| ImageError {
        path: path.to_path_buf(),
        offset,
        kind,
    };
    let too_large = err(
        MAX_IMAGE_BYTES,
        ImageErrorKind::TooLarge {
            max: MAX_IMAGE_BYTES,
        },
    );
    let f = std::fs::File::open(path).map_err(|e| err(0, ImageErrorKind::Io(e)))?;
    // The size first, so a huge file is refused without reading it; the
    // read is bounded too, for files whose size says nothing (procfs).
    let size = f
        .metadata()
        .map_err(|e| err(0, ImageErrorKind::Io(e)))?
        .len();
    if size > MAX_IMAGE_BYTES {
        return Err(too_large);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(MAX_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(0, ImageErrorKind::Io(e)))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(too_large);
    }
    parse_entries(&bytes, expected_magic).map_err(|(offset, kind)| ImageError {
        path: path.to_path_buf(),
        offset: offset as u64,
        kind,
    })
}

/// Like [`read_entries`], for an image that holds exactly one entry.
pub fn read_single<M: protobuf::MessageFull>(
    path: &Path,
    expected_magic: u32,
) -> Result<M, ImageError> {
    let mut entries = read_entries::<M>(path, expected_magic)?;
    if entries.len() != 1 {
        return Err(ImageError {
            path: path.to_path_buf(),
            offset: 0,
            kind: ImageErrorKind::EntryCount {
                expected: 1,
                found: entries.len(),
            },
        });
    }
    Ok(entries.remove(0))
}

/// Parses image bytes; errors carry the offset where they were found.
pub fn parse_entries<M: protobuf::MessageFull>(
    bytes: &[u8],
    expected_magic: u32,
) -> Result<Vec<M>, (usize, ImageErrorKind)> {
    let mut off = 0usize;
    let read_u32 = |off: &mut usize, what: &'static str| {
        let avail = bytes.len() - *off;
        if avail < 4 {
            return Err((
                *off,
                ImageErrorKind::Truncated {
                    what,
                    needed: 4,
                    available: avail,
                },
            ));
        }
        let v = u32::from_le_bytes(bytes[*off..*off + 4].try_into().expect("4 bytes"));
        *off += 4;
        Ok(v)
    };
    if let Some(expected) = head_magic_for(expected_magic) {
        let found = read_u32(&mut off, "head magic")?;
        if found != expected {
            return Err((0, ImageErrorKind::BadHeadMagic { found, expected }));
        }
    }
    let magic_at = off;
    let found = read_u32(&mut off, "magic")?;
    if found != expected_magic {
        return Err((
            magic_at,
            ImageErrorKind::BadMagic {
                found,
                expected: expected_magic,
            },
        ));
    }
    let mut entries = Vec::new();
    let mut decoded = 0u64;
    while off < bytes.len() {
        let entry_at = off;
        let len = read_u32(&mut off, "entry length")? as usize;
        let avail = bytes.len() - off;
        if avail < len {
            return Err((
                entry_at,
                ImageErrorKind::Truncated {
                    what: "entry",
                    needed: len,
                    available: avail,
                },
            ));
        }
        let body = &bytes[off..off + len];
        // The same bounds as the image reader of `crate::images`.
        use crate::images::format::{estimate, MAX_DECODED_BYTES, MAX_FILE_DECODED_BYTES};
        let cost = estimate::<M>(body);
        decoded = decoded.saturating_add(cost);
        if cost > MAX_DECODED_BYTES || decoded > MAX_FILE_DECODED_BYTES {
            return Err((
                entry_at,
                ImageErrorKind::DecodedTooLarge {
                    max: if cost > MAX_DECODED_BYTES {
                        MAX_DECODED_BYTES
                    } else {
                        MAX_FILE_DECODED_BYTES
                    },
                },
            ));
        }
        let m = M::parse_from_bytes(body).map_err(|e| (entry_at, ImageErrorKind::Decode(e)))?;
        entries.push(m);
        off += len;
    }
    Ok(entries)
}

/// Encodes entries in CRIU's image layout (for tests and tools that write
/// images CRIU reads).
pub fn encode_entries<M: protobuf::Message>(
    magic: u32,
    entries: &[M],
) -> Result<Vec<u8>, protobuf::Error> {
    let mut out = Vec::new();
    if let Some(head) = head_magic_for(magic) {
        out.extend_from_slice(&head.to_le_bytes());
    }
    out.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        let body = e.write_to_bytes()?;
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stats::Stats_entry;
    use proptest::prelude::*;

    fn image(magic: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(h) = head_magic_for(magic) {
            v.extend_from_slice(&h.to_le_bytes());
        }
        v.extend_from_slice(&magic.to_le_bytes());
        v.extend_from_slice(rest);
        v
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_or_fail(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            magic in prop_oneof![Just(STATS_MAGIC), Just(INVENTORY_MAGIC), Just(PSTREE_MAGIC)],
        ) {
            let _ = parse_entries::<Stats_entry>(&bytes, magic);
            let _ = parse_entries::<Stats_entry>(&image(magic, &bytes), magic);
        }

        /// A length word beyond the data is an error at that word, whatever
        /// its value (the reader slices, it never allocates by it).
        #[test]
        fn declared_length_beyond_the_data(
            len in prop_oneof![Just(u32::MAX), any::<u32>()],
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assume!(len as usize > data.len());
            let mut rest = len.to_le_bytes().to_vec();
            rest.extend_from_slice(&data);
            let (at, kind) = parse_entries::<Stats_entry>(&image(STATS_MAGIC, &rest), STATS_MAGIC)
                .unwrap_err();
            prop_assert_eq!(at, 8);
            let truncated = matches!(kind, ImageErrorKind::Truncated { what: "entry", .. });
            prop_assert!(truncated, "{}", kind);
        }
    }

    /// An entry of two million unknown fields decoded into some 700 MiB.
    #[test]
    fn entry_decoding_into_too_much_memory_is_refused() {
        let mut body = Vec::new();
        for f in 100u64..100 + (2 << 20) {
            let mut tag = f << 3;
            while tag >= 0x80 {
                body.push(tag as u8 | 0x80);
                tag >>= 7;
            }
            body.extend_from_slice(&[tag as u8, 0]);
        }
        let mut rest = (body.len() as u32).to_le_bytes().to_vec();
        rest.extend_from_slice(&body);
        let (at, kind) =
            parse_entries::<Stats_entry>(&image(STATS_MAGIC, &rest), STATS_MAGIC).unwrap_err();
        assert_eq!(at, 8);
        assert!(
            matches!(kind, ImageErrorKind::DecodedTooLarge { .. }),
            "{kind}"
        );
    }

    /// An image file larger than any CRIU writes for these images is
    /// refused without reading it whole (it was read into memory entirely).
    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats-dump");
        let f = std::fs::File::create(&p).unwrap();
        // Sparse: no disk space used.
        f.set_len(MAX_IMAGE_BYTES + 1).unwrap();
        let err = read_single::<Stats_entry>(&p, STATS_MAGIC).unwrap_err();
        assert!(matches!(err.kind, ImageErrorKind::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("stats-dump"), "{err}");
    }
}
