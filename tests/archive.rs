//! `ferry checkpoint --export` / `ferry restore --import` with real
//! containers and real CRIU (as root).
mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Entry paths of an uncompressed archive.
fn tar_paths(path: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn inspect_json(path: &Path) -> Value {
    let out = Command::new(ferry_bin())
        .arg("inspect")
        .arg(path)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn export_import_round_trip_into_a_built_and_into_another_bundle() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("arc");
    let (id, _bundle, count) = env.counter("c");
    let out_dir = env.work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let archive = out_dir.join("c.tar.zst");

    // No --image-path: the images live in a temporary dir, gone afterwards.
    env.ok(&["checkpoint", "--export", s(&archive), &id]);
    env.assert_gone(&id);
    assert_eq!(names(&out_dir), ["c.tar.zst"]);
    let at_dump = read_num(&count).unwrap();

    // inspect reads ferry's own archive of a real container.
    let v = inspect_json(&archive);
    assert_eq!(v["archive"]["layout"], "ferry");
    assert_eq!(v["archive"]["compression"], "zstd");
    assert_eq!(v["archive"]["metadata"]["container_id"], id.as_str());
    assert_eq!(v["archive"]["metadata"]["rootfs"], "full");
    assert!(v["archive"]["rootfs_diff_bytes"].as_u64().unwrap() > 100_000);
    assert_eq!(v["processes"][0]["comm"], "sh");
    assert!(
        v["processes"][0]["memory"]["dumped_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(v["dump_stats"]["pages_written"].as_u64().unwrap() > 0);

    // Restore without --bundle: the archive's config and rootfs become the
    // bundle under the state root.
    let r1 = env.id("r1");
    env.ok(&["restore", "-d", "--import", s(&archive), &r1]);
    assert_eq!(env.status(&r1), "running");
    let built = env.root.path().join("@imports").join(&r1).join("bundle");
    assert_eq!(
        env.state(&r1)["bundle"].as_str().unwrap(),
        s(&built),
        "restored from the built bundle"
    );
    assert!(built.join("rootfs/bin/busybox").is_file());
    assert!(
        !env.root
            .path()
            .join("@imports")
            .join(&r1)
            .join("checkpoint")
            .exists(),
        "images are removed after the restore"
    );
    assert_continues(&count, at_dump);

    // Export again (uncompressed, images kept) and restore into another
    // bundle directory whose /data is somewhere else: the counter goes on
    // from where it was, in the new place.
    let archive2 = out_dir.join("r1.tar");
    let images = env.work.path().join("r1-images");
    env.ok(&[
        "checkpoint",
        "--export",
        s(&archive2),
        "--compress",
        "none",
        "--image-path",
        s(&images),
        &r1,
    ]);
    env.assert_gone(&r1);
    assert!(images.join("inventory.img").is_file(), "--image-path kept");
    assert!(tar_paths(&archive2).contains(&"rootfs-diff.tar".to_string()));
    let at_dump2 = read_num(&count).unwrap();
    assert!(at_dump2 > at_dump + 3);
    // The imported bundle outlives the checkpoint that removed the
    // container; `delete --force` of the gone container removes it.
    assert!(built.is_dir());
    env.ok(&["delete", "--force", &r1]);
    assert!(!env.root.path().join("@imports").exists());

    let data2 = env.work.path().join("other-data");
    std::fs::create_dir(&data2).unwrap();
    let other = env.counter_bundle("other", &data2);
    let r2 = env.id("r2");
    env.ok(&[
        "restore",
        "-d",
        "--import",
        s(&archive2),
        "--bundle",
        s(&other),
        &r2,
    ]);
    assert_eq!(env.status(&r2), "running");
    let count2 = data2.join("count");
    assert_resumes(&count2, at_dump2);
    assert!(
        !env.root.path().join("@imports").exists(),
        "with --bundle nothing of the import is kept"
    );
    env.ok(&["delete", "--force", &r2]);
    env.assert_gone(&r2);
    assert!(
        names(env.root.path()).is_empty(),
        "{:?}",
        names(env.root.path())
    );
}

#[test]
fn ignore_rootfs_leaves_the_rootfs_out_and_needs_a_bundle() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("norootfs");
    let (id, bundle, count) = env.counter("c");
    let archive = env.work.path().join("c.tar");
    env.ok(&[
        "checkpoint",
        "--export",
        s(&archive),
        "--ignore-rootfs",
        "--compress",
        "none",
        &id,
    ]);
    env.assert_gone(&id);
    let paths = tar_paths(&archive);
    assert!(!paths.iter().any(|p| p == "rootfs-diff.tar"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "checkpoint/inventory.img"));
    assert!(std::fs::metadata(&archive).unwrap().len() < 1_000_000);
    let at_dump = read_num(&count).unwrap();

    let r = env.id("r");
    let err = env.fail(&["restore", "-d", "--import", s(&archive), &r]);
    assert!(
        err.contains(
            "holds no root filesystem (it was exported with --ignore-rootfs): pass --bundle DIR"
        ),
        "{err}"
    );
    env.assert_gone(&r);
    assert!(
        names(env.root.path()).is_empty(),
        "{:?}",
        names(env.root.path())
    );

    env.ok(&[
        "restore",
        "-d",
        "--import",
        s(&archive),
        "--bundle",
        s(&bundle),
        &r,
    ]);
    assert_continues(&count, at_dump);
    env.ok(&["delete", "--force", &r]);
    env.assert_gone(&r);
}

/// Copies an uncompressed archive entry by entry; `edit` may replace an
/// entry's data (by path) and `insert_after` adds raw entries after one.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, Vec<u8>) -> Vec<u8>,
    insert_after: Option<(&str, &[u8], &[u8])>,
) {
    let mut a = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let data = edit(&path, data);
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
        if let Some((after, name, body)) = insert_after {
            if after == path {
                let mut h = tar::Header::new_gnu();
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, body).unwrap();
            }
        }
    }
    b.into_inner().unwrap();
}

#[test]
fn malformed_archives_are_refused_and_nothing_is_written() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("badarc");
    let (id, bundle, count) = env.counter("c");
    let dir = env.work.path().join("arcs");
    std::fs::create_dir(&dir).unwrap();
    let good_zst = dir.join("good.tar.zst");
    let good_tar = dir.join("good.tar");
    env.ok(&[
        "checkpoint",
        "--export",
        s(&good_tar),
        "--compress",
        "none",
        "--leave-running",
        &id,
    ]);
    env.ok(&["checkpoint", "--export", s(&good_zst), &id]);

    let bytes = std::fs::read(&good_zst).unwrap();
    let truncated = dir.join("truncated.tar.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let magic = dir.join("magic.tar");
    let mut junk = b"FERRY?".to_vec();
    junk.extend(std::iter::repeat_n(0x5au8, 4096));
    std::fs::write(&magic, junk).unwrap();
    let escape = dir.join("escape.tar");
    rewrite(
        &good_tar,
        &escape,
        |_, d| d,
        Some(("ferry.json", b"../escaped", b"gotcha")),
    );
    let arch = dir.join("arch.tar");
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    rewrite(
        &good_tar,
        &arch,
        |p, d| {
            if p != "ferry.json" {
                return d;
            }
            let mut v: Value = serde_json::from_slice(&d).unwrap();
            v["architecture"] = other.into();
            serde_json::to_vec(&v).unwrap()
        },
        None,
    );

    let host = std::env::consts::ARCH;
    let cases = [
        (&truncated, "archive is truncated".to_string()),
        (
            &magic,
            "not a checkpoint archive: the data starts with neither a tar header nor zstd or gzip magic".to_string(),
        ),
        (
            &escape,
            "archive entry \"../escaped\" is rejected: '..' path component".to_string(),
        ),
        (
            &arch,
            format!("checkpoint was made on {other}, this host is {host}: CRIU images cannot be restored on another architecture"),
        ),
    ];
    let before = names(&dir);
    for (file, expect) in &cases {
        for with_bundle in [false, true] {
            let r = env.id("r");
            let mut args = vec!["restore", "-d", "--import", s(file)];
            if with_bundle {
                args.extend(["--bundle", s(&bundle)]);
            }
            args.push(&r);
            let err = env.fail(&args);
            let want = format!("ferry: cannot import {}: {expect}", file.display());
            assert!(err.starts_with(&want), "{err}\nwanted: {want}");
            // Nothing written: no state dir, no cgroup, no import or bundle,
            // nothing beside the archive, nothing escaped.
            env.assert_gone(&r);
            assert!(
                names(env.root.path()).is_empty(),
                "{:?}",
                names(env.root.path())
            );
            assert_eq!(names(&dir), before);
            assert!(!env.work.path().join("escaped").exists());
            assert!(!env.root.path().join("escaped").exists());
        }
    }

    // The good archive still restores, and --image-path with --import is refused.
    let r = env.id("good");
    let out = env.run(&[
        "restore",
        "--import",
        s(&good_zst),
        "--image-path",
        s(&dir),
        &r,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("'--import <FILE>' cannot be used with '--image-path"),
        "{err}"
    );
    let at_dump = read_num(&count).unwrap();
    env.ok(&["restore", "-d", "--import", s(&good_zst), &r]);
    assert_continues(&count, at_dump);
    env.ok(&["delete", "--force", &r]);
    env.assert_gone(&r);
    assert!(names(env.root.path()).is_empty());
}

#[test]
fn export_refuses_modes_without_local_images_and_unwritable_destinations() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("exbad");
    let (id, _bundle, _count) = env.counter("c");
    let w = env.work.path();
    let err = env.fail(&[
        "checkpoint",
        "--export",
        s(&w.join("x.tar")),
        "--pre-dump",
        &id,
    ]);
    assert!(err.contains("cannot be combined with --pre-dump"), "{err}");
    let err = env.fail(&["checkpoint", "--export", s(w), &id]);
    assert!(err.contains("is a directory"), "{err}");
    let err = env.fail(&[
        "checkpoint",
        "--export",
        s(&w.join("missing-dir/x.tar")),
        &id,
    ]);
    assert!(err.contains("cannot write in"), "{err}");
    assert_eq!(env.status(&id), "running");
    assert!(!w.join("x.tar").exists());
}
