//! `ferry migrate --mode post-copy` between two "hosts" (network
//! namespaces joined by a veth, as in `migrate.rs`). Where CRIU's lazy
//! dump works (a stock kernel) the migration runs, and each failure during
//! the pages phase must end as docs/migrate.md promises: the destination's
//! copy stopped, the source resumed from its image, nothing left behind.
//! Where it does not (this project's build machines), the mode is refused
//! with the measured reason before anything is frozen.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::hosts::*;
use common::*;

const POST: &[&str] = &[
    "--mode",
    "post-copy",
    "--accept-postcopy-risk",
    "--postcopy-link-timeout",
    "3",
];

/// The `ferry:` line of a failed command.
fn failure_line(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = err
        .lines()
        .find(|l| l.starts_with("ferry: "))
        .unwrap_or_else(|| panic!("no `ferry:` line in {err}"))
        .to_string();
    eprintln!("{line}");
    line
}

/// Whether `ferry check` measured post-copy to work on this machine.
fn postcopy_works(w: &World) -> bool {
    let out = w.a.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("post-copy"))
        .unwrap_or_else(|| panic!("no post-copy line in `ferry check`: {text}"));
    eprintln!("{line}");
    line.split_whitespace().nth(1) == Some("works")
}

/// A memhog container of `mib` MiB on A; returns (id, data dir).
fn memhog_container(w: &mut World, name: &str, mib: u32) -> (String, PathBuf) {
    w.memhog(name, mib, &[], "maxgap", Duration::from_secs(60))
}

/// `host` runs `id` with the memory it had (`sum`).
fn assert_memory_intact(h: &Host, id: &str, data: &Path, sum: &str) {
    assert_eq!(h.status(id).as_deref(), Some("running"));
    let _ = std::fs::remove_file(data.join("sum-after"));
    h.ok(&["kill", id, "USR1"]);
    assert!(
        wait_until(Duration::from_secs(60), || data.join("sum-after").exists()),
        "no checksum from {id} on {}",
        h.name
    );
    assert_eq!(read_text(&data.join("sum-after")), sum, "memory changed");
}

/// No criu process naming `dir` (this test's directories) is left.
fn assert_no_criu_for(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (comm.trim() == "criu" && cmd.contains(&needle)).then(|| format!("{pid}: {cmd}"))
        })
        .collect();
    assert!(left.is_empty(), "criu left behind: {left:?}");
}

/// `ferry migrate --mode post-copy` from A to B, in the background.
fn spawn_postcopy(w: &World, id: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let (target, ca, cert, key) = (
        w.b.to(),
        w.pki.join("ca.pem"),
        w.pki.join("a.pem"),
        w.pki.join("a-key.pem"),
    );
    let mut args = vec![
        "migrate",
        id,
        "--to",
        &target,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ];
    args.extend_from_slice(POST);
    w.a.ferry(&args)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until B runs `id` while `child` (the migration) still runs:
/// the pages phase.
fn wait_pages_phase(w: &World, id: &str, child: &mut Child) {
    assert!(
        wait_until(Duration::from_secs(120), || {
            w.b.status(id).as_deref() == Some("running")
                || child.try_wait().ok().flatten().is_some()
        }),
        "B never ran {id}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the migration ended before the pages phase could be interrupted"
    );
}

/// After a failed post-copy: A runs the container from its image with its
/// memory, B has nothing of it.
fn assert_rolled_back(w: &World, id: &str, data: &Path, sum: &str) {
    assert!(
        wait_until(Duration::from_secs(60), || w.a.status(id).as_deref()
            == Some("running")),
        "A did not resume {id}: {:?}",
        w.a.status(id)
    );
    assert_memory_intact(&w.a, id, data, sum);
    assert!(
        wait_until(Duration::from_secs(60), || w.b.status(id).is_none()),
        "B still has {id}"
    );
    w.b.assert_clean(id);
    assert_no_criu_for(&w.b.bundles());
}

#[test]
fn post_copy_needs_consent_and_a_host_whose_lazy_dump_works() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("pr", 11);
    let (id, count) = w.counter("c");
    // Without the operator's consent: refused, one line saying why.
    let out = w.migrate(&w.a, &w.b, &id, &["--mode", "post-copy"], None);
    let line = failure_line(&out);
    assert!(line.contains("--accept-postcopy-risk"), "{line}");
    assert!(line.contains("resumes here"), "{line}");
    // The consent flag alone belongs to post-copy.
    let out = w.migrate(&w.a, &w.b, &id, &["--accept-postcopy-risk"], None);
    assert!(failure_line(&out).contains("only apply to --mode post-copy"));
    if !postcopy_works(&w) {
        // This host: refused with what was measured, nothing touched.
        let out = w.migrate(&w.a, &w.b, &id, POST, None);
        let line = failure_line(&out);
        assert!(
            line.contains("post-copy migration is not possible on this host")
                && line.contains("lazy"),
            "{line}"
        );
    }
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    assert_continues(&count, read_num(&count).unwrap());
    assert!(w.b.containers().is_empty());
    // auto never picks post-copy, and says why.
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    assert_ne!(r["mode"], "post-copy");
    let why = r["not_used"]
        .as_array()
        .and_then(|v| v.iter().find(|n| n["mode"] == "post-copy"))
        .unwrap_or_else(|| panic!("no reason for not using post-copy: {r}"));
    assert!(why["reason"].as_str().unwrap().len() > 20, "{r}");
}

#[test]
fn post_copy_moves_memory_and_runs_at_once() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("pc", 12);
    if !postcopy_works(&w) {
        eprintln!(
            "skipped: post-copy does not work here (see `ferry check`); refusal tested above"
        );
        return;
    }
    let (id, data) = memhog_container(&mut w, "hog", 64);
    let sum = read_text(&data.join("sum-before"));
    let r = w.migrate_ok(&w.a, &w.b, &id, POST);
    assert_eq!(r["mode"], "post-copy", "{r}");
    assert!(r["timings"]["post_copy"].as_f64().unwrap() > 0.0, "{r}");
    // Every page arrived: the checksum over all 64 MiB is the same.
    assert_memory_intact(&w.b, &id, &data, &sum);
    assert!(w.a.status(&id).is_none());
    assert!(!w.a.root().join(&id).exists());
    for d in default_cgroup_dirs(&id) {
        assert!(!d.exists(), "cgroup {} left on A", d.display());
    }
    assert_no_criu_for(w.work.path());
    let (id2, count) = w.counter("c");
    let before = read_num(&count).unwrap();
    w.migrate_ok(&w.a, &w.b, &id2, POST);
    // The counter goes on on B at once.
    assert_continues(&count, before);
    assert_eq!(w.b.status(&id2).as_deref(), Some("running"));
}

#[test]
fn failures_during_the_pages_phase_resume_the_source() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("pf", 13);
    if !postcopy_works(&w) {
        eprintln!(
            "skipped: post-copy does not work here (see `ferry check`); refusal tested above"
        );
        return;
    }
    let (id, data) = memhog_container(&mut w, "hog", 128);
    let sum = read_text(&data.join("sum-before"));

    // The source (`ferry migrate`) is killed.
    let mut child = spawn_postcopy(&w, &id);
    wait_pages_phase(&w, &id, &mut child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    assert_rolled_back(&w, &id, &data, &sum);

    // `ferry serve` is killed.
    let mut child = spawn_postcopy(&w, &id);
    wait_pages_phase(&w, &id, &mut child);
    w.b.stop_serve(nix::sys::signal::Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    assert!(failure_line(&out).contains("resumed on this host"));
    // B's guard killed the copy; with `serve` dead its record stays,
    // stopped, for `ferry delete`.
    assert!(
        wait_until(Duration::from_secs(30), || w.b.status(&id).as_deref()
            != Some("running")),
        "B's copy still runs without its pages"
    );
    if w.b.status(&id).is_some() {
        w.b.ok(&["delete", "-f", &id]);
    }
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    w.b.serve(&pki, "b", &shared);
    assert_rolled_back(&w, &id, &data, &sum);

    // The link is cut: every packet dropped inside B's namespace.
    let mut child = spawn_postcopy(&w, &id);
    wait_pages_phase(&w, &id, &mut child);
    let nft = "add table inet pcut; add chain inet pcut in { type filter hook input priority -10; policy drop; }; add chain inet pcut out { type filter hook output priority -10; policy drop; }";
    let cut = w.b.ns.exec(&["nft", nft]);
    let cut_at = std::time::Instant::now();
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert!(failure_line(&out).contains("resumed on this host"));
    // Bounded: the link timeout on the control channel, and CRIU's own
    // page-stream sockets fail after 8 s of silence.
    let took = cut_at.elapsed();
    eprintln!("cut link: source resumed {took:?} after the cut");
    assert!(
        took < Duration::from_secs(25),
        "the source resumed only {took:?} after the cut"
    );
    w.b.ns.exec(&["nft", "delete table inet pcut"]);
    assert_rolled_back(&w, &id, &data, &sum);
}
