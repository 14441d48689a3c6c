//! Tree shipping: faithful copies, deltas, and a hostile sender.
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;

use migrate::files::{
    send_tree, EntryHeader, FilesError, Kind, Limits, Manifest, Name, SendOptions, TreeMsg,
    TreeReceiver,
};
use migrate::transport::Channel;
use migrate::wire::Compression;

fn pair() -> (Channel, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        Channel::from_stream(Box::new(a)),
        Channel::from_stream(Box::new(b)),
    )
}

/// Everything about a tree that shipping must preserve.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    fn visit(
        root: &Path,
        p: &Path,
        out: &mut BTreeMap<String, String>,
        inodes: &mut BTreeMap<u64, String>,
    ) {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let mut desc = format!(
            "mode={:o} uid={} gid={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        );
        if !ft.is_dir() {
            desc += &format!(" mtime={}.{}", md.mtime(), md.mtime_nsec());
        }
        if ft.is_symlink() {
            desc += &format!(" link={}", fs::read_link(p).unwrap().display());
        } else if ft.is_file() {
            let mut h = 0u64;
            let mut buf = Vec::new();
            fs::File::open(p).unwrap().read_to_end(&mut buf).unwrap();
            for b in &buf {
                h = h.wrapping_mul(31).wrapping_add(*b as u64);
            }
            desc += &format!(" file len={} hash={h:x}", buf.len());
            if md.nlink() > 1 {
                let first = inodes.entry(md.ino()).or_insert_with(|| rel.clone());
                desc += &format!(" linked-with={first}");
            }
        } else if ft.is_dir() {
            desc += " dir";
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                visit(root, &p.join(n), out, inodes);
            }
        } else {
            desc += &format!(" special rdev={}", md.rdev());
        }
        out.insert(rel, desc);
    }
    visit(root, root, &mut out, &mut inodes);
    out
}

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/sub/small"), "x").unwrap();
    // Larger than several chunks, not a multiple of the chunk size.
    let big: Vec<u8> = (0..1_300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("bin/busybox"), &big).unwrap();
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("bin/hard")).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    symlink("/etc/shadow", root.join("abs-link")).unwrap();
    fs::write(root.join("secret"), "s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("secret"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("abs-link"), Some(42), Some(43)).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &root.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(root.join("etc/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    // Something not shippable.
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
}

/// Sends `src` (one pass) and receives it into `dst`'s staging dir.
fn ship(
    src: &Path,
    rx: &mut TreeReceiver,
    prev: Option<&Manifest>,
    compression: Compression,
) -> (
    Manifest,
    migrate::files::SendStats,
    migrate::files::ReceiveStats,
) {
    let (mut a, mut b) = pair();
    let src = src.to_path_buf();
    let prev = prev.cloned();
    let h = thread::spawn(move || {
        let opts = SendOptions {
            compression,
            ..SendOptions::default()
        };
        send_tree(&mut a, &src, prev.as_ref(), &opts, &mut |_| {}).unwrap()
    });
    let got = rx.receive(&mut b, &mut |_| {}).unwrap();
    let (m, sent) = h.join().unwrap();
    (m, sent, got)
}

#[test]
fn tree_arrives_identical_and_staging_is_renamed_into_place() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let dst = d.path().join("out/rootfs");
    fs::create_dir_all(d.path().join("out")).unwrap();
    let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
    let staging = rx.staging().to_path_buf();
    let (_, sent, got) = ship(&src, &mut rx, None, Compression::Zstd);
    assert!(!dst.exists(), "nothing appears before commit");
    assert_eq!(sent.skipped, 1, "the socket is skipped");
    assert_eq!(sent.entries, got.entries);
    assert!(sent.wire_bytes < sent.bytes, "zstd shrank the data");
    rx.commit().unwrap();
    assert!(!staging.exists());
    let mut want = snapshot(&src);
    want.remove("sock");
    assert_eq!(snapshot(&dst), want);
}

#[test]
fn delta_pass_sends_only_changes_and_deletes_what_is_gone() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    fs::remove_file(src.join("sock")).unwrap();
    fs::create_dir_all(src.join("gone/deep")).unwrap();
    fs::write(src.join("gone/deep/f"), "bye").unwrap();
    fs::write(src.join("becomes-dir"), "file").unwrap();
    let dst = d.path().join("rootfs");
    let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
    let (m1, s1, _) = ship(&src, &mut rx, None, Compression::None);
    assert_eq!(s1.entries as usize, m1.len());

    // Nothing changed: nothing but the summary is sent.
    let (m2, s2, _) = ship(&src, &mut rx, Some(&m1), Compression::None);
    assert_eq!((s2.entries, s2.deleted, s2.bytes), (0, 0, 0));
    assert_eq!(m1, m2);

    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.join("etc/passwd"), "changed\n").unwrap();
    fs::write(src.join("new"), "new").unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::remove_file(src.join("becomes-dir")).unwrap();
    fs::create_dir(src.join("becomes-dir")).unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    let (_, s3, r3) = ship(&src, &mut rx, Some(&m2), Compression::None);
    assert_eq!(s3.deleted, 3, "gone, gone/deep, gone/deep/f");
    assert_eq!(r3.deleted, 3);
    // passwd, new, becomes-dir, secret, and the root and etc directories
    // whose mtimes changed.
    assert!(s3.entries <= 7, "sent {} entries", s3.entries);
    // A changed file is sent whole, even when only its mode changed.
    assert_eq!(
        s3.bytes,
        "changed\n".len() as u64 + "new".len() as u64 + "s".len() as u64
    );
    rx.commit().unwrap();
    assert_eq!(snapshot(&dst), snapshot(&src));
}

#[test]
fn merge_commit_adds_to_an_existing_directory_and_refuses_to_replace() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("core-1.img"), "core").unwrap();
    symlink("../pre-1", src.join("parent")).unwrap();
    let dst = d.path().join("images");
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("pages-1.img"), "pages").unwrap();
    symlink("../pre-1", dst.join("parent")).unwrap();
    let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
    ship(&src, &mut rx, None, Compression::None);
    let staging = rx.staging().to_path_buf();
    rx.commit_merge().unwrap();
    assert!(!staging.exists());
    assert_eq!(fs::read_to_string(dst.join("core-1.img")).unwrap(), "core");
    assert_eq!(
        fs::read_to_string(dst.join("pages-1.img")).unwrap(),
        "pages"
    );

    // A name that exists already is a conflict; nothing moves.
    fs::remove_file(src.join("core-1.img")).unwrap();
    fs::write(src.join("pages-1.img"), "evil").unwrap();
    fs::write(src.join("zzz.img"), "z").unwrap();
    let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
    ship(&src, &mut rx, None, Compression::None);
    let e = rx.commit_merge().unwrap_err().to_string();
    assert!(e.contains("pages-1.img already exists"), "{e}");
    assert_eq!(
        fs::read_to_string(dst.join("pages-1.img")).unwrap(),
        "pages"
    );
    assert!(!dst.join("zzz.img").exists());
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        2,
        "no staging left"
    );
}

#[test]
fn commit_refuses_a_non_empty_destination() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a").unwrap();
    let dst = d.path().join("dst");
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("keep"), "k").unwrap();
    let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
    ship(&src, &mut rx, None, Compression::None);
    let e = rx.commit().unwrap_err().to_string();
    assert!(e.contains("not an empty directory"), "{e}");
    assert_eq!(fs::read_to_string(dst.join("keep")).unwrap(), "k");
}

// --- hostile senders ---------------------------------------------------

enum Step {
    Msg(TreeMsg),
    Data(Vec<u8>),
    End,
}

fn entry(path: &str, kind: Kind, size: u64, target: Option<&str>) -> Step {
    Step::Msg(TreeMsg::Entry(EntryHeader {
        path: Name::Utf8(path.into()),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        size,
        target: target.map(|t| Name::Utf8(t.into())),
        rdev: 0,
    }))
}

struct Attack {
    _dir: tempfile::TempDir,
    outside: PathBuf,
    parent: PathBuf,
}

/// Feeds `steps` to a receiver; returns its error, after checking that
/// the staging directory is gone and nothing was written outside.
fn attack(steps: Vec<Step>, limits: Limits) -> (String, Attack) {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let parent = dir.path().join("recv");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(&parent).unwrap();
    let (mut a, mut b) = pair();
    let h = thread::spawn(move || {
        for s in steps {
            let r = match s {
                Step::Msg(m) => a.send(&m),
                Step::Data(d) => a.send_data(&d, Compression::None).map(drop),
                Step::End => a.send_end(),
            };
            if r.is_err() {
                return;
            }
        }
        let _ = a.send(&TreeMsg::Finish {
            entries: 0,
            bytes: 0,
        });
    });
    let mut rx = TreeReceiver::new(&parent.join("rootfs"), limits).unwrap();
    let err = rx.receive(&mut b, &mut |_| {}).unwrap_err();
    drop(rx);
    drop(b);
    h.join().unwrap();
    assert_eq!(
        fs::read_dir(&parent).unwrap().count(),
        0,
        "staging dir left behind"
    );
    let leaked: Vec<_> = walk_all(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with(&outside) && !p.starts_with(&parent))
        .collect();
    assert!(leaked.is_empty(), "written outside: {leaked:?}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
    (
        err.to_string(),
        Attack {
            _dir: dir,
            outside,
            parent,
        },
    )
}

fn walk_all(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_all(&path));
        }
        out.push(path);
    }
    out
}

fn expect(e: &str, what: &str) {
    assert!(e.contains(what), "expected {what:?} in: {e}");
}

#[test]
fn dotdot_path_is_refused() {
    let (e, _) = attack(
        vec![
            entry("a", Kind::Dir, 0, None),
            entry("a/../../outside/evil", Kind::File, 1, None),
            Step::Data(b"x".to_vec()),
            Step::End,
        ],
        Limits::default(),
    );
    expect(&e, "refusing path \"a/../../outside/evil\"");
    expect(&e, "'..' path component");
}

#[test]
fn absolute_path_is_refused() {
    let (e, _) = attack(
        vec![
            entry("/tmp/ferry-evil", Kind::File, 1, None),
            Step::Data(b"x".to_vec()),
            Step::End,
        ],
        Limits::default(),
    );
    expect(&e, "absolute path");
    assert!(!Path::new("/tmp/ferry-evil").exists());
}

#[test]
fn writing_through_a_received_symlink_is_refused() {
    // The symlink's target is only known once the temp dir exists, so
    // point it at a fixed relative escape and at an absolute path.
    for target in ["../../outside", "/"] {
        let (e, _) = attack(
            vec![
                entry("link", Kind::Symlink, 0, Some(target)),
                entry("link/evil", Kind::File, 1, None),
                Step::Data(b"x".to_vec()),
                Step::End,
            ],
            Limits::default(),
        );
        expect(
            &e,
            "\"link\" is a symlink or not a directory, and is never followed",
        );
    }
    assert!(!Path::new("/evil").exists());
}

#[test]
fn symlink_to_outside_in_a_deeper_component_is_refused() {
    let (e, _) = attack(
        vec![
            entry("d", Kind::Dir, 0, None),
            entry("d/l", Kind::Symlink, 0, Some("/etc")),
            entry("d/l/x/y", Kind::Dir, 0, None),
        ],
        Limits::default(),
    );
    expect(&e, "\"l\" is a symlink");
}

#[test]
fn hardlink_escapes_are_refused() {
    for target in [
        "../../outside/x",
        "/etc/passwd",
        "link/passwd",
        "never-sent",
    ] {
        let (e, _) = attack(
            vec![
                entry("link", Kind::Symlink, 0, Some("/etc")),
                entry("h", Kind::Hardlink, 0, Some(target)),
            ],
            Limits::default(),
        );
        expect(&e, &format!("refusing hard link \"h\" to {target:?}"));
    }
    // A symlink is not a regular file either.
    let (e, _) = attack(
        vec![
            entry("link", Kind::Symlink, 0, Some("/etc/passwd")),
            entry("h", Kind::Hardlink, 0, Some("link")),
        ],
        Limits::default(),
    );
    expect(&e, "not a regular file received in this transfer");
}

#[test]
fn oversized_file_is_refused_before_its_data() {
    let limits = Limits {
        max_bytes: 1000,
        ..Limits::default()
    };
    let (e, _) = attack(vec![entry("big", Kind::File, 1001, None)], limits);
    expect(&e, "total size limit exceeded (1001 > 1000)");
}

#[test]
fn more_data_than_declared_is_refused() {
    let (e, _) = attack(
        vec![
            entry("f", Kind::File, 3, None),
            Step::Data(b"abcdef".to_vec()),
            Step::End,
        ],
        Limits::default(),
    );
    expect(&e, "declared 3 bytes but 6 arrived");
    let (e, _) = attack(
        vec![
            entry("f", Kind::File, 3, None),
            Step::Data(b"ab".to_vec()),
            Step::End,
        ],
        Limits::default(),
    );
    expect(&e, "declared 3 bytes but 2 arrived");
}

#[test]
fn too_many_entries_or_too_long_names_are_refused() {
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let steps = (0..10)
        .map(|i| entry(&format!("d{i}"), Kind::Dir, 0, None))
        .collect();
    let (e, _) = attack(steps, limits);
    expect(&e, "entry count limit exceeded (4 > 3)");
    let long = "n".repeat(256);
    let (e, _) = attack(vec![entry(&long, Kind::Dir, 0, None)], Limits::default());
    expect(&e, "name too long");
    let deep = vec!["d"; 200].join("/");
    let (e, _) = attack(vec![entry(&deep, Kind::Dir, 0, None)], Limits::default());
    expect(&e, "path too deep");
}

#[test]
fn sender_abort_and_bad_summary_discard_the_transfer() {
    let (e, a) = attack(
        vec![
            entry("f", Kind::File, 1, None),
            Step::Data(b"x".to_vec()),
            Step::End,
            Step::Msg(TreeMsg::Abort {
                reason: "disk on fire".into(),
            }),
        ],
        Limits::default(),
    );
    expect(&e, "the sender aborted the transfer: disk on fire");
    assert!(!a.parent.join("rootfs").exists());
    assert!(a.outside.exists());
    // The default attack ends with a summary of 0 entries.
    let (e, _) = attack(vec![entry("d", Kind::Dir, 0, None)], Limits::default());
    expect(&e, "pass summary mismatch");
}

#[test]
fn sender_reports_a_missing_root() {
    let (mut a, mut b) = pair();
    let h = thread::spawn(move || {
        let d = tempfile::tempdir().unwrap();
        let mut rx = TreeReceiver::new(&d.path().join("x"), Limits::default()).unwrap();
        rx.receive(&mut b, &mut |_| {}).map(drop)
    });
    let e = send_tree(
        &mut a,
        Path::new("/nonexistent/rootfs"),
        None,
        &SendOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    expect(&e.to_string(), "/nonexistent/rootfs");
    let r = h.join().unwrap().unwrap_err().to_string();
    expect(&r, "the sender aborted the transfer");
    let _: Option<FilesError> = None;
}

#[test]
fn stale_staging_of_dead_processes_is_swept() {
    let d = tempfile::tempdir().unwrap();
    // A live receiver's staging dir stays.
    let rx = TreeReceiver::new(&d.path().join("live"), Limits::default()).unwrap();
    // One from a process that is gone (pid far above pid_max).
    let dead = d.path().join(".rootfs.partial-999999999-0000abcd");
    fs::create_dir_all(dead.join("etc")).unwrap();
    fs::write(dead.join("etc/x"), "x").unwrap();
    // Unrelated names stay.
    fs::create_dir_all(d.path().join(".keep")).unwrap();
    fs::create_dir_all(d.path().join("rootfs.partial-1-2")).unwrap();
    let removed = migrate::files::remove_stale_staging(d.path()).unwrap();
    assert_eq!(removed, vec![dead]);
    assert!(rx.staging().exists());
    assert!(d.path().join(".keep").exists());
    assert!(d.path().join("rootfs.partial-1-2").exists());
}
