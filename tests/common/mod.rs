//! Shared harness for the integration tests: a private state root, busybox
//! bundles, unique container IDs, and cleanup that runs even when a test fails.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod check_sleepers;
pub mod invariants;
pub mod runc;
mod skip;
pub use skip::skip;

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// true when running as root; otherwise the test is skipped (see `skip`).
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip("needs root (namespaces, mounts and cgroups)");
        false
    }
}

/// A busybox rootfs built once per test binary by scripts/make-rootfs.sh.
pub fn rootfs_template() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-rootfs.sh");
        let st = Command::new("bash").arg(script).arg(&dir).status().unwrap();
        assert!(st.success(), "make-rootfs.sh failed");
        dir
    })
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// One test's world: state root, work dir, and the containers it made.
pub struct Env {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
    ids: RefCell<Vec<String>>,
    tag: String,
    /// Network namespace (by name) every ferry command runs in.
    netns: RefCell<Option<String>>,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        Env {
            root: tempfile::Builder::new()
                .prefix("ferry-root")
                .tempdir()
                .unwrap(),
            work: tempfile::Builder::new()
                .prefix("ferry-work")
                .tempdir()
                .unwrap(),
            ids: RefCell::new(Vec::new()),
            tag: tag.to_string(),
            netns: RefCell::new(None),
        }
    }

    /// A unique container ID, removed (forcibly) when the Env drops.
    pub fn id(&self, name: &str) -> String {
        let id = format!("t{}-{}-{}", std::process::id(), self.tag, name);
        self.ids.borrow_mut().push(id.clone());
        id
    }

    /// A bundle with a fresh copy of the busybox rootfs and a config.json from
    /// `ferry spec`, running `args` without a terminal; `edit` may change it.
    pub fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(rootfs_template())
            .arg(dir.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new(ferry_bin())
            .arg("spec")
            .arg("--bundle")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["process"]["terminal"] = Value::Bool(false);
        v["process"]["args"] = serde_json::json!(args);
        v["root"]["readonly"] = Value::Bool(false);
        // runc's default lists ambient capabilities the kernel refuses to
        // raise (none is inheritable) and starts with a warning per
        // capability; tests that read stderr want it quiet.
        v["process"]["capabilities"]["inheritable"] =
            v["process"]["capabilities"]["ambient"].clone();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        dir
    }

    /// Runs every later ferry command inside the named network namespace.
    pub fn set_netns(&self, name: &str) {
        *self.netns.borrow_mut() = Some(name.to_string());
    }

    /// A ferry command (inside the Env's network namespace, if set).
    pub fn ferry(&self) -> Command {
        match &*self.netns.borrow() {
            // nsenter, not `ip netns exec`: that remounts /sys and would hide
            // the cgroup hierarchies from ferry.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(ferry_bin());
                c
            }
            None => Command::new(ferry_bin()),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ferry();
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs ferry with its output captured (see [`capture`]).
    pub fn run(&self, args: &[&str]) -> Output {
        capture(self.cmd(args))
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A running counter container writing to `<work>/<name>-data/count`;
    /// returns (id, bundle, count file).
    pub fn counter(&self, name: &str) -> (String, PathBuf, PathBuf) {
        let id = self.id(name);
        let data = self.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let bundle = self.counter_bundle(name, &data);
        self.run_detached(&bundle, &id);
        let count = data.join("count");
        wait_counting(&count);
        (id, bundle, count)
    }

    /// A bundle counting into `data` (bound on /data).
    pub fn counter_bundle(&self, name: &str, data: &Path) -> PathBuf {
        self.bundle(name, &["sh", "-c", COUNTER], |v| add_bind(v, data, "/data"))
    }

    /// `run -d` of `bundle` as `id`, asserting success.
    pub fn run_detached(&self, bundle: &Path, id: &str) -> String {
        self.ok(&["run", "-d", "--bundle", s(bundle), id])
    }

    /// `run -d` of `bundle` as `id`, then waits until its process has
    /// made `/tmp/ready` (what it set up before is in place).
    pub fn run_until_ready(&self, bundle: &Path, id: &str) {
        self.run_detached(bundle, id);
        let ready = bundle.join("rootfs/tmp/ready");
        assert!(
            wait_until(Duration::from_secs(5), || ready.exists()),
            "{id} never made /tmp/ready"
        );
    }

    /// Runs and asserts failure with a one-line message; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "ferry {args:?} unexpectedly succeeded"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.starts_with("ferry: "), "{err}");
        err
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    pub fn state_file(&self, id: &str) -> Value {
        let text = std::fs::read_to_string(self.root.path().join(id).join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The cgroup directories recorded for `id`.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let v = self.state_file(id);
        v["cgroup"]["dirs"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|d| PathBuf::from(d.as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts nothing of `id` is left: no state dir, no cgroup directory.
    pub fn assert_gone(&self, id: &str) {
        assert!(
            !self.root.path().join(id).exists(),
            "state dir of {id} left behind"
        );
        for dir in default_cgroup_dirs(id) {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
    }

    /// Starts `ferry run -d` with piped stdio, for containers that talk.
    pub fn spawn_detached(&self, id: &str, bundle: &Path) -> std::process::Child {
        let mut c = self.ferry();
        c.arg("--root")
            .arg(self.root.path())
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self
                .ferry()
                .arg("--root")
                .arg(self.root.path())
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Where ferry puts `id`'s cgroup by default: `ferry/<id>` below this
/// process's cgroup, per controller (v1) or in the unified tree (v2).
pub fn default_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    cgroup_dirs(&format!("ferry/{id}"))
}

/// The criu processes in cgroup directories `dirs`, each once (cgroup v1
/// lists a process in every hierarchy).
pub fn criu_in(dirs: &[PathBuf]) -> Vec<i32> {
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "criu")
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The cgroup directories of relative cgroup path `rel` (below this
/// process's cgroup, per hierarchy), as ferry resolves them.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let own = path.trim_start_matches('/');
        if unified {
            if ctrls.is_empty() {
                out.push(Path::new("/sys/fs/cgroup").join(own).join(rel));
            }
        } else if !ctrls.is_empty() {
            for c in ctrls.split(',') {
                let base = Path::new("/sys/fs/cgroup").join(c.trim_start_matches("name="));
                if base.exists() {
                    out.push(base.join(own).join(rel));
                }
            }
        }
    }
    out
}

/// Reads a number a container writes into a file.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `checkpoint [extra…] --image-path IMAGES ID`.
pub fn checkpoint_args<'a>(images: &'a Path, extra: &[&'a str], id: &'a str) -> Vec<&'a str> {
    let mut v = vec!["checkpoint"];
    v.extend_from_slice(extra);
    v.extend(["--image-path", s(images), id]);
    v
}

/// `restore -d --bundle BUNDLE --image-path IMAGES [extra…] ID`.
pub fn restore_args<'a>(
    bundle: &'a Path,
    images: &'a Path,
    extra: &[&'a str],
    id: &'a str,
) -> Vec<&'a str> {
    let mut v = vec![
        "restore",
        "-d",
        "--bundle",
        s(bundle),
        "--image-path",
        s(images),
    ];
    v.extend_from_slice(extra);
    v.push(id);
    v
}

/// CRIU takes host-wide locks (iptables, its cgroup yard): the tests of a
/// binary that run it hold this, one at a time. `None` when not root (the
/// test returns).
pub fn criu_lock() -> Option<std::sync::MutexGuard<'static, ()>> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !is_root() {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Waits until a counter container has counted to 3 in `count`.
pub fn wait_counting(count: &Path) {
    wait_count(count, 3);
}

/// Waits until a counter container has counted to `n` in `count`.
pub fn wait_count(count: &Path, n: u64) {
    assert!(
        wait_until(Duration::from_secs(5), || read_num(count).unwrap_or(0) >= n),
        "{} never reached {n}: {:?}",
        count.display(),
        read_num(count)
    );
}

/// Removes what a [`COUNTER`] left in its /data: `count`, and the
/// `count.tmp` beside it when it was stopped between its `ln` and `mv`
/// (a counter restored into that /data would rename it into place).
pub fn clear_count(count: &Path) {
    std::fs::remove_file(count).unwrap();
    let _ = std::fs::remove_file(count.with_file_name("count.tmp"));
}

/// The counter moves on from `from`, a number it had reached when it was
/// checkpointed (or that it shows now): every number it shows is `from` or
/// more, and it passes `from + 3` within 5 s. A counter restarted at 1
/// shows less than `from` first, so this fails on it.
pub fn assert_continues(count: &Path, from: u64) {
    assert!(from >= 2, "a count of {from} cannot tell a restart apart");
    let mut low = None;
    let passed = wait_until(Duration::from_secs(5), || match read_num(count) {
        Some(n) if n >= from => n > from + 3,
        n => {
            low.get_or_insert(n);
            false
        }
    });
    match low {
        Some(Some(n)) => panic!("counter went back to {n} from {from}: restarted, not restored"),
        Some(None) => panic!(
            "no count in {} (a fresh /data is checked with assert_resumes first)",
            count.display()
        ),
        None => {}
    }
    assert!(
        passed,
        "counter stuck at {:?}, expected it to pass {from}",
        read_num(count)
    );
}

/// A counter restored into a /data without `count` goes on from its
/// checkpoint: the first number it writes (within 5 s) is `at` or more,
/// and it continues from there ([`assert_continues`]). `at` is a number
/// the counter had reached when it was checkpointed; one started afresh
/// writes 1.
pub fn assert_resumes(count: &Path, at: u64) {
    assert!(at >= 2, "a count of {at} cannot tell a restart apart");
    let mut first = None;
    wait_until(Duration::from_secs(5), || {
        first = read_num(count);
        first.is_some()
    });
    let first =
        first.unwrap_or_else(|| panic!("no count in {} 5 s after the restore", count.display()));
    assert!(
        first >= at,
        "restarted: the restored counter wrote {first}, it was at {at} or past when checkpointed"
    );
    assert_continues(count, first);
}

/// A file's text without surrounding whitespace ("" if unreadable); for a
/// symlink (what [`COUNTER`] writes), its target.
pub fn read_text(p: &Path) -> String {
    match std::fs::read_link(p) {
        Ok(target) => target.to_string_lossy().into_owned(),
        Err(_) => std::fs::read_to_string(p).unwrap_or_default(),
    }
    .trim()
    .to_string()
}

/// The number in a file (or a [`COUNTER`] symlink), if there is one yet.
pub fn read_num(path: &Path) -> Option<u64> {
    read_text(path).parse().ok()
}

/// A shell loop that publishes an increasing number as /data/count every
/// 50 ms. The number is a symlink's target, made and renamed into place by
/// two syscalls that hold no file open: a checkpoint then never catches an
/// open file in /data, which a copy restored onto another /data (or after
/// the original renamed it) could not reopen. Read it with [`read_num`].
pub const COUNTER: &str = "i=0; while :; do i=$((i+1)); ln -sf $i /data/count.tmp; mv -f /data/count.tmp /data/count; sleep 0.05; done";

/// Changes `bundle`'s config.json in place.
pub fn edit_config(bundle: &Path, edit: impl FnOnce(&mut Value)) {
    let path = bundle.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Adds a bind mount of `host` at `dest` to a config.
pub fn add_bind(v: &mut Value, host: &Path, dest: &str) {
    v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": dest,
        "type": "bind",
        "source": host,
        "options": ["rbind", "rw"],
    }));
}

/// Runs `c` with stdout/stderr captured in files, not pipes: a detached
/// container inherits them, and a pipe would then never reach EOF. The
/// files are opened append-only, as log files usually are: CRIU restores
/// such an external file onto another without a size check.
pub fn capture(mut c: Command) -> Output {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let append = |f: &tempfile::NamedTempFile| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(f.path())
            .unwrap()
    };
    c.stdin(Stdio::null())
        .stdout(append(&out))
        .stderr(append(&err));
    let status = c.status().unwrap();
    Output {
        status,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

/// A network namespace made for one test ("a host"), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("ferry-t{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd).output().unwrap()
    }

    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).args(cmd);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// tests/support/memhog.c, built static once per test binary (it runs in a
/// busybox rootfs without a libc).
pub fn memhog() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("memhog-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/memhog.c");
        let st = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(src)
            .status()
            .expect("cc (build-essential) is needed to build the memhog workload");
        assert!(st.success(), "building memhog failed");
        out
    })
}

/// Accepts one connection on a console socket and returns the fd sent over it.
pub fn recv_fd(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    let (stream, _) = listener.accept().unwrap();
    recv_fd_from(&stream)
}

/// Reads one message carrying a descriptor (SCM_RIGHTS) from `stream`.
pub fn recv_fd_from(stream: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just passed us this descriptor.
            return unsafe { std::os::fd::FromRawFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received");
}
pub mod hosts;

/// Lets the container change its own network namespace.
pub fn grant_net_admin(v: &mut serde_json::Value) {
    for set in ["bounding", "effective", "permitted"] {
        v["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!("CAP_NET_ADMIN"));
    }
}
