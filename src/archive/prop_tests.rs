//! Property tests: an imported archive is hostile. Random bytes, damaged
//! valid archives and entries with weird names give an error (never a
//! panic), and a failed import leaves nothing behind, inside or outside the
//! destination.
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use tar::EntryType::{
    Directory, Fifo, GNULongName, Link, Regular, Symlink, XGlobalHeader, XHeader,
};

use super::import::safe_path;
use super::tar_guard::{Refused, TarGuard};
use super::tests::config_and_descriptors;
use super::*;
use crate::criu::Version;
use crate::test_damage::Damage;

/// One of `kinds` of tar entry.
fn kinds(kinds: &[tar::EntryType]) -> impl Strategy<Value = tar::EntryType> {
    proptest::sample::select(kinds.to_vec())
}

fn host() -> Host {
    Host {
        architecture: std::env::consts::ARCH.to_string(),
        criu_version: Version::new(4, 2, 1),
    }
}

/// A small but complete archive (images, config, descriptors, a rootfs
/// with a symlink).
fn valid_archive(compression: Compression) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("inventory.img"), b"\x16\x31\x31\x58inv").unwrap();
    std::fs::write(images.join("core-1.img"), vec![7u8; 1500]).unwrap();
    let (config, descriptors) = config_and_descriptors(tmp.path());
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/busybox"), vec![0xabu8; 3000]).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let spec = ExportSpec {
        rootfs_image: None,
        images_dir: images,
        descriptors: Some(descriptors),
        config,
        metadata: Metadata::for_host("ctr-1", Version::new(4, 2, 1)),
        dump_stats: None,
        rootfs: Some(rootfs),
        compression,
    };
    let mut out = Vec::new();
    export(&spec, &mut out).unwrap();
    out
}

/// `outer/inner/imported` as the destination: an escape would show up in
/// `outer` or `inner`.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("outer/inner")).unwrap();
        Sandbox { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("outer/inner/imported")
    }

    fn import(&self, bytes: &[u8]) -> Result<Imported> {
        import_for(bytes, &self.dest(), &Limits::default(), &host())
    }

    /// Nothing but the sandbox's own directories, and `imported` only if
    /// the import succeeded.
    fn assert_clean(&self, imported: bool) {
        let list = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(list(self.tmp.path()), ["outer"]);
        assert_eq!(list(&self.tmp.path().join("outer")), ["inner"]);
        let inner = list(&self.tmp.path().join("outer/inner"));
        if imported {
            assert_eq!(inner, ["imported"]);
        } else {
            assert!(inner.is_empty(), "left behind: {inner:?}");
        }
    }
}

/// One way to damage an archive.
#[derive(Debug, Clone)]
enum Mutation {
    Plain(Damage),
    /// Overwrite a tar header's size field (at a 512-byte block) with a
    /// huge octal or base-256 number.
    HugeSize(usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Damage::any().prop_map(Mutation::Plain),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(a, b)| Mutation::HugeSize(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Plain(d) => d.apply(bytes),
        Mutation::HugeSize(block, base256) => {
            let blocks = bytes.len() / 512;
            if blocks == 0 {
                return;
            }
            let at = (block % blocks) * 512 + 124;
            let field: [u8; 12] = if *base256 {
                [
                    0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ]
            } else {
                *b"77777777777\0"
            };
            bytes[at..at + 12].copy_from_slice(&field);
            // Keep the checksum right, so the size is what gets parsed.
            let mut h = tar::Header::new_old();
            h.as_mut_bytes()
                .copy_from_slice(&bytes[at - 124..at - 124 + 512]);
            h.set_cksum();
            bytes[at - 124..at - 124 + 512].copy_from_slice(h.as_bytes());
        }
    }
}

/// Path segments an attacker would try.
fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(Vec::new()),
        Just(b"checkpoint".to_vec()),
        Just(b"ferry.json".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(vec![b'x'; 255]),
        Just(vec![0xff, 0xfe]),
        "[a-z]{1,8}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..6),
    ]
}

/// An entry name from segments, maybe absolute, maybe very long or deep.
fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec(segment(), 1..6),
        prop_oneof![Just(1usize), Just(1), Just(40), Just(200)],
    )
        .prop_map(|(abs, segs, repeat)| {
            let mut v = Vec::new();
            if abs {
                v.push(b'/');
            }
            for i in 0..repeat {
                for (j, s) in segs.iter().enumerate() {
                    if i + j > 0 {
                        v.push(b'/');
                    }
                    v.extend_from_slice(s);
                }
            }
            v
        })
}

/// A tar of raw headers: names go in as given (GNU long-name entries for
/// long ones), so nothing is normalized or refused on the way in.
fn raw_tar(entries: &[(Vec<u8>, tar::EntryType, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = |h: &mut tar::Header, data: &[u8]| {
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    };
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        if name.len() >= 100 {
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            long.set_entry_type(tar::EntryType::GNULongName);
            let mut n = name.clone();
            n.push(0);
            block(&mut long, &n);
        }
        let short = &name[..name.len().min(99)];
        h.as_gnu_mut().unwrap().name[..short.len()].copy_from_slice(short);
        h.set_entry_type(*kind);
        block(&mut h, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn meta_json() -> Vec<u8> {
    serde_json::to_vec(&Metadata::for_host("evil", Version::new(4, 2, 1))).unwrap()
}

/// What the tar crate makes of `bytes`: each entry's path, size and data.
type Listing = Vec<(Vec<u8>, u64, Vec<u8>)>;

fn list<R: std::io::Read>(r: R) -> std::io::Result<Listing> {
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((e.path_bytes().into_owned(), e.size(), data));
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Accepted entry paths are relative, plain and within the limits.
    #[test]
    fn safe_paths_are_relative_and_plain(raw in entry_name()) {
        let limits = Limits::default();
        match safe_path(&raw, &limits) {
            Ok(p) => {
                prop_assert!(!raw.contains(&0));
                prop_assert!(raw.len() <= limits.max_path_bytes);
                prop_assert!(p.components().count() <= limits.max_depth);
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{:?}", p);
            }
            Err(e) => prop_assert!(matches!(e, Error::UnsafeEntry { .. }), "{}", e),
        }
    }

    /// Under the tar parser, the guard changes nothing it does not refuse:
    /// same entries, same bytes, or an error either way.
    #[test]
    fn tar_guard_is_transparent(
        entries in proptest::collection::vec(
            (entry_name(), kinds(&[Regular, Directory, XHeader, GNULongName, XGlobalHeader]),
                proptest::collection::vec(any::<u8>(), 0..700)),
            0..5,
        ),
        mutations in proptest::collection::vec(mutation(), 0..3),
    ) {
        let mut bytes = raw_tar(&entries);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let plain = list(&bytes[..]);
        let guarded = list(TarGuard::new(&bytes[..]));
        match (plain, guarded) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => prop_assert!(Refused::from_io(&e).is_some(), "{}", e),
            (Err(e), Ok(_)) => prop_assert!(false, "guard hid an error: {}", e),
        }
    }
}

proptest! {
    // Each case imports into fresh directories.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_bytes_are_refused(
        prefix in prop_oneof![
            Just(Vec::new()),
            Just(vec![0x28, 0xb5, 0x2f, 0xfd]),
            Just(vec![0x1f, 0x8b]),
            Just(raw_tar(&[(b"ferry.json".to_vec(), tar::EntryType::Regular, meta_json())])),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = prefix;
        bytes.extend_from_slice(&tail);
        let s = Sandbox::new();
        let err = s.import(&bytes);
        prop_assert!(err.is_err());
        s.assert_clean(false);
        let _ = unpack_for_inspect(&bytes[..], &s.tmp.path().join("inspect"), &Limits::default());
    }

    /// Entries with weird names after a valid `ferry.json`: refused, and
    /// nothing is written outside the staging directory.
    #[test]
    fn hostile_names_never_escape(
        names in proptest::collection::vec(
            (entry_name(), kinds(&[Regular, Directory, Symlink, Link, Fifo])),
            1..5,
        ),
    ) {
        let mut entries = vec![(b"ferry.json".to_vec(), tar::EntryType::Regular, meta_json())];
        for (name, kind) in names {
            entries.push((name, kind, b"pwned".to_vec()));
        }
        let bytes = raw_tar(&entries);
        let s = Sandbox::new();
        // No manifest: never a successful import.
        prop_assert!(s.import(&bytes).is_err());
        s.assert_clean(false);
    }

    /// Damage anywhere in a valid archive: an error or a complete import,
    /// never a panic or a half-written destination.
    #[test]
    fn mutated_archives_never_panic(
        zstd in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let mut bytes = valid_archive(compression);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let s = Sandbox::new();
        let result = s.import(&bytes);
        s.assert_clean(result.is_ok());
        if let Ok(imp) = result {
            let rootfs = s.tmp.path().join("outer/inner/imported/rootfs");
            if let Some(tar) = &imp.rootfs_tar {
                let _ = unpack_rootfs(tar, &rootfs, &Limits::default());
            }
            let _ = crate::images::ImageDir::open(&imp.images_dir).and_then(|d| d.summary(true));
        }
        let _ = unpack_for_inspect(&bytes[..], &s.tmp.path().join("inspect"), &Limits::default());
    }
}

/// A GNU long-name entry was read into memory whole by the tar crate, as
/// far as its data went: 256 MiB here, from a zstd archive of a few
/// kilobytes (and gigabytes the same way). Refused at its header now.
#[test]
fn huge_long_name_in_a_compressed_archive_is_refused() {
    struct Filler(u64);
    impl Read for Filler {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.0) as usize;
            buf[..n].fill(b'a');
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let size = 256u64 << 20;
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    std::io::copy(
        &mut std::io::Cursor::new(h.as_bytes().to_vec()).chain(Filler(size)),
        &mut enc,
    )
    .unwrap();
    let bytes = enc.finish().unwrap();
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    let s = Sandbox::new();
    let err = s.import(&bytes).unwrap_err();
    assert!(
        matches!(err, Error::Limit { limit, .. } if limit == super::tar_guard::MAX_EXTENSION_BYTES),
        "{err}"
    );
    s.assert_clean(false);
}

/// Entry names are kept until the manifest check; an archive of many
/// entries with long names (highly compressible) took gigabytes. Their sum
/// is capped.
#[test]
fn entry_names_are_bounded_in_total() {
    /// Entries `n/<4000 bytes>-<i>`, each with a GNU long-name entry, made
    /// as they are read.
    struct ManyNames {
        next: u64,
        buf: Vec<u8>,
        at: usize,
    }
    impl Read for ManyNames {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.buf.len() {
                let name = format!("n/{}-{}", "x".repeat(4000), self.next).into_bytes();
                self.next += 1;
                self.buf = raw_tar(&[(name, tar::EntryType::Regular, Vec::new())]);
                // raw_tar ends the archive; keep going instead.
                self.buf.truncate(self.buf.len() - 1024);
                self.at = 0;
            }
            let n = (self.buf.len() - self.at).min(out.len());
            out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    let input = ManyNames {
        next: 0,
        buf: Vec::new(),
        at: 0,
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack_for_inspect(input, &tmp.path().join("x"), &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "bytes of entry names",
                ..
            }
        ),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A root filesystem tar with weird names, links out of the tree and
    /// entries through those links: unpacked, or refused, never written
    /// outside the destination.
    #[test]
    fn rootfs_tar_never_writes_outside(
        entries in proptest::collection::vec(
            (entry_name(), prop_oneof![
                Just(tar::EntryType::Regular),
                Just(tar::EntryType::Directory),
                Just(tar::EntryType::Symlink),
                Just(tar::EntryType::Link),
                Just(tar::EntryType::Fifo),
            ], prop_oneof![
                Just(b"/".to_vec()),
                Just(b"..".to_vec()),
                Just(b"../../..".to_vec()),
                Just(b"l".to_vec()),
                Just(b"a".to_vec()),
            ]),
            1..6,
        ),
        through_link in any::<bool>(),
    ) {
        let s = Sandbox::new();
        let mut list: Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> = Vec::new();
        if through_link {
            // A link to the sandbox's parent, then a file through it.
            list.push((b"l".to_vec(), tar::EntryType::Symlink, b"../..".to_vec()));
            list.push((b"l/pwned".to_vec(), tar::EntryType::Regular, Vec::new()));
        }
        for (name, kind, target) in entries {
            list.push((name, kind, target));
        }
        let tar_path = s.tmp.path().join("outer/rootfs-diff.tar");
        std::fs::write(&tar_path, rootfs_tar(&list)).unwrap();
        let dest = s.tmp.path().join("outer/inner/imported");
        let _ = unpack_rootfs(&tar_path, &dest, &Limits::default());
        std::fs::remove_file(&tar_path).unwrap();
        let _ = std::fs::remove_dir_all(&dest);
        s.assert_clean(false);
    }
}

/// Like [`raw_tar`], with link targets (the third field) for links.
fn rootfs_tar(entries: &[(Vec<u8>, tar::EntryType, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, target) in entries {
        let is_link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
        let mut one = raw_tar(&[(
            name.clone(),
            *kind,
            if is_link { Vec::new() } else { b"x".to_vec() },
        )]);
        one.truncate(one.len() - 1024);
        if is_link {
            // The last header block: set its link name.
            let at = one.len() - 512;
            let mut h = tar::Header::new_old();
            h.as_mut_bytes().copy_from_slice(&one[at..]);
            let n = target.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
            h.set_cksum();
            one[at..].copy_from_slice(h.as_bytes());
        }
        out.extend_from_slice(&one);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The layout files of an unpacked ferry or podman archive (metadata,
    /// config.dump, spec.dump, stats-dump) with any content: described, or
    /// an error.
    #[test]
    fn layout_files_parse_or_fail(
        files in proptest::collection::vec(
            (proptest::sample::select(vec![METADATA_FILE, CONFIG_FILE, SPEC_FILE, STATS_FILE]),
             prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..128),
                Just(br#"{"id":1,"name":["x"],"runtime":null,"checkpointedTime":{}}"#.to_vec()),
                Just(br#"{"format_version":4294967295,"container_id":"","rootfs":"full"}"#.to_vec()),
             ]),
            0..4,
        ),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(IMAGES_DIR)).unwrap();
        std::fs::write(tmp.path().join(IMAGES_DIR).join("inventory.img"), b"").unwrap();
        for (name, bytes) in files {
            std::fs::write(tmp.path().join(name), bytes).unwrap();
        }
        let _ = describe_dir(tmp.path(), &Limits::default());
    }
}
