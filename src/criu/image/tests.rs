//! The reader on good, damaged and hostile images.
use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::proto::stats::Stats_entry;
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

/// Every entry of `bytes` read as an image with `magic`.
fn parse_entries<M: protobuf::MessageFull>(bytes: &[u8], magic: u32) -> Result<Vec<M>> {
    let len = bytes.len() as u64;
    EntryReader::new(Path::new("test.img"), Cursor::new(bytes), len, magic)?.collect("entry")
}

/// An image with a header for `magic` followed by `rest`.
pub(crate) fn with_header(magic: u32, rest: &[u8]) -> Vec<u8> {
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
        let _ = parse_entries::<Stats_entry>(&with_header(magic, &bytes), magic);
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
        let err = parse_entries::<Stats_entry>(&with_header(STATS_MAGIC, &rest), STATS_MAGIC)
            .unwrap_err();
        prop_assert_eq!(err.offset, 8);
        let refused = matches!(
            err.kind,
            ErrorKind::Truncated { what: "entry", .. } | ErrorKind::EntryTooLarge { .. }
        );
        prop_assert!(refused, "{}", err);
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
    let err =
        parse_entries::<Stats_entry>(&with_header(STATS_MAGIC, &rest), STATS_MAGIC).unwrap_err();
    assert_eq!(err.offset, 8);
    assert!(
        matches!(err.kind, ErrorKind::DecodedTooLarge { .. }),
        "{err}"
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
    assert!(matches!(err.kind, ErrorKind::FileTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("stats-dump"), "{err}");
}
