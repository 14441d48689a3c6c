//! The steps from a fresh process to the user program, shared by the
//! container's init and exec: runc's own default config, capabilities the
//! kernel refuses, and exec's handshake (as root).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A bundle whose config.json is exactly what `runc spec` writes, with the
/// rootfs, args and terminal a test without a tty needs.
fn runc_bundle(env: &Env, name: &str, args: &[&str]) -> Option<PathBuf> {
    let dir = env.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let out = match Command::new("runc").arg("spec").current_dir(&dir).output() {
        Ok(out) => out,
        Err(e) => {
            skip(&format!(
                "runc is not installed ({e}): its default config is the input"
            ));
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = dir.join("rootfs");
    let st = Command::new("cp")
        .arg("-a")
        .arg(rootfs_template())
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success());
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The kernel refuses these ambient capabilities: none is inheritable.
    assert!(v["process"]["capabilities"]["inheritable"].is_null(), "{v}");
    assert!(v["process"]["capabilities"]["ambient"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_KILL")));
    v["root"]["path"] = json!(rootfs);
    v["process"]["args"] = json!(args);
    v["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    Some(dir)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn runc_default_config_runs_and_warns_of_the_ambient_capabilities() {
    if !is_root() {
        return;
    }
    let env = Env::new("runcspec");
    let Some(bundle) = runc_bundle(&env, "b", &["sh", "-c", "grep Cap /proc/self/status"]) else {
        return;
    };
    let id = env.id("c");
    let out = env.run(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for cap in ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"] {
        assert!(
            stderr.contains(&format!("can't raise ambient capability {cap}")),
            "{stderr}"
        );
    }
    // The program ran with the sets runc gives it: bounding, permitted and
    // effective as configured, nothing ambient or inheritable.
    use caps::Capability::*;
    let caps = [CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE]
        .iter()
        .fold(0, |m, c| m | c.bitmask());
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(
            stdout.contains(&format!("{set}:\t{caps:016x}")),
            "{set}: {stdout}"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert!(
            stdout.contains(&format!("{set}:\t{:016x}", 0)),
            "{set}: {stdout}"
        );
    }

    // With --log the warning goes to the log, not to stderr.
    let log = env.work.path().join("log.json");
    let id = env.id("logged");
    let out = env.run(&[
        "--log",
        log.to_str().unwrap(),
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("ambient"),
        "{}",
        text(&out.stderr)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("can't raise ambient capability CAP_KILL"),
        "{logged}"
    );
}

/// A process for `exec --process` from the container's own.
fn process_json(env: &Env, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut p = json!({
        "args": ["true"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin:/usr/bin"],
    });
    edit(&mut p);
    let path = env.work.path().join(name);
    std::fs::write(&path, p.to_string()).unwrap();
    path
}

/// A running container to exec into (None when not root).
fn running(tag: &str) -> Option<(Env, String)> {
    if !is_root() {
        return None;
    }
    let env = Env::new(tag);
    let id = env.id("c");
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    Some((env, id))
}

#[test]
fn exec_warns_of_refused_ambient_capabilities_and_applies_rlimits() {
    let Some((env, id)) = running("execcaps") else {
        return;
    };
    let p = process_json(&env, "p.json", |p| {
        p["args"] = json!(["sh", "-c", "grep CapAmb /proc/self/status; ulimit -n"]);
        p["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_CHOWN"],
            "ambient": ["CAP_KILL", "CAP_CHOWN"],
        });
        p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 333, "soft": 222}]);
    });
    let out = env.run(&["exec", "--process", p.to_str().unwrap(), &id]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("can't raise ambient capability CAP_KILL"),
        "{stderr}"
    );
    assert!(!stderr.contains("CAP_CHOWN"), "{stderr}");
    // CAP_CHOWN is inheritable too, so the kernel raised it.
    let chown = caps::Capability::CAP_CHOWN.bitmask();
    assert!(
        stdout.contains(&format!("CapAmb:\t{chown:016x}")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "222"), "{stdout}");
}

#[test]
fn exec_returns_once_the_process_runs_not_when_it_ends() {
    let Some((env, id)) = running("execwait") else {
        return;
    };
    let pid_file = env.work.path().join("exec.pid");
    let mut exec = env
        .cmd(&[
            "exec",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sleep",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The pid file is written once the process has exec'ed.
    let written = wait_until(Duration::from_millis(1500), || pid_file.exists());
    let still_running = exec.try_wait().unwrap().is_none();
    let out = exec.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        written && still_running,
        "exec returned only when its process ended"
    );
    assert!(Path::new(&pid_file).exists());
}

#[test]
fn exec_with_a_terminal_hands_it_over_while_the_process_waits_for_input() {
    use std::io::{Read, Write};
    let Some((env, id)) = running("exectty") else {
        return;
    };
    let sock = env.work.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let sock = sock.to_str().unwrap();
    let exec = env
        .cmd(&["exec", "-t", "--console-socket", sock, &id, "sh"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The shell reads the terminal: the master must arrive before it ends.
    listener.set_nonblocking(true).unwrap();
    let mut stream = None;
    wait_until(Duration::from_secs(10), || {
        stream = listener.accept().ok().map(|(s, _)| s);
        stream.is_some()
    });
    let stream = stream.expect("exec sent no terminal while its process ran");
    let mut f = std::fs::File::from(recv_fd_from(&stream));
    f.write_all(b"echo tty-$((40+2)); awk '{print \"ctty=\" $7}' /proc/self/stat; exit 3\n")
        .unwrap();
    // Complete output lines only (the terminal echoes the input too).
    let ctty = |seen: &str| {
        let complete = seen.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .find_map(|l| l.trim().strip_prefix("ctty=").map(str::to_string))
    };
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let ok = wait_until(Duration::from_secs(5), || {
        let n = f.read(&mut buf).unwrap_or(0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.contains("tty-42") && ctty(&seen).is_some()
    });
    let out = exec.wait_with_output().unwrap();
    assert!(ok, "{seen}");
    // The terminal is the shell's controlling terminal (a tty number, not 0).
    assert_ne!(ctty(&seen).unwrap(), "0", "{seen}");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}
