//! `ferry checkpoint` / `ferry restore` against real CRIU and real
//! containers (as root).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn counter_continues_through_two_checkpoint_restore_cycles() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("cycle");
    let (id, bundle, count) = env.counter("c");
    let mut last = 0;
    for round in 0..2 {
        let images = env.work.path().join(format!("img{round}"));
        let out = env.ok(&["checkpoint", "--image-path", s(&images), "--stats", &id]);
        assert!(out.contains("frozen time:"), "{out}");
        env.assert_gone(&id);
        let at_dump = read_num(&count).unwrap();
        assert!(at_dump > last, "counter went back: {at_dump} <= {last}");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            read_num(&count).unwrap(),
            at_dump,
            "counter moved while checkpointed"
        );
        // Stats as JSON with --log-format json.
        let json = ["--stats", "--log-format", "json"];
        let out = env.ok(&restore_args(&bundle, &images, &json, &id));
        let stats: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(stats["restore_time_us"].as_u64().unwrap() > 0, "{stats}");
        assert_eq!(env.status(&id), "running");
        // The restored init is recorded with its real pid and stdio.
        let st = env.state_file(&id);
        assert_eq!(st["pid"], env.state(&id)["pid"]);
        // The tree stayed in the cgroups CRIU was started in (no
        // cgroup namespace here), which are the container's.
        let log = std::fs::read_to_string(images.join("restore.log")).unwrap();
        assert!(log.contains("Cgroup namespace inherited from parent"));
        assert!(!log.contains("cgroup.procs"), "CRIU moved the tree");
        let pid = st["pid"].as_i64().unwrap();
        for dir in default_cgroup_dirs(&id) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} not in {}",
                dir.display()
            );
        }
        assert_continues(&count, at_dump);
        last = at_dump;
    }
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

#[test]
fn leave_running_and_two_copies_with_other_bind_sources() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("copies");
    let (id, _bundle, count) = env.counter("c");
    let images = env.work.path().join("img");
    // The counter is at `before` or past it when it is checkpointed.
    let before = read_num(&count).unwrap();
    env.ok(&checkpoint_args(&images, &["--leave-running"], &id));
    assert_eq!(env.status(&id), "running");
    let at_dump = read_num(&count).unwrap();
    assert_continues(&count, at_dump);
    // Two copies of one image, each with its own /data (another bind source).
    let mut copies = Vec::new();
    for name in ["copy1", "copy2"] {
        let cid = env.id(name);
        let data = env.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let bundle = env.bundle(name, &["true"], |v| add_bind(v, &data, "/data"));
        env.ok(&restore_args(&bundle, &images, &[], &cid));
        copies.push((cid, data.join("count")));
    }
    for (cid, c) in &copies {
        assert_eq!(env.status(cid), "running");
        // Each copy goes on from the checkpointed number, in its own /data.
        assert_resumes(c, before);
    }
    // Each copy has a cgroup of its own.
    let a = env.cgroup_dirs(&copies[0].0);
    let b = env.cgroup_dirs(&copies[1].0);
    assert!(!a.is_empty() && a != b);
    for (cid, _) in &copies {
        env.ok(&["delete", "--force", cid]);
        env.assert_gone(cid);
    }
    assert_eq!(env.status(&id), "running");
}

#[test]
fn pipes_carry_data_after_restore() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("pipes");
    let id = env.id("echo");
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "while read l; do echo \"got $l\"; done"],
        |_| {},
    );
    let mut child = env.spawn_detached(&id, &bundle);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert!(child.wait().unwrap().success());
    writeln!(stdin, "one").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got one\n");

    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    let desc: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(images.join("descriptors.json")).unwrap())
            .unwrap();
    assert!(desc[0].starts_with("pipe:"), "{desc:?}");
    // Restored with new pipes of the restoring caller.
    let mut child = env
        .cmd(&restore_args(&bundle, &images, &[], &id))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin2 = child.stdin.take().unwrap();
    let out2 = BufReader::new(child.stdout.take().unwrap());
    let st = child.wait().unwrap();
    assert!(st.success(), "restore failed");
    // The old pipes are gone: closing them now does not reach the container.
    drop((stdin, out));
    let (mut stdin, mut out) = (stdin2, out2);
    writeln!(stdin, "two").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got two\n");
    assert!(env.state_file(&id)["stdio"][0]
        .as_str()
        .unwrap()
        .starts_with("pipe:"));
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn hooks_fire_on_restore() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("hooks");
    let (id, bundle, count) = env.counter("c");
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    let log = env.work.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo {name} \"$s\" >> {}", log.display())]});
    edit_config(&bundle, |v| {
        v["hooks"] = json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
        })
    });
    let at = read_num(&count).unwrap();
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let text = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["prestart", "createRuntime", "poststart"], "{text}");
    // Hooks get the state with the restored init's pid.
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let first: Value =
        serde_json::from_str(text.lines().next().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(first["id"], id.as_str());
    assert!(first["pid"].as_i64().unwrap() > 0);
    let last: Value =
        serde_json::from_str(text.lines().last().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(last["pid"].as_i64().unwrap(), pid);
    assert_continues(&count, at);
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn memory_survives_byte_for_byte() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("mem");
    let id = env.id("c");
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // 256 MiB of random data in the process's own memory.
    let bundle = env.bundle("b", &["/memhog", "256", "/data"], |v| {
        add_bind(v, &data, "/data")
    });
    std::fs::copy(memhog(), bundle.join("rootfs/memhog")).unwrap();
    env.run_detached(&bundle, &id);
    assert!(wait_until(Duration::from_secs(60), || data
        .join("sum-before")
        .exists()));
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    env.ok(&restore_args(&bundle, &images, &[], &id));
    env.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(30), || data
        .join("sum-after")
        .exists()));
    assert_eq!(
        std::fs::read_to_string(data.join("sum-after")).unwrap(),
        std::fs::read_to_string(data.join("sum-before")).unwrap()
    );
    env.ok(&["delete", "--force", &id]);
}

/// A bundle running `args` with a veth to its "host" (a network namespace
/// this test made), 10.77.`net`.2 inside and .1 on the host end; `edit`
/// changes the rest of its config.
fn veth_bundle(
    env: &Env,
    name: &str,
    net: u8,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let tag = format!("{}", std::process::id() % 10000);
    env.bundle(name, args, |v| {
        v["annotations"] = json!({
            "org.ferry.net.veth": format!(
                "host=fh{tag},container=eth0,address=10.77.{net}.2/24,host-address=10.77.{net}.1/24,mac=02:42:0a:4d:{net:02x}:02"
            )
        });
        edit(v);
    })
}

/// A TCP echo server on port 7000.
const ECHO_SERVER: &[&str] = &["nc", "-ll", "-p", "7000", "-e", "/bin/cat"];

/// A network namespace made for this test, the veth's "host", with ferry
/// running in it.
fn veth_host(tag: &str) -> (NetNs, Env) {
    let host = NetNs::new(tag);
    let env = Env::new(tag);
    env.set_netns(&host.name);
    (host, env)
}

/// What the echo server at 10.77.`net`.2 sends back for "hi", seen from
/// `host` (empty when nothing answers).
fn echo_hi(host: &NetNs, net: u8) -> String {
    let cmd = format!("echo hi | busybox nc -w 2 10.77.{net}.2 7000");
    host.command(&["sh", "-c", &cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn veth_server_answers_after_restore_and_established_connection_survives() {
    let Some(_g) = criu_lock() else { return };
    let (host, env) = veth_host("veth");
    let id = env.id("srv");
    let bundle = veth_bundle(&env, "b", 1, ECHO_SERVER, |_| {});
    env.run_detached(&bundle, &id);
    // A long-lived client connection from the host.
    let mut client = host
        .command(&["busybox", "nc", "10.77.1.2", "7000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cin = client.stdin.take().unwrap();
    let mut cout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    assert!(wait_until(Duration::from_secs(5), || {
        writeln!(cin, "hello").is_ok() && {
            line.clear();
            cout.read_line(&mut line).is_ok() && line == "hello\n"
        }
    }));
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &["--tcp-established"], &id));
    // The namespace holds only what ferry made: ferry, not CRIU, keeps it.
    assert!(images.join("ferry-netns.json").exists());
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap();
    assert!(!log.contains("ip route save"), "CRIU dumped the netns");
    env.ok(&[
        "restore",
        "-d",
        "--tcp-established",
        "--bundle",
        s(&bundle),
        "--image-path",
        s(&images),
        &id,
    ]);
    // The same connection goes on.
    writeln!(cin, "again").unwrap();
    line.clear();
    cout.read_line(&mut line).unwrap();
    assert_eq!(line, "again\n");
    // A new connection reaches the restored server.
    let out = host
        .command(&["sh", "-c", "echo fresh | busybox nc -w 2 10.77.1.2 7000"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fresh\n");
    // Same names, address and MAC inside.
    let link = env.ok(&["exec", &id, "ip", "addr", "show", "eth0"]);
    assert!(
        link.contains("10.77.1.2/24") && link.contains("02:42:0a:4d:01:02"),
        "{link}"
    );
    // ferry's host-side lock was released after dump and restore.
    let tables = host.exec(&["nft", "list", "tables"]);
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("ferry_lock"));
    // Dumped established again, restored with --tcp-close (podman's
    // `restore --tcp-close`): the connection is gone, the server is not.
    // The mount context CRI-O passes goes to CRIU (no mount here has one).
    let images2 = env.work.path().join("img2");
    env.ok(&checkpoint_args(&images2, &["--tcp-established"], &id));
    env.ok(&restore_args(
        &bundle,
        &images2,
        &[
            "--tcp-close",
            "--lsm-mount-context",
            "system_u:object_r:container_file_t:s0",
        ],
        &id,
    ));
    let _ = writeln!(cin, "closed?");
    line.clear();
    let read = cout.read_line(&mut line);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection survived --tcp-close: {read:?} {line:?}"
    );
    let out = host
        .command(&["sh", "-c", "echo fresh2 | busybox nc -w 2 10.77.1.2 7000"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fresh2\n");
    let _ = client.kill();
    let _ = client.wait();
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// A checkpoint of a namespace ferry keeps takes no firewall lock of CRIU's
/// inside it, and the restore that makes the veth again holds its traffic
/// itself until CRIU unlocks the network: by keeping the host end down (a
/// watcher in the host's namespace sees it so while the restore runs), or,
/// for a container with prestart/createRuntime hooks (which may need the
/// host end up), with its firewall lock (the createRuntime hook sees the
/// host end up and ferry's table in place). With `--network-lock skip`
/// nothing is held. The restored server answers every time.
#[test]
fn restored_veth_is_held_until_criu_unlocks() {
    let Some(_g) = criu_lock() else { return };
    let (host, env) = veth_host("vethhold");
    let id = env.id("srv");
    let tag = format!("{}", std::process::id() % 10000);
    let hook_log = env.work.path().join("hook.log");
    let bundle = veth_bundle(&env, "b", 8, ECHO_SERVER, |_| {});
    let set_hook = |on: bool| {
        let cfg = bundle.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["hooks"] = if on {
            let script = format!(
                "{{ /usr/sbin/ip -o link show dev fh{tag}; /usr/sbin/nft list tables; echo end; }} >> {}",
                hook_log.display()
            );
            json!({ "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", script]}] })
        } else {
            Value::Null
        };
        std::fs::write(&cfg, v.to_string()).unwrap();
    };
    env.run_detached(&bundle, &id);
    let echo = || echo_hi(&host, 8);
    assert!(wait_until(Duration::from_secs(5), || echo() == "hi\n"));
    let last_hook_run = || {
        let text = std::fs::read_to_string(&hook_log).unwrap();
        let runs: Vec<&str> = text.split("end\n").filter(|r| !r.is_empty()).collect();
        runs.last().unwrap().to_string()
    };
    for (round, lock, hooks) in [
        (1, "nftables", false),
        (2, "nftables", true),
        (3, "skip", true),
    ] {
        set_hook(hooks);
        let images = env.work.path().join(format!("img{round}"));
        env.ok(&checkpoint_args(&images, &[], &id));
        assert!(images.join("ferry-netns.json").exists());
        // CRIU took no lock of its own inside the namespace, and its
        // restore, which follows the images, takes none either.
        let inv: Value =
            serde_json::from_str(&env.ok(&["inspect", "--format", "json", s(&images)])).unwrap();
        assert_eq!(inv["network_lock_method"], "skip");
        // Watches the host end while the restore runs, until told to stop
        // (or for a minute at most, should this test fail first): one `ip`
        // answering a stream of queries, a sample every few tens of
        // microseconds (an `ip` started per sample took milliseconds, as
        // long as the whole hold of a fast restore).
        let watch_log = env.work.path().join(format!("watch{round}.log"));
        let stop = env.work.path().join(format!("watch{round}.stop"));
        let mut watcher = host
            .command(&[
                "timeout",
                "60",
                "sh",
                "-c",
                &format!(
                    "yes 'addr show dev fh{tag}' | ip -br -force -batch - > {} 2>/dev/null & p=$!; \
                     while [ ! -e {} ]; do sleep 0.02; done; kill $p",
                    watch_log.display(),
                    stop.display(),
                ),
            ])
            .spawn()
            .unwrap();
        env.ok(&restore_args(
            &bundle,
            &images,
            &["--network-lock", lock],
            &id,
        ));
        std::fs::write(&stop, "").unwrap();
        let _ = watcher.wait();
        if !hooks && lock != "skip" {
            // Down, with its address, from its creation to CRIU's unlock:
            // about 16 ms and 2300 samples here (a pair made up gets its
            // address tens of microseconds before it goes up: a few
            // samples). `ip -br` names the operational state: DOWN while
            // the host end is held.
            let seen = std::fs::read_to_string(&watch_log).unwrap();
            let held = seen
                .lines()
                .filter(|l| {
                    l.split_whitespace().nth(1) == Some("DOWN") && l.contains("10.77.8.1/24")
                })
                .count();
            // Then up (UP, or LOWERLAYERDOWN for a moment until its peer is).
            let up = seen
                .lines()
                .filter(|l| l.split_whitespace().nth(1).is_some_and(|s| s != "DOWN"))
                .count();
            assert!(
                held >= 100 && up > 0,
                "the host end was not held down ({held} samples down with its address, {up} up): {}",
                seen.lines().filter(|l| !l.is_empty()).take(40).collect::<Vec<_>>().join("\n")
            );
        }
        if hooks {
            let at_hook = last_hook_run();
            assert!(at_hook.contains(",UP"), "{lock}: {at_hook}");
            assert_eq!(
                at_hook.contains("ferry_lock"),
                lock != "skip",
                "{lock}: {at_hook}"
            );
        }
        let now = host.exec(&["ip", "-o", "link", "show", "dev", &format!("fh{tag}")]);
        let now = String::from_utf8_lossy(&now.stdout);
        assert!(now.contains(",UP"), "{lock}: {now}");
        let tables = host.exec(&["nft", "list", "tables"]);
        assert!(!String::from_utf8_lossy(&tables.stdout).contains("ferry_lock"));
        assert_eq!(echo(), "hi\n", "{lock}");
    }
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

#[test]
fn unsupported_modes_fail_before_freezing() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("modes");
    let (id, _bundle, count) = env.counter("c");
    let features = ferry::criu::Criu::new().unwrap().features().unwrap();
    let images = env.work.path().join("img");
    if !features.mem_track {
        let err = env.fail(&checkpoint_args(&images, &["--pre-dump"], &id));
        assert!(
            err.contains("pre-dump") && err.contains("soft-dirty"),
            "{err}"
        );
    }
    if !features.lazy_pages {
        let err = env.fail(&checkpoint_args(&images, &["--lazy-pages"], &id));
        assert!(err.contains("lazy pages"), "{err}");
    }
    assert_eq!(env.status(&id), "running");
    let at = read_num(&count).unwrap();
    assert_continues(&count, at);
    env.ok(&["delete", "--force", &id]);
}

/// What must not change when a command fails.
fn snapshot(env: &Env, id: &str) -> (String, Vec<PathBuf>) {
    let text = std::fs::read_to_string(env.root.path().join(id).join("state.json")).unwrap();
    (text, env.cgroup_dirs(id))
}

#[test]
fn bad_input_gets_one_line_and_loses_nothing() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("bad");
    let (id, bundle, count) = env.counter("c");
    let before = snapshot(&env, &id);
    let w = env.work.path();

    // Checkpoint of a nonexistent container.
    let err = env.fail(&checkpoint_args(&w.join("x"), &[], "nosuch"));
    assert!(err.contains("does not exist"), "{err}");
    // Image path that is a file.
    let file = w.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = env.fail(&checkpoint_args(&file, &[], &id));
    assert!(err.contains("not a directory"), "{err}");
    // Image path that cannot be written (a read-only bind mount).
    let ro = w.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = nix::mount::mount(
        Some(&ro),
        &ro,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .is_ok()
        && nix::mount::mount(
            None::<&str>,
            &ro,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND
                | nix::mount::MsFlags::MS_REMOUNT
                | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .is_ok();
    if mounted {
        let err = env.fail(&checkpoint_args(&ro, &[], &id));
        assert!(err.contains("not writable"), "{err}");
        let _ = nix::mount::umount2(&ro, nix::mount::MntFlags::MNT_DETACH);
    }
    assert_eq!(snapshot(&env, &id), before);
    assert_eq!(env.status(&id), "running");

    // Restore from a missing dir, an empty dir, another tool's files.
    let restore = |images: &Path, rid: &str| env.fail(&restore_args(&bundle, images, &[], rid));
    let rid = env.id("r");
    let err = restore(&w.join("missing"), &rid);
    assert!(err.contains("No such file"), "{err}");
    let empty = w.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = restore(&empty, &rid);
    assert!(err.contains("inventory.img is missing"), "{err}");
    let other = w.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("inventory.img"), b"{\"not\": \"criu\"}").unwrap();
    let err = restore(&other, &rid);
    assert!(
        err.contains("inventory.img") && err.contains("magic"),
        "{err}"
    );
    assert!(!env.root.path().join(&rid).exists());
    for d in default_cgroup_dirs(&rid) {
        assert!(!d.exists(), "{} left", d.display());
    }

    // A real checkpoint (left running), then damaged copies of it.
    let images = w.join("img");
    env.ok(&checkpoint_args(&images, &["--leave-running"], &id));
    assert_eq!(env.status(&id), "running");
    let copy = |name: &str| {
        let d = w.join(name);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&images)
            .arg(&d)
            .status()
            .unwrap();
        assert!(st.success());
        d
    };
    let truncated = copy("truncated");
    let pages = std::fs::read_dir(&truncated)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("pages-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = restore(&truncated, &rid);
    assert!(
        err.contains("pages-") && err.contains("truncated") && err.contains("damaged"),
        "{err}"
    );
    let corrupt = copy("corrupt");
    let mut inv = std::fs::read(corrupt.join("inventory.img")).unwrap();
    inv[0] ^= 0xff;
    std::fs::write(corrupt.join("inventory.img"), inv).unwrap();
    let err = restore(&corrupt, &rid);
    assert!(
        err.contains("inventory.img") && err.contains("magic"),
        "{err}"
    );
    // Restore to an ID in use.
    let err = restore(&images, &id);
    assert!(err.contains("already exists"), "{err}");
    // Nothing of the failed restores is left; the source runs on untouched.
    assert!(!env.root.path().join(&rid).exists());
    for d in default_cgroup_dirs(&rid) {
        assert!(!d.exists(), "{} left", d.display());
    }
    assert_eq!(snapshot(&env, &id), before);
    let at = read_num(&count).unwrap();
    assert_continues(&count, at);

    // Stopped container.
    env.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || env.status(&id) == "stopped"));
    let err = env.fail(&checkpoint_args(&w.join("y"), &[], &id));
    assert!(err.contains("is stopped"), "{err}");
    env.ok(&["delete", &id]);
}

#[test]
fn criu_missing_or_too_old_is_named() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("criu");
    let (id, _bundle, _count) = env.counter("c");
    let before = snapshot(&env, &id);
    let images = env.work.path().join("img");
    let run = |criu: &Path| {
        let out = env
            .cmd(&checkpoint_args(&images, &[], &id))
            .env("FERRY_CRIU", criu)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(Path::new("/nonexistent/criu"));
    assert!(err.contains("criu") && err.contains("install"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A criu that answers VERSION with 3.17 over the real RPC protocol.
    let fake = env.work.path().join("old-criu");
    std::fs::write(&fake, OLD_CRIU).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = run(&fake);
    assert!(err.contains("3.17") && err.contains("too old"), "{err}");
    assert_eq!(snapshot(&env, &id), before);
    assert_eq!(env.status(&id), "running");
    env.ok(&["delete", "--force", &id]);
}

/// Speaks just enough of swrk to answer VERSION as CRIU 3.17.
const OLD_CRIU: &str = r#"#!/usr/bin/env python3
import socket, sys
s = socket.socket(fileno=int(sys.argv[2]))
s.recv(4096)
# criu_resp{type=VERSION(10), success=true, version{major=3, minor=17}}
version = bytes([0x08, 3, 0x10, 17])
resp = bytes([0x08, 10, 0x10, 1, 0x52, len(version)]) + version
s.send(resp)
"#;

/// Reads from a non-blocking pty master until `want` shows up (or 5 s).
fn read_until(f: &mut std::fs::File, want: &str) -> String {
    use std::io::Read;
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    wait_until(Duration::from_secs(5), || {
        let n = f.read(&mut buf).unwrap_or(0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.contains(want)
    });
    seen
}

#[test]
fn terminal_container_gets_a_pty_back_on_restore() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("tty");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sh"], |v| v["process"]["terminal"] = json!(true));
    let sock = env.work.path().join("c1.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err1 = env.work.path().join("run.err");
    let mut child = env
        .cmd(&[
            "run",
            "-d",
            "--bundle",
            s(&bundle),
            "--console-socket",
            s(&sock),
            &id,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err1).unwrap())
        .spawn()
        .unwrap();
    let master = recv_fd(&listener);
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&err1).unwrap()
    );
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut f = std::fs::File::from(master);
    f.write_all(b"X=before-$((40+2)); echo $X\n").unwrap();
    let seen = read_until(&mut f, "before-42\r\n");
    assert!(seen.contains("before-42\r\n"), "{seen:?}");

    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    env.assert_gone(&id);
    drop(f);

    let sock2 = env.work.path().join("c2.sock");
    let listener2 = std::os::unix::net::UnixListener::bind(&sock2).unwrap();
    let err2 = env.work.path().join("restore.err");
    let mut child = env
        .cmd(&restore_args(
            &bundle,
            &images,
            &["--console-socket", s(&sock2)],
            &id,
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err2).unwrap())
        .spawn()
        .unwrap();
    // If restore fails before sending, unblock the accept with our own connection.
    let waiter = std::thread::spawn({
        let sock2 = sock2.clone();
        move || {
            let st = child.wait().unwrap();
            if !st.success() {
                let _ = std::os::unix::net::UnixStream::connect(&sock2);
            }
            st
        }
    });
    let (stream, _) = listener2.accept().unwrap();
    let st = waiter.join().unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&err2).unwrap());
    let master = recv_fd_from(&stream);
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut f = std::fs::File::from(master);
    // The same shell, with its variable, answers on the new master.
    f.write_all(b"echo again-$X\n").unwrap();
    let seen = read_until(&mut f, "again-before-42\r\n");
    assert!(seen.contains("again-before-42\r\n"), "{seen:?}");
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// The cgroup a restored init is in, per /proc/<pid>/cgroup, must be the
/// one recorded for its container (every hierarchy of it).
fn assert_in_own_cgroup(env: &Env, cid: &str) {
    let pid = env.state(cid)["pid"].as_i64().unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let dirs = env.cgroup_dirs(cid);
    let mut seen = 0;
    // Every line: "id:controllers:path" below the container's directories.
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (ctrls, path) = (f.nth(1).unwrap(), f.next().unwrap());
        // A hybrid host's cgroup2 has no controllers; ferry leaves it be.
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if ctrls.is_empty() && !v2 {
            continue;
        }
        if dirs
            .iter()
            .any(|d| path != "/" && d.ends_with(path.trim_start_matches('/')))
        {
            seen += 1;
        } else {
            panic!("{cid}: init {pid} is in {line:?}, not in one of {dirs:?}\n{text}");
        }
    }
    assert!(seen > 0, "{text}");
}

/// The memory limit the kernel enforces on `cid`'s cgroup.
fn memory_limit(env: &Env, cid: &str) -> u64 {
    env.cgroup_dirs(cid)
        .iter()
        .find_map(|d| {
            read_num(&d.join("memory.max")).or_else(|| read_num(&d.join("memory.limit_in_bytes")))
        })
        .unwrap()
}

#[test]
fn copies_get_their_own_cgroup_and_limits_in_each_cgroup_mode() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("cgmodes");
    let id = env.id("c");
    let data = env.work.path().join("c-data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.bundle("c", &["sh", "-c", COUNTER], |v| {
        add_bind(v, &data, "/data");
        v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64u64 << 20});
    });
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    wait_counting(&data.join("count"));
    let images = env.work.path().join("img");
    env.ok(&["checkpoint", "--image-path", s(&images), &id]);
    env.assert_gone(&id);
    let at = read_num(&data.join("count")).unwrap();
    // strict aborts on the new container's cgroup, which always exists
    // (CRIU restores into it): refused up front, nothing left behind.
    let cid = env.id("strict");
    let b = env.bundle("strict", &["true"], |v| add_bind(v, &data, "/data"));
    let err = env.fail(&restore_args(
        &b,
        &images,
        &["--manage-cgroups-mode", "strict"],
        &cid,
    ));
    assert!(err.contains("strict") && err.contains("full"), "{err}");
    env.assert_gone(&cid);
    // soft is CRIU's default, what a restore without the flag gets; full
    // also restores the checkpoint's own settings: on v1 its 64 MiB limit
    // (CRIU restores no v2 memory settings: the bundle's stays).
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for mode in ["soft", "ignore", "full"] {
        let mut copies = Vec::new();
        let sizes: &[(u32, u64)] = if mode == "full" {
            &[(1, 48)]
        } else {
            &[(1, 48), (2, 80)]
        };
        for &(n, mib) in sizes {
            let name = format!("{mode}{n}");
            let cid = env.id(&name);
            let cdata = env.work.path().join(format!("{name}-data"));
            std::fs::create_dir_all(&cdata).unwrap();
            let b = env.bundle(&name, &["true"], |v| {
                add_bind(v, &cdata, "/data");
                v["linux"]["resources"]["memory"] = serde_json::json!({"limit": mib << 20});
            });
            env.ok(&restore_args(
                &b,
                &images,
                &["--manage-cgroups-mode", mode],
                &cid,
            ));
            copies.push((cid, mib, cdata.join("count")));
        }
        for (cid, mib, count) in &copies {
            assert_eq!(env.status(cid), "running", "{mode}");
            assert_in_own_cgroup(&env, cid);
            let want = if mode == "full" && !v2 {
                64 << 20
            } else {
                mib << 20
            };
            assert_eq!(memory_limit(&env, cid), want, "{mode}: {cid}");
            // It goes on from the dumped number, in its own /data.
            assert_resumes(count, at);
        }
        for (cid, ..) in &copies {
            env.ok(&["delete", "--force", cid]);
            env.assert_gone(cid);
        }
    }
    // A container paused when it was checkpointed: on v1 the images record
    // the freeze, which full would write into the cgroup CRIU runs in (v2
    // records no freezer state).
    if v2 {
        return;
    }
    let pid_ = env.id("paused");
    env.ok(&["run", "-d", "--bundle", s(&bundle), &pid_]);
    env.ok(&["pause", &pid_]);
    let pimages = env.work.path().join("img-paused");
    env.ok(&["checkpoint", "--image-path", s(&pimages), &pid_]);
    let cid = env.id("pfull");
    let b = env.bundle("pfull", &["true"], |v| add_bind(v, &data, "/data"));
    let err = env.fail(&restore_args(
        &b,
        &pimages,
        &["--manage-cgroups-mode", "full"],
        &cid,
    ));
    assert!(err.contains("paused") && err.contains("soft"), "{err}");
    env.assert_gone(&cid);
}

/// How CRI-O decides what a runtime can do: `checkpoint --help` must
/// succeed, and `restore --lsm-mount-context` without a value must fail
/// saying the flag needs one.
#[test]
fn cri_o_probes_see_checkpoint_and_mount_context_support() {
    let env = Env::new("probes");
    env.ok(&["checkpoint", "--help"]);
    let out = env.run(&["restore", "--lsm-mount-context"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--lsm-mount-context") && err.contains("value is required"),
        "{err}"
    );
}

/// A veth container that changed its namespace (a route of its own) has
/// the pair recreated by CRIU; ferry then gives the host end its address
/// and brings it up, so the server is reachable from the host again.
#[test]
fn veth_in_a_changed_namespace_gets_its_host_end_back() {
    let Some(_g) = criu_lock() else { return };
    let (host, env) = veth_host("vethchg");
    let id = env.id("srv");
    let tag = format!("{}", std::process::id() % 10000);
    let script = "ip route add 10.78.9.0/24 dev eth0 && exec nc -ll -p 7000 -e /bin/cat";
    let bundle = veth_bundle(&env, "b", 9, &["sh", "-c", script], grant_net_admin);
    env.run_detached(&bundle, &id);
    let echo = || echo_hi(&host, 9);
    assert!(wait_until(Duration::from_secs(5), || echo() == "hi\n"));
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    assert!(!images.join("ferry-netns.json").exists());
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let addr = host.exec(&["ip", "addr", "show", "dev", &format!("fh{tag}")]);
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(
        addr.contains("10.77.9.1/24") && addr.contains(",UP"),
        "{addr}"
    );
    assert_eq!(echo(), "hi\n");
    let route = env.ok(&["exec", &id, "ip", "route"]);
    assert!(route.contains("10.78.9.0/24"), "{route}");
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// A container that changed its own network namespace (an address, a
/// route, a firewall table) has it dumped and restored by CRIU, changes
/// included; one that did not has it rebuilt by ferry, `lo` as it was.
#[test]
fn changed_network_namespace_falls_back_to_criu() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("netchg");
    let script = "ip link set lo up && ip addr add 10.55.0.1/32 dev lo && \
                  ip route add 10.56.0.0/24 dev lo && touch /tmp/ready && \
                  while :; do sleep 0.1; done";
    let bundle = env.bundle("b", &["sh", "-c", script], grant_net_admin);
    let id = env.id("chg");
    env.run_until_ready(&bundle, &id);
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    assert!(!images.join("ferry-netns.json").exists());
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap();
    assert!(log.contains("ip route save"), "CRIU did not dump the netns");
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let addr = env.ok(&["exec", &id, "ip", "addr", "show", "lo"]);
    assert!(
        addr.contains("10.55.0.1/32") && addr.contains("UP"),
        "{addr}"
    );
    let route = env.ok(&["exec", &id, "ip", "route"]);
    assert!(route.contains("10.56.0.0/24"), "{route}");
    env.ok(&["delete", "--force", &id]);

    // A firewall table the container did not make itself is found too.
    let (id, bundle, _count) = env.counter("fw");
    let pid = env.state(&id)["pid"].as_i64().unwrap().to_string();
    let ns = format!("--net=/proc/{pid}/ns/net");
    let nft = |args: &[&str]| {
        Command::new("nsenter")
            .arg(&ns)
            .arg("nft")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(nft(&["add", "table", "inet", "ferry_test_keep"])
        .status
        .success());
    let images = env.work.path().join("img-fw");
    env.ok(&checkpoint_args(&images, &[], &id));
    assert!(!images.join("ferry-netns.json").exists());
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let pid = env.state(&id)["pid"].as_i64().unwrap().to_string();
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(tables.contains("ferry_test_keep"), "{tables}");
    env.ok(&["delete", "--force", &id]);

    // Untouched: ferry keeps the namespace. `lo` is up as made (as runc
    // makes it), so CRIU ran inside it: the images hold no namespace, not
    // even an empty one, and no conntrack table was walked for it. The
    // restore makes a namespace of its own again, `lo` up.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let (id, bundle, count) = env.counter("own");
    let images = env.work.path().join("img-own");
    env.ok(&checkpoint_args(&images, &[], &id));
    let kept = kept_netns(&images);
    assert_eq!(kept["criu_inside"], json!(true), "{kept}");
    // (CRIU walks conntrack only for a namespace it takes in the images.)
    let taken = |images: &Path| {
        std::fs::read_to_string(images.join("dump.log"))
            .unwrap()
            .contains("Will take net namespace in the image")
    };
    assert!(!taken(&images), "CRIU dumped the namespace");
    env.ok(&restore_args(&bundle, &images, &[], &id));
    assert_continues(&count, read_num(&count).unwrap());
    let lo = env.ok(&["exec", &id, "ip", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ns, host_ns, "restored into the host's network namespace");
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);

    // `lo` brought down by the container: still ferry's to keep, but
    // CRIU's probes need `lo` up where it runs, so it stays outside and
    // records an empty namespace; `lo` comes back down.
    let script = "ip link set lo down && touch /tmp/ready && while :; do sleep 0.1; done";
    let bundle = env.bundle("lodown", &["sh", "-c", script], grant_net_admin);
    let id = env.id("lodown");
    env.run_until_ready(&bundle, &id);
    let images = env.work.path().join("img-lodown");
    env.ok(&checkpoint_args(&images, &[], &id));
    let kept = kept_netns(&images);
    assert_eq!(kept["criu_inside"], json!(false), "{kept}");
    assert!(taken(&images), "CRIU did not record the namespace");
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let lo = env.ok(&["exec", &id, "ip", "link", "show", "lo"]);
    assert!(!lo.contains(",UP"), "{lo}");
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// `checkpoint --page-server` (as with runc) to a plain CRIU page server:
/// CRIU still runs inside the namespace ferry keeps, its pages leaving
/// through ferry's relay; they arrive, and restore with the other images.
#[test]
fn pages_reach_a_page_server_from_inside_the_namespace() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("psrelay");
    let (id, bundle, count) = env.counter("ps");
    let received = env.work.path().join("ps-pages");
    std::fs::create_dir_all(&received).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let criu = ferry::criu::Criu::new().unwrap().binary;
    let mut server = Command::new(criu)
        .args([
            "page-server",
            "--images-dir",
            s(&received),
            "--address",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string(), "-o", "page-server.log", "-v4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = || {
        let out = Command::new("ss").args(["-Hltn"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("127.0.0.1:{port} "))
    };
    if !wait_until(Duration::from_secs(10), listening) {
        let _ = server.kill();
        let _ = server.wait();
        panic!("CRIU's page server never listened");
    }
    let images = env.work.path().join("img-ps");
    let target = format!("127.0.0.1:{port}");
    let out = env.run(&checkpoint_args(&images, &["--page-server", &target], &id));
    if !out.status.success() {
        // The page server may never have been reached.
        let _ = server.kill();
        let _ = server.wait();
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let served = server.wait().unwrap();
    assert!(served.success(), "page server: {served}");
    assert_eq!(kept_netns(&images)["criu_inside"], json!(true));
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap();
    assert!(
        !log.contains("Will take net namespace"),
        "CRIU dumped the namespace"
    );
    // The page server wrote the memory images (page maps and pages):
    // they join the others, as a runc user would copy them.
    let mut pages = 0;
    for e in std::fs::read_dir(&received).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("pages-") || name.starts_with("pagemap-") {
            std::fs::copy(e.path(), images.join(&name)).unwrap();
            pages += usize::from(name.starts_with("pages-"));
        }
    }
    assert!(pages > 0, "no pages reached the page server");
    let at = read_num(&count).unwrap();
    env.ok(&restore_args(&bundle, &images, &[], &id));
    assert_continues(&count, at);
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// What ferry recorded of a network namespace it keeps.
fn kept_netns(images: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(images.join("ferry-netns.json")).unwrap()).unwrap()
}

/// Images of a namespace CRIU ran inside hold none: restoring them with a
/// configuration that shares the host's namespace (where CRIU would put
/// the tree) is refused, and nothing is left behind.
#[test]
fn images_without_a_namespace_need_one_of_their_own() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("nsneed");
    let (id, bundle, _count) = env.counter("c");
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    edit_config(&bundle, |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network")
    });
    let err = env.fail(&restore_args(&bundle, &images, &[], &id));
    assert!(err.contains("network namespace of its own"), "{err}");
    env.assert_gone(&id);
}

/// tmpfs mounts come back from ferry's list of them (device nodes,
/// symlinks, modes, masked paths read-only) and the user's files in them
/// from ferry's uncompressed copy (content, mode, owner, mtime); a tmpfs
/// the list cannot carry (a hard link in it) is archived by CRIU, contents
/// kept.
#[test]
fn tmpfs_mounts_come_back_with_nodes_and_user_files() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("tmpfs");
    let script = "echo kept > /dev/shm/data && mkdir /dev/shm/d && echo deep > /dev/shm/d/f && \\
                  head -c 3000000 /dev/urandom > /dev/shm/big && chmod 604 /dev/shm/big && \\
                  chown 12:34 /dev/shm/big && touch -d '2001-02-03 04:05:06' /dev/shm/data && \\
                  mkdir /tmp/own && mount -t tmpfs -o size=1m own /tmp/own && \\
                  echo linked > /tmp/own/a && ln /tmp/own/a /tmp/own/b && \\
                  touch /tmp/ready && while :; do sleep 0.1; done";
    // For the chown and the container's own tmpfs mount.
    let bundle = env.bundle("b", &["sh", "-c", script], |v| {
        for set in ["bounding", "effective", "permitted"] {
            let caps = v["process"]["capabilities"][set].as_array_mut().unwrap();
            caps.push("CAP_SYS_ADMIN".into());
            caps.push("CAP_CHOWN".into());
        }
    });
    let id = env.id("t");
    env.run_until_ready(&bundle, &id);
    let listing =
        "find /dev /sys/fs/cgroup /proc/acpi -xdev -exec stat -c '%n %F %a %u %g %t %T' {} +";
    let files = "stat -c '%n %s %a %u %g %Y' /dev/shm/data /dev/shm/big; md5sum /dev/shm/big";
    let files_before = env.ok(&["exec", &id, "sh", "-c", files]);
    assert!(
        files_before.contains("/dev/shm/data 5 644 0 0 981173106"),
        "{files_before}"
    );
    let before = env.ok(&["exec", &id, "sh", "-c", listing]);
    assert!(
        before.contains("/dev/null character special file 666 0 0 1 3"),
        "{before}"
    );
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    // ferry lists /dev and /dev/shm (its files' content copied as it is);
    // CRIU archives only /tmp/own, which holds a hard link.
    let list = std::fs::read_to_string(images.join("ferry-tmpfs.json")).unwrap();
    assert!(list.contains(r#""key":"/dev""#), "{list}");
    assert!(list.contains(r#""key":"/dev/shm""#), "{list}");
    assert!(!list.contains(r#""key":"/tmp/own""#), "{list}");
    let data_len = std::fs::metadata(images.join("ferry-tmpfs.data"))
        .unwrap()
        .len();
    assert_eq!(data_len, 3_000_000 + 5 + 5, "uncompressed content");
    let archives: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmpfs-dev"))
        .collect();
    assert_eq!(archives.len(), 1, "CRIU archived more than /tmp/own");
    env.ok(&restore_args(&bundle, &images, &[], &id));
    let after = env.ok(&["exec", &id, "sh", "-c", listing]);
    // Same entries (a new tmpfs lists them in another order).
    let sorted = |s: &str| {
        let mut l: Vec<String> = s.lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&before), sorted(&after));
    let data = env.ok(&["exec", &id, "cat", "/dev/shm/data", "/dev/shm/d/f"]);
    assert_eq!(data, "kept\ndeep\n");
    assert_eq!(env.ok(&["exec", &id, "sh", "-c", files]), files_before);
    let linked = "cat /tmp/own/b; stat -c %h /tmp/own/a";
    assert_eq!(env.ok(&["exec", &id, "sh", "-c", linked]), "linked\n2\n");
    // The nodes work, the masked directory stays read-only.
    let zeros = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "head -c 5 /dev/zero | wc -c; echo x > /dev/null",
    ]);
    assert_eq!(zeros.trim(), "5");
    let out = env.run(&["exec", &id, "touch", "/proc/acpi/x"]);
    assert!(!out.status.success());
    let mounts = env.ok(&["exec", &id, "cat", "/proc/self/mountinfo"]);
    let dev = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/dev"))
        .unwrap();
    assert!(dev.contains(" - tmpfs ") && dev.contains("nosuid"), "{dev}");
    // No staging mount is left on the host.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(&format!("{id}/tmpfs-")),
        "staging mount left"
    );
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// `ferry inspect` of a ferry checkpoint names the root's real filesystem
/// (CRIU's image says `unsupported` for ext4, xfs, ...) and the host files
/// the init's stdio was open on, instead of CRIU's external keys.
#[test]
fn inspect_names_the_root_filesystem_and_the_stdio_outside() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("inspect-root");
    let (id, bundle, _count) = env.counter("c");
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    let host = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--target"])
        .arg(bundle.join("rootfs"))
        .output()
        .unwrap();
    let host_fstype = String::from_utf8(host.stdout).unwrap().trim().to_string();
    assert!(!host_fstype.is_empty());
    let inspect = || -> Value {
        serde_json::from_str(&env.ok(&["inspect", "--format", "json", s(&images)])).unwrap()
    };
    let root_of = |v: &Value| -> Value {
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountpoint"] == "/")
            .unwrap_or_else(|| panic!("no root mount: {v}"))
            .clone()
    };
    let v = inspect();
    let root = root_of(&v);
    assert_eq!(root["fstype"], host_fstype.as_str(), "{root}");
    // The counter's stdio is the caller's files (Env's /dev/null and log
    // files), which the container cannot see: named by the paths recorded.
    let recorded: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(images.join("descriptors.json")).unwrap())
            .unwrap();
    let files = v["processes"][0]["files"].as_array().unwrap();
    assert_eq!(recorded.len(), 3);
    for (fd, path) in recorded.iter().enumerate() {
        let f = files.iter().find(|f| f["fd"] == fd).unwrap();
        let d = f["description"].as_str().unwrap();
        let want = format!("{path} (outside the container: file[");
        assert!(
            path.starts_with('/') && d.starts_with(&want),
            "fd {fd}: {d}"
        );
    }
    // Without ferry's record, CRIU's own label stays.
    std::fs::remove_file(images.join("ferry-root.json")).unwrap();
    let root = root_of(&inspect());
    assert_eq!(root["fstype"], "unsupported", "{root}");
}

/// A container with a cgroup namespace of its own gets one back: CRIU
/// moves the restored tree into its cgroups and unshares the namespace
/// there (its cgroups are `/` to it again), which the restore of a
/// container without one skips.
#[test]
fn cgroup_namespace_comes_back() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("cgnsck");
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.counter_bundle("b", &data);
    edit_config(&bundle, |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": "cgroup"}));
    });
    let id = env.id("c");
    env.run_detached(&bundle, &id);
    let count = data.join("count");
    wait_counting(&count);
    let host_cgns = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    env.ok(&restore_args(&bundle, &images, &[], &id));
    assert_continues(&count, read_num(&count).unwrap());
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let cgns = std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(cgns, host_cgns, "restored in the host's cgroup namespace");
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap();
    assert!(!log.contains("Cgroup namespace inherited from parent"));
    let seen = env.ok(&["exec", &id, "cat", "/proc/self/cgroup"]);
    for line in seen.lines() {
        assert!(line.ends_with(":/"), "{seen}");
    }
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// A restore readied before its images are there (what a migration's
/// destination does while the source dumps): the state, cgroup and
/// namespace exist and criu waits in them; the restore then needs only
/// CRIU's request. Images that record another namespace are refused, and
/// a preparation dropped unused leaves nothing.
#[test]
fn a_restore_prepared_before_its_images_arrive() {
    use ferry::container::{netns_image, PreparedRestore, RestoreOptions};
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("prep");
    // Restored by this process, whose stdio is the test harness's: the
    // container's own is /dev/null, nothing for the restore to replace.
    let data = env.work.path().join("prep-data");
    std::fs::create_dir_all(&data).unwrap();
    let script = format!("exec </dev/null >/dev/null 2>&1; {COUNTER}");
    let bundle = env.bundle("prep", &["sh", "-c", &script], |v| {
        add_bind(v, &data, "/data")
    });
    let id = env.id("prep");
    env.run_detached(&bundle, &id);
    let count = data.join("count");
    wait_counting(&count);
    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(&images, &[], &id));
    let kept = netns_image::read(&images).unwrap();
    assert!(kept.as_ref().is_some_and(|k| k.criu_inside), "{kept:?}");
    // The images are not where the restore will read them yet.
    let later = env.work.path().join("later");
    std::fs::create_dir(&later).unwrap();
    let opts = RestoreOptions::new(&id, &bundle, &later);
    let prepare = |kept: Option<netns_image::Kept>| -> PreparedRestore {
        ferry::Container::prepare_restore(env.root.path(), &opts, kept).unwrap()
    };

    let prepared = prepare(kept.clone());
    assert_eq!(env.state(&id)["status"], json!("creating"));
    let criu = criu_in(&default_cgroup_dirs(&id));
    assert_eq!(criu.len(), 1, "criu is not waiting in the cgroup: {criu:?}");
    for e in std::fs::read_dir(&images).unwrap().flatten() {
        std::fs::rename(e.path(), later.join(e.file_name())).unwrap();
    }
    let restored = prepared.restore(None).unwrap();
    let pid = restored.container.state.pid;
    assert_continues(&count, read_num(&count).unwrap());
    assert_eq!(env.state(&id)["status"], json!("running"));
    let lo = env.ok(&["exec", &id, "ip", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    env.ok(&["checkpoint", "--image-path", s(&images), &id]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    std::fs::remove_dir_all(&later).unwrap();
    std::fs::create_dir(&later).unwrap();

    // Prepared for a namespace CRIU left in the images: refused, undone,
    // and the images restore afresh.
    let prepared = prepare(None);
    for e in std::fs::read_dir(&images).unwrap().flatten() {
        std::fs::copy(e.path(), later.join(e.file_name())).unwrap();
    }
    let err = prepared.restore(None).unwrap_err().to_string();
    assert!(err.contains("another network namespace"), "{err}");
    env.assert_gone(&id);
    assert!(criu_in(&default_cgroup_dirs(&id)).is_empty());

    // Dropped unused: criu gone, nothing left.
    let prepared = prepare(kept.clone());
    let criu = criu_in(&default_cgroup_dirs(&id));
    assert_eq!(criu.len(), 1, "{criu:?}");
    drop(prepared);
    env.assert_gone(&id);
    assert!(
        wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/proc/{}",
            criu[0]
        ))
        .exists()),
        "criu outlived the dropped preparation"
    );

    // A rootfs that is not there yet (a migration's shipped one): checked
    // by the restore, which refuses it still missing, and restores once
    // it is in place.
    let rootfs = bundle.join("rootfs");
    let away = bundle.join("rootfs.away");
    std::fs::rename(&rootfs, &away).unwrap();
    let before_rootfs = |kept: Option<netns_image::Kept>| -> PreparedRestore {
        ferry::Container::prepare_restore_before_rootfs(env.root.path(), &opts, kept).unwrap()
    };
    let err = before_rootfs(kept.clone())
        .restore(None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rootfs"), "{err}");
    env.assert_gone(&id);
    let prepared = before_rootfs(kept);
    std::fs::rename(&away, &rootfs).unwrap();
    let restored = prepared.restore(None).unwrap();
    let pid = restored.container.state.pid;
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(env.root.path().join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["rootfs"], json!(s(&rootfs.canonicalize().unwrap())));
    assert_continues(&count, read_num(&count).unwrap());
    env.ok(&["delete", "--force", &id]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    env.assert_gone(&id);
}
