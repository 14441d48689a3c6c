//! Pre-copy: `ferry migrate --mode pre-copy` between two "hosts" (network
//! namespaces this test creates, as in tests/migrate.rs), and the local
//! pre-dump chain (`checkpoint --pre-dump`, then `--parent-path`).
//!
//! Pre-dumps need soft-dirty memory tracking. Where the kernel has it (a
//! stock distribution kernel: scripts/test-guest.sh runs these there) the
//! migrations run; where it lacks it (the project's build machines) the
//! same tests check that pre-copy is refused with the reason, before
//! anything is frozen, and that the container runs on.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hosts::*;
use common::*;
use serde_json::Value;

/// Whether the kernel tracks dirty memory (CRIU's mem_track feature).
fn tracks_dirty_memory() -> bool {
    ferry::criu::Criu::new()
        .and_then(|c| c.features())
        .map(|f| f.mem_track)
        .unwrap_or(false)
}

/// A memhog container of `mib` MiB on A rewriting `dirty_kib` KiB/s;
/// returns (id, data dir).
fn hog(w: &mut World, name: &str, mib: u32, dirty_kib: u32) -> (String, PathBuf) {
    let d = dirty_kib.to_string();
    w.memhog(name, mib, &[&d], "count", Duration::from_secs(120))
}

/// The memory of the hog on `host` equals what it was filled with, and
/// its beat counter went on from `count_before`.
fn assert_hog_intact(host: &Host, id: &str, data: &Path, count_before: u64) {
    let sum = read_text(&data.join("sum-before"));
    let _ = std::fs::remove_file(data.join("sum-after"));
    host.ok(&["kill", id, "USR1"]);
    assert!(
        wait_until(Duration::from_secs(60), || data.join("sum-after").exists()),
        "no checksum after the migration"
    );
    assert_eq!(read_text(&data.join("sum-after")), sum, "memory changed");
    let count = data.join("count");
    let at = read_num(&count).unwrap();
    assert!(at >= count_before, "counter reset: {count_before} -> {at}");
    assert!(
        wait_until(Duration::from_secs(10), || read_num(&count).unwrap_or(0)
            > at),
        "counter stopped at {at}"
    );
}

/// Every round's figures, for the test log.
fn show(r: &Value) {
    let rounds = r["pre_copy"].as_array().cloned().unwrap_or_default();
    for (i, it) in rounds.iter().enumerate() {
        eprintln!(
            "round {}: {} pages in {} ms (frozen {} ms), predicted final {} pages / {} ms",
            i + 1,
            it["pages_written"],
            it["duration"],
            it["frozen"],
            it["predicted_pages"],
            it["predicted_downtime"]
        );
    }
    eprintln!(
        "final: {} pages, predicted {} ms, downtime {} ms; stopped: {}",
        r["pages"]["written"],
        r["predicted_downtime"],
        r["timings"]["downtime"],
        r["pre_copy_stop"]
    );
}

fn pages(it: &Value) -> u64 {
    it["pages_written"].as_u64().unwrap()
}

#[test]
fn pre_copy_moves_a_rewriting_workload_with_a_small_final_round() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("p", 21);
    // 256 MiB rewriting 1 MiB/s (round 1 alone takes about a minute in
    // the emulated guest).
    let (id, data) = hog(&mut w, "hog", 256, 1024);
    let before = read_num(&data.join("count")).unwrap();
    let args = ["--mode", "pre-copy", "--pre-dump-mode", "read"];
    // A pre-dump mode without pre-copy would be ignored: refused.
    let out = w.migrate(&w.a, &w.b, &id, &["--pre-dump-mode", "read"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add --mode pre-copy"), "{err}");
    if !tracks_dirty_memory() {
        let out = w.migrate(&w.a, &w.b, &id, &args, None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("ferry: ")).unwrap();
        assert!(
            line.contains("pre-copy migration is not possible") && line.contains("soft-dirty"),
            "{line}"
        );
        assert_eq!(w.a.status(&id).as_deref(), Some("running"));
        assert_hog_intact(&w.a, &id, &data, before);
        return;
    }
    let r = w.migrate_ok(&w.a, &w.b, &id, &args);
    show(&r);
    assert_eq!(r["mode"], "pre-copy", "{r}");
    let rounds = r["pre_copy"].as_array().unwrap();
    assert!(rounds.len() >= 2, "{r}");
    // Round 1 sends everything, the next ones only what was rewritten
    // meanwhile (under emulation round 1 takes long enough for a quarter
    // of the memory to be rewritten).
    let first = pages(&rounds[0]);
    assert!(first >= 256 * 256, "{r}");
    assert!(pages(&rounds[1]) < first / 2, "{r}");
    assert!(pages(rounds.last().unwrap()) < first / 4, "{r}");
    // The final dump is a small part of the memory.
    let last = r["pages"]["written"].as_u64().unwrap();
    assert!(last < first / 4, "final dump of {last} pages: {r}");
    assert!(r["pre_copy_stop"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(w.b.status(&id).as_deref(), Some("running"));
    assert!(w.a.status(&id).is_none());
    assert_hog_intact(&w.b, &id, &data, before);
    let left: Vec<_> = walk(&w.b.bundles().join(".incoming"))
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    assert!(left.is_empty(), "images left on B: {left:?}");
}

/// `auto` with a workload that dirties memory faster than the link
/// carries it: pre-copy where the kernel tracks dirty memory, whose rule
/// stops iterating and bounds the freeze; stop-copy elsewhere, with the
/// reason.
#[test]
fn auto_with_a_workload_outrunning_the_link() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("q", 22);
    // 32 MiB rewritten 16 times a second (as fast as the CPU allows under
    // emulation): every round finds it all dirty.
    let (id, data) = hog(&mut w, "hog", 32, 32 * 1024 * 16);
    let before = read_num(&data.join("count")).unwrap();
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    show(&r);
    if !tracks_dirty_memory() {
        assert_eq!(r["mode"], "stop-copy", "{r}");
        let why = r["not_used"]
            .as_array()
            .and_then(|v| v.iter().find(|n| n["mode"] == "pre-copy"))
            .and_then(|n| n["reason"].as_str())
            .unwrap_or_default();
        assert!(why.contains("soft-dirty"), "{r}");
        assert!(r["pre_copy"].as_array().unwrap().is_empty(), "{r}");
        assert_hog_intact(&w.b, &id, &data, before);
        return;
    }
    assert_eq!(r["mode"], "pre-copy", "{r}");
    let rounds = r["pre_copy"].as_array().unwrap();
    let stop = r["pre_copy_stop"].as_str().unwrap();
    assert!(stop.contains("not converging"), "{r}");
    assert!(rounds.len() <= 3, "{r}");
    // The freeze stays bounded: the final dump sends at most the memory
    // (plus the rest of the process), not a backlog of rounds.
    let last = r["pages"]["written"].as_u64().unwrap();
    assert!(last <= 32 * 256 + 4096, "{r}");
    assert_hog_intact(&w.b, &id, &data, before);
}

/// `ferry checkpoint --pre-dump --image-path A`, then `--parent-path ../A
/// --image-path B`, then `restore` from B, as runc's and podman's
/// `--pre-checkpoint` / `--with-previous` do it.
#[test]
fn local_pre_dump_then_dump_against_it_restores() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("pdchain");
    let id = env.id("hog");
    let data = env.work.path().join("hog-data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.bundle("hog", &["/memhog", "64", "/data", "256"], |v| {
        add_bind(v, &data, "/data")
    });
    std::fs::copy(memhog(), bundle.join("rootfs/memhog")).unwrap();
    env.run_detached(&bundle, &id);
    assert!(wait_until(Duration::from_secs(120), || data
        .join("count")
        .exists()));
    let before = read_num(&data.join("count")).unwrap();
    let imgs = env.work.path().join("imgs");
    let (pre, full) = (imgs.join("pre"), imgs.join("full"));
    std::fs::create_dir_all(&pre).unwrap();
    std::fs::create_dir_all(&full).unwrap();
    let pre_args = ["checkpoint", "--pre-dump", "--pre-dump-mode", "read"];
    // A pre-dump mode without a pre-dump would be ignored: refused.
    let out = env.run(&[
        "checkpoint",
        "--pre-dump-mode",
        "read",
        "--image-path",
        s(&pre),
        &id,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pre-dump"), "{err}");
    assert_eq!(env.status(&id), "running");
    if !tracks_dirty_memory() {
        let mut a = pre_args.to_vec();
        a.extend(["--image-path", s(&pre), &id]);
        let err = env.fail(&a);
        assert!(
            err.contains("pre-dump") && err.contains("soft-dirty"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(env.status(&id), "running");
        env.ok(&["delete", "--force", &id]);
        return;
    }
    let mut a = pre_args.to_vec();
    a.extend(["--image-path", s(&pre), "--stats", &id]);
    let out = env.ok(&a);
    eprintln!("pre-dump: {out}");
    assert_eq!(env.status(&id), "running");
    env.ok(&[
        "checkpoint",
        "--parent-path",
        "../pre",
        "--image-path",
        s(&full),
        &id,
    ]);
    assert!(full.join("parent").is_symlink());
    // Most pages come from the pre-dump: the final images hold few.
    let size = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let (p, f) = (size(&pre), size(&full));
    eprintln!("pre-dump pages {p} bytes, dump pages {f} bytes");
    assert!(p >= 64 << 20 && f < p / 4, "{p} {f}");
    env.ok(&[
        "restore",
        "-d",
        "--bundle",
        s(&bundle),
        "--image-path",
        s(&full),
        &id,
    ]);
    let sum = read_text(&data.join("sum-before"));
    env.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(60), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
    let at = read_num(&data.join("count")).unwrap();
    assert!(at >= before, "counter reset: {before} -> {at}");
    env.ok(&["delete", "--force", &id]);
}
