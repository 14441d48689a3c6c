//! Archive round trips and every way an imported archive can be wrong.
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

struct Src {
    _tmp: tempfile::TempDir,
    images: PathBuf,
    config: PathBuf,
    descriptors: PathBuf,
    rootfs: PathBuf,
}

fn source() -> Src {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("inventory.img"), b"\x16\x31\x31\x58inventory").unwrap();
    std::fs::write(images.join("core-1.img"), vec![7u8; 10_000]).unwrap();
    std::fs::write(images.join("stats-dump"), stats_bytes()).unwrap();
    let (config, descriptors) = config_and_descriptors(tmp.path());
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc/deep/er")).unwrap();
    std::fs::write(rootfs.join("bin/busybox"), vec![0xabu8; 70_000]).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", rootfs.join("bin/ls")).unwrap();
    std::fs::write(rootfs.join("etc/deep/er/file"), b"hello").unwrap();
    nix::unistd::mkfifo(
        &rootfs.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    Src {
        _tmp: tmp,
        images,
        config,
        descriptors,
        rootfs,
    }
}

/// A minimal `config.json` and a runc-style `descriptors.json` in `dir`.
pub(super) fn config_and_descriptors(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#,
    )
    .unwrap();
    let descriptors = dir.join("descriptors.json");
    std::fs::write(&descriptors, br#"["/dev/null","pipe:[1]","pipe:[2]"]"#).unwrap();
    (config, descriptors)
}

fn stats_bytes() -> Vec<u8> {
    let mut d = crate::proto::stats::Dump_stats_entry::new();
    d.set_freezing_time(1);
    d.set_frozen_time(2);
    d.set_memdump_time(3);
    d.set_memwrite_time(4);
    d.set_pages_scanned(5);
    d.set_pages_skipped_parent(0);
    d.set_pages_written(6);
    d.set_pages_lazy(0);
    let mut e = crate::proto::stats::Stats_entry::new();
    e.dump = Some(d).into();
    crate::criu::image::encode(crate::criu::image::STATS_MAGIC, &[&e])
}

fn host() -> Host {
    Host {
        architecture: std::env::consts::ARCH.to_string(),
        criu_version: Version::new(4, 2, 1),
    }
}

fn spec(src: &Src, compression: Compression, rootfs: bool) -> ExportSpec {
    ExportSpec {
        rootfs_image: None,
        images_dir: src.images.clone(),
        descriptors: Some(src.descriptors.clone()),
        config: src.config.clone(),
        metadata: Metadata::for_host("ctr-1", Version::new(4, 2, 1)),
        dump_stats: None,
        rootfs: rootfs.then(|| src.rootfs.clone()),
        compression,
    }
}

fn archive(src: &Src, compression: Compression, rootfs: bool) -> Vec<u8> {
    let mut out = Vec::new();
    export(&spec(src, compression, rootfs), &mut out).unwrap();
    out
}

/// A fresh place to import into; asserts nothing is left behind on error.
struct Dest {
    parent: tempfile::TempDir,
}

impl Dest {
    fn new() -> Dest {
        Dest {
            parent: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.parent.path().join("imported")
    }
    fn import(&self, bytes: &[u8]) -> Result<Imported> {
        import_for(bytes, &self.path(), &Limits::default(), &host())
    }
    /// The import failed and wrote nothing: no dest, no staging dir.
    fn assert_untouched(&self) {
        let left: Vec<_> = std::fs::read_dir(self.parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn round_trip_zstd_with_rootfs() {
    let src = source();
    let bytes = archive(&src, Compression::Zstd, true);
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let d = Dest::new();
    let imp = d.import(&bytes).unwrap();
    assert_eq!(imp.compression, Compression::Zstd);
    assert_eq!(imp.metadata.container_id, "ctr-1");
    assert_eq!(imp.metadata.rootfs, RootfsMode::Full);
    assert_eq!(imp.metadata.architecture, std::env::consts::ARCH);
    for name in ["inventory.img", "core-1.img", "stats-dump"] {
        assert_eq!(
            std::fs::read(imp.images_dir.join(name)).unwrap(),
            std::fs::read(src.images.join(name)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read(imp.descriptors.as_ref().unwrap()).unwrap(),
        std::fs::read(&src.descriptors).unwrap()
    );
    assert_eq!(
        std::fs::read(&imp.spec).unwrap(),
        std::fs::read(&src.config).unwrap()
    );
    assert_eq!(
        std::fs::read(imp.dump_stats.as_ref().unwrap()).unwrap(),
        stats_bytes()
    );
    // podman's config.dump shape.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(imp.dir.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(cfg["id"], "ctr-1");
    assert_eq!(cfg["runtime"], "ferry");

    let rootfs = d.parent.path().join("rootfs");
    unpack_rootfs(
        imp.rootfs_tar.as_ref().unwrap(),
        &rootfs,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("bin/busybox")).unwrap(),
        vec![0xabu8; 70_000]
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/ls")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/deep/er/file")).unwrap(),
        b"hello"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(rootfs.join("etc/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn round_trip_uncompressed_without_rootfs() {
    let src = source();
    let bytes = archive(&src, Compression::None, false);
    assert_eq!(&bytes[257..262], b"ustar");
    let d = Dest::new();
    let imp = d.import(&bytes).unwrap();
    assert_eq!(imp.compression, Compression::None);
    assert_eq!(imp.metadata.rootfs, RootfsMode::None);
    assert!(imp.rootfs_tar.is_none());
    // Importing into an existing empty directory is fine too.
    let d2 = Dest::new();
    std::fs::create_dir(d2.path()).unwrap();
    d2.import(&bytes).unwrap();
}

#[test]
fn export_is_streaming_and_deterministic_in_content() {
    // The writer sees the archive in pieces, never the whole at once.
    struct Chunks(Vec<usize>, Vec<u8>);
    impl Write for Chunks {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.push(b.len());
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let src = source();
    let mut w = Chunks(Vec::new(), Vec::new());
    let s = export(&spec(&src, Compression::None, true), &mut w).unwrap();
    assert!(w.0.len() > 10);
    assert!(s.bytes > 70_000, "{s:?}");
    Dest::new().import(&w.1).unwrap();
}

#[test]
fn truncated_archives_are_rejected_and_leave_nothing() {
    let src = source();
    for compression in [Compression::Zstd, Compression::None] {
        let bytes = archive(&src, compression, true);
        let n = bytes.len();
        // Uncompressed, the last 1024 bytes are end-of-archive zero blocks
        // (losing them loses nothing); compressed, every byte counts.
        let cuts = match compression {
            Compression::None => vec![600, n / 3, n / 2, n * 3 / 4, n - 1100, n - 1030],
            _ => vec![5, 100, n / 3, n / 2, n * 3 / 4, n - 10, n - 1],
        };
        for cut in cuts.into_iter().filter(|c| *c > 4 && *c < n) {
            let d = Dest::new();
            let err = d.import(&bytes[..cut]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, Error::Truncated(_) | Error::Corrupt(_)),
                "{compression} cut at {cut}: {msg}"
            );
            assert!(
                msg.starts_with("archive is truncated") || msg.starts_with("archive is corrupt"),
                "{msg}"
            );
            d.assert_untouched();
        }
    }
    // Less than one tar block cannot be told from random data.
    let bytes = archive(&src, Compression::None, false);
    let d = Dest::new();
    assert!(matches!(d.import(&bytes[..100]), Err(Error::NotAnArchive)));
    d.assert_untouched();
}

#[test]
fn gzip_archives_are_read_and_cut_ones_refused() {
    let src = source();
    let plain = archive(&src, Compression::None, true);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let d = Dest::new();
    assert_eq!(d.import(&gz).unwrap().compression, Compression::Gzip);
    for cut in [20, gz.len() / 2, gz.len() - 4] {
        let d = Dest::new();
        let err = d.import(&gz[..cut]).unwrap_err();
        assert!(
            matches!(err, Error::Truncated(_) | Error::Corrupt(_)),
            "cut at {cut}: {err}"
        );
        d.assert_untouched();
    }
}

#[test]
fn wrong_magic_is_not_an_archive() {
    let d = Dest::new();
    let err = d
        .import(b"this is certainly not a tar file, nor zstd, nor gzip")
        .unwrap_err();
    assert!(matches!(err, Error::NotAnArchive), "{err}");
    assert_eq!(
        err.to_string(),
        "not a checkpoint archive: the data starts with neither a tar header nor zstd or gzip magic"
    );
    d.assert_untouched();

    let z = zstd::encode_all(&vec![b'x'; 4000][..], 3).unwrap();
    let err = d.import(&z).unwrap_err();
    assert!(matches!(err, Error::NotTar(Compression::Zstd)), "{err}");
    assert_eq!(
        err.to_string(),
        "not a checkpoint archive: the zstd stream does not hold a tar archive"
    );
    d.assert_untouched();

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0u8; 2000]).unwrap();
    let err = d.import(&gz.finish().unwrap()).unwrap_err();
    assert!(matches!(err, Error::NotTar(Compression::Gzip)), "{err}");
    d.assert_untouched();

    let err = d.import(b"").unwrap_err();
    assert!(matches!(err, Error::NotAnArchive), "{err}");
}

/// Name, type, data and link target of a raw entry.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A tar whose entries are written with raw headers (no path checks).
fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            if !link.is_empty() {
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn meta_json(arch: &str, criu: &str) -> Vec<u8> {
    let mut m = Metadata::for_host("evil", Version::new(4, 2, 1));
    m.architecture = arch.into();
    m.criu_version = criu.into();
    serde_json::to_vec(&m).unwrap()
}

#[test]
fn path_escapes_are_rejected() {
    use tar::EntryType::{Char, Link, Regular, Symlink};
    let meta = meta_json(std::env::consts::ARCH, "4.2.1");
    const DOTDOT: &str = "'..' path component";
    const LINKS: &str = "links are not allowed";
    let cases: [(&[u8], tar::EntryType, &[u8], &str); 6] = [
        (b"../escaped", Regular, b"", DOTDOT),
        (b"checkpoint/../../escaped", Regular, b"", DOTDOT),
        (b"/tmp/ferry-escaped-abs", Regular, b"", "absolute path"),
        (b"checkpoint/link", Symlink, b"/etc", LINKS),
        (b"checkpoint/hard", Link, b"../../etc/passwd", LINKS),
        (b"checkpoint/dev", Char, b"", "Char entries are not allowed"),
    ];
    for (name, kind, link, reason) in cases {
        let bytes = raw_tar(&[
            (b"ferry.json", tar::EntryType::Regular, &meta, b""),
            (name, kind, b"pwned", link),
        ]);
        let d = Dest::new();
        let err = d.import(&bytes).unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("archive entry "), "{msg}");
        assert!(msg.contains(reason), "{msg}");
        assert!(
            msg.contains(&String::from_utf8_lossy(name).to_string()),
            "{msg}"
        );
        d.assert_untouched();
        assert!(!d.parent.path().join("escaped").exists());
    }
    assert!(!Path::new("/tmp/ferry-escaped-abs").exists());
    assert_eq!(
        Error::UnsafeEntry {
            path: "../escaped".into(),
            reason: "'..' path component".into()
        }
        .to_string(),
        "archive entry \"../escaped\" is rejected: '..' path component"
    );
}

#[test]
fn rootfs_hard_link_escape_is_rejected() {
    let inner = raw_tar(&[
        (b"etc/passwd", tar::EntryType::Regular, b"root:x:0:0", b""),
        (
            b"etc/shadow",
            tar::EntryType::Link,
            b"",
            b"../../../etc/shadow",
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let tarp = tmp.path().join("rootfs-diff.tar");
    std::fs::write(&tarp, &inner).unwrap();
    let err = unpack_rootfs(&tarp, &tmp.path().join("rootfs"), &Limits::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("hard link target outside the root filesystem"),
        "{err}"
    );
    assert!(!tmp.path().join("rootfs").exists());
}

#[test]
fn wrong_architecture_and_old_criu_are_refused() {
    let src = source();
    for (arch, criu, expect) in [
        (
            "aarch64",
            "4.2.1",
            format!(
                "checkpoint was made on aarch64, this host is {}: CRIU images cannot be restored on another architecture",
                std::env::consts::ARCH
            ),
        ),
        (
            std::env::consts::ARCH,
            "4.9.0",
            "checkpoint was made with CRIU 4.9.0, this host has CRIU 4.2.1: restoring needs CRIU >= 4.9.0 (run scripts/install-deps.sh)".to_string(),
        ),
    ] {
        let mut s = spec(&src, Compression::Zstd, true);
        s.metadata.architecture = arch.into();
        s.metadata.criu_version = criu.into();
        let mut bytes = Vec::new();
        export(&s, &mut bytes).unwrap();
        let d = Dest::new();
        let err = d.import(&bytes).unwrap_err();
        assert_eq!(err.to_string(), expect);
        d.assert_untouched();
    }
    // An older CRIU's archive is fine on a newer host.
    let mut s = spec(&src, Compression::None, false);
    s.metadata.criu_version = "4.1.1".into();
    let mut bytes = Vec::new();
    export(&s, &mut bytes).unwrap();
    Dest::new().import(&bytes).unwrap();
}

#[test]
fn metadata_must_come_first_and_parse() {
    let d = Dest::new();
    let bytes = raw_tar(&[(
        b"checkpoint/inventory.img",
        tar::EntryType::Regular,
        b"x",
        b"",
    )]);
    let err = d.import(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a ferry checkpoint archive: ferry.json is missing (it must be the first entry)"
    );
    d.assert_untouched();
    let bytes = raw_tar(&[(b"ferry.json", tar::EntryType::Regular, b"{not json", b"")]);
    let err = d.import(&bytes).unwrap_err();
    assert!(
        err.to_string().starts_with("ferry.json is invalid: "),
        "{err}"
    );
    d.assert_untouched();
}

#[test]
fn missing_manifest_means_truncated() {
    let meta = meta_json(std::env::consts::ARCH, "4.2.1");
    let bytes = raw_tar(&[
        (b"ferry.json", tar::EntryType::Regular, &meta, b""),
        (
            b"checkpoint/inventory.img",
            tar::EntryType::Regular,
            b"x",
            b"",
        ),
        (b"spec.dump", tar::EntryType::Regular, b"{}", b""),
    ]);
    let d = Dest::new();
    let err = d.import(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "archive is truncated: ferry-manifest.json (the last entry) is missing"
    );
    d.assert_untouched();
}

#[test]
fn corrupted_content_fails_the_manifest() {
    let src = source();
    let mut bytes = archive(&src, Compression::None, false);
    // Flip a byte inside core-1.img's data (a run of 7s).
    let at = bytes
        .windows(64)
        .position(|w| w.iter().all(|b| *b == 7))
        .unwrap();
    bytes[at + 10] ^= 0xff;
    let d = Dest::new();
    let err = d.import(&bytes).unwrap_err();
    assert!(matches!(err, Error::ManifestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("checkpoint/core-1.img"), "{err}");
    d.assert_untouched();
}

#[test]
fn limits_and_existing_destinations() {
    let src = source();
    let bytes = archive(&src, Compression::Zstd, true);
    let d = Dest::new();
    let small = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let err = import_for(&bytes[..], &d.path(), &small, &host()).unwrap_err();
    assert_eq!(err.to_string(), "archive exceeds the limit of 3 entries");
    d.assert_untouched();
    let small = Limits {
        max_file_bytes: 5000,
        ..Limits::default()
    };
    let err = import_for(&bytes[..], &d.path(), &small, &host()).unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err}");
    d.assert_untouched();

    std::fs::create_dir(d.path()).unwrap();
    std::fs::write(d.path().join("keep"), b"mine").unwrap();
    let err = d.import(&bytes).unwrap_err();
    assert!(matches!(err, Error::DestExists(_)), "{err}");
    assert_eq!(std::fs::read(d.path().join("keep")).unwrap(), b"mine");
}

#[test]
fn duplicate_entries_are_rejected() {
    let meta = meta_json(std::env::consts::ARCH, "4.2.1");
    let bytes = raw_tar(&[
        (b"ferry.json", tar::EntryType::Regular, &meta, b""),
        (b"spec.dump", tar::EntryType::Regular, b"{}", b""),
        (b"./spec.dump", tar::EntryType::Regular, b"{}", b""),
    ]);
    let d = Dest::new();
    let err = d.import(&bytes).unwrap_err();
    assert_eq!(err.to_string(), "archive entry \"spec.dump\" appears twice");
    d.assert_untouched();
}

#[test]
fn inspect_unpacks_images_but_not_the_rootfs() {
    let src = source();
    let bytes = archive(&src, Compression::Zstd, true);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x");
    let info = unpack_for_inspect(&bytes[..], &dest, &Limits::default()).unwrap();
    assert_eq!(info.layout, "ferry");
    assert_eq!(info.metadata.as_ref().unwrap().container_id, "ctr-1");
    assert!(info.rootfs_diff_bytes.unwrap() > 70_000);
    assert!(!dest.join(ROOTFS_FILE).exists());
    assert!(dest.join("checkpoint/core-1.img").exists());
    assert_eq!(info.dump_stats.unwrap().pages_written, 6);
}

/// An engine archive (no ferry.json): `files` as (name, bytes).
fn engine_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, name, *bytes).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn engine_archives_are_read_for_what_ferry_needs_and_refused_otherwise() {
    let inv: &[u8] = b"\x16\x31\x31\x58inventory";
    let spec: &[u8] = br#"{"ociVersion":"1.0.2"}"#;
    let config: &[u8] = br#"{"id":"abc","name":"n","checkpointedTime":"2026-11-30T10:01:00Z"}"#;
    let deleted: &[u8] = br#"["/etc/gone","/var/x"]"#;
    let bind: &[u8] =
        br#"[{"source":"/srv","destination":"/data","fileType":"directory","permissions":493}]"#;
    let d = tempfile::tempdir().unwrap();
    let good = engine_tar(&[
        ("config.dump", config),
        ("spec.dump", spec),
        ("checkpoint/inventory.img", inv),
        ("deleted.files", deleted),
        ("bind.mounts", bind),
    ]);
    let i = import_any(&good[..], &d.path().join("ok"), &Limits::default(), &host()).unwrap();
    assert_eq!(i.layout, Layout::Engine);
    assert_eq!(i.metadata.container_id, "abc");
    assert_eq!(i.metadata.checkpoint_time, "2026-11-30T10:01:00Z");
    assert_eq!(i.metadata.rootfs, RootfsMode::None);
    assert_eq!(
        i.deleted_files,
        [PathBuf::from("etc/gone"), PathBuf::from("var/x")]
    );
    assert_eq!(i.bind_mounts[0].destination, "/data");
    // The ferry-only import still wants ferry.json first.
    let e = import_for(&good[..], &d.path().join("f"), &Limits::default(), &host()).unwrap_err();
    assert!(matches!(e, Error::MissingMetadata), "{e}");

    let pod: &[u8] = br#"{"id":"abc","pod":"p1"}"#;
    for (files, want) in [
        (
            vec![("spec.dump", spec), ("checkpoint/inventory.img", inv)],
            "lacks config.dump",
        ),
        (
            vec![
                ("config.dump", pod),
                ("spec.dump", spec),
                ("checkpoint/inventory.img", inv),
            ],
            "belonged to a pod",
        ),
        (
            vec![("config.dump", config), ("spec.dump", spec)],
            "lacks checkpoint/inventory.img",
        ),
        (
            vec![
                ("config.dump", config),
                ("spec.dump", spec),
                ("checkpoint/inventory.img", inv),
                ("deleted.files", br#"["/../x"]"#),
            ],
            "deleted.files:/../x",
        ),
    ] {
        let dest = d.path().join("bad");
        let e = import_any(&engine_tar(&files)[..], &dest, &Limits::default(), &host())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert!(!dest.exists());
    }
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["ok"], "no staging dir is left");
}
