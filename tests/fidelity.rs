//! Fidelity: one container holding every kind of state ferry promises to
//! carry (stdio, a unix socket pair, an flock'd file, an interval timer and
//! a sleep in progress, a 3-process tree, an established TCP connection
//! through its veth, files in its /dev/shm) goes through a local checkpoint/restore and each
//! migration mode, and every property is checked after (the workload,
//! tests/support/fidelity.c, checks them from inside; the test checks
//! stdout's sequence and the lock from outside).
//!
//! Stop-copy runs everywhere. Pre-copy needs soft-dirty tracking and
//! post-copy a working lazy dump (a stock kernel: scripts/test-guest.sh runs
//! these there); where the host lacks them the mode must be refused with
//! the measured reason, and the container must run on with every property
//! intact.
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use common::hosts::*;
use common::*;
use serde_json::{json, Value};

/// The echo peer's port.
const PORT: &str = "7100";
/// The grandchild's sleep, in milliseconds.
const SLEEP_MS: &str = "1000";

/// tests/support/fidelity.c, built static once per test binary (the
/// busybox rootfs has no libc).
fn fidelity_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fidelity-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fidelity.c");
        let st = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(src)
            .status()
            .expect("cc (build-essential) is needed to build the fidelity workload");
        assert!(st.success(), "building the fidelity workload failed");
        out
    })
}

/// The workload's status file: each property ok or failed (with why),
/// its beat and the sleeps it completed.
#[derive(Debug, Clone)]
struct Status {
    props: BTreeMap<String, (bool, String)>,
    beat: u64,
    sleeps: u64,
    text: String,
}

fn status(data: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(data.join("status")).ok()?;
    let mut st = Status {
        props: BTreeMap::new(),
        beat: 0,
        sleeps: 0,
        text: text.clone(),
    };
    for line in text.lines() {
        let mut w = line.splitn(3, ' ');
        let (name, verdict, rest) = (w.next()?, w.next()?, w.next().unwrap_or(""));
        match name {
            "beat" => st.beat = verdict.parse().ok()?,
            "sleeps" => st.sleeps = verdict.parse().ok()?,
            _ => {
                st.props
                    .insert(name.to_string(), (verdict == "ok", rest.to_string()));
            }
        }
    }
    (st.props.len() == 8).then_some(st)
}

/// Waits until the workload ran `beats` beats and finished `sleeps` sleeps
/// past `from` (or from its start).
fn wait_progress(data: &Path, from: Option<&Status>, beats: u64, sleeps: u64) -> Status {
    let (b0, s0) = from.map(|s| (s.beat, s.sleeps)).unwrap_or((0, 0));
    let mut last = None;
    let moved = wait_until(Duration::from_secs(120), || {
        last = status(data);
        last.as_ref()
            .is_some_and(|s| s.beat >= b0 + beats && s.sleeps >= s0 + sleeps)
    });
    assert!(
        moved,
        "the workload did not get {beats} beats and {sleeps} sleeps past {b0}/{s0}; status: {:?}",
        last.map(|s| s.text)
    );
    last.unwrap()
}

/// Lines read from one of the container's stdio pipes, in order.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(r: impl Read + Send + 'static, into: &Lines) -> JoinHandle<()> {
    let into = into.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

/// Runs `cmd` (a `run -d` or `restore -d`) with the container's stdout on
/// a pipe collected into `lines` and its stderr on an append-mode file;
/// returns the reader and the stdin pipe to keep open.
fn detach(
    mut cmd: Command,
    lines: &Lines,
    errlog: &Path,
) -> (JoinHandle<()>, std::process::ChildStdin) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(append(errlog))
        .spawn()
        .unwrap();
    let reader = collect(child.stdout.take().unwrap(), lines);
    let stdin = child.stdin.take().unwrap();
    let st = child.wait().unwrap();
    assert!(
        st.success(),
        "{cmd:?}: {}",
        std::fs::read_to_string(errlog).unwrap_or_default()
    );
    (reader, stdin)
}

/// The "out N" lines must count 1, 2, 3... with no gap or repeat; returns
/// the last N.
fn stdio_sequence(lines: &[String]) -> Result<u64, String> {
    let mut want = 1;
    for l in lines.iter().filter_map(|l| l.strip_prefix("out ")) {
        let n: u64 = l.trim().parse().map_err(|_| format!("bad line {l:?}"))?;
        if n != want {
            return Err(format!("stdout line {n} where {want} was due"));
        }
        want += 1;
    }
    Ok(want - 1)
}

/// A second flock on the file the container locked (`lock`, the host's
/// path of its /lock) must fail with EWOULDBLOCK.
fn flock_held(lock: &Path) -> Result<(), String> {
    use nix::fcntl::{Flock, FlockArg};
    let f = std::fs::File::open(lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_) => Err("the lock file was free: the container's flock is gone".into()),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(()),
        Err((_, e)) => Err(format!("flock from outside: {e}")),
    }
}

/// Every property after `what`: the workload's own verdicts, the same
/// pids as `before`, stdout's sequence going on past `before_lines`, the
/// lock file (`lock`) still locked. Panics with the list of what broke.
fn assert_survived(
    what: &str,
    data: &Path,
    lock: &Path,
    before: &Status,
    before_lines: u64,
    lines: &[String],
) {
    let now = status(data).expect("status");
    let mut broke: Vec<String> = now
        .props
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(name, (_, why))| format!("{name}: {why}"))
        .collect();
    if now.props["tree"].1 != before.props["tree"].1 {
        broke.push(format!(
            "tree: {} before, {} after",
            before.props["tree"].1, now.props["tree"].1
        ));
    }
    match stdio_sequence(lines) {
        Ok(n) if n > before_lines => {}
        Ok(n) => broke.push(format!(
            "stdio: no line after the {before_lines} read before (last {n})"
        )),
        Err(e) => broke.push(format!("stdio: {e}")),
    }
    if let Err(e) = flock_held(lock) {
        broke.push(format!("flock (from outside): {e}"));
    }
    assert!(
        broke.is_empty(),
        "after {what}, broken: {}\nstatus:\n{}",
        broke.join("; "),
        now.text
    );
    eprintln!("after {what}:\n{}", now.text);
}

/// A TCP echo server (busybox nc running cat) in a network namespace,
/// killed (by pid) on drop.
struct Peer(Child);

impl Peer {
    fn start(ns: &NetNs) -> Peer {
        let c = ns
            .command(&["busybox", "nc", "-l", "-p", PORT, "-e", "/bin/cat"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Peer(c)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bundle running the workload with `data` at /data, a veth to its host
/// (`net` picks 10.79.net.0/24), talking TCP to `peer`.
fn workload(bundle: PathBuf, peer: &str) -> PathBuf {
    std::fs::copy(fidelity_bin(), bundle.join("rootfs/fidelity")).unwrap();
    edit_config(&bundle, |v| {
        v["process"]["args"] = json!(["/fidelity", "/data", "/lock", peer, PORT, SLEEP_MS])
    });
    bundle
}

fn veth(v: &mut Value, tag: &str, net: u8) {
    v["annotations"] = json!({
        "org.ferry.net.veth": format!(
            "host=ff{tag}{},container=eth0,address=10.79.{net}.2/24,host-address=10.79.{net}.1/24",
            std::process::id() % 10000
        )
    });
}

#[test]
fn local_checkpoint_restore_keeps_every_property() {
    let Some(_g) = serial() else { return };
    let host = NetNs::new("fidl");
    let env = Env::new("fidl");
    env.set_netns(&host.name);
    let _peer = Peer::start(&host);
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bundle = env.bundle("b", &[], |v| {
        add_bind(v, &data, "/data");
        veth(v, "l", 1);
    });
    let bundle = workload(bundle, "10.79.1.1");
    let id = env.id("w");
    let lines: Lines = Arc::default();
    let errlog = env.work.path().join("stderr");
    let (reader, _stdin) = detach(
        env.cmd(&["run", "-d", "--bundle", s(&bundle), &id]),
        &lines,
        &errlog,
    );
    let lock = bundle.join("rootfs/lock");
    let before = wait_progress(&data, None, 60, 1);
    let n0 = stdio_sequence(&lines.lock().unwrap()).unwrap();
    assert_survived("start", &data, &lock, &before, 0, &lines.lock().unwrap());

    let images = env.work.path().join("img");
    env.ok(&checkpoint_args(
        &images,
        &["--tcp-established", "--file-locks"],
        &id,
    ));
    let at_dump = status(&data).unwrap();
    // The sleeps in progress were cut by the dump: CRIU restores them as
    // EINTR, and the "sleep" property checks the workload sleeps on.
    let log = std::fs::read_to_string(images.join("dump.log")).unwrap();
    assert!(
        log.contains("with interrupted system call"),
        "no sleep was cut by the dump (dump.log)"
    );
    // The old stdout pipe ends with the dumped container.
    reader.join().unwrap();
    let (reader, _stdin2) = detach(
        env.cmd(&restore_args(
            &bundle,
            &images,
            &["--tcp-established", "--file-locks"],
            &id,
        )),
        &lines,
        &errlog,
    );
    wait_progress(&data, Some(&at_dump), 100, 2);
    assert_survived(
        "checkpoint/restore",
        &data,
        &lock,
        &before,
        n0,
        &lines.lock().unwrap(),
    );
    env.ok(&["delete", "--force", &id]);
    reader.join().unwrap();
}

/// Two hosts with the workload on A, its TCP peer on B: A forwards
/// between the container's veth and the link, B routes the container's
/// subnet back through A while the container's veth is on A (the
/// connected route, while it is on B, beats that one's metric 100).
struct Case {
    w: World,
    id: String,
    data: PathBuf,
    /// The host's path of the container's /lock where it runs now.
    lock: PathBuf,
    /// The container runs on B.
    on_b: bool,
    lines: Lines,
    _peer: Peer,
    _stdin: std::process::ChildStdin,
    before: Status,
    n0: u64,
}

fn start_case(tag: &str, net: u8) -> Case {
    let mut w = World::new(tag, net);
    let sh = |h: &Host, cmd: &str| {
        let out = h.ns.exec(&["sh", "-c", cmd]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&w.a, "sysctl -qw net.ipv4.ip_forward=1");
    sh(
        &w.b,
        &format!("ip route add 10.79.{net}.0/24 via {} metric 100", w.a.addr),
    );
    let peer = Peer::start(&w.b.ns);
    let id = w.id(&format!("fid{tag}"));
    let data = w.work.path().join(format!("{tag}-data"));
    std::fs::create_dir_all(&data).unwrap();
    let bundle = w.bundle(tag, &[], &data, |v| veth(v, tag, net));
    let bundle = workload(bundle, &w.b.addr);
    let lines: Lines = Arc::default();
    let errlog = w.work.path().join(format!("{tag}-stderr"));
    let (_reader, stdin) = detach(
        w.a.ferry(&["run", "-d", "--bundle", s(&bundle), &id]),
        &lines,
        &errlog,
    );
    // The container reaches B's link address through its host's end.
    let pid = serde_json::from_str::<Value>(&w.a.ok(&["state", &id])).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let route = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "route", "add", &format!("{}/32", w.b.addr)])
        .args(["via", &format!("10.79.{net}.1")])
        .output()
        .unwrap();
    assert!(
        route.status.success(),
        "{}",
        String::from_utf8_lossy(&route.stderr)
    );
    let before = wait_progress(&data, None, 60, 1);
    let n0 = stdio_sequence(&lines.lock().unwrap()).unwrap();
    let lock = bundle.join("rootfs/lock");
    assert_survived("start", &data, &lock, &before, 0, &lines.lock().unwrap());
    // Both hosts serve: the container moves on from wherever it is.
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    w.a.serve(&pki, "a", &shared);
    Case {
        w,
        id,
        data,
        lock,
        on_b: false,
        lines,
        _peer: peer,
        _stdin: stdin,
        before,
        n0,
    }
}

/// `mode` with the flags that carry the workload's lock and connection.
fn with_state<'a>(mode: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--tcp-established", "--file-locks", "--rootfs", "ship"];
    v.extend_from_slice(mode);
    v
}

impl Case {
    /// (where it runs, the other host)
    fn hosts(&self) -> (&Host, &Host) {
        if self.on_b {
            (&self.w.b, &self.w.a)
        } else {
            (&self.w.a, &self.w.b)
        }
    }

    /// Every stdout line so far: the first pipe's, then what each
    /// `ferry serve` relayed, in the order of the numbers (a host's log
    /// holds every stay there).
    fn stdout_lines(&self) -> Vec<String> {
        let mut lines = self.lines.lock().unwrap().clone();
        for h in [&self.w.a, &self.w.b] {
            let text = std::fs::read_to_string(h.dir.path().join("serve.out")).unwrap_or_default();
            lines.extend(text.lines().map(String::from));
        }
        let n = |l: &String| l.strip_prefix("out ").and_then(|n| n.parse::<u64>().ok());
        lines.retain(|l| n(l).is_some());
        lines.sort_by_key(n);
        lines
    }

    /// Migrates to the other host with `mode`'s flags and checks every
    /// property there. The rootfs is shipped: a lock on storage both
    /// hosts share cannot move (docs/migrate.md), so the locked file is
    /// the container's own.
    fn migrate(&mut self, mode: &[&str]) -> Value {
        let at_dump = status(&self.data).unwrap();
        let (from, to) = self.hosts();
        let r = self.w.migrate_ok(from, to, &self.id, &with_state(mode));
        assert_eq!(to.status(&self.id).as_deref(), Some("running"));
        assert!(from.status(&self.id).is_none());
        // The container's stdout there is `ferry serve`'s append-mode log:
        // still in append mode (so it can move on), serve's first line
        // not written over.
        let pid = serde_json::from_str::<Value>(&to.ok(&["state", &self.id])).unwrap()["pid"]
            .as_i64()
            .unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/1")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
            .unwrap();
        assert_ne!(flags & libc::O_APPEND, 0, "stdout lost O_APPEND: {info}");
        let log = std::fs::read_to_string(to.dir.path().join("serve.out")).unwrap();
        assert!(
            log.starts_with("listening on "),
            "serve's log overwritten: {log:.200}"
        );
        let lock = to.bundles().join(&self.id).join("rootfs/lock");
        self.on_b = !self.on_b;
        self.lock = lock;
        wait_progress(&self.data, Some(&at_dump), 100, 2);
        assert_survived(
            &format!("{} migration", r["mode"]),
            &self.data,
            &self.lock,
            &self.before,
            self.n0,
            &self.stdout_lines(),
        );
        r
    }

    /// A migration with `args` is refused with `reason` before anything
    /// froze, and every property holds where the container runs.
    fn refused(&self, args: &[&str], reason: &str) {
        let at = status(&self.data).unwrap();
        let (from, to) = self.hosts();
        let out = self.w.migrate(from, to, &self.id, args, None);
        assert!(!out.status.success(), "{args:?} ran on this host");
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("ferry: ")).unwrap_or("");
        assert!(line.contains(reason), "{line}");
        eprintln!("{args:?} refused: {line}");
        assert_eq!(from.status(&self.id).as_deref(), Some("running"));
        wait_progress(&self.data, Some(&at), 50, 0);
        assert_survived(
            &format!("a refused {args:?}"),
            &self.data,
            &self.lock,
            &self.before,
            self.n0,
            &self.stdout_lines(),
        );
    }
}

/// Whether the kernel tracks dirty memory (CRIU's mem_track feature).
fn tracks_dirty_memory() -> bool {
    ferry::criu::Criu::new()
        .and_then(|c| c.features())
        .map(|f| f.mem_track)
        .unwrap_or(false)
}

/// One container goes A -> B by stop-copy, back by pre-copy, and on by
/// post-copy (one world and one start: each costs seconds under the
/// guest's emulation). Where the host cannot run a mode, the mode must be
/// refused with the measured reason and every property hold after.
#[test]
fn every_migration_mode_keeps_every_property() {
    let Some(_g) = serial() else { return };
    let mut c = start_case("fm", 31);
    // The lock is on the root filesystem: with the destination sharing
    // it, the destination could not take the lock A holds until the
    // commit.
    c.refused(
        &["--file-locks", "--rootfs", "shared", "--mode", "stop-copy"],
        "holds a lock on /lock in its root filesystem",
    );

    let r = c.migrate(&["--mode", "stop-copy"]);
    assert_eq!(r["mode"], "stop-copy", "{r}");

    let pre = ["--mode", "pre-copy"];
    if tracks_dirty_memory() {
        let r = c.migrate(&pre);
        assert_eq!(r["mode"], "pre-copy", "{r}");
        assert!(!r["pre_copy"].as_array().unwrap().is_empty(), "{r}");
    } else {
        c.refused(&with_state(&pre), "soft-dirty");
    }

    let post = [
        "--mode",
        "post-copy",
        "--accept-postcopy-risk",
        "--postcopy-link-timeout",
        "10",
    ];
    let lazy = ferry::criu::Criu::new()
        .map(|c| ferry::check::lazy_pages_work(&c).is_ok())
        .unwrap_or(false);
    if lazy {
        let r = c.migrate(&post);
        assert_eq!(r["mode"], "post-copy", "{r}");
    } else {
        c.refused(&with_state(&post), "lazy");
    }
}
