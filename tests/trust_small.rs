//! Exact IDs, sysctl rules, clear errors and import bounds, with real
//! containers (as root).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::*;
use serde_json::{json, Value};

/// CRIU takes host-wide locks: the tests that run it go one at a time.
static CRIU: Mutex<()> = Mutex::new(());

fn criu_serial() -> MutexGuard<'static, ()> {
    CRIU.lock().unwrap_or_else(|e| e.into_inner())
}

fn sleeper(env: &Env, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    env.bundle(name, &["sleep", "1000"], edit)
}

/// `ferry create` of `bundle` must fail with one line containing every
/// `needle`, leaving nothing of `id` behind.
fn refused(env: &Env, bundle: &Path, id: &str, needles: &[&str]) -> String {
    let err = env.fail(&["create", "--bundle", s(bundle), id]);
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    env.assert_gone(id);
    err
}

#[test]
fn a_gone_container_id_never_reaches_one_that_starts_with_it() {
    if !is_root() {
        return;
    }
    let _g = criu_serial();
    let env = Env::new("exact");
    let web = env.id("web");
    let web2 = env.id("web-2");
    let bundle = sleeper(&env, "b", |_| {});
    env.ok(&["run", "-d", "--bundle", s(&bundle), &web]);
    env.ok(&["run", "-d", "--bundle", s(&bundle), &web2]);
    let pid2 = env.state(&web2)["pid"].as_i64().unwrap();

    // podman's sequence: checkpoint (the container is gone), then delete -f.
    let images = env.work.path().join("img");
    env.ok(&["checkpoint", "--image-path", s(&images), &web]);
    assert!(!env.root.path().join(&web).exists());
    env.ok(&["delete", "-f", &web]);

    let res = env.work.path().join("res.json");
    std::fs::write(&res, r#"{"pids": {"limit": 50}}"#).unwrap();
    let destructive: Vec<Vec<&str>> = vec![
        vec!["kill", &web, "KILL"],
        vec!["kill", "--all", &web, "KILL"],
        vec!["delete", &web],
        vec!["pause", &web],
        vec!["resume", &web],
        vec!["start", &web],
        vec!["exec", &web, "true"],
        vec!["update", "--pids-limit", "10", &web],
        vec!["update", "-r", s(&res), &web],
        vec![
            "checkpoint",
            "--leave-running",
            "--image-path",
            s(&images),
            &web,
        ],
    ];
    for args in &destructive {
        let err = env.fail(args);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(err.contains(&web2), "the hint names {web2}: {err}");
    }
    // Read-only commands take exact IDs too.
    for args in [
        vec!["state", &web],
        vec!["ps", &web],
        vec!["events", "--stats", &web],
    ] {
        let err = env.fail(&args);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }
    // A prefix of a live container is no ID either.
    let prefix = &web2[..web2.len() - 2];
    assert_eq!(prefix, web);
    let short = &web2[..web2.len() - 4];
    env.fail(&["state", short]);
    env.ok(&["delete", "-f", short]);

    // web-2 was not touched by any of it.
    let st = env.state(&web2);
    assert_eq!(st["status"], "running");
    assert_eq!(st["pid"].as_i64().unwrap(), pid2);
    assert!(env.state_file(&web2)["config"]["linux"]["resources"]["pids"].is_null());
    env.ok(&["delete", "-f", &web2]);
    env.assert_gone(&web2);
}

#[test]
fn ids_longer_than_a_file_name_are_refused_with_the_limit() {
    if !is_root() {
        return;
    }
    let env = Env::new("longid");
    let bundle = sleeper(&env, "b", |_| {});
    let base = env.id("");
    for len in [256, 1024] {
        let id = format!("{base}{}", "x".repeat(len - base.len()));
        let err = env.fail(&["create", "--bundle", s(&bundle), &id]);
        assert!(
            err.contains(&format!("{len} characters long, the limit is 255")),
            "{err}"
        );
        assert!(!err.contains("os error"), "{err}");
        let err = env.fail(&["delete", "-f", &id]);
        assert!(err.contains("limit is 255"), "{err}");
    }
    assert_eq!(std::fs::read_dir(env.root.path()).unwrap().count(), 0);
    // 255 is fine (state directory and cgroup named after it).
    let id = env.id(&"y".repeat(255 - base.len()));
    assert_eq!(id.len(), 255);
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    assert_eq!(env.status(&id), "running");
    env.ok(&["delete", "-f", &id]);
    env.assert_gone(&id);
}

/// The container's view of a sysctl (read by exec).
fn sysctl_inside(env: &Env, id: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    env.ok(&["exec", id, "cat", &path]).trim().to_string()
}

fn host_sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
        .unwrap()
        .trim()
        .to_string()
}

fn without_ns(v: &mut Value, typ: &str) {
    v["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != typ);
}

#[test]
fn sysctls_of_each_namespace_apply_inside_only() {
    if !is_root() {
        return;
    }
    let env = Env::new("sysctl");
    let fwd = host_sysctl("net.ipv4.ip_forward");
    let other_fwd = if fwd == "1" { "0" } else { "1" };
    let shmmax = host_sysctl("kernel.shmmax");
    let mut keys = vec![
        ("net.ipv4.ip_forward", other_fwd.to_string()),
        ("kernel.shmmax", "123456789".to_string()),
        ("kernel.domainname", "ferry.test".to_string()),
    ];
    let mqueue = Path::new("/proc/sys/fs/mqueue/msg_max").exists();
    if mqueue {
        keys.push(("fs.mqueue.msg_max", "17".to_string()));
    }
    let host_before: Vec<String> = keys.iter().map(|(k, _)| host_sysctl(k)).collect();
    let sysctl: serde_json::Map<String, Value> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let bundle = sleeper(&env, "ok", |v| v["linux"]["sysctl"] = Value::Object(sysctl));
    let id = env.id("ok");
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    for (k, v) in &keys {
        assert_eq!(&sysctl_inside(&env, &id, k), v, "{k} inside");
    }
    for ((k, _), before) in keys.iter().zip(&host_before) {
        assert_eq!(&host_sysctl(k), before, "{k} changed on the host");
    }
    assert_eq!(host_sysctl("kernel.shmmax"), shmmax);
    env.ok(&["delete", "-f", &id]);

    // Each key without its namespace is refused, naming key and namespace.
    for (key, typ, name) in [
        ("net.ipv4.ip_forward", "network", "network namespace"),
        ("kernel.shmmax", "ipc", "IPC namespace"),
        ("fs.mqueue.msg_max", "ipc", "IPC namespace"),
        ("kernel.domainname", "uts", "UTS namespace"),
    ] {
        let b = sleeper(&env, &format!("no-{typ}-{key}"), |v| {
            without_ns(v, typ);
            v["linux"]["sysctl"] = json!({ key: "1" });
        });
        refused(
            &env,
            &b,
            &env.id(&format!("no-{typ}")),
            &[key, name, "linux.sysctl"],
        );
    }
    // Joining the host's own network namespace is no namespace of its own.
    let b = sleeper(&env, "hostnet", |v| {
        without_ns(v, "network");
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "network", "path": "/proc/self/ns/net"}));
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": other_fwd});
    });
    refused(&env, &b, &env.id("hostnet"), &["host's own"]);
    assert_eq!(host_sysctl("net.ipv4.ip_forward"), fwd);
}

#[test]
fn host_wide_and_malformed_sysctl_keys_are_refused() {
    if !is_root() {
        return;
    }
    let env = Env::new("sysbad");
    let swappiness = host_sysctl("vm.swappiness");
    for (i, key) in [
        "vm.drop_caches",
        "vm.swappiness",
        "kernel.printk_ratelimit",
        "/etc/passwd",
        "../../../etc/passwd",
        "net/ipv4/ip_forward",
        "net.ipv4..ip_forward",
        "net.ipv4.ip_forward.",
    ]
    .iter()
    .enumerate()
    {
        let b = sleeper(&env, &format!("k{i}"), |v| {
            v["linux"]["sysctl"] = json!({ *key: "1" })
        });
        let err = refused(&env, &b, &env.id(&format!("k{i}")), &["linux.sysctl"]);
        assert!(err.contains(key), "{err}");
    }
    assert_eq!(host_sysctl("vm.swappiness"), swappiness);
}

#[test]
fn a_memory_limit_too_small_to_start_is_named() {
    if !is_root() {
        return;
    }
    let env = Env::new("tinymem");
    for limit in [1, 65536] {
        let b = sleeper(&env, &format!("m{limit}"), |v| {
            v["linux"]["resources"]["memory"] = json!({ "limit": limit })
        });
        let id = env.id(&format!("m{limit}"));
        let err = env.fail(&["run", "-d", "--bundle", s(&b), &id]);
        assert!(
            err.contains(&format!(
                "linux.resources.memory.limit {limit} is too small"
            )),
            "{err}"
        );
        assert!(err.contains("oom_kill"), "{err}");
        env.assert_gone(&id);
    }
    // update below what the container uses says so too.
    let b = sleeper(&env, "ok", |v| {
        v["linux"]["resources"]["memory"] = json!({ "limit": 16 << 20 })
    });
    let id = env.id("ok");
    env.ok(&["run", "-d", "--bundle", s(&b), &id]);
    let err = env.fail(&["update", "--memory", "4096", &id]);
    assert!(err.contains("memory limit 4096 is too small"), "{err}");
    assert_eq!(env.status(&id), "running");
}

#[test]
fn exec_process_json_takes_the_flags_on_top() {
    if !is_root() {
        return;
    }
    let env = Env::new("execp");
    let b = sleeper(&env, "b", |_| {});
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", s(&b), &id]);
    let p = env.work.path().join("process.json");
    std::fs::write(
        &p,
        json!({
            "args": ["sh", "-c", "pwd; echo $FOO; id -u"],
            "cwd": "/",
            "env": ["PATH=/bin:/usr/bin", "FOO=json"],
            "user": {"uid": 0, "gid": 0}
        })
        .to_string(),
    )
    .unwrap();
    let out = env.ok(&["exec", "-p", s(&p), &id]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["/", "json", "0"]);
    let out = env.ok(&[
        "exec",
        "-p",
        s(&p),
        "--cwd",
        "/tmp",
        "-e",
        "FOO=flag",
        "-u",
        "65534",
        &id,
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["/tmp", "flag", "65534"]);
    let err = env.fail(&["exec", "-p", s(&p), &id, "true"]);
    assert!(err.contains("not both"), "{err}");
    let err = env.fail(&["exec", "-p", s(&p), "--cwd", "tmp", &id]);
    assert!(err.contains("absolute"), "{err}");
}

#[test]
fn nul_bytes_in_arguments_are_refused_by_name() {
    if !is_root() {
        return;
    }
    let env = Env::new("nul");
    let b = env.bundle("b", &["sh", "-c", "echo a\u{0}b"], |_| {});
    let err = refused(&env, &b, &env.id("c"), &["process.args[2]", "NUL"]);
    assert!(err.contains("config.json"), "{err}");
    let b = env.bundle("e", &["sleep", "1000"], |v| {
        v["process"]["env"] = json!(["PATH=/bin", "X=a\u{0}b"])
    });
    refused(&env, &b, &env.id("e"), &["process.env[1]", "NUL"]);

    let b = sleeper(&env, "ok", |_| {});
    let id = env.id("ok");
    env.ok(&["run", "-d", "--bundle", s(&b), &id]);
    let p = env.work.path().join("process.json");
    std::fs::write(
        &p,
        json!({
            "args": ["touch", "/tmp/ferry-nul\u{0}y"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        })
        .to_string(),
    )
    .unwrap();
    let err = env.fail(&["exec", "-p", s(&p), &id]);
    assert!(
        err.contains("process.args[1]") && err.contains("NUL"),
        "{err}"
    );
    // Nothing ran: no file named after the cut argument.
    let ls = env.ok(&["exec", &id, "ls", "-a", "/tmp"]);
    assert!(!ls.contains("ferry-nul"), "{ls}");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("ferry-tmpfs")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(self.dir.path()).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// `ferry --root ROOT ARGS` (a root other than the Env's), its output
/// captured as [`Env::run`] captures it.
fn ferry_in(root: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(ferry_bin());
    c.arg("--root").arg(root).args(args);
    let out = capture(c);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// Deletes a container under another root when dropped.
struct DeleteIn<'a>(&'a Path, String);

impl Drop for DeleteIn<'_> {
    fn drop(&mut self) {
        ferry_in(self.0, &["delete", "-f", &self.1]);
    }
}

#[test]
fn an_archive_larger_than_the_free_space_is_refused() {
    if !is_root() {
        return;
    }
    let _g = criu_serial();
    let env = Env::new("space");
    let b = sleeper(&env, "b", |_| {});
    // 6 MiB of zeros: the zstd archive stays small, its content does not.
    let big = std::fs::File::create(b.join("rootfs/big")).unwrap();
    big.set_len(6 << 20).unwrap();
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", s(&b), &id]);
    let archive = env.work.path().join("c.tar.zst");
    env.ok(&[
        "checkpoint",
        "--leave-running",
        "--export",
        s(&archive),
        &id,
    ]);
    assert!(std::fs::metadata(&archive).unwrap().len() < 4 << 20);
    env.ok(&["delete", "-f", &id]);

    // 3 MiB: the rootfs tar itself does not fit; 11 MiB: the archive fits
    // but not the rootfs unpacked beside it.
    // The restored ID is as long as IDs get: names derived from it (the
    // import's staging directory) must fit too.
    let rid = format!("t{}-space-", std::process::id());
    let rid = format!("{rid}{}", "r".repeat(255 - rid.len()));
    for size in ["3m", "11m"] {
        let t = Tmpfs::new(size);
        let (ok, _, err) = ferry_in(t.path(), &["restore", "-d", "--import", s(&archive), &rid]);
        assert!(!ok, "{size}: restored");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("not enough space"), "{size}: {err}");
        assert!(err.contains("bytes are free"), "{size}: {err}");
        assert!(t.entries().is_empty(), "{size}: left {:?}", t.entries());
    }
    // With room the same archive restores (the refusal was about space).
    let t = Tmpfs::new("64m");
    let _del = DeleteIn(t.path(), rid.clone());
    let (ok, _, err) = ferry_in(t.path(), &["restore", "-d", "--import", s(&archive), &rid]);
    assert!(ok, "{err}");
    let (ok, state, _) = ferry_in(t.path(), &["state", &rid]);
    assert!(ok && state.contains("\"running\""), "{state}");
    let (ok, _, err) = ferry_in(t.path(), &["delete", "-f", &rid]);
    assert!(ok, "{err}");
}

#[test]
fn kill_all_signals_a_frozen_tree_and_leaves_the_freezer_as_it_was() {
    if !is_root() {
        return;
    }
    let env = Env::new("killall");
    let b = env.bundle("b", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"], |_| {});
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", s(&b), &id]);
    let procs = |env: &Env| -> usize {
        let out = env.ok(&["ps", "--format", "json", &id]);
        serde_json::from_str::<Vec<i64>>(&out).unwrap().len()
    };
    assert!(wait_until(std::time::Duration::from_secs(5), || procs(
        &env
    ) == 3));
    // A harmless signal: the container runs on, not left frozen.
    env.ok(&["kill", "--all", &id, "CONT"]);
    assert_eq!(env.status(&id), "running");
    assert_eq!(procs(&env), 3);
    // A paused container stays paused; the processes die once thawed.
    env.ok(&["pause", &id]);
    env.ok(&["kill", "--all", &id, "KILL"]);
    assert_eq!(env.status(&id), "paused");
    env.ok(&["resume", &id]);
    assert!(wait_until(std::time::Duration::from_secs(5), || env
        .status(&id)
        == "stopped"));
    for dir in env.cgroup_dirs(&id) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(procs.trim().is_empty(), "{}: {procs}", dir.display());
    }
    env.ok(&["delete", &id]);
    env.assert_gone(&id);
}
