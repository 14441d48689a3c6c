//! Faults: ferry killed with SIGKILL at many points of create, start, run
//! and restore, CRIU aborted under a checkpoint, and cgroups that cannot
//! take a container. After each, the container is either there (running
//! or created) or cleanly gone, and `ferry delete --force` leaves nothing:
//! no process, no mount below the state root, no cgroup directory in any
//! hierarchy, no veth, no CRIU network-lock table, no state directory, and
//! the bundle's rootfs exactly as it was (see `common::invariants`).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::invariants::{assert_nothing_left, criu_tables, mounts_below, TreeSnapshot};
use common::{checkpoint_args, edit_config, is_root, restore_args, s, Env, NetNs};
use serde_json::json;

/// From before ferry has done anything to past the end of the operation.
const DELAYS_MS: [u64; 11] = [0, 5, 10, 20, 40, 60, 90, 120, 180, 250, 400];
const VETH: &str = "fyfault0";

/// Starts a ferry command without waiting for it.
fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` (a ferry this test started) after `ms`, unless it has
/// finished by then. Returns whether it was killed.
fn kill_after(mut child: Child, ms: u64) -> bool {
    std::thread::sleep(Duration::from_millis(ms));
    let killed = matches!(child.try_wait(), Ok(None));
    if killed {
        let _ = child.kill();
    }
    let _ = child.wait();
    killed
}

/// The container's status, or None when ferry does not know it.
fn status_of(env: &Env, id: &str) -> Option<String> {
    let out = env.run(&["state", id]);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        return Some(v["status"].as_str().unwrap().to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("does not exist") {
        None
    } else if err.contains("is creating") {
        Some("creating".into())
    } else {
        panic!("ferry state {id}: {err}");
    }
}

/// A sleeping container with its own network namespace and a veth to the
/// namespace ferry runs in.
fn veth_bundle(env: &Env, name: &str) -> PathBuf {
    env.bundle(name, &["sleep", "3600"], |v| {
        v["annotations"] = json!({
            "org.ferry.net.veth": format!(
                "host={VETH},container=eth0,address=10.123.0.2/30,host-address=10.123.0.1/30"
            )
        });
    })
}

/// One killed command, then the checks: present in an allowed state or
/// gone, and nothing left after `delete --force`.
fn check_after_kill(
    env: &Env,
    ns: &NetNs,
    id: &str,
    allowed: &[&str],
    rootfs: &Path,
    before: &TreeSnapshot,
    context: &str,
) -> Option<String> {
    let status = status_of(env, id);
    if let Some(st) = &status {
        assert!(allowed.contains(&st.as_str()), "{context}: status {st}");
    }
    let started = Instant::now();
    env.ok(&["delete", "--force", id]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{context}: delete --force took {:?}",
        started.elapsed()
    );
    assert_nothing_left(env, id, Some((ns, Some(VETH))), context);
    before.assert_same(&TreeSnapshot::take(rootfs), context);
    status
}

/// Runs the bundle once so every mount point the runtime makes exists,
/// then records its rootfs.
/// A test's world: its own network namespace (every ferry command runs
/// there) and the veth bundle `b`. Bind as `let (ns, env, bundle)`: the Env
/// (and its containers) goes before the namespace.
fn veth_world(tag: &str) -> (NetNs, Env, PathBuf) {
    let ns = NetNs::new(tag);
    let env = Env::new(tag);
    env.set_netns(&ns.name);
    let bundle = veth_bundle(&env, "b");
    (ns, env, bundle)
}

fn warm_up(env: &Env, bundle: &Path) -> TreeSnapshot {
    let id = env.id("warm");
    env.run_detached(bundle, &id);
    env.ok(&["delete", "--force", &id]);
    TreeSnapshot::take(&bundle.join("rootfs"))
}

#[test]
fn killed_create_run_and_start_leave_nothing_after_delete_force() {
    if !is_root() {
        return;
    }
    let (ns, env, bundle) = veth_world("fcreate");
    let rootfs = bundle.join("rootfs");
    let before = warm_up(&env, &bundle);
    let mut killed = 0;
    for ms in DELAYS_MS {
        for op in ["create", "run"] {
            let id = env.id(&format!("{op}{ms}"));
            let args: Vec<&str> = match op {
                "create" => vec!["create", "--bundle", s(&bundle), &id],
                _ => vec!["run", "-d", "--bundle", s(&bundle), &id],
            };
            killed += kill_after(spawn(&env, &args), ms) as usize;
            let allowed: &[&str] = if op == "create" {
                &["creating", "created"]
            } else {
                &["creating", "created", "running"]
            };
            let ctx = format!("{op} killed after {ms} ms");
            check_after_kill(&env, &ns, &id, allowed, &rootfs, &before, &ctx);
        }
    }
    for ms in [0, 1, 2, 5, 10, 20] {
        let id = env.id(&format!("start{ms}"));
        env.ok(&["create", "--bundle", s(&bundle), &id]);
        killed += kill_after(spawn(&env, &["start", &id]), ms) as usize;
        let ctx = format!("start killed after {ms} ms");
        check_after_kill(
            &env,
            &ns,
            &id,
            &["created", "running"],
            &rootfs,
            &before,
            &ctx,
        );
    }
    // A delete --force killed half-way is finished by the next one.
    for ms in [0, 2, 5, 10, 20, 40] {
        let id = env.id(&format!("del{ms}"));
        env.run_detached(&bundle, &id);
        killed += kill_after(spawn(&env, &["delete", "--force", &id]), ms) as usize;
        let ctx = format!("delete --force killed after {ms} ms");
        check_after_kill(
            &env,
            &ns,
            &id,
            // "creating": killed while removing the state dir itself.
            &["running", "stopped", "creating"],
            &rootfs,
            &before,
            &ctx,
        );
    }
    // Some kills must have landed mid-way, or this tested nothing.
    assert!(
        killed >= 6,
        "only {killed} commands were killed before they finished"
    );
}

#[test]
fn killed_restore_never_touches_the_bundle_and_delete_force_removes_everything() {
    if !is_root() {
        return;
    }
    let (ns, env, bundle) = veth_world("frestore");
    let rootfs = bundle.join("rootfs");
    let before = warm_up(&env, &bundle);
    let src = env.id("src");
    env.run_detached(&bundle, &src);
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &src));
    let mut killed = 0;
    let mut cut_short = 0;
    for ms in DELAYS_MS {
        let id = env.id(&format!("r{ms}"));
        let args = restore_args(&bundle, &images, &[], &id);
        killed += kill_after(spawn(&env, &args), ms) as usize;
        let ctx = format!("restore killed after {ms} ms");
        let st = check_after_kill(
            &env,
            &ns,
            &id,
            &["creating", "running"],
            &rootfs,
            &before,
            &ctx,
        );
        cut_short += (st.as_deref() == Some("creating")) as usize;
        // CRIU's cgroup yard, a tmpfs it mounts in its work directory (the
        // images here), goes with delete -f too.
        let left = mounts_below(&images);
        assert!(
            left.is_empty(),
            "{ctx}: mounts left in the images: {left:?}"
        );
    }
    assert!(
        killed >= 5,
        "only {killed} restores were killed before they finished"
    );
    // Some were killed with the rootfs bind-mounted into the state dir.
    assert!(cut_short >= 2, "only {cut_short} restores were cut short");
    // The images and the bundle still make a working container.
    let id = env.id("final");
    env.ok(&restore_args(&bundle, &images, &[], &id));
    assert_eq!(env.status(&id), "running");
    env.ok(&["delete", "--force", &id]);
    assert_nothing_left(&env, &id, Some((&ns, Some(VETH))), "final restore");
    before.assert_same(&TreeSnapshot::take(&rootfs), "final restore");
}

#[test]
fn aborted_checkpoints_leave_no_criu_lock_table() {
    if !is_root() {
        return;
    }
    // Sharing ferry's network namespace (one the test made), CRIU puts its
    // connection-lock table there.
    let ns = NetNs::new("fckpt");
    let env = Env::new("fckpt");
    env.set_netns(&ns.name);
    let bundle = env.bundle("b", &["sleep", "3600"], |v| {
        let nss = v["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
    });
    let rootfs = bundle.join("rootfs");
    let before = warm_up(&env, &bundle);
    let mut aborted = 0;
    // From before the freeze (which a quiet machine reaches within 20 ms)
    // to well into CRIU's dump.
    for (i, ms) in [5u64, 10, 20, 50, 80, 110, 150, 200, 260]
        .into_iter()
        .enumerate()
    {
        for concurrent in ["kill", "delete"] {
            let id = env.id(&format!("{concurrent}{ms}"));
            env.run_detached(&bundle, &id);
            let images = env.work.path().join(format!("img-{concurrent}-{i}"));
            let mut ckpt = env
                .cmd(&checkpoint_args(&images, &[], &id))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            match concurrent {
                "kill" => {
                    let _ = env.run(&["kill", &id, "KILL"]);
                }
                _ => {
                    env.ok(&["delete", "--force", &id]);
                }
            }
            let ok = ckpt.wait().unwrap().success();
            aborted += !ok as usize;
            let ctx = format!("checkpoint with a concurrent {concurrent} after {ms} ms");
            let tables = criu_tables(&ns);
            assert!(tables.is_empty(), "{ctx}: CRIU tables left: {tables:?}");
            env.ok(&["delete", "--force", &id]);
            assert_nothing_left(&env, &id, Some((&ns, None)), &ctx);
            before.assert_same(&TreeSnapshot::take(&rootfs), &ctx);
        }
    }
    assert!(aborted >= 2, "only {aborted} checkpoints were aborted");
    // A checkpoint that succeeds leaves no table either (no TCP to hold).
    let id = env.id("clean");
    env.run_detached(&bundle, &id);
    env.ok(&checkpoint_args(
        &env.work.path().join("img-clean"),
        &[],
        &id,
    ));
    assert_eq!(criu_tables(&ns), Vec::<String>::new());
    assert_nothing_left(&env, &id, Some((&ns, None)), "successful checkpoint");
}

/// A cgroup this test makes directly below a hierarchy's root, removed
/// (thawed first) when dropped.
struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    fn unified() -> bool {
        nix::sys::statfs::statfs("/sys/fs/cgroup")
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false)
    }

    /// `/sys/fs/cgroup/<controller>/<name>` (v1) or `/sys/fs/cgroup/<name>` (v2).
    fn new(controller: &str, name: &str) -> TestCgroup {
        let base = if Self::unified() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(controller)
        };
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        TestCgroup { dirs: vec![dir] }
    }

    fn dir(&self) -> &Path {
        &self.dirs[0]
    }

    fn freeze(&self) {
        let (file, value, want) = if Self::unified() {
            ("cgroup.freeze", "1", "frozen 1")
        } else {
            ("freezer.state", "FROZEN", "FROZEN")
        };
        std::fs::write(self.dir().join(file), value).unwrap();
        let check = if Self::unified() {
            "cgroup.events"
        } else {
            file
        };
        assert!(common::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(self.dir().join(check))
                .unwrap_or_default()
                .contains(want)
        }));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The directories absolute cgroup path `/name` has in every hierarchy.
fn absolute_dirs(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        out.push(e.path().join(name));
    }
    out.push(Path::new("/sys/fs/cgroup").join(name));
    out
}

#[test]
fn frozen_cgroup_path_is_refused_at_once() {
    if !is_root() {
        return;
    }
    let env = Env::new("ffrozen");
    let name = format!("ferry-t{}-frozen", std::process::id());
    let cg = TestCgroup::new("freezer", &name);
    cg.freeze();
    for (what, path) in [
        ("the cgroup itself", format!("/{name}")),
        ("a child of it", format!("/{name}/c")),
    ] {
        let bundle = env.bundle(&format!("b{}", path.len()), &["sleep", "3600"], |v| {
            v["linux"]["cgroupsPath"] = json!(path);
        });
        let id = env.id(&format!("f{}", path.len()));
        let started = Instant::now();
        let err = env.fail(&["run", "-d", "--bundle", s(&bundle), &id]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(
            err.contains("is frozen") && err.contains("thaw it"),
            "{what}: {err}"
        );
        assert!(
            !env.root.path().join(&id).exists(),
            "{what}: state dir made"
        );
        // Nothing was created in any hierarchy.
        if path.ends_with("/c") {
            for d in absolute_dirs(&format!("{name}/c")) {
                assert!(!d.exists(), "{what}: {} created", d.display());
            }
        }
        assert_nothing_left(&env, &id, None, what);
    }
    // The frozen cgroup is untouched.
    let state = std::fs::read_to_string(cg.dir().join(if TestCgroup::unified() {
        "cgroup.events"
    } else {
        "freezer.state"
    }))
    .unwrap();
    assert!(
        state.contains("FROZEN") || state.contains("frozen 1"),
        "{state}"
    );
}

#[test]
fn populated_cgroup_path_is_refused_and_its_processes_live_on() {
    if !is_root() {
        return;
    }
    let env = Env::new("fpop");
    let name = format!("ferry-t{}-populated", std::process::id());
    let cg = TestCgroup::new("pids", &name);
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(cg.dir().join("cgroup.procs"), other.id().to_string()).unwrap();
    let bundle = env.bundle("b", &["sleep", "3600"], |v| {
        v["linux"]["cgroupsPath"] = json!(format!("/{name}"));
    });
    let id = env.id("p");
    let started = Instant::now();
    let err = env.fail(&["run", "-d", "--bundle", s(&bundle), &id]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("already holds 1 process(es)") && err.contains(&other.id().to_string()),
        "{err}"
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was killed"
    );
    assert!(!env.root.path().join(&id).exists());
    // No hierarchy got a directory for it besides the one the test made.
    for d in absolute_dirs(&name) {
        assert!(d == cg.dir() || !d.exists(), "{} created", d.display());
    }
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn delete_force_unmounts_what_is_below_the_state_dir_and_keeps_its_files() {
    if !is_root() {
        return;
    }
    let env = Env::new("fmount");
    let bundle = env.bundle("b", &["sleep", "3600"], |_| {});
    let id = env.id("m");
    env.run_detached(&bundle, &id);
    // Something mounted into the state dir, as a killed restore leaves
    // its rootfs bind: the same filesystem, so only the mount id tells.
    let data = env.work.path().join("precious");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), b"keep").unwrap();
    let before = TreeSnapshot::take(&data);
    let target = env.root.path().join(&id).join("criu-root");
    std::fs::create_dir(&target).unwrap();
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&data)
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["delete", "--force", &id]);
    assert_nothing_left(&env, &id, None, "delete with a mount below the state dir");
    before.assert_same(&TreeSnapshot::take(&data), "bind-mounted data");
}

/// The children of `pid` (a process this test started).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether CRIU's network lock (either method) is in place in the network
/// namespace of `pid`.
fn criu_lock_in(pid: i32) -> bool {
    let ns = format!("--net=/proc/{pid}/ns/net");
    let nft = std::process::Command::new("nsenter")
        .args([ns.as_str(), "nft", "list", "tables"])
        .output()
        .unwrap();
    let ipt = std::process::Command::new("nsenter")
        .args([ns.as_str(), "iptables", "-w", "-n", "-L", "CRIU"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    String::from_utf8_lossy(&nft.stdout).contains("CRIU-") || ipt.success()
}

#[test]
fn criu_killed_while_it_holds_the_network_leaves_a_container_that_still_talks() {
    if !is_root() {
        return;
    }
    let (ns, env, bundle) = veth_world("fcriu");
    // A writable /proc/sys makes CRIU, not ferry, keep the namespace, and
    // lock it while it dumps (ferry's own namespaces need no lock of CRIU's).
    edit_config(&bundle, |v| {
        v["linux"]["readonlyPaths"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p != "/proc/sys")
    });
    let mut exercised = [0; 2];
    for attempt in 0..6 {
        let method = ["nftables", "iptables"][attempt % 2];
        if exercised[attempt % 2] > 0 {
            continue;
        }
        let id = env.id(&format!("{method}{attempt}"));
        env.run_detached(&bundle, &id);
        let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
        let ping = || {
            ns.exec(&["ping", "-c", "1", "-W", "1", "10.123.0.2"])
                .status
                .success()
        };
        assert!(ping(), "{method}: no answer before the checkpoint");
        let images = env.work.path().join(format!("img-{method}"));
        let mut ckpt = spawn(
            &env,
            &checkpoint_args(&images, &["--leave-running", "--network-lock", method], &id),
        );
        // Kill CRIU (the child of the ferry this test started) while its
        // lock is in place, so it cannot remove it.
        let mut killed = false;
        let end = Instant::now() + Duration::from_secs(10);
        while !killed && Instant::now() < end && matches!(ckpt.try_wait(), Ok(None)) {
            if criu_lock_in(pid) {
                for c in children_of(ckpt.id()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(c as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed = true;
                }
            }
        }
        let failed = !ckpt.wait().unwrap().success();
        if !killed {
            eprintln!("{method}: the dump finished before CRIU could be killed under its lock");
            env.ok(&["delete", "--force", &id]);
            continue;
        }
        assert!(failed, "{method}: the checkpoint succeeded without CRIU");
        if env.status(&id) != "running" {
            // CRIU died with its parasite code in a task: the tree dies
            // too, and the lock with its namespace.
            eprintln!("{method}: the container died with CRIU");
            env.ok(&["delete", "--force", &id]);
            assert_nothing_left(&env, &id, Some((&ns, Some(VETH))), method);
            continue;
        }
        assert!(
            !criu_lock_in(pid),
            "{method}: CRIU's lock left in the container"
        );
        assert!(
            ping(),
            "{method}: the container does not answer after the failed dump"
        );
        env.ok(&["delete", "--force", &id]);
        assert_nothing_left(&env, &id, Some((&ns, Some(VETH))), method);
        exercised[attempt % 2] += 1;
    }
    assert!(
        exercised.iter().sum::<usize>() >= 1,
        "CRIU was never killed under its lock with the container surviving"
    );
}

#[test]
fn killed_restore_from_an_archive_leaves_no_imported_bundle_after_delete_force() {
    if !is_root() {
        return;
    }
    let (ns, env, bundle) = veth_world("fimport");
    let rootfs = bundle.join("rootfs");
    let before = warm_up(&env, &bundle);
    let src = env.id("src");
    env.run_detached(&bundle, &src);
    let archive = env.work.path().join("c.tar.zst");
    env.ok(&["checkpoint", "--export", s(&archive), &src]);
    let imports = env.root.path().join("@imports");
    let mut killed = 0;
    for ms in [5, 20, 60, 120, 200, 300, 450] {
        let id = env.id(&format!("i{ms}"));
        killed += kill_after(
            spawn(&env, &["restore", "-d", "--import", s(&archive), &id]),
            ms,
        ) as usize;
        let ctx = format!("restore --import killed after {ms} ms");
        if let Some(st) = status_of(&env, &id) {
            assert!(
                ["creating", "running"].contains(&st.as_str()),
                "{ctx}: {st}"
            );
        }
        env.ok(&["delete", "--force", &id]);
        assert_nothing_left(&env, &id, Some((&ns, Some(VETH))), &ctx);
        assert!(!imports.join(&id).exists(), "{ctx}: imported bundle left");
        before.assert_same(&TreeSnapshot::take(&rootfs), &ctx);
    }
    assert!(
        killed >= 3,
        "only {killed} imports were killed before they finished"
    );
}

#[test]
fn resume_after_a_leave_stopped_checkpoint_releases_criu_network_lock() {
    if !is_root() {
        return;
    }
    let (ns, env, bundle) = veth_world("fstopped");
    let id = env.id("c");
    env.run_detached(&bundle, &id);
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &["--leave-stopped"], &id));
    assert_eq!(env.status(&id), "paused");
    // CRIU leaves its lock while the tree is stopped...
    assert!(criu_lock_in(pid), "no CRIU lock after --leave-stopped");
    env.ok(&["resume", &id]);
    // ...and it goes when the container runs again.
    assert!(!criu_lock_in(pid), "CRIU's lock left after resume");
    let ping = ns.exec(&["ping", "-c", "1", "-W", "2", "10.123.0.2"]);
    assert!(ping.status.success(), "no answer after resume");
    env.ok(&["delete", "--force", &id]);
    assert_nothing_left(&env, &id, Some((&ns, Some(VETH))), "leave-stopped");
}
