//! The systemd cgroup driver (`--systemd-cgroup`): the container's cgroup
//! is a transient scope systemd makes, with the limits as unit properties
//! and in the cgroupfs; delete stops it; restore makes it before CRIU
//! restores into it; podman's `--cgroup-manager systemd` drives it. The
//! tests that need systemd as PID 1 are ignored by a plain `cargo test`
//! (no host of the suite runs one) and run by the guest's `systemd` group,
//! which boots one and passes `--include-ignored`; the refusals run
//! everywhere.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BUS: &str = "/run/dbus/system_bus_socket";

/// Whether systemd answers on the system bus here; prints why not.
fn systemd_running() -> bool {
    if !is_root() {
        return false;
    }
    let up = Path::new(BUS).exists()
        && Command::new("systemctl")
            .args(["show", "-p", "Version", "--value"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !up {
        skip("no systemd on the system bus here (scripts/test-guest.sh systemd boots a guest with one)");
    }
    up
}

/// `systemctl show` of `unit`: property → value.
fn show(unit: &str, props: &[&str]) -> std::collections::HashMap<String, String> {
    let out = Command::new("systemctl")
        .args(["show", "-p", &props.join(","), unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The unit is gone: unknown to systemd, or inactive and collected.
fn assert_unit_gone(unit: &str) {
    let gone = wait_until(Duration::from_secs(5), || {
        let p = show(unit, &["LoadState", "ActiveState"]);
        p.get("LoadState").map(String::as_str) == Some("not-found")
            || p.get("ActiveState").map(String::as_str) == Some("inactive")
    });
    assert!(
        gone,
        "unit {unit} still there: {:?}",
        show(unit, &["LoadState", "ActiveState"])
    );
}

fn scope_dir(slice_dir: &str, unit: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(slice_dir).join(unit)
}

#[test]
fn without_a_system_bus_the_flag_fails_in_one_line_and_makes_nothing() {
    if !is_root() {
        return;
    }
    let env = Env::new("sdnobus");
    let id = env.id("c");
    let bundle = env.bundle("b", &["true"], |_| {});
    let mut cmd = env.cmd(&["--systemd-cgroup", "create", "--bundle", s(&bundle), &id]);
    // Where a system bus runs, point ferry at one that does not exist.
    let no_bus = env.work.path().join("no-bus");
    let expect = if Path::new(BUS).exists() {
        cmd.env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", no_bus.display()),
        );
        "cannot connect to the system bus"
    } else {
        cmd.env_remove("DBUS_SYSTEM_BUS_ADDRESS");
        "--systemd-cgroup needs a running systemd (no system bus at /run/dbus/system_bus_socket)"
    };
    let out = capture(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(expect), "{err}");
    assert!(!env.root.path().join(&id).exists(), "state dir made");
    assert!(!scope_dir("system.slice", &format!("ferry-{id}.scope")).exists());
    env.assert_gone(&id);
}

#[test]
fn a_malformed_cgroups_path_is_one_line_naming_the_form() {
    if !is_root() {
        return;
    }
    let env = Env::new("sdpath");
    for (n, path) in ["/ferry/x", "a:b", "system:ferry:x", "system.slice:ferry:"]
        .iter()
        .enumerate()
    {
        let id = env.id(&format!("p{n}"));
        let bundle = env.bundle(&format!("b{n}"), &["true"], |v| {
            v["linux"]["cgroupsPath"] = json!(path);
        });
        let err = env.fail(&["--systemd-cgroup", "create", "--bundle", s(&bundle), &id]);
        assert!(err.contains("slice:prefix:name"), "{path}: {err}");
        assert!(!env.root.path().join(&id).exists());
    }
}

#[test]
#[ignore = "needs systemd as PID 1: run by scripts/test-guest.sh systemd (--include-ignored)"]
fn a_scope_with_the_limits_as_properties_and_in_the_cgroupfs_and_delete_stops_it() {
    if !systemd_running() {
        return;
    }
    let env = Env::new("sdscope");
    let id = env.id("c");
    let unit = format!("ferry-{id}.scope");
    let bundle = env.bundle("b", &["sleep", "600"], |v| {
        v["linux"]["cgroupsPath"] = json!(format!("system.slice:ferry:{id}"));
        v["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
        v["linux"]["resources"]["pids"] = json!({"limit": 42});
        v["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000});
        v["linux"]["resources"]["unified"] =
            json!({"memory.high": "33554432", "cpu.weight": "300"});
    });
    env.ok(&["--systemd-cgroup", "create", "--bundle", s(&bundle), &id]);
    let dir = scope_dir("system.slice", &unit);
    assert_eq!(env.cgroup_dirs(&id), vec![dir.clone()]);
    assert_eq!(
        env.state_file(&id)["cgroup"]["systemd"]["unit"],
        json!(unit)
    );

    let p = show(
        &unit,
        &[
            "ActiveState",
            "Delegate",
            "MemoryMax",
            "MemoryHigh",
            "CPUWeight",
            "TasksMax",
            "CPUQuotaPerSecUSec",
            "ControlGroup",
        ],
    );
    assert_eq!(p["ActiveState"], "active", "{p:?}");
    assert_eq!(p["Delegate"], "yes", "{p:?}");
    assert_eq!(p["MemoryMax"], (64u64 << 20).to_string(), "{p:?}");
    assert_eq!(p["TasksMax"], "42", "{p:?}");
    assert_eq!(p["MemoryHigh"], "33554432", "{p:?}");
    assert_eq!(p["CPUWeight"], "300", "{p:?}");
    assert_eq!(p["CPUQuotaPerSecUSec"], "500ms", "{p:?}");
    assert_eq!(p["ControlGroup"], format!("/system.slice/{unit}"), "{p:?}");
    assert_eq!(
        read_text(&dir.join("memory.max")),
        (64u64 << 20).to_string()
    );
    assert_eq!(read_text(&dir.join("pids.max")), "42");
    assert_eq!(read_text(&dir.join("cpu.max")), "50000 100000");
    // systemd rewrites the cgroup files of what it accounts on a reload:
    // the limits survive because it knows them.
    let files = [
        "memory.max",
        "memory.high",
        "pids.max",
        "cpu.max",
        "cpu.weight",
    ];
    let before: Vec<String> = files.iter().map(|f| read_text(&dir.join(f))).collect();
    assert_eq!(before[1], "33554432");
    assert_eq!(before[4], "300");
    let st = Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .unwrap();
    assert!(st.success());
    let after: Vec<String> = files.iter().map(|f| read_text(&dir.join(f))).collect();
    assert_eq!(
        after, before,
        "limits changed by a daemon-reload ({files:?})"
    );
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert_eq!(read_text(&dir.join("cgroup.procs")), pid.to_string());

    // A second container may not take the same unit: not in the same
    // slice (its directory holds processes), nor in another (unit names
    // are systemd-wide); the first one's unit is left alone.
    for (n, slice) in ["system.slice", "machine.slice"].iter().enumerate() {
        let id2 = env.id(&format!("c2{n}"));
        let bundle2 = env.bundle(&format!("b2{n}"), &["true"], |v| {
            v["linux"]["cgroupsPath"] = json!(format!("{slice}:ferry:{id}"));
        });
        let err = env.fail(&["--systemd-cgroup", "create", "--bundle", s(&bundle2), &id2]);
        let says = if n == 0 {
            "already holds"
        } else {
            "already exists and is active"
        };
        assert!(err.contains(says), "{err}");
        assert!(!env.root.path().join(&id2).exists());
        assert_eq!(show(&unit, &["ActiveState"])["ActiveState"], "active");
        assert_eq!(read_text(&dir.join("cgroup.procs")), pid.to_string());
    }

    // update sets the unit property and the cgroupfs file; later commands
    // need no flag (the driver is recorded).
    env.ok(&["start", &id]);
    env.ok(&["update", "--memory", "134217728", "--pids-limit", "50", &id]);
    let p = show(&unit, &["MemoryMax", "TasksMax"]);
    assert_eq!(p["MemoryMax"], "134217728", "{p:?}");
    assert_eq!(p["TasksMax"], "50", "{p:?}");
    assert_eq!(read_text(&dir.join("memory.max")), "134217728");

    env.ok(&["delete", "--force", &id]);
    assert_unit_gone(&unit);
    assert!(!dir.exists(), "{} left behind", dir.display());
    env.assert_gone(&id);
}

#[test]
#[ignore = "needs systemd as PID 1: run by scripts/test-guest.sh systemd (--include-ignored)"]
fn restore_makes_the_scope_and_the_counter_continues() {
    if !systemd_running() {
        return;
    }
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("sdcr");
    let id = env.id("c");
    let unit = format!("ferry-{id}.scope");
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.counter_bundle("b", &data);
    let count = data.join("count");
    env.ok(&["--systemd-cgroup", "run", "-d", "--bundle", s(&bundle), &id]);
    wait_counting(&count);
    let dir = scope_dir("system.slice", &unit);
    assert!(dir.is_dir());

    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    assert_unit_gone(&unit);
    let at_dump = read_num(&count).unwrap();

    let mut args = vec!["--systemd-cgroup"];
    args.extend(restore_args(&bundle, &images, &[], &id));
    env.ok(&args);
    assert_eq!(show(&unit, &["ActiveState"])["ActiveState"], "active");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let procs = read_text(&dir.join("cgroup.procs"));
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "restored init {pid} not in {}: {procs}",
        dir.display()
    );
    assert_continues(&count, at_dump);
    env.ok(&["delete", "--force", &id]);
    assert_unit_gone(&unit);
    env.assert_gone(&id);
}

/// podman with the systemd cgroup manager and ferry as its runtime.
fn podman(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["120", "podman", "--runtime"])
        .arg(ferry_bin())
        .args(["--cgroup-manager", "systemd"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn podman_counts(name: &str) -> Vec<u64> {
    String::from_utf8_lossy(&podman(&["logs", name]).stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes the container and the image, also when the test fails.
struct PodmanCleanup {
    name: String,
    image: String,
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

#[test]
#[ignore = "needs systemd as PID 1: run by scripts/test-guest.sh systemd (--include-ignored)"]
fn podman_with_the_systemd_cgroup_manager_checkpoints_and_restores_a_counter() {
    if !systemd_running() {
        return;
    }
    if !Command::new("sh")
        .args(["-c", "command -v podman && command -v conmon"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        skip("podman or conmon is not installed (scripts/install-deps.sh installs them)");
        return;
    }
    let Some(_g) = criu_lock() else { return };
    let tag = std::process::id();
    let c = PodmanCleanup {
        name: format!("ferry-sd{tag}"),
        image: format!("localhost/ferry-sd{tag}"),
    };
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | podman import -q - {}",
            rootfs_template().display(),
            c.image
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "podman import failed");
    podman_ok(&[
        "run",
        "-d",
        "--name",
        &c.name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        "none",
        &c.image,
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done",
    ]);
    let id = podman_ok(&["inspect", "--format", "{{.Id}}", &c.name]);
    let unit = format!("libpod-{id}.scope");
    assert!(wait_until(Duration::from_secs(10), || podman_counts(
        &c.name
    )
    .len()
        > 3));

    // ferry made podman's scope through systemd.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ferry::container::DEFAULT_ROOT)
                .join(&id)
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["cgroup"]["systemd"]["unit"],
        json!(unit),
        "{}",
        state["cgroup"]
    );
    let p = show(&unit, &["ActiveState", "ControlGroup"]);
    assert_eq!(p["ActiveState"], "active", "{p:?}");
    let dir = Path::new("/sys/fs/cgroup").join(p["ControlGroup"].trim_start_matches('/'));
    let pid = state["pid"].as_i64().unwrap();
    assert!(read_text(&dir.join("cgroup.procs"))
        .lines()
        .any(|l| l == pid.to_string()));

    podman_ok(&["container", "checkpoint", &c.name]);
    assert_unit_gone(&unit);
    let at_dump = *podman_counts(&c.name).last().unwrap();
    podman_ok(&["container", "restore", &c.name]);
    assert_eq!(show(&unit, &["ActiveState"])["ActiveState"], "active");
    assert!(
        wait_until(Duration::from_secs(10), || podman_counts(&c.name)
            .last()
            .is_some_and(|n| *n > at_dump + 3)),
        "counter did not continue after restore"
    );
    let all = podman_counts(&c.name);
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "counter restarted or skipped: {all:?}"
    );
    podman_ok(&["rm", "-f", "-t", "0", &c.name]);
    assert_unit_gone(&unit);
}
