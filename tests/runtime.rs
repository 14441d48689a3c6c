//! The runtime core against real namespaces, mounts and cgroups (as root).
mod common;

use std::io::{BufRead, BufReader, Read, Write};

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn lifecycle_create_start_kill_delete() {
    if !is_root() {
        return;
    }
    let env = Env::new("life");
    let id = env.id("c");
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bundle = env.bundle("b", &["sh", "-c", COUNTER], |v| add_bind(v, &data, "/data"));
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    let st = env.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert!(st["pid"].as_i64().unwrap() > 0);
    assert_eq!(st["bundle"], bundle.to_str().unwrap());
    // Nothing of the user program runs before start.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::fs::symlink_metadata(data.join("count")).is_err(),
        "program ran before start"
    );
    env.ok(&["start", &id]);
    assert_eq!(env.status(&id), "running");
    assert!(wait_until(Duration::from_secs(5), || read_num(
        &data.join("count")
    )
    .is_some()));
    // The cgroup holds the init.
    let dirs = env.cgroup_dirs(&id);
    assert!(!dirs.is_empty());
    let procs = std::fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
    assert!(procs.contains(&st["pid"].to_string()), "{procs}");
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(env.ok(&["list", "-q"]).trim(), id);
    env.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || env.status(&id) == "stopped"));
    assert_eq!(env.state(&id)["pid"], 0);
    env.ok(&["delete", &id]);
    env.assert_gone(&id);
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn run_detached_pipes_carry_data_both_ways() {
    if !is_root() {
        return;
    }
    let env = Env::new("pipes");
    let id = env.id("echo");
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "while read l; do echo \"got $l\"; done"],
        |_| {},
    );
    let mut child = env.spawn_detached(&id, &bundle);
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "run -d failed");
    assert_eq!(env.status(&id), "running");
    // The container's stdio are the very pipes ferry was given.
    let fds = &env.state_file(&id)["stdio"];
    assert!(fds[0].as_str().unwrap().starts_with("pipe:"), "{fds}");
    writeln!(stdin, "ping").unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "got ping\n");
    drop(stdin);
    assert!(wait_until(Duration::from_secs(5), || env.status(&id) == "stopped"));
    env.ok(&["delete", &id]);
    env.assert_gone(&id);
}

#[test]
fn foreground_run_returns_exit_status_and_cleans_up() {
    if !is_root() {
        return;
    }
    let env = Env::new("fg");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sh", "-c", "echo out; exit 7"], |_| {});
    let out = env.run(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    env.assert_gone(&id);
    let id2 = env.id("sig");
    // A container killed by a signal: 128 + signal, like a shell (and runc).
    let bundle = env.bundle("b2", &["sleep", "1000"], |_| {});
    let mut child = env
        .cmd(&["run", "--bundle", bundle.to_str().unwrap(), &id2])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || env
        .run(&["state", &id2])
        .status
        .success()
        && env.status(&id2) == "running"));
    env.ok(&["kill", &id2, "KILL"]);
    assert_eq!(child.wait().unwrap().code(), Some(137));
    env.assert_gone(&id2);
}

#[test]
fn pause_and_resume_stop_and_restart_the_counter() {
    if !is_root() {
        return;
    }
    let env = Env::new("pause");
    let id = env.id("c");
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bundle = env.bundle("b", &["sh", "-c", COUNTER], |v| add_bind(v, &data, "/data"));
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let count = data.join("count");
    assert!(wait_until(Duration::from_secs(5), || read_num(&count)
        .unwrap_or(0)
        >= 2));
    env.ok(&["pause", &id]);
    assert_eq!(env.status(&id), "paused");
    let frozen = read_num(&count).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        read_num(&count).unwrap(),
        frozen,
        "counter moved while paused"
    );
    let err = env.fail(&["pause", &id]);
    assert!(err.contains("is paused"), "{err}");
    env.ok(&["resume", &id]);
    assert_eq!(env.status(&id), "running");
    assert!(wait_until(Duration::from_secs(5), || read_num(&count)
        .unwrap()
        > frozen + 2));
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

#[test]
fn exec_ps_events_and_update() {
    if !is_root() {
        return;
    }
    let env = Env::new("exec");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sh", "-c", "sleep 1000"], |v| {
        v["hostname"] = json!("inside");
        v["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}});
    });
    let log = env.work.path().join("debug.log");
    let log_args = ["--debug", "--log", log.to_str().unwrap()];
    env.ok(&[
        &log_args[..],
        &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id],
    ]
    .concat());
    // exec joins the container's namespaces: its hostname and its pid 1.
    assert_eq!(
        env.ok(&[&log_args[..], &["exec", &id, "hostname"]].concat())
            .trim(),
        "inside"
    );
    // On a cgroup v2 host both were forked straight into the container's
    // cgroup (no move, which waits for an RCU grace period); on v1 moved.
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_placed(&log, v2);
    assert_eq!(
        env.ok(&["exec", &id, "cat", "/proc/1/cmdline"])
            .replace('\0', " ")
            .trim(),
        "sleep 1000"
    );
    assert_eq!(
        env.ok(&["exec", "--env", "X=42", &id, "sh", "-c", "echo $X"])
            .trim(),
        "42"
    );
    let out = env.run(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    let err = env.fail(&["exec", &id, "no-such-program"]);
    assert!(err.contains("not found"), "{err}");
    // ps lists the init (and the sleep it runs as itself).
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    let init = env.state(&id)["pid"].as_i64().unwrap();
    assert!(pids.contains(&init), "{pids:?}");
    assert!(env.ok(&["ps", &id]).contains("sleep 1000"));
    // Limits from config.json are in the cgroup.
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert!(stats["data"]["pids"]["current"].as_u64().unwrap() >= 1);
    assert_eq!(
        stats["data"]["memory"]["usage"]["limit"].as_u64().unwrap(),
        64 << 20
    );
    assert_eq!(stats["data"]["pids"]["limit"].as_u64().unwrap(), 50);
    env.ok(&["update", "--memory", "32m", "--pids-limit", "20", &id]);
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(
        stats["data"]["memory"]["usage"]["limit"].as_u64().unwrap(),
        32 << 20
    );
    assert_eq!(stats["data"]["pids"]["limit"].as_u64().unwrap(), 20);
    let mem_dir = env
        .cgroup_dirs(&id)
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists());
    if let Some(d) = mem_dir {
        let f = if d.join("memory.max").exists() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        assert_eq!(
            std::fs::read_to_string(d.join(f)).unwrap().trim(),
            (32u64 << 20).to_string()
        );
    }
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

#[test]
fn hooks_fire_in_order_with_state() {
    if !is_root() {
        return;
    }
    let env = Env::new("hooks");
    let id = env.id("c");
    let log = env.work.path().join("hooks.log");
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Runtime-namespace hooks append "<kind> <state json>" to the log.
    let host_hook = |kind: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("printf '{kind} %s\\n' \"$(cat)\" >> {}", log.display())]});
    let bundle = env.bundle("b", &["sh", "-c", "sleep 1000"], |v| {
        add_bind(v, &data, "/data");
        v["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            // startContainer runs inside the container: its path is the container's.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /data/start-hook"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    env.ok(&["delete", "--force", &id]);
    let text = std::fs::read_to_string(&log).unwrap();
    let kinds: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ]
    );
    for line in text.lines() {
        let st: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(st["id"], id.as_str(), "{line}");
        assert!(
            st["pid"].as_i64().unwrap() > 0 || line.starts_with("poststop"),
            "{line}"
        );
    }
    assert!(
        text.lines().nth(3).unwrap().contains("\"running\""),
        "{text}"
    );
    let start: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("start-hook")).unwrap()).unwrap();
    assert_eq!(start["id"], id.as_str());
    env.assert_gone(&id);
}

#[test]
fn failing_prestart_hook_aborts_create_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let env = Env::new("badhook");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sh", "-c", "sleep 1000"], |v| {
        v["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 2"]}]});
    });
    let err = env.fail(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(
        err.contains("prestart hook") && err.contains("nope"),
        "{err}"
    );
    env.assert_gone(&id);
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

/// Receives one fd sent with SCM_RIGHTS on a unix listener.

#[test]
fn console_socket_gets_a_working_pty() {
    if !is_root() {
        return;
    }
    let env = Env::new("tty");
    let id = env.id("c");
    let sock = env.work.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let bundle = env.bundle("b", &["sh"], |v| v["process"]["terminal"] = json!(true));
    // Without a console socket a terminal container is refused up front.
    let err = env.fail(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("--console-socket"), "{err}");
    env.assert_gone(&id);
    let bundle_str = bundle.to_str().unwrap().to_string();
    let sock_str = sock.to_str().unwrap().to_string();
    let root = env.root.path().to_path_buf();
    let id2 = id.clone();
    let creator = std::thread::spawn(move || {
        std::process::Command::new(ferry_bin())
            .arg("--root")
            .arg(root)
            .args([
                "create",
                "--bundle",
                &bundle_str,
                "--console-socket",
                &sock_str,
                &id2,
            ])
            .output()
            .unwrap()
    });
    let master = recv_fd(&listener);
    let out = creator.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["start", &id]);
    let mut f = std::fs::File::from(master);
    f.write_all(b"echo tty-$((40+2)); tty\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let ok = wait_until(Duration::from_secs(5), || {
        let n = f.read(&mut buf).unwrap_or(0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.contains("tty-42") && seen.contains("/dev/")
    });
    assert!(ok, "{seen}");
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

#[test]
fn user_namespace_maps_root() {
    if !is_root() {
        return;
    }
    let env = Env::new("userns");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sh", "-c", "cat /proc/self/uid_map; id -u"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The rootfs must be reachable by the mapped root.
    let st = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = env.run(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(fields, ["0", "100000", "65536"]);
    assert_eq!(text.lines().nth(1).unwrap(), "0");
    env.assert_gone(&id);
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    if !is_root() {
        return;
    }
    let env = Env::new("bad");
    let id = env.id("c");
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bundle = env.bundle("b", &["sh", "-c", COUNTER], |v| add_bind(v, &data, "/data"));
    let b = bundle.to_str().unwrap();

    // Invalid IDs.
    for bad in ["a/b", "..", "has space"] {
        let err = env.fail(&["create", "--bundle", b, bad]);
        assert!(err.contains("invalid container ID"), "{err}");
    }
    // Missing bundle / config.json, malformed JSON, unsupported field.
    let err = env.fail(&["create", "--bundle", "/nonexistent/bundle", &id]);
    assert!(err.contains("no such directory"), "{err}");
    let empty = env.work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = env.fail(&["create", "--bundle", empty.to_str().unwrap(), &id]);
    assert!(err.contains("no config.json"), "{err}");
    let broken = env.work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("config.json"),
        "{\n \"ociVersion\": \"1.0.2\",\n \"process\": [}\n",
    )
    .unwrap();
    let err = env.fail(&["create", "--bundle", broken.to_str().unwrap(), &id]);
    assert!(err.contains("line 3 column"), "{err}");
    let seccomp = env.bundle("seccomp", &["true"], |v| {
        v["linux"]["seccomp"] =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"});
    });
    let err = env.fail(&["create", "--bundle", seccomp.to_str().unwrap(), &id]);
    assert!(
        err.contains("linux.seccomp") && err.contains("listenerPath"),
        "{err}"
    );
    let missing_prog = env.bundle("noprog", &["/no/such/program"], |_| {});
    let err = env.fail(&["create", "--bundle", missing_prog.to_str().unwrap(), &id]);
    assert!(err.contains("/no/such/program"), "{err}");
    env.assert_gone(&id);
    // An rlimit above this host's hard limit is refused, not hung on.
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    let can_raise = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap();
    if can_raise || hard.rlim_max == libc::RLIM_INFINITY {
        eprintln!(
            "rlimit case skipped: this host lets root raise RLIMIT_NOFILE (CAP_SYS_RESOURCE)"
        );
    } else {
        let high = env.bundle("rlimit", &["true"], |v| {
            v["process"]["rlimits"] =
                json!([{"type": "RLIMIT_NOFILE", "hard": hard.rlim_max + 1, "soft": 1024}]);
        });
        let err = env.fail(&["create", "--bundle", high.to_str().unwrap(), &id]);
        assert!(
            err.contains("RLIMIT_NOFILE") && err.contains("hard limit"),
            "{err}"
        );
        env.assert_gone(&id);
    }
    // Operations on a nonexistent container.
    for args in [
        vec!["state", "nope"],
        vec!["kill", "nope"],
        vec!["exec", "nope", "true"],
        vec!["delete", "nope"],
        vec!["start", "nope"],
    ] {
        let err = env.fail(&args);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }

    // Wrong states, with a live container whose state must survive each.
    env.ok(&["run", "-d", "--bundle", b, &id]);
    let before = std::fs::read(env.root.path().join(&id).join("state.json")).unwrap();
    let err = env.fail(&["create", "--bundle", b, &id]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fail(&["start", &id]);
    assert!(err.contains("is running"), "{err}");
    let err = env.fail(&["delete", &id]);
    assert!(err.contains("--force"), "{err}");
    let err = env.fail(&["kill", &id, "NOSUCHSIG"]);
    assert!(err.contains("unknown signal"), "{err}");
    assert_eq!(env.status(&id), "running");
    assert_eq!(
        std::fs::read(env.root.path().join(&id).join("state.json")).unwrap(),
        before
    );
    let c1 = read_num(&data.join("count")).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(5), || read_num(
        &data.join("count")
    )
    .unwrap_or(0)
        > c1));
    // A stopped container cannot be paused or exec'd into.
    env.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || env.status(&id) == "stopped"));
    let err = env.fail(&["pause", &id]);
    assert!(err.contains("is stopped"), "{err}");
    let err = env.fail(&["exec", &id, "true"]);
    assert!(err.contains("is stopped"), "{err}");
    env.ok(&["delete", &id]);
    env.assert_gone(&id);
}

#[test]
fn seccomp_filter_applies_to_init_and_exec() {
    if !is_root() {
        return;
    }
    let env = Env::new("seccomp");
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    });
    let bundle = env.bundle(
        "c",
        &[
            "sh",
            "-c",
            "grep '^Seccomp:' /proc/self/status; mkdir /x 2>&1; echo rc=$?",
        ],
        |v| v["linux"]["seccomp"] = profile.clone(),
    );
    let id = env.id("c");
    let out = env.run(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(
        text.contains("Permission denied") && text.contains("rc=1"),
        "{text}"
    );
    assert!(!bundle.join("rootfs/x").exists());

    // A running container: exec'd processes get the same filter.
    let bundle = env.bundle("d", &["sleep", "1000"], |v| {
        v["linux"]["seccomp"] = profile.clone()
    });
    let id = env.id("d");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let out = env.run(&["exec", &id, "sh", "-c", "mkdir /y 2>&1; echo rc=$?"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Permission denied") && text.contains("rc=1"),
        "{text}"
    );
    env.ok(&["delete", "--force", &id]);

    // A profile ferry cannot honour is refused before anything runs.
    let bundle = env.bundle("e", &["true"], |v| {
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"})
    });
    let id = env.id("e");
    let err = env.fail(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(
        err.contains("linux.seccomp") && err.contains("SCMP_ACT_NOTIFY"),
        "{err}"
    );
    env.assert_gone(&id);
}

#[test]
fn deny_all_devices_keeps_default_nodes_and_sysctls_beat_readonly_proc_sys() {
    if !is_root() {
        return;
    }
    let env = Env::new("podmanlike");
    // What podman sends: a bare "deny all" device rule and a sysctl, with
    // /proc/sys among the read-only paths.
    let bundle = env.bundle(
        "c",
        &[
            "sh",
            "-c",
            "echo x > /dev/null && head -c 3 /dev/zero | wc -c && cat /proc/sys/net/ipv4/ping_group_range",
        ],
        |v| {
            v["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
            v["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 0"});
        },
    );
    let id = env.id("c");
    let out = env.run(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], "3", "{text}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "0"]);
    env.assert_gone(&id);
}

/// A seccomp filter answering ENOSYS to `clone3`, as older container
/// profiles do, installed in the child before it execs (it is inherited by
/// everything it starts). Root needs no `no_new_privs` for it.
fn refuse_clone3(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only, in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let stmt = |code: u32, k: u32| libc::sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            };
            let filter = [
                stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_clone3 as u32,
                },
                stmt(
                    libc::BPF_RET | libc::BPF_K,
                    libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                ),
                stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where `clone3` is refused, the init and an exec'd process are moved
/// into the container's cgroup once they run, as before (the fall-back
/// of the fork into the cgroup on v2; the only way on v1).
#[test]
fn without_clone3_processes_are_moved_into_their_cgroup() {
    if !is_root() {
        skip("containers need root (euid is not 0)");
        return;
    }
    let env = Env::new("noclone3");
    let id = env.id("c");
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let log = env.work.path().join("debug.log");
    let filtered = |args: &[&str]| {
        let mut cmd = env.cmd(&[&["--debug", "--log", log.to_str().unwrap()][..], args].concat());
        refuse_clone3(&mut cmd);
        let out = capture(cmd);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    filtered(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_eq!(filtered(&["exec", &id, "echo", "inside"]).trim(), "inside");
    assert_placed(&log, false);
    // The init is in every directory of its cgroup all the same.
    let pid = env.state(&id)["pid"].to_string();
    for dir in env.cgroup_dirs(&id) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid),
            "{}: {procs}",
            dir.display()
        );
    }
    env.ok(&["delete", "-f", &id]);
    env.assert_gone(&id);
}

/// ferry's debug log `log` says the init and the exec relay were forked
/// into the container's cgroup (`placed`) or moved there.
fn assert_placed(log: &std::path::Path, placed: bool) {
    let logged = std::fs::read_to_string(log).unwrap();
    for what in ["container init cloned", "exec relay forked"] {
        let line = logged
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{logged}"));
        assert!(line.contains(&format!("placed={placed}")), "{line}");
    }
}
