//! Property tests: CRIU images are read from directories an imported
//! archive or a migration peer filled, so any bytes must give an error, not a
//! panic, and no declared length may make the reader allocate beyond the
//! data it has.
use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;

use super::memory::{PE_LAZY, PE_PARENT, PE_PRESENT};
use super::tests::{anon_vma, make_images, mm_at};
use super::*;
use crate::criu::image::{self, tests::with_header};
use crate::proto::files::File_entry;
use crate::proto::memory::{Mm_entry, Pagemap_entry, Pagemap_head};
use crate::proto::namespaces::Mnt_entry;
use crate::test_damage::Damage;

const MAGICS: [u32; 13] = [
    INVENTORY_MAGIC,
    PSTREE_MAGIC,
    FDINFO_MAGIC,
    PAGEMAP_MAGIC,
    CORE_MAGIC,
    IDS_MAGIC,
    MM_MAGIC,
    FS_MAGIC,
    FILES_MAGIC,
    MNTS_MAGIC,
    UTSNS_MAGIC,
    STATS_MAGIC,
    IRMAP_CACHE_MAGIC,
];

/// Reads every entry of `bytes` as an image with `magic`; checks that each
/// entry returned lies inside the input and that reading ends.
fn drain(bytes: &[u8], magic: u32) -> Result<usize> {
    let mut r = EntryReader::new(
        Path::new("fuzz.img"),
        Cursor::new(bytes),
        bytes.len() as u64,
        magic,
    )?;
    let mut n = 0;
    while let Some((at, entry)) = r.next_raw()? {
        assert!(at as usize + 4 + entry.len() <= bytes.len());
        n += 1;
        assert!(n <= bytes.len() / 4, "more entries than length words");
    }
    Ok(n)
}

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Mutation {
    Plain(Damage),
    /// Overwrite four bytes with a little-endian length word.
    Length(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge = prop_oneof![
        Just(u32::MAX),
        Just(MAX_ENTRY_BYTES),
        Just(MAX_ENTRY_BYTES + 1),
        Just(1 << 31),
        any::<u32>(),
    ];
    prop_oneof![
        3 => Damage::any().prop_map(Mutation::Plain),
        1 => (any::<usize>(), huge).prop_map(|(a, l)| Mutation::Length(a, l)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Plain(d) => d.apply(bytes),
        Mutation::Length(_, _) if bytes.is_empty() => {}
        Mutation::Length(at, len) => {
            let i = at % bytes.len();
            let end = (i + 4).min(bytes.len());
            bytes[i..end].copy_from_slice(&len.to_le_bytes()[..end - i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        magic in proptest::sample::select(MAGICS.to_vec()),
    ) {
        let _ = drain(&bytes, magic);
        let _ = drain(&with_header(magic, &bytes), magic);
        let _ = image::read_all::<Pstree_entry>(Path::new("/nonexistent"), magic, "x");
    }

    /// A length word promising more than the file holds is refused before
    /// the entry is allocated, whatever the length.
    #[test]
    fn declared_length_beyond_the_data_is_an_error(
        len in prop_oneof![Just(u32::MAX), Just(MAX_ENTRY_BYTES + 1), any::<u32>()],
        data in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(len as usize > data.len());
        let mut rest = len.to_le_bytes().to_vec();
        rest.extend_from_slice(&data);
        let err = drain(&with_header(PSTREE_MAGIC, &rest), PSTREE_MAGIC).unwrap_err();
        prop_assert!(
            matches!(err.kind, ErrorKind::Truncated { .. } | ErrorKind::EntryTooLarge { .. }),
            "{err}"
        );
        prop_assert_eq!(err.offset, 8);
    }

    /// Entries decode as every message type ferry reads without panicking
    /// (protobuf recursion and length checks included).
    #[test]
    fn random_entries_decode_or_fail(
        entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let mut rest = Vec::new();
        for e in &entries {
            rest.extend_from_slice(&(e.len() as u32).to_le_bytes());
            rest.extend_from_slice(e);
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, magic) in [
            ("inventory.img", INVENTORY_MAGIC),
            ("pstree.img", PSTREE_MAGIC),
            ("core.img", CORE_MAGIC),
            ("mm.img", MM_MAGIC),
            ("pagemap.img", PAGEMAP_MAGIC),
            ("files.img", FILES_MAGIC),
            ("fdinfo.img", FDINFO_MAGIC),
            ("mnt.img", MNTS_MAGIC),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, with_header(magic, &rest)).unwrap();
            let _ = read_all::<Inventory_entry>(&p, magic, "x");
            let _ = read_all::<Core_entry>(&p, magic, "x");
            let _ = read_all::<Mm_entry>(&p, magic, "x");
            if let Ok(files) = read_all::<File_entry>(&p, magic, "x") {
                for f in &files {
                    let _ = describe::describe(f);
                }
            }
            let _ = read_all::<Mnt_entry>(&p, magic, "x");
            let _ = read_all::<Pagemap_entry>(&p, magic, "x");
        }
    }
}

proptest! {
    // Each case writes and reads a whole image directory.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Structured damage to any file of a valid image directory: reading
    /// everything `ferry inspect` shows gives a result or an error.
    #[test]
    fn mutated_image_dirs_never_panic(
        file in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        make_images(dir.path());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let path = file.get(&names);
        let mut bytes = std::fs::read(path).unwrap();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        std::fs::write(path, &bytes).unwrap();
        if let Ok(d) = ImageDir::open(dir.path()) {
            let _ = d.summary(true);
            let _ = d.lazy_ranges(1);
        }
    }

    /// Hostile addresses and page counts in mm and pagemap entries (which
    /// decide what is read from the pages image) never overflow.
    #[test]
    fn hostile_memory_layout_never_panics(
        runs in proptest::collection::vec(
            (edge_u64(), edge_u64(), prop_oneof![Just(PE_PRESENT), Just(PE_LAZY), Just(PE_PARENT), any::<u32>()]),
            0..4,
        ),
        arg in (edge_u64(), edge_u64()),
        env in (edge_u64(), edge_u64()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        make_images(dir.path());
        let mut mm = valid_mm(dir.path());
        mm.set_mm_arg_start(arg.0);
        mm.set_mm_arg_end(arg.1);
        mm.set_mm_env_start(env.0);
        mm.set_mm_env_end(env.1);
        std::fs::write(dir.path().join("mm-1.img"), image::encode(MM_MAGIC, &[&mm])).unwrap();
        let mut head = Pagemap_head::new();
        head.set_pages_id(1);
        let mut bytes = image::encode(PAGEMAP_MAGIC, &[&head]);
        for (vaddr, nr, flags) in &runs {
            let mut e = Pagemap_entry::new();
            e.set_vaddr(*vaddr);
            e.set_nr_pages(*nr);
            e.set_compat_nr_pages(*nr as u32);
            e.set_flags(*flags);
            bytes.extend_from_slice(&image::encode(PAGEMAP_MAGIC, &[&e])[8..]);
        }
        std::fs::write(dir.path().join("pagemap-1.img"), &bytes).unwrap();
        let d = ImageDir::open(dir.path()).unwrap();
        let _ = d.summary(true);
        let _ = d.cmdline(1);
        let _ = d.environ(1);
    }
}

/// Process 1's mm entry as `make_images` wrote it.
fn valid_mm(dir: &Path) -> Mm_entry {
    read_one(&dir.join("mm-1.img"), MM_MAGIC, "mm entry").unwrap()
}

/// Values near the edges of u64 arithmetic, and small ones.
fn edge_u64() -> impl Strategy<Value = u64> {
    let page = page_size();
    prop_oneof![
        0u64..0x30000,
        Just(u64::MAX),
        Just(u64::MAX - page + 1),
        Just(u64::MAX / page),
        Just(u64::MAX / page + 1),
        (u64::MAX - 0x3000..=u64::MAX),
        any::<u64>(),
    ]
}

/// Found by `hostile_memory_layout_never_panics`: a present run ending
/// past the top of the address space overflowed the end computation when
/// the arguments were read from it.
#[test]
fn pages_run_at_top_of_address_space() {
    let dir = tempfile::tempdir().unwrap();
    make_images(dir.path());
    let page = page_size();
    let top = u64::MAX - page + 1;
    let mut mm = valid_mm(dir.path());
    // make_images put "sh -c 'sleep 100'" at offset 8 of the pages.
    let argv = b"sh\0-c\0sleep 100\0";
    mm.set_mm_arg_start(top + 8);
    mm.set_mm_arg_end(top + 8 + argv.len() as u64);
    std::fs::write(dir.path().join("mm-1.img"), image::encode(MM_MAGIC, &[&mm])).unwrap();
    let mut head = Pagemap_head::new();
    head.set_pages_id(1);
    let mut e = Pagemap_entry::new();
    e.set_vaddr(top);
    e.set_nr_pages(2);
    e.set_compat_nr_pages(2);
    e.set_flags(PE_PRESENT);
    let mut bytes = image::encode(PAGEMAP_MAGIC, &[&head]);
    bytes.extend_from_slice(&image::encode(PAGEMAP_MAGIC, &[&e])[8..]);
    std::fs::write(dir.path().join("pagemap-1.img"), &bytes).unwrap();
    let d = ImageDir::open(dir.path()).unwrap();
    assert_eq!(d.cmdline(1).unwrap().unwrap(), ["sh", "-c", "sleep 100"]);
}

fn mm_with_vmas(n: usize, start: u64) -> Vec<u8> {
    let mut mm = mm_at(0);
    mm.set_exe_file_id(1);
    for i in 0..n as u64 {
        let at = start + i * 0x2000;
        mm.vmas.push(anon_vma(at, at + 0x1000, 0x201));
    }
    image::encode(MM_MAGIC, &[&mm])
}

/// Reads an mm image of one entry: 300000 mappings of 18 bytes (every
/// required field 0), then `tail`.
fn read_crowded_mm(tail: &[u8]) -> Result<Mm_entry> {
    let vma = [
        0x72u8, 16, 0x08, 0, 0x10, 0, 0x18, 0, 0x20, 0, 0x28, 0, 0x30, 0, 0x38, 0, 0x40, 0,
    ];
    let mut body = vma.repeat(300_000);
    body.extend_from_slice(tail);
    let mut rest = (body.len() as u32).to_le_bytes().to_vec();
    rest.extend_from_slice(&body);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mm-1.img");
    std::fs::write(&p, with_header(MM_MAGIC, &rest)).unwrap();
    read_one::<Mm_entry>(&p, MM_MAGIC, "mm entry")
}

/// A million mappings in a 16 MiB entry decoded into some 160 MiB (and an
/// entry at the 64 MiB limit into over a gigabyte); refused before
/// decoding now. (300000 mappings of 18 bytes, every required field 0.)
#[test]
fn entry_decoding_into_too_much_memory_is_refused() {
    let err = read_crowded_mm(&[]).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::DecodedTooLarge { .. }),
        "{err}"
    );
    assert_eq!(err.offset, 8);
}

/// The kernel's default limit of mappings, with addresses of real size,
/// stays well within the limit.
#[test]
fn real_sized_mm_entries_decode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mm-1.img");
    std::fs::write(&p, mm_with_vmas(65530, 0x7f00_0000_0000)).unwrap();
    let mm = read_one::<Mm_entry>(&p, MM_MAGIC, "mm entry").unwrap();
    assert_eq!(mm.vmas.len(), 65530);
}

/// Many entries in one file, none too large alone, took gigabytes
/// together; refused past the per-file estimate. (Entries of 1900 unknown
/// fields each, some 650 KiB decoded from 6 KiB.)
#[test]
fn many_entries_decoding_into_too_much_memory_are_refused() {
    let mut body = vec![0x08, 1, 0x10, 0, 0x18, 1, 0x20, 1];
    for f in 100u64..2000 {
        let tag = f << 3;
        body.extend_from_slice(&[tag as u8 | 0x80, (tag >> 7) as u8, 0]);
    }
    let mut img = with_header(PSTREE_MAGIC, &[]);
    for _ in 0..256 {
        img.extend_from_slice(&(body.len() as u32).to_le_bytes());
        img.extend_from_slice(&body);
    }
    let err = drain_decoded(&img).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::FileDecodedTooLarge { .. }),
        "{err}"
    );
}

fn drain_decoded(bytes: &[u8]) -> Result<usize> {
    let mut r = EntryReader::new(
        Path::new("pstree.img"),
        Cursor::new(bytes),
        bytes.len() as u64,
        PSTREE_MAGIC,
    )?;
    let mut n = 0;
    while r.next::<Pstree_entry>("pstree entry")?.is_some() {
        n += 1;
    }
    Ok(n)
}

proptest! {
    /// The memory estimate walks the wire format as the decoder does:
    /// whatever the decoder accepts, the estimate covers (it does not stop
    /// early and let an unmeasured tail through).
    #[test]
    fn estimate_covers_what_the_decoder_accepts(
        tail in proptest::collection::vec(
            prop_oneof![
                // Tags of known and unknown fields, group starts and ends,
                // lengths and values.
                proptest::sample::select(vec![0x08u8, 0x0a, 0x0b, 0x0c, 0x10, 0x1a, 0x72, 0xa3, 0x06]),
                any::<u8>(),
            ],
            0..64,
        ),
    ) {
        use protobuf::Message as _;
        use protobuf::MessageFull as _;
        let mut bytes = vec![0x08, 2];
        bytes.extend_from_slice(&tail);
        if Inventory_entry::parse_from_bytes(&bytes).is_ok() {
            prop_assert!(
                image::decoded_cost(&bytes, &Inventory_entry::descriptor(), 0).is_some(),
                "{:02x?}", bytes
            );
        }
        if protobuf::well_known_types::empty::Empty::parse_from_bytes(&tail).is_ok() {
            prop_assert!(image::decoded_cost(
                &tail,
                &protobuf::well_known_types::empty::Empty::descriptor(),
                0
            ).is_some(), "{:02x?}", tail);
        }
    }
}

/// A message field whose length runs past the input is accepted by the
/// decoder (it reads to the end), so the estimate must cover it too.
#[test]
fn a_truncated_trailing_message_is_estimated() {
    use protobuf::Message as _;
    use protobuf::MessageFull as _;
    let mut bytes = vec![0x08, 2, 0x62, 0x80, 0x80, 0x04];
    bytes.extend_from_slice(&[0x0a, 0x7f]);
    bytes.extend_from_slice(&[b'x'; 0x7f]);
    for b in [&[0x08u8, 2, 0x62, 8][..], &bytes[..]] {
        if Inventory_entry::parse_from_bytes(b).is_ok() {
            assert!(
                image::decoded_cost(b, &Inventory_entry::descriptor(), 0).is_some(),
                "{b:02x?}"
            );
        }
    }
}

/// A group the decoder skips, after the mappings, must not hide them from
/// the estimate.
#[test]
fn a_trailing_group_does_not_hide_an_oversized_entry() {
    // A group (field 100) after the mappings.
    let err = read_crowded_mm(&[0xa3, 0x06, 0x08, 1, 0xa4, 0x06]).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::DecodedTooLarge { .. }),
        "{err}"
    );
}
