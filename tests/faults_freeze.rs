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

use common::hosts::{append, serial, World};
use common::s;
use common::*;

/// When to kill the command.
#[derive(Debug, Clone, Copy)]
enum At {
    /// This many ms after it started.
    Start(u64),
    /// This many ms after the container stopped running (its cgroup
    /// frozen, or its processes seized by CRIU).
    Stopped(u64),
    /// This many ms after its counter moved again once it had stopped (a
    /// migration's destination runs it).
    Moved(u64),
    /// This many ms after the destination reached a point (only for
    /// `ferry serve`, which runs there).
    OnB(OnB, u64),
}

/// Points on the destination of a migration.
#[derive(Debug, Clone, Copy)]
enum OnB {
    /// Its CRIU page server listens.
    PageServer,
    /// The container's state directory exists: the restore has begun.
    Restoring,
    /// The restored tree is in the container's cgroup (held or running).
    Restored,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Start(ms) => write!(f, "{ms} ms after start"),
            At::Stopped(ms) => write!(f, "{ms} ms after the freeze"),
            At::Moved(ms) => write!(f, "{ms} ms after it counted again"),
            At::OnB(p, ms) => write!(f, "{ms} ms after B: {p:?}"),
        }
    }
}

/// Kill points: before the freeze, through the time the container is
/// held (`held_ms`: roughly how long that lasts here), and after the end
/// (`total`: how long the whole command took, measured first).
fn plan(total: Duration, held_ms: &[u64]) -> Vec<At> {
    let t = total.as_millis() as u64;
    let mut v = vec![At::Start(0), At::Start(t / 10)];
    v.extend(held_ms.iter().map(|&ms| At::Stopped(ms)));
    v.push(At::Start(t * 2));
    v
}

/// A migration's plan: also right after the destination started the
/// container, while the source is being removed.
fn migration_plan(total: Duration) -> Vec<At> {
    let mut v = plan(total, HELD);
    v.extend([0, 1, 3, 10].map(At::Moved));
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

/// The container does not run: frozen, or its processes traced (CRIU
/// seizes them and thaws the v1 freezer while it dumps).
fn stopped(dirs: &[PathBuf]) -> bool {
    if matches!(freezer_state(dirs).as_deref(), Some("FROZEN" | "FREEZING")) {
        return true;
    }
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .map(|v| v.trim() != "0")
                })
                .unwrap_or(false)
        })
}

/// Waits until `at` (or until `done` says the command ended); returns
/// what the command met then. `count` is the container's counter file.
fn wait_for(at: At, dirs: &[PathBuf], count: &Path, mut done: impl FnMut() -> bool) -> Kill {
    let t = Instant::now();
    let mut stopped_at: Option<(Instant, Option<u64>)> = None;
    let mut moved_at = None;
    let after = |since: Option<Instant>, ms: u64| {
        since.is_some_and(|s| s.elapsed() >= Duration::from_millis(ms))
    };
    loop {
        if done() {
            return Kill::TooLate;
        }
        if stopped_at.is_none() && matches!(at, At::Stopped(_) | At::Moved(_)) && stopped(dirs) {
            stopped_at = Some((Instant::now(), read_num(count)));
        }
        if let (Some((_, n)), None, At::Moved(_)) = (stopped_at, moved_at, at) {
            if read_num(count) > n {
                moved_at = Some(Instant::now());
            }
        }
        let due = match at {
            At::Start(ms) => t.elapsed() >= Duration::from_millis(ms),
            At::Stopped(ms) => after(stopped_at.map(|s| s.0), ms),
            At::Moved(ms) => after(moved_at, ms),
            At::OnB(..) => unreachable!("see wait_on_b"),
        };
        if due {
            return if stopped(dirs) {
                Kill::Stopped
            } else {
                Kill::Running
            };
        }
        std::thread::sleep(Duration::from_micros(500));
    }
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

/// Waits (the guard acts once ferry and CRIU are gone) until the
/// container is neither frozen nor held by CRIU; returns the freezer state.
/// A CRIU that was acknowledged before ferry died dumps on until its next
/// notification fails, which on a loaded machine takes seconds: the wait
/// is generous (it ends as soon as the container runs).
fn settled_freezer(dirs: &[PathBuf]) -> Option<String> {
    wait_until(Duration::from_secs(30), || !stopped(dirs));
    freezer_state(dirs)
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
    /// It ran, and the container ran too.
    Running,
    /// It ran and the container was stopped (frozen or seized).
    Stopped,
}

/// Sends SIGKILL to `child` at `at`.
fn kill_at(child: &mut Child, at: At, dirs: &[PathBuf], count: &Path) -> Kill {
    let kill = wait_for(at, dirs, count, || child.try_wait().unwrap().is_some());
    let _ = child.kill();
    let _ = child.wait();
    kill
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
struct Tally(BTreeMap<String, Vec<String>>);

impl Tally {
    fn add(&mut self, kill: Kill, what: &str, at: At) {
        let key = match kill {
            Kill::TooLate => format!("after the end -> {what}"),
            Kill::Running => format!("killed while it ran -> {what}"),
            Kill::Stopped => format!("killed while it was stopped -> {what}"),
        };
        self.0.entry(key).or_default().push(at.to_string());
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        for (what, at) in &self.0 {
            eprintln!("{what}: {}", at.join(", "));
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
        // Far enough that a restore which started the counter afresh
        // shows numbers below it for a while.
        wait_count(&count, 10);
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
    // A dump holds the container for a few hundred ms here.
    for (i, at) in plan(total, &[0, 2, 5, 10, 20, 40, 80, 160, 320])
        .into_iter()
        .enumerate()
    {
        let id = start(&format!("c{i}"));
        // The counter is at `before` or past it when it is checkpointed.
        let before = read_num(&count).unwrap();
        let dirs = env.cgroup_dirs(&id);
        let images = env.work.path().join(format!("img{i}"));
        let mut child = checkpoint(&id, &images)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill = kill_at(&mut child, at, &dirs, &count);

        let freezer = settled_freezer(&dirs);
        let status = status_of(&env, &id);
        let complete = images.join("inventory.img").exists()
            && !images.join(ferry::freeze_guard::INCOMPLETE_MARKER).exists();
        match status.as_deref() {
            Some("running") => {
                assert_eq!(freezer.as_deref(), Some("THAWED"), "killed {at}");
                assert!(advancing(&count), "killed {at}: running but stuck");
                if !leave_running {
                    // Never a complete-looking image beside the original.
                    assert!(!complete, "killed {at}: complete image, original runs");
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
                tally.add(kill, what, at);
            }
            other => {
                // Gone (or its processes killed by CRIU): the image is whole.
                assert!(
                    !leave_running,
                    "killed {at}: --leave-running left it {other:?}"
                );
                assert!(
                    complete,
                    "killed {at}: container {other:?}, image incomplete"
                );
                tally.add(kill, "gone, image complete", at);
            }
        }
        if complete {
            // The image restores and the counter goes on from where it was
            // (the original, run on by --leave-running, may be further).
            env.ok(&["delete", "-f", &id]);
            clear_count(&count);
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
            assert_resumes(&count, before);
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
/// (`serve_killed`: B's server was killed, so B may hold the remains of
/// an aborted restore until a new server sweeps them.)
fn settle(w: &World, id: &str, count: &Path, at: At, serve_killed: bool) -> &'static str {
    let a_dirs = default_cgroup_dirs(id);
    let a_freezer = settled_freezer(&a_dirs);
    let b_dirs = cgroup_dirs(&format!("{}/{id}", w.b.cgroup_parent));
    // B rolls back a migration whose source went away; wait for it.
    let rolled_back = serve_killed
        || wait_until(Duration::from_secs(15), || {
            !w.b.root().join(id).exists() || runs(&b_dirs)
        });
    assert!(
        rolled_back,
        "killed {at}: B neither runs {id} nor rolled it back ({:?}); serve log:\n{}",
        w.b.status(id),
        w.b.serve_log()
    );
    let a = w.a.status(id);
    let (on_a, on_b) = (settled_runs(&a_dirs), settled_runs(&b_dirs));
    assert!(
        advancing(count),
        "killed {at}: nothing counts (A {a:?}, B runs it: {on_b})"
    );
    match (on_a, on_b) {
        (true, false) => {
            assert_eq!(a.as_deref(), Some("running"), "killed {at}");
            assert_eq!(a_freezer.as_deref(), Some("THAWED"), "killed {at}");
            "resumed on A"
        }
        (true, true) => panic!(
            "killed {at}: running on A ({:?}) and on B ({:?}); serve log:\n{}",
            live_procs(&a_dirs),
            live_procs(&b_dirs),
            w.b.serve_log()
        ),
        (false, true) => {
            if a_freezer.as_deref() == Some("FROZEN") {
                // The commit was sent and never confirmed: A stays frozen
                // so that it never runs twice (B runs it). Only when B
                // cannot be asked: a killed ferry migrate's guard asks.
                assert!(serve_killed, "killed {at}: A left frozen, B runs it");
                assert_eq!(a.as_deref(), Some("paused"), "killed {at}");
                "on B, A left frozen (commit in doubt)"
            } else {
                assert!(a_dirs.iter().all(|d| !d.exists()) || a.as_deref() != Some("running"));
                "moved to B"
            }
        }
        (false, false) => panic!("killed {at}: A is {a:?} and B does not run it"),
    }
}

/// Some process of the cgroup with directories `dirs` runs: the cgroup is
/// thawed and its processes are not held by CRIU.
fn runs(dirs: &[PathBuf]) -> bool {
    !live_procs(dirs).is_empty()
        && freezer_state(dirs).as_deref() == Some("THAWED")
        && !stopped(dirs)
}

/// [`runs`], and its processes are at work: the counter forks a new
/// `sleep` (and `mv`) every 50 ms, while a tree CRIU restored and holds (on
/// B, until it is committed or killed) changes nothing. Only the counter's
/// own children count: during a restore CRIU runs in the container's cgroup
/// and forks helpers of its own there. Two new children are needed: a tree
/// CRIU is still restoring gains the one child that was in flight at the
/// dump, and only a running counter makes more.
fn settled_runs(dirs: &[PathBuf]) -> bool {
    let pid = |p: &String| p.split_whitespace().next().map(String::from);
    let first: Vec<String> = live_procs(dirs).iter().filter_map(pid).collect();
    let counter_child = |p: &String| {
        let comm = p.split_whitespace().nth(2).unwrap_or_default();
        comm == "sleep" || comm == "mv"
    };
    // Children of the counter that were not there before.
    let mut seen = std::collections::BTreeSet::new();
    let active = wait_until(Duration::from_secs(2), || {
        seen.extend(
            live_procs(dirs)
                .iter()
                .filter(|p| counter_child(p))
                .filter_map(pid)
                .filter(|p| !first.contains(p)),
        );
        seen.len() >= 2
    });
    active && runs(dirs)
}

/// The processes of the cgroup that have not exited: "pid state comm".
fn live_procs(dirs: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let state = rest.split_whitespace().next()?;
            let comm = head.split_once('(')?.1;
            (state != "Z" && state != "X").then(|| format!("{pid} {state} {comm}"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A migration holds the source from its dump until the destination runs
/// the container: up to a second or so here.
const HELD: &[u64] = &[0, 25, 100, 300, 600, 1000];

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

/// The CRIU page servers listening on `addr` (an address only this test
/// uses): "pid cmdline".
fn page_servers(addr: &str) -> Vec<String> {
    // CRIU rewrites its command line: "criu: page-server --rpc --address A".
    let want = format!("--address {addr} ");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("criu") && cmd.contains("page-server") && cmd.contains(&want) {
            out.push(format!("{pid} {cmd}"));
        }
    }
    out
}

/// Waits until `ms` after B reached `p` for container `id` (or until
/// `done` says the migration ended); `a_dirs`: its cgroup on A.
fn wait_on_b(
    w: &World,
    id: &str,
    p: OnB,
    ms: u64,
    a_dirs: &[PathBuf],
    mut done: impl FnMut() -> bool,
) -> Kill {
    let b_dirs = cgroup_dirs(&format!("{}/{id}", w.b.cgroup_parent));
    let reached = || match p {
        OnB::PageServer => !page_servers(&w.b.addr).is_empty(),
        OnB::Restoring => w.b.root().join(id).exists(),
        // CRIU itself runs in the cgroup too.
        OnB::Restored => live_procs(&b_dirs).iter().any(|p| !p.ends_with(" criu")),
    };
    loop {
        if done() {
            return Kill::TooLate;
        }
        if reached() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(ms));
    if stopped(a_dirs) {
        Kill::Stopped
    } else {
        Kill::Running
    }
}

/// Removes `id` from both hosts (`delete -f` must work on each).
fn clear(w: &World, id: &str) {
    for h in [&w.a, &w.b] {
        if h.root().join(id).exists() {
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
    for (i, at) in migration_plan(total).into_iter().enumerate() {
        let (id, count) = w.counter(&format!("m{i}"));
        let mut child = spawn_migrate(&w, &id);
        let kill = kill_at(&mut child, at, &default_cgroup_dirs(&id), &count);
        let where_ = settle(&w, &id, &count, at, false);
        tally.add(kill, where_, at);
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
    let mut points = migration_plan(total);
    points.extend([
        At::OnB(OnB::PageServer, 0),
        At::OnB(OnB::PageServer, 30),
        At::OnB(OnB::Restoring, 0),
        At::OnB(OnB::Restoring, 30),
        At::OnB(OnB::Restoring, 100),
        At::OnB(OnB::Restored, 0),
        At::OnB(OnB::Restored, 2),
    ]);
    for (i, at) in points.into_iter().enumerate() {
        let (id, count) = w.counter(&format!("s{i}"));
        let mut child = spawn_migrate(&w, &id);
        let a_dirs = default_cgroup_dirs(&id);
        let mut done = || child.try_wait().unwrap().is_some();
        let kill = match at {
            At::OnB(p, ms) => wait_on_b(&w, &id, p, ms, &a_dirs, done),
            _ => wait_for(at, &a_dirs, &count, &mut done),
        };
        w.b.stop_serve(nix::sys::signal::Signal::SIGKILL);
        // Restarted at once, as an operator would: a source asking about
        // a commit learns that this server has no record of it, and the
        // new server stops the page server the killed one left.
        let port = w.b.port;
        w.b.serve_on(&pki, "b", &shared, port);
        let _ = child.wait();
        let where_ = settle(&w, &id, &count, at, true);
        tally.add(kill, where_, at);
        if w.a.root().join(&id).exists() {
            w.a.ok(&["delete", "-f", &id]);
        }
        // Whatever the killed server left of the container on B, `delete
        // -f` removes it all: processes, mounts, cgroup, state.
        if w.b.root().join(&id).exists() {
            w.b.ok(&["delete", "-f", &id]);
        }
        let b_dirs = cgroup_dirs(&format!("{}/{id}", w.b.cgroup_parent));
        assert!(
            live_procs(&b_dirs).is_empty(),
            "killed {at}: processes left on B after delete -f: {:?}",
            live_procs(&b_dirs)
        );
        for d in &b_dirs {
            assert!(!d.exists(), "killed {at}: cgroup {} left on B", d.display());
        }
        assert!(
            !w.b.root().join(&id).exists(),
            "killed {at}: state of {id} left on B"
        );
        let mounts = common::invariants::mounts_below(w.b.dir.path());
        assert!(
            mounts.is_empty(),
            "killed {at}: mounts left on B: {mounts:?}"
        );
        assert!(
            wait_until(Duration::from_secs(2), || page_servers(&w.b.addr)
                .is_empty()),
            "killed {at}: page servers left on B: {:?}",
            page_servers(&w.b.addr)
        );
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
    let count = data.join("count");
    wait_count(&count, 10);
    let before = read_num(&count).unwrap();
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
    clear_count(&count);
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
    assert_resumes(&count, before);
}
