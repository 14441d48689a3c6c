//! Terminals, working directories and paused containers as a caller written
//! for runc sees them: the same command against runc (Debian's, the
//! reference) and ferry, on the same bundle (as root). Interactive commands
//! run on a real pseudo-terminal that the test holds the master of.
mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::runc::{sleeping, Runc};
use common::*;
use nix::sys::termios::{tcgetattr, Termios};
use serde_json::json;

/// A terminal for the command under test: its controlling terminal and
/// stdio; the test types into `master` and reads from it.
struct Terminal {
    master: std::fs::File,
    slave: OwnedFd,
    seen: String,
}

impl Terminal {
    fn new(rows: u16, cols: u16) -> Terminal {
        let pty = nix::pty::openpty(None, None).unwrap();
        // Other tests' children must not inherit (and hold open) this pty.
        for fd in [&pty.master, &pty.slave] {
            let flag = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
            nix::fcntl::fcntl(fd, flag).unwrap();
        }
        let t = Terminal {
            master: pty.master.into(),
            slave: pty.slave,
            seen: String::new(),
        };
        t.resize(rows, cols);
        t
    }

    /// Sets the window size; the session's foreground group gets SIGWINCH.
    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we own.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    /// The terminal's mode (the same from either end).
    fn mode(&self) -> Termios {
        tcgetattr(self.slave.as_fd()).unwrap()
    }

    /// Starts `cmd` in a new session whose controlling terminal this is.
    fn spawn(&self, mut cmd: Command) -> Child {
        let slave = self.slave.as_raw_fd();
        cmd.stdin(self.stdio())
            .stdout(self.stdio())
            .stderr(self.stdio());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    fn type_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\r").as_bytes())
            .unwrap();
    }

    /// Reads until `want` appears (after what earlier waits consumed).
    fn expect(&mut self, want: &str) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while !self.seen.contains(want) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {want:?} on the terminal: {:?}",
                self.seen
            );
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout = nix::poll::PollTimeout::try_from(left).unwrap();
            if nix::poll::poll(&mut fds, timeout).unwrap() == 0 {
                continue;
            }
            let n = self.master.read(&mut buf).unwrap();
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let at = self.seen.find(want).unwrap() + want.len();
        let before: String = self.seen.drain(..at).collect();
        before
    }
}

fn same_mode(a: &Termios, b: &Termios) -> bool {
    a.input_flags == b.input_flags
        && a.output_flags == b.output_flags
        && a.control_flags == b.control_flags
        && a.local_flags == b.local_flags
        && a.control_chars == b.control_chars
}

fn wait_exit(child: &mut Child) -> i32 {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the command did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drives an interactive `sh` in the container on a 33x77 terminal: the
/// shell sees that terminal (size, resize), computes, and its exit status
/// comes back; the caller's terminal mode is as before. Returns what
/// `tty` printed.
fn drive_shell(cmd: Command, exit: i32) -> String {
    let mut t = Terminal::new(33, 77);
    let before = t.mode();
    let mut child = t.spawn(cmd);
    t.expect("# ");
    t.type_line("tty; stty size; echo $((6*7))");
    let out = t.expect("42\r\n");
    assert!(out.contains("33 77\r\n"), "{out:?}");
    let tty = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim_end()
        .to_string();
    // While relaying, input is raw: the caller's terminal neither echoes
    // nor edits lines (the container's does).
    assert!(!t
        .mode()
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON));
    t.resize(40, 100);
    std::thread::sleep(Duration::from_millis(300));
    t.type_line("stty size; echo R$((2+3))");
    let out = t.expect("R5\r\n");
    assert!(out.contains("40 100\r\n"), "{out:?}");
    t.type_line(&format!("exit {exit}"));
    assert_eq!(wait_exit(&mut child), exit, "{:?}", t.seen);
    assert!(same_mode(&before, &t.mode()), "terminal mode not restored");
    tty
}

fn runc_cmd(runc: &Runc, args: &[&str]) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(runc.root()).args(args);
    c
}

#[test]
fn foreground_run_relays_the_terminal_like_runc() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("ttyrun");
    let bundle = env.bundle("b", &["sh"], |v| v["process"]["terminal"] = json!(true));
    let bundle = bundle.to_str().unwrap();
    let (f, r) = (env.id("f"), env.id("r"));
    let mut cmd = env.ferry();
    cmd.arg("--root")
        .arg(env.root.path())
        .args(["run", "--bundle", bundle, &f]);
    let ferry_tty = drive_shell(cmd, 3);
    let runc_tty = drive_shell(runc_cmd(&runc, &["run", "--bundle", bundle, &r]), 3);
    // The container's own terminal, from its own devpts.
    assert_eq!(ferry_tty, "/dev/pts/0");
    assert_eq!(ferry_tty, runc_tty);
    env.assert_gone(&f);
}

#[test]
fn foreground_exec_tty_relays_the_terminal_like_runc() {
    let Some((env, runc, f, r)) = sleeping("ttyexec") else {
        return;
    };
    let mut cmd = env.ferry();
    cmd.arg("--root")
        .arg(env.root.path())
        .args(["exec", "-t", &f, "sh"]);
    let ferry_tty = drive_shell(cmd, 4);
    let runc_tty = drive_shell(runc_cmd(&runc, &["exec", "-t", &r, "sh"]), 4);
    // A terminal of the container's devpts, named there.
    assert_eq!(ferry_tty, "/dev/pts/0");
    assert_eq!(ferry_tty, runc_tty);
    assert_eq!(env.status(&f), "running");
}

#[test]
fn a_detached_terminal_without_console_socket_is_refused_like_runc() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("ttydetach");
    let bundle = env.bundle("b", &["sh"], |v| v["process"]["terminal"] = json!(true));
    let bundle = bundle.to_str().unwrap();
    for verb in [&["run", "-d"][..], &["create"]] {
        let (f, r) = (
            env.id(verb[0]),
            format!("r{}-{}", std::process::id(), verb[0]),
        );
        let out = runc.run(&[verb, &["--bundle", bundle, &r]].concat());
        assert!(!out.status.success());
        let err = env.fail(&[verb, &["--bundle", bundle, &f]].concat());
        assert!(err.contains("--console-socket"), "{err}");
        env.assert_gone(&f);
    }
    let f = env.id("sleeper");
    let sleeper = env.bundle("s", &["sleep", "1000"], |_| {});
    env.ok(&["run", "-d", "--bundle", sleeper.to_str().unwrap(), &f]);
    let err = env.fail(&["exec", "-d", "-t", &f, "sh"]);
    assert!(err.contains("--console-socket"), "{err}");
}

#[test]
fn foreground_run_without_any_terminal_fails_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let env = Env::new("ttynone");
    let bundle = env.bundle("b", &["sh"], |v| v["process"]["terminal"] = json!(true));
    let f = env.id("f");
    // A new session without a controlling terminal, stdio on files.
    let mut cmd = env.cmd(&["run", "--bundle", bundle.to_str().unwrap(), &f]);
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(Stdio::null()).stderr(err.reopen().unwrap());
    // SAFETY: setsid only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    assert!(!cmd.status().unwrap().success());
    let msg = std::fs::read_to_string(err.path()).unwrap();
    assert!(msg.contains("/dev/tty"), "{msg}");
    assert_eq!(msg.trim_end().lines().count(), 1, "{msg}");
    env.assert_gone(&f);
}

#[test]
fn exec_process_json_console_size_sizes_the_terminal() {
    if !is_root() {
        return;
    }
    let env = Env::new("ttysize");
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let f = env.id("f");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &f]);
    let process = env.work.path().join("process.json");
    let p = json!({
        "terminal": true,
        "consoleSize": {"height": 12, "width": 34},
        "user": {"uid": 0, "gid": 0},
        "args": ["stty", "size"],
        "env": ["PATH=/bin:/sbin:/usr/bin"],
        "cwd": "/",
    });
    std::fs::write(&process, p.to_string()).unwrap();
    let sock = env.work.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = env
        .cmd(&[
            "exec",
            "--console-socket",
            sock.to_str().unwrap(),
            "-p",
            process.to_str().unwrap(),
            &f,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let master = recv_fd(&listener);
    assert_eq!(wait_exit(&mut child), 0);
    assert_eq!(read_to_hangup(master), "12 34");
    // The container's own terminal takes config.json's consoleSize too.
    let bundle = env.bundle("t", &["stty", "size"], |v| {
        v["process"]["terminal"] = json!(true);
        v["process"]["consoleSize"] = json!({"height": 21, "width": 43});
    });
    let t = env.id("t");
    let sock = sock.to_str().unwrap();
    let mut create = env
        .cmd(&[
            "create",
            "--console-socket",
            sock,
            "--bundle",
            bundle.to_str().unwrap(),
            &t,
        ])
        .spawn()
        .unwrap();
    let master = recv_fd(&listener);
    assert_eq!(wait_exit(&mut create), 0);
    env.ok(&["start", &t]);
    assert_eq!(read_to_hangup(master), "21 43");
}

/// What a terminal's processes wrote, until the last of them closed it.
fn read_to_hangup(master: OwnedFd) -> String {
    let mut out = Vec::new();
    // EIO once the slave side is closed and everything written is read.
    let _ = std::fs::File::from(master).read_to_end(&mut out);
    String::from_utf8_lossy(&out).trim_end().to_string()
}

#[test]
fn a_user_runs_in_a_cwd_only_root_may_search_like_runc() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("cwd");
    let bundle = env.bundle("b", &["sh", "-c", "pwd; id -u"], |v| {
        v["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        v["process"]["cwd"] = json!("/secret");
    });
    let secret = bundle.join("rootfs/secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let bundle = bundle.to_str().unwrap();
    let (f, r) = (env.id("f"), env.id("r"));
    let want = "/secret\n1000\n";
    assert_eq!(runc.ok(&["run", "--bundle", bundle, &r]), want);
    assert_eq!(env.ok(&["run", "--bundle", bundle, &f]), want);
    // exec takes the same path.
    let s = env.id("s");
    let sleeper = env.bundle("s", &["sleep", "1000"], |_| {});
    std::fs::create_dir(sleeper.join("rootfs/secret")).unwrap();
    std::fs::set_permissions(
        sleeper.join("rootfs/secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    env.ok(&["run", "-d", "--bundle", sleeper.to_str().unwrap(), &s]);
    let out = env.ok(&[
        "exec",
        "-u",
        "1000:1000",
        "--cwd",
        "/secret",
        &s,
        "sh",
        "-c",
        "pwd; id -u",
    ]);
    assert_eq!(out, want);
    // A cwd that does not exist still fails, naming it.
    let err = env.fail(&["exec", "-u", "1000", "--cwd", "/nowhere", &s, "true"]);
    assert!(err.contains("/nowhere"), "{err}");
}

#[test]
fn exec_into_a_paused_container_needs_ignore_paused_like_runc() {
    let Some((env, runc, f, r)) = sleeping("paused") else {
        return;
    };
    env.ok(&["pause", &f]);
    runc.ok(&["pause", &r]);
    let refused = "cannot exec in a paused container (use --ignore-paused to override)";
    let out = runc.run(&["exec", &r, "echo", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(refused));
    let err = env.fail(&["exec", &f, "echo", "hi"]);
    assert!(err.contains(refused), "{err}");
    // With the flag the process waits for the thaw, then runs.
    let mut exec = env
        .cmd(&["exec", "--ignore-paused", &f, "echo", "hi"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(exec.try_wait().unwrap().is_none(), "ran while paused");
    assert_eq!(env.status(&f), "paused");
    env.ok(&["resume", &f]);
    let out = exec.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}
