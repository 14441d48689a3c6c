//! Checkpoints as OCI images (`checkpoint --export-image`, `restore
//! --image`) and other engines' archives (`restore --import` of a CRI-O
//! checkpoint as the kubelet writes it), with real containers and CRIU
//! (as root).
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Hidden or leftover names in `dir` (a failed write or import left
/// something), besides `keep`.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// Entry names of a plain tar file.
fn tar_names(p: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(p).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Copies an image layout directory.
fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Rewrites the image in `dir` around a new layer (`layer`, already in
/// its media type's encoding, whose plain tar is `plain`): config, manifest
/// and index are rewritten with correct digests, so only what the test
/// changed is wrong.
fn relayer(dir: &Path, layer: &[u8], plain: &[u8], media_type: &str) {
    let index = read_json(&dir.join("index.json"));
    let mdesc = &index["manifests"][0];
    let mut manifest = read_json(&blob(dir, mdesc["digest"].as_str().unwrap()));
    let mut config = read_json(&blob(dir, manifest["config"]["digest"].as_str().unwrap()));
    config["rootfs"]["diff_ids"] = json!([sha(plain)]);
    let cbytes = serde_json::to_vec(&config).unwrap();
    std::fs::write(blob(dir, &sha(&cbytes)), &cbytes).unwrap();
    std::fs::write(blob(dir, &sha(layer)), layer).unwrap();
    manifest["config"]["digest"] = json!(sha(&cbytes));
    manifest["config"]["size"] = json!(cbytes.len());
    manifest["layers"][0] =
        json!({"mediaType": media_type, "digest": sha(layer), "size": layer.len()});
    remanifest(dir, &manifest);
}

/// Writes `manifest` as the image's manifest (blob and index entry).
fn remanifest(dir: &Path, manifest: &Value) {
    let mut index = read_json(&dir.join("index.json"));
    let mbytes = serde_json::to_vec(manifest).unwrap();
    std::fs::write(blob(dir, &sha(&mbytes)), &mbytes).unwrap();
    index["manifests"][0]["digest"] = json!(sha(&mbytes));
    index["manifests"][0]["size"] = json!(mbytes.len());
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar whose first entry is named `name` (raw bytes: `..` allowed).
fn tar_with_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().next_multiple_of(512) + 1024, 0);
    v
}

#[test]
fn export_image_to_both_transports_and_restore_from_each() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("ociimg");
    let (id, _bundle, count) = env.counter("c");
    let out = env.work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let archive = out.join("c.oci.tar");
    let reference = format!("oci-archive:{}:localhost/ckpt-c:latest", archive.display());

    env.ok(&["checkpoint", "--export-image", &reference, &id]);
    env.assert_gone(&id);
    assert_eq!(
        leftovers(&out, &[]),
        ["c.oci.tar"],
        "only the archive is left"
    );
    let at_dump = read_num(&count).unwrap();
    let mut names = tar_names(&archive);
    names.sort();
    assert_eq!(names.len(), 7, "{names:?}"); // 2 dirs, 3 blobs, index, layout
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    assert!(names.contains(&"index.json".to_string()), "{names:?}");

    // The annotations podman and CRI-O look for, on the index entry and
    // the manifest; the tag as the ref name.
    let layout = env.work.path().join("unpacked");
    std::fs::create_dir(&layout).unwrap();
    tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .unpack(&layout)
        .unwrap();
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "localhost/ckpt-c:latest"
    );
    let manifest = read_json(&blob(&layout, entry["digest"].as_str().unwrap()));
    for a in [&entry["annotations"], &manifest["annotations"]] {
        assert_eq!(a["io.podman.annotations.checkpoint.runtime.name"], "ferry");
        assert_eq!(a["io.podman.annotations.checkpoint.name"], id.as_str());
        assert_eq!(
            a["io.kubernetes.cri-o.annotations.checkpoint.name"],
            id.as_str()
        );
        assert_eq!(a["org.criu.checkpoint.runtime.name"], "ferry");
        assert_eq!(a["io.podman.annotations.checkpoint.host.arch"], "amd64");
    }
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // The layer's plain tar is ferry's archive.
    let layer = blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&layer).unwrap())
        .read_to_end(&mut plain)
        .unwrap();
    let first = tar::Archive::new(&plain[..])
        .entries()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(first, "ferry.json");

    // restore --image oci-archive:FILE:TAG
    let r1 = env.id("r1");
    env.ok(&["restore", "-d", "--image", &reference, &r1]);
    assert_eq!(env.status(&r1), "running");
    assert_continues(&count, at_dump);
    assert!(
        leftovers(&env.root.path().join("@imports"), &[&r1]).is_empty(),
        "the unpacked oci-archive is removed"
    );

    // checkpoint --export-image oci:DIR, restore --image oci:DIR
    let dir = out.join("r1-image");
    let dir_ref = format!("oci:{}", dir.display());
    env.ok(&["checkpoint", "--export-image", &dir_ref, &r1]);
    env.assert_gone(&r1);
    assert!(dir.join("oci-layout").is_file() && dir.join("index.json").is_file());
    let at_dump2 = read_num(&count).unwrap();
    env.ok(&["delete", "--force", &r1]);
    let r2 = env.id("r2");
    env.ok(&["restore", "-d", "--image", &dir_ref, &r2]);
    assert_continues(&count, at_dump2);
    env.ok(&["delete", "--force", &r2]);
    env.assert_gone(&r2);

    // Refused before anything is dumped: a target that exists, a
    // transport ferry does not write. The container keeps running.
    let (id3, _, count3) = env.counter("d");
    let e = env.fail(&["checkpoint", "--export-image", &dir_ref, &id3]);
    assert!(e.contains("is not an empty directory"), "{e}");
    let e = env.fail(&["checkpoint", "--export-image", "docker://x/y", &id3]);
    assert!(
        e.contains("use oci:DIR[:TAG] or oci-archive:FILE[:TAG]"),
        "{e}"
    );
    assert_eq!(env.status(&id3), "running");
    assert_continues(&count3, read_num(&count3).unwrap());
    assert_eq!(leftovers(&out, &[]).len(), 2, "{:?}", leftovers(&out, &[]));
}

#[test]
fn hostile_images_are_refused_with_one_line_and_leave_nothing() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("ocibad");
    let (id, _bundle, _count) = env.counter("c");
    let good = env.work.path().join("good");
    env.ok(&[
        "checkpoint",
        "--export-image",
        &format!("oci:{}", good.display()),
        &id,
    ]);
    let index = read_json(&good.join("index.json"));
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = read_json(&blob(&good, &mdigest));
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();

    let mut n = 0;
    let mut variant = |edit: &dyn Fn(&Path)| {
        n += 1;
        let d = env.work.path().join(format!("bad{n}"));
        copy_dir(&good, &d);
        edit(&d);
        d
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            variant(&|d| {
                // Same size, one byte changed.
                let p = blob(d, &layer_digest);
                let mut b = std::fs::read(&p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(&p, b).unwrap();
            }),
            "does not match its descriptor: its content hashes to",
        ),
        (
            variant(&|d| std::fs::remove_file(blob(d, &config_digest)).unwrap()),
            &*Box::leak(format!("blob {config_digest} is missing").into_boxed_str()),
        ),
        (
            variant(&|d| {
                let mut m = manifest.clone();
                m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+foo");
                remanifest(d, &m);
            }),
            "layer has media type \"application/vnd.oci.image.layer.v1.tar+foo\"",
        ),
        (
            variant(&|d| {
                let plain = tar_with_entry("../escape", b"x");
                relayer(
                    d,
                    &gzip(&plain),
                    &plain,
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                );
            }),
            "archive entry \"../escape\" is rejected",
        ),
        (
            variant(&|d| {
                let mut idx = read_json(&d.join("index.json"));
                idx["manifests"][0]["digest"] = json!("sha256:../../../../etc/passwd");
                std::fs::write(d.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
            }),
            "is not sha256:<64 hex digits>",
        ),
    ];
    for (dir, want) in &cases {
        let r = env.id("r");
        let e = env.fail(&[
            "restore",
            "-d",
            "--image",
            &format!("oci:{}", dir.display()),
            &r,
        ]);
        assert!(e.contains(want), "{}: {e}", dir.display());
        env.assert_gone(&r);
        assert!(
            !env.root.path().join("@imports").exists(),
            "{}: import left behind",
            dir.display()
        );
    }

    // An oci-archive whose outer tar names something outside the layout.
    let evil = env.work.path().join("evil.tar");
    std::fs::write(&evil, tar_with_entry("../oci-layout", b"{}")).unwrap();
    let r = env.id("r");
    let e = env.fail(&[
        "restore",
        "-d",
        "--image",
        &format!("oci-archive:{}", evil.display()),
        &r,
    ]);
    assert!(e.contains("entry \"../oci-layout\" is rejected"), "{e}");
    assert!(!env.root.path().join("@imports").exists());
    assert!(!env.work.path().join("oci-layout").exists());
}

/// A CRI-O checkpoint archive of a real ferry checkpoint, written as
/// CRI-O's `internal/lib/checkpoint.go` (`exportCheckpoint`,
/// `prepareCheckpointExport`) writes it for the kubelet: an uncompressed
/// tar of `config.dump` (checkpointctl's `metadata.ContainerConfig`),
/// `spec.dump`, `checkpoint/`, `stats-dump`, `dump.log`, `bind.mounts`,
/// `rootfs-diff.tar` (the changed files) and `deleted.files`.
fn crio_archive(
    path: &Path,
    id: &str,
    bundle: &Path,
    images: &Path,
    data: &Path,
    diff: &[(&str, &[u8])],
    deleted: &[&str],
) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, name, bytes).unwrap();
    };
    let config = json!({
        "id": id,
        "name": "k8s_counter_counters_default_0",
        "rootfsImage": "docker.io/library/busybox:latest",
        "rootfsImageRef": "sha256:".to_string() + &"1".repeat(64),
        "rootfsImageName": "docker.io/library/busybox:latest",
        "runtime": "runc",
        "createdTime": "2026-11-30T10:00:00Z",
        "checkpointedTime": "2026-11-30T10:01:00Z",
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": false
    });
    add("config.dump", &serde_json::to_vec(&config).unwrap());
    add(
        "spec.dump",
        &std::fs::read(bundle.join("config.json")).unwrap(),
    );
    let bind = json!([{
        "source": data.to_str().unwrap(),
        "destination": "/data",
        "fileType": "directory",
        "permissions": 0o755
    }]);
    add("bind.mounts", &serde_json::to_vec(&bind).unwrap());
    let mut diff_tar = tar::Builder::new(Vec::new());
    for (name, bytes) in diff {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        diff_tar.append_data(&mut h, name, *bytes).unwrap();
    }
    add("rootfs-diff.tar", &diff_tar.into_inner().unwrap());
    add("deleted.files", &serde_json::to_vec(deleted).unwrap());
    add("dump.log", b"(00.000000) Dumping finished successfully\n");
    let mut names: Vec<_> = std::fs::read_dir(images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let bytes = std::fs::read(images.join(&n)).unwrap();
        if n == "stats-dump" {
            add("stats-dump", &bytes);
        }
        add(&format!("checkpoint/{n}"), &bytes);
    }
    b.into_inner().unwrap().sync_all().unwrap();
}

#[test]
fn crio_checkpoint_archive_is_imported_into_a_bundle() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("crio");
    let (id, bundle, count) = env.counter("c");
    let data = count.parent().unwrap().to_path_buf();
    let images = env.work.path().join("images");
    env.ok(&checkpoint_args(&images, &[], &id));
    env.assert_gone(&id);
    let at_dump = read_num(&count).unwrap();
    let archive = env
        .work
        .path()
        .join("checkpoint-counters_default-counter.tar");
    crio_archive(
        &archive,
        &id,
        &bundle,
        &images,
        &data,
        &[("etc/added-after-start", b"from the diff\n")],
        &["/etc/motd-gone"],
    );

    // Without a bundle: the diff has no base to apply to.
    let r = env.id("r");
    let e = env.fail(&["restore", "-d", "--import", s(&archive), &r]);
    assert!(
        e.contains("another engine's checkpoint") && e.contains("--bundle"),
        "{e}"
    );
    env.assert_gone(&r);
    assert!(!env.root.path().join("@imports").exists());

    // A bundle without the bind mount CRI-O listed.
    let nodata = env.bundle("nodata", &["sh"], |_| {});
    let e = env.fail(&[
        "restore",
        "-d",
        "--import",
        s(&archive),
        "--bundle",
        s(&nodata),
        &r,
    ]);
    assert!(e.contains("needs the bind mount /data"), "{e}");
    assert!(!env.root.path().join("@imports").exists());

    // A fresh bundle of the image's rootfs: the changes are applied and
    // the counter goes on.
    let fresh = env.counter_bundle("fresh", &data);
    std::fs::write(fresh.join("rootfs/etc/motd-gone"), "old").unwrap();
    env.ok(&[
        "restore",
        "-d",
        "--import",
        s(&archive),
        "--bundle",
        s(&fresh),
        &r,
    ]);
    assert_eq!(env.status(&r), "running");
    assert_continues(&count, at_dump);
    assert_eq!(
        std::fs::read_to_string(fresh.join("rootfs/etc/added-after-start")).unwrap(),
        "from the diff\n"
    );
    assert!(!fresh.join("rootfs/etc/motd-gone").exists());
    assert!(!env.root.path().join("@imports").exists());
    env.ok(&["delete", "--force", &r]);
    env.assert_gone(&r);

    // deleted.files naming a path outside the rootfs is refused.
    let bad = env.work.path().join("bad.tar");
    crio_archive(
        &bad,
        &id,
        &bundle,
        &images,
        &data,
        &[],
        &["/../../etc/passwd"],
    );
    let fresh2 = env.counter_bundle("fresh2", &data);
    let e = env.fail(&[
        "restore",
        "-d",
        "--import",
        s(&bad),
        "--bundle",
        s(&fresh2),
        &r,
    ]);
    assert!(e.contains("deleted.files:/../../etc/passwd"), "{e}");
    assert!(!env.root.path().join("@imports").exists());
}
