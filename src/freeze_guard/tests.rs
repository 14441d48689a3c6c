//! The guard against stand-ins: a `sleep` child plays ferry (and CRIU),
//! a plain directory plays the cgroup's freezer files.
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    ferry: Child,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("freezer.state"), "FROZEN\n").unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        Fixture {
            dir,
            ferry: sleeper(),
        }
    }

    fn freezer(&self) -> Freezer {
        Freezer {
            dir: self.dir.path().to_path_buf(),
            v2: false,
        }
    }

    fn arm(&self, criu: Option<i32>, dump: Option<DumpDirs>) -> FreezeGuard {
        FreezeGuard::arm_watching(
            self.ferry.id() as i32,
            &Target {
                freezer: self.freezer(),
                on_death: OnDeath::Thaw,
                id: "c1",
                criu,
                dump,
            },
        )
        .unwrap()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("freezer.state")).unwrap()
    }

    fn kill_ferry(&mut self) {
        kill(&mut self.ferry);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        kill(&mut self.ferry);
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("100").spawn().unwrap()
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Running (an exited guard may wait a while for init to reap it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        == Some(false)
}

/// Waits until `f` holds (the guard acts asynchronously).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn thaws_when_ferry_dies() {
    let mut f = Fixture::new();
    let g = f.arm(None, None);
    let pid = g.handle().pid();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.state(), "FROZEN\n", "acted while ferry lived");
    f.kill_ferry();
    eventually("thawed", || f.state().starts_with("THAWED"));
    eventually("the guard exits", || !alive(pid));
}

#[test]
fn disarmed_guard_exits_and_leaves_the_cgroup_alone() {
    let mut f = Fixture::new();
    let g = f.arm(None, None);
    let pid = g.handle().pid();
    g.disarm().unwrap();
    eventually("the guard exits", || !alive(pid));
    f.kill_ferry();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.state(), "FROZEN\n");
}

#[test]
fn dropping_an_armed_guard_thaws() {
    let f = Fixture::new();
    drop(f.arm(None, None));
    eventually("thawed", || f.state().starts_with("THAWED"));
}

#[test]
fn waits_for_criu_before_thawing() {
    let mut f = Fixture::new();
    let mut criu = sleeper();
    let _g = f.arm(Some(criu.id() as i32), None);
    f.kill_ferry();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(f.state(), "FROZEN\n", "thawed while criu still ran");
    kill(&mut criu);
    eventually("thawed", || f.state().starts_with("THAWED"));
}

#[test]
fn hold_leaves_it_frozen() {
    let mut f = Fixture::new();
    let g = f.arm(None, None);
    let pid = g.handle().pid();
    g.on_death(OnDeath::Hold).unwrap();
    f.kill_ferry();
    eventually("the guard exits", || !alive(pid));
    assert_eq!(f.state(), "FROZEN\n");
}

#[test]
fn kill_kills_the_cgroups_processes_then_thaws() {
    let mut f = Fixture::new();
    let mut victim = sleeper();
    std::fs::write(
        f.dir.path().join("cgroup.procs"),
        format!("{}\n", victim.id()),
    )
    .unwrap();
    let g = f.arm(None, None);
    g.handle().on_death(OnDeath::Kill).unwrap();
    f.kill_ferry();
    eventually("thawed", || f.state().starts_with("THAWED"));
    let status = victim.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn a_dump_criu_finished_is_marked_complete() {
    for finished in [false, true] {
        let mut f = Fixture::new();
        let images = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let marker = images.path().join(INCOMPLETE_MARKER);
        std::fs::write(&marker, "").unwrap();
        if finished {
            std::fs::write(work.path().join(CRIU_DUMP_STATS), "").unwrap();
        }
        let _g = f.arm(
            None,
            Some(DumpDirs {
                images: images.path().into(),
                work: work.path().into(),
            }),
        );
        f.kill_ferry();
        eventually("thawed", || f.state().starts_with("THAWED"));
        assert_eq!(marker.exists(), !finished, "finished: {finished}");
    }
}

#[test]
fn the_guard_keeps_no_other_descriptor() {
    let f = Fixture::new();
    let g = f.arm(None, None);
    let pid = g.handle().pid();
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // stdin/stdout (/dev/null), stderr, the control pipe, ferry's pidfd.
    assert_eq!(fds.len(), 5, "{fds:?}");
    // A session and process group of its own (pgrp, session: fields 5, 6).
    let stat = |pid: u32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<String> = s
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(String::from)
            .collect();
        (f[2].clone(), f[3].clone())
    };
    let (guard, me) = (stat(pid as u32), stat(std::process::id()));
    assert_ne!(guard.0, me.0, "same process group");
    assert_ne!(guard.1, me.1, "same session");
    g.disarm().unwrap();
}

#[test]
fn hold_runs_the_settle_command_once_ferry_is_gone() {
    let mut f = Fixture::new();
    let out = f.dir.path().join("settled");
    let g = f.arm(None, None);
    let h = g.handle();
    // Long enough to need several reads; sent just before ferry dies.
    h.settle_with(&[
        "/bin/sh".into(),
        "-c".into(),
        format!("echo settled > {}", out.display()).into(),
        "x".repeat(3000).into(),
    ])
    .unwrap();
    h.on_death(OnDeath::Hold).unwrap();
    f.kill_ferry();
    eventually("the settle command ran", || {
        std::fs::read_to_string(&out).is_ok_and(|s| s == "settled\n")
    });
    assert_eq!(f.state(), "FROZEN\n", "hold must not thaw");
}

#[test]
fn a_settle_command_is_only_for_hold() {
    let mut f = Fixture::new();
    let out = f.dir.path().join("settled");
    let g = f.arm(None, None);
    g.handle()
        .settle_with(&["/bin/touch".into(), out.clone().into()])
        .unwrap();
    f.kill_ferry();
    eventually("thawed", || f.state().starts_with("THAWED"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!out.exists());
    let g = FreezeGuard::arm_watching(
        std::process::id() as i32,
        &Target {
            freezer: f.freezer(),
            on_death: OnDeath::Thaw,
            id: "c1",
            criu: None,
            dump: None,
        },
    )
    .unwrap();
    let too_long = vec![std::ffi::OsString::from("x".repeat(5000))];
    assert!(matches!(
        g.handle().settle_with(&too_long),
        Err(Error::SettleTooLong { .. })
    ));
    g.disarm().unwrap();
}

#[test]
fn leave_keeps_a_freeze_that_is_not_ferrys() {
    let mut f = Fixture::new();
    let g = FreezeGuard::arm_watching(
        f.ferry.id() as i32,
        &Target {
            freezer: f.freezer(),
            on_death: OnDeath::Leave,
            id: "c1",
            criu: None,
            dump: None,
        },
    )
    .unwrap();
    let pid = g.handle().pid();
    f.kill_ferry();
    eventually("the guard exits", || !alive(pid));
    assert_eq!(f.state(), "FROZEN\n");
}
