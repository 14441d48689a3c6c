//! No freeze outlives the ferry process that made it. `ferry checkpoint`
//! (with and without `--leave-running`), `ferry migrate` and `ferry serve`
//! are killed with SIGKILL at many points, from before the freeze to past
//! the end; afterwards the container either runs, thawed, its counter
//! advancing, or is gone with a complete image that restores and counts
//! on. It is never left frozen, an image beside a running original never
//! looks complete, and `ferry delete -f` always works.
//! Needs root and a working CRIU; skips with the reason otherwise.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{append, s, serial, Host, World};
use common::*;

/// Kill points in ms after the command starts, spread over `total` (how
/// long the whole command took here, measured first) and past it: before
/// CRIU runs, while the container is frozen, while it is being removed,
/// and after the command finished.
fn delays(total: Duration) -> Vec<u64> {
    let t = total.as_millis() as u64;
    let mut v: Vec<u64> = [
        0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95, 100, 120, 150, 200,
    ]
    .iter()
    .map(|pct| t * pct / 100)
    .collect();
    v.dedup();
    v
}

/// Runs `cmd` to the end (it must succeed) and returns how long it took.
fn timed(mut cmd: std::process::Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?}");
    t.elapsed()
}

/// The state the kernel reports for the freezer of the cgroup whose
/// directories are `dirs`; None once the cgroup is gone.
fn freezer_state(dirs: &[PathBuf]) -> Option<String> {
    for d in dirs {
        if let Ok(t) = std::fs::read_to_string(d.join("freezer.state")) {
            return Some(t.trim().to_string());
        }
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.freeze")) {
            if t.trim() == "0" {
                return Some("THAWED".into());
            }
            let ev = std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
            let frozen = ev.lines().any(|l| l == "frozen 1");
            return Some(if frozen { "FROZEN" } else { "FREEZING" }.into());
        }
    }
    None
}

/// Waits (the guard acts once ferry and CRIU are gone) until the freezer
/// is not frozen; returns its last state.
fn settled_freezer(dirs: &[PathBuf]) -> Option<String> {
    let mut last = None;
    wait_until(Duration::from_secs(15), || {
        last = freezer_state(dirs);
        last.as_deref() != Some("FROZEN") && last.as_deref() != Some("FREEZING")
    });
    last
}

/// The counter advances (the processes run).
fn advancing(count: &Path) -> bool {
    let before = read_num(count).unwrap_or(0);
    wait_until(Duration::from_secs(3), || {
        read_num(count).unwrap_or(0) > before + 1
    })
}

/// How a kill met the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// It had already exited.
    TooLate,
    /// It ran, and the container was not frozen.
    Running,
    /// It ran and the container was frozen (or freezing).
    Frozen,
}

/// What the command met at this instant (`done`: it had exited).
fn probe(done: bool, dirs: &[PathBuf]) -> Kill {
    match (done, freezer_state(dirs).as_deref()) {
        (true, _) => Kill::TooLate,
        (false, Some("FROZEN" | "FREEZING")) => Kill::Frozen,
        (false, _) => Kill::Running,
    }
}

/// Sends SIGKILL to `child` after `ms`, noting whether the cgroup with
/// directories `dirs` was frozen at that moment.
fn kill_after(child: &mut Child, ms: u64, dirs: &[PathBuf]) -> Kill {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return Kill::TooLate;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let kill = probe(false, dirs);
    let done = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    if done {
        Kill::TooLate
    } else {
        kill
    }
}

fn status_of(env: &Env, id: &str) -> Option<String> {
    let out = env.run(&["state", id]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"].as_str().map(String::from)
}

/// What each kill met and left, for the log.
#[derive(Default)]
struct Tally(BTreeMap<String, Vec<u64>>);

impl Tally {
    fn add(&mut self, kill: Kill, what: &str, ms: u64) {
        let key = match kill {
            Kill::TooLate => format!("after the end -> {what}"),
            Kill::Running => format!("killed, not frozen -> {what}"),
            Kill::Frozen => format!("killed while frozen -> {what}"),
        };
        self.0.entry(key).or_default().push(ms);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        for (what, at) in &self.0 {
            eprintln!("{what}: killed at {at:?} ms");
        }
    }
}

fn checkpoint_killed(leave_running: bool) {
    let Some(_g) = serial() else { return };
    let env = Env::new(if leave_running { "fzl" } else { "fz" });
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.bundle("c", &["sh", "-c", COUNTER], |v| add_bind(v, &data, "/data"));
    let count = data.join("count");
    let start = |name: &str| {
        let id = env.id(name);
        let _ = std::fs::remove_file(&count);
        env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
        assert!(wait_until(Duration::from_secs(5), || read_num(&count)
            .unwrap_or(0)
            >= 3));
        id
    };
    let checkpoint = |id: &str, images: &Path| {
        let mut args = vec!["checkpoint", "--image-path", s(images)];
        if leave_running {
            args.push("--leave-running");
        }
        args.push(id);
        env.cmd(&args)
    };
    let id = start("full");
    let total = timed(checkpoint(&id, &env.work.path().join("img-full")));
    env.ok(&["delete", "-f", &id]);
    let mut tally = Tally::default();
    for (i, ms) in delays(total).into_iter().enumerate() {
        let id = start(&format!("c{i}"));
        let dirs = env.cgroup_dirs(&id);
        let images = env.work.path().join(format!("img{i}"));
        let mut child = checkpoint(&id, &images)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill = kill_after(&mut child, ms, &dirs);

        let freezer = settled_freezer(&dirs);
        let status = status_of(&env, &id);
        let complete = images.join("inventory.img").exists()
            && !images.join(ferry::freeze_guard::INCOMPLETE_MARKER).exists();
        match status.as_deref() {
            Some("running") => {
                assert_eq!(freezer.as_deref(), Some("THAWED"), "at {ms} ms");
                assert!(advancing(&count), "at {ms} ms: running but stuck");
                if !leave_running {
                    // Never a complete-looking image beside the original.
                    assert!(!complete, "at {ms} ms: complete image, original runs");
                    if images.join("inventory.img").exists() {
                        let err = env.fail(&[
                            "restore",
                            "-d",
                            "--bundle",
                            s(&bundle),
                            "--image-path",
                            s(&images),
                            &env.id(&format!("r{i}")),
                        ]);
                        assert!(err.contains("incomplete checkpoint"), "{err}");
                    }
                }
                let what = if complete {
                    "running, image complete"
                } else {
                    "running, image incomplete or none"
                };
                tally.add(kill, what, ms);
            }
            other => {
                // Gone (or its processes killed by CRIU): the image is whole.
                assert!(
                    !leave_running,
                    "at {ms} ms: --leave-running left it {other:?}"
                );
                assert!(
                    complete,
                    "at {ms} ms: container {other:?}, image incomplete"
                );
                tally.add(kill, "gone, image complete", ms);
            }
        }
        if complete {
            // The image restores and the counter goes on from where it was.
            let at = read_num(&count).unwrap_or(0);
            env.ok(&["delete", "-f", &id]);
            let rid = env.id(&format!("r{i}"));
            env.ok(&[
                "restore",
                "-d",
                "--bundle",
                s(&bundle),
                "--image-path",
                s(&images),
                &rid,
            ]);
            assert!(
                wait_until(Duration::from_secs(5), || read_num(&count).unwrap_or(0)
                    > at),
                "at {ms} ms: the restored counter does not go on from {at}"
            );
            env.ok(&["delete", "-f", &rid]);
        }
        env.ok(&["delete", "-f", &id]);
        env.assert_gone(&id);
    }
}

#[test]
fn killed_checkpoint_never_leaves_a_freeze_or_a_complete_looking_image() {
    checkpoint_killed(false);
}

#[test]
fn killed_checkpoint_leave_running_never_leaves_a_freeze() {
    checkpoint_killed(true);
}

/// `ferry migrate ID` from A to B, stdio to files.
fn spawn_migrate(w: &World, id: &str) -> Child {
    let log = w.a.dir.path().join("migrate.log");
    w.a.ferry(&[
        "migrate",
        id,
        "--to",
        &w.b.to(),
        "--ca",
        s(&w.pki.join("ca.pem")),
        "--cert",
        s(&w.pki.join("a.pem")),
        "--key",
        s(&w.pki.join("a-key.pem")),
    ])
    .stdout(append(&log))
    .stderr(append(&log))
    .spawn()
    .unwrap()
}

/// Where the migration of `id` ended up once the dust settled: exactly one
/// running, thawed copy, and which host has it.
fn settle(w: &World, id: &str, count: &Path, ms: u64) -> &'static str {
    let a_dirs = default_cgroup_dirs(id);
    let a_freezer = settled_freezer(&a_dirs);
    let b_dirs = cgroup_dirs(&format!("{}/{id}", w.b.cgroup_parent));
    // B rolls back a migration whose source went away; wait for it.
    let b_running = |h: &Host| h.status(id).as_deref() == Some("running");
    let rolled_back = wait_until(Duration::from_secs(15), || {
        !w.b.root().join(id).exists() || b_running(&w.b)
    });
    assert!(
        rolled_back,
        "at {ms} ms: B neither runs {id} nor rolled it back ({:?}); serve log:\n{}",
        w.b.status(id),
        w.b.serve_log()
    );
    let a = w.a.status(id);
    let on_b = b_running(&w.b);
    assert!(
        advancing(count),
        "at {ms} ms: nothing counts (A {a:?}, B running {on_b})"
    );
    match (a.as_deref(), on_b) {
        (Some("running"), false) => {
            assert_eq!(a_freezer.as_deref(), Some("THAWED"), "at {ms} ms");
            "resumed on A"
        }
        (Some("running"), true) => panic!("at {ms} ms: running on A and on B"),
        (_, true) => {
            assert_eq!(
                freezer_state(&b_dirs).as_deref(),
                Some("THAWED"),
                "at {ms} ms"
            );
            if a.as_deref() == Some("paused") {
                // The commit was sent and never confirmed: A stays frozen
                // so that it never runs twice (B runs it).
                "on B, A left frozen (commit in doubt)"
            } else {
                "moved to B"
            }
        }
        (a, false) => panic!("at {ms} ms: A is {a:?} and B does not run it"),
    }
}

/// How long a whole migration takes here.
fn full_migration(w: &mut World) -> Duration {
    let (id, _) = w.counter("full");
    let t = Instant::now();
    let st = spawn_migrate(w, &id).wait().unwrap();
    let total = t.elapsed();
    assert!(
        st.success(),
        "migrate: {}",
        std::fs::read_to_string(w.a.dir.path().join("migrate.log")).unwrap_or_default()
    );
    clear(w, &id);
    total
}

/// Removes `id` from both hosts (`delete -f` must work on each).
fn clear(w: &World, id: &str) {
    for h in [&w.a, &w.b] {
        if h.status(id).is_some() {
            h.ok(&["delete", "-f", id]);
        }
    }
}

#[test]
fn killed_migrate_never_leaves_the_source_frozen() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("fm", 11);
    let total = full_migration(&mut w);
    let mut tally = Tally::default();
    for (i, ms) in delays(total).into_iter().enumerate() {
        let (id, count) = w.counter(&format!("m{i}"));
        let mut child = spawn_migrate(&w, &id);
        let kill = kill_after(&mut child, ms, &default_cgroup_dirs(&id));
        let where_ = settle(&w, &id, &count, ms);
        tally.add(kill, where_, ms);
        clear(&w, &id);
        w.b.assert_clean(&id);
    }
}

#[test]
fn killed_serve_never_leaves_the_source_frozen() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("fs", 12);
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    let total = full_migration(&mut w);
    let mut tally = Tally::default();
    for (i, ms) in delays(total).into_iter().enumerate() {
        let (id, count) = w.counter(&format!("s{i}"));
        let mut child = spawn_migrate(&w, &id);
        std::thread::sleep(Duration::from_millis(ms));
        let kill = probe(
            child.try_wait().unwrap().is_some(),
            &default_cgroup_dirs(&id),
        );
        w.b.stop_serve(nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let where_ = settle(&w, &id, &count, ms);
        tally.add(kill, where_, ms);
        // A restarted server sweeps what the killed one left.
        w.b.serve(&pki, "b", &shared);
        clear(&w, &id);
        w.b.assert_clean(&id);
    }
}

#[test]
fn restore_refuses_an_image_marked_incomplete() {
    let Some(_g) = serial() else { return };
    let env = Env::new("fzm");
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.bundle("c", &["sh", "-c", COUNTER], |v| add_bind(v, &data, "/data"));
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let images = env.work.path().join("img");
    env.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        s(&images),
        &id,
    ]);
    let marker = images.join(ferry::freeze_guard::INCOMPLETE_MARKER);
    assert!(!marker.exists(), "a completed dump keeps its marker");
    env.ok(&["delete", "-f", &id]);
    std::fs::write(&marker, "").unwrap();
    let rid = env.id("r");
    let err = env.fail(&[
        "restore",
        "-d",
        "--bundle",
        s(&bundle),
        "--image-path",
        s(&images),
        &rid,
    ]);
    assert!(
        err.contains("incomplete checkpoint") && err.contains(s(&marker)),
        "{err}"
    );
    assert!(status_of(&env, &rid).is_none());
    std::fs::remove_file(&marker).unwrap();
    env.ok(&[
        "restore",
        "-d",
        "--bundle",
        s(&bundle),
        "--image-path",
        s(&images),
        &rid,
    ]);
    assert!(advancing(&data.join("count")));
}
