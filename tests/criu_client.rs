//! The CRIU client against the real CRIU: needs root and a working criu.
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "common/skip.rs"]
mod skip;
use skip::skip;
#[path = "common/cgroup2.rs"]
mod cgroup2;

use ferry::criu::{AckAll, Criu, Error, HandlerError, Notify, NotifyHandler, Opts, Version};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// CRIU takes global locks (iptables, cgroup yard); one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the test and makes this process the reaper of orphans from
/// the trees it starts: a killed tree's children must not linger as zombies
/// (an init that does not reap keeps their pids, pgids and sids taken, and
/// CRIU cannot restore a tree whose ids are in use).
fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: plain prctl on this process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    guard
}

/// Reaps every exited child (orphans reparented to us included).
fn reap_orphans() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

fn criu() -> Criu {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests drive CRIU and must run as root"
    );
    Criu::new().expect("criu must be installed (scripts/install-deps.sh)")
}

/// Kills (SIGKILL, whole process group) and reaps a process on drop.
struct ProcGuard {
    pid: i32,
}

impl ProcGuard {
    fn alive(&self) -> bool {
        // A zombie still answers kill(0); look at its state.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => {
                let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
                !matches!(state, Some("Z") | Some("X"))
            }
            Err(_) => false,
        }
    }

    /// Reaps the process after CRIU killed it.
    fn reap(&self) {
        let _ = waitpid(Pid::from_raw(self.pid), None);
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        // Never signal our own group (0) or everything (-1), or init.
        if self.pid <= 1 {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.pid), None);
        reap_orphans();
    }
}

/// A shell in its own session writing an increasing counter to `file`.
fn spawn_counter(file: &Path) -> ProcGuard {
    // Written beside and renamed, so a reader (or a dump) never sees a half-written file.
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > {0}.tmp; mv {0}.tmp {0}; sleep 0.05; done",
        file.display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let guard = ProcGuard {
        pid: child.id() as i32,
    };
    // The Child handle is not needed: the guard reaps by pid.
    std::mem::forget(child);
    guard
}

fn read_counter(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn wait_for_counter(file: &Path, at_least: u64) -> u64 {
    // Each step of the shell loop starts two processes: under emulation,
    // with another guest beside, 20 steps took longer than 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(n) = read_counter(file) {
            if n >= at_least {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "counter in {} never reached {at_least}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn opts_for(images: &File, log: &str) -> Opts {
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file(log.into());
    o.set_log_level(4);
    o
}

/// A page server on 127.0.0.1, on a port the kernel picks, writing into `images`.
fn page_server_opts(images: &File) -> Opts {
    let mut o = opts_for(images, "ps.log");
    let mut ps = ferry::proto::rpc::Criu_page_server_info::new();
    ps.set_address("127.0.0.1".into());
    ps.set_port(0);
    o.ps = Some(ps).into();
    o
}

/// Records the order of notifications; optionally refuses one.
struct Recorder {
    seen: Vec<String>,
    refuse: Option<&'static str>,
    restored_pid: Option<i32>,
}

impl NotifyHandler for Recorder {
    fn notify(&mut self, event: Notify) -> Result<(), HandlerError> {
        self.seen.push(event.script().to_string());
        if let Notify::PostRestore { pid } = event {
            self.restored_pid = Some(pid);
        }
        match self.refuse {
            Some(s) if s == event.script() => Err(format!("test refuses {s}").into()),
            _ => Ok(()),
        }
    }
}

fn recorder(refuse: Option<&'static str>) -> Recorder {
    Recorder {
        seen: Vec::new(),
        refuse,
        restored_pid: None,
    }
}

#[test]
fn version_is_read_over_rpc() {
    let _s = serial();
    let c = criu();
    let v = c.version().unwrap();
    assert_eq!((v.major, v.minor), (4, 2), "got {v}");
    assert_eq!(c.require(Version::new(4, 1, 0)).unwrap(), v);
    let err = c.require(Version::new(99, 0, 0)).unwrap_err();
    assert!(matches!(err, Error::TooOld { .. }), "{err}");
    assert!(err.to_string().contains(&v.to_string()), "{err}");
}

/// criu forked straight into a cgroup2 directory (`CLONE_INTO_CGROUP`):
/// there before it runs a single instruction, so a restore need not move
/// it; a descriptor the kernel refuses leaves criu where the caller is, and
/// the caller is told so (it then moves criu itself).
#[test]
fn criu_starts_inside_the_cgroup2_directory_it_is_given() {
    let _s = serial();
    let Some(root) = cgroup2::cgroup2_root() else {
        skip("no cgroup2 hierarchy mounted (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
        return;
    };
    let name = format!("ferry-test-criu-{}", std::process::id());
    let made = cgroup2::Cgroup2Dir::make(&root, &name);
    let dir = made.path.clone();
    let c = criu().in_cgroup(File::open(&dir).unwrap().into());
    let mut seen = None;
    let started = c
        .start_checked(Version::new(4, 0, 0), &[], |pid, placed| {
            seen = Some((
                placed,
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
            ));
            Ok(())
        })
        .unwrap();
    let (placed, cgroup) = seen.unwrap();
    assert!(placed, "criu was not forked into {}", dir.display());
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{name}"))),
        "{cgroup}"
    );
    drop(started);

    let not_a_cgroup = tempfile::tempdir().unwrap();
    let c = criu().in_cgroup(File::open(not_a_cgroup.path()).unwrap().into());
    let mut placed = None;
    let started = c
        .start_checked(Version::new(4, 0, 0), &[], |_, p| {
            placed = Some(p);
            Ok(())
        })
        .expect("criu starts where the caller is");
    assert_eq!(placed, Some(false));
    drop(started);
    // Dropped criu processes exit once their socket closes; the directory
    // is empty again only then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.exists(), "criu still in {}", dir.display());
}

#[test]
fn features_match_criu_check() {
    let _s = serial();
    let c = criu();
    let f = c.features().unwrap();
    let cli = Command::new(&c.binary)
        .args(["check", "--feature", "mem_dirty_track"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        f.mem_track,
        cli.success(),
        "RPC and `criu check --feature mem_dirty_track` disagree"
    );
}

#[test]
fn check_passes() {
    let _s = serial();
    criu().check().unwrap();
}

#[test]
fn dump_then_restore_continues_the_counter() {
    let _s = serial();
    let c = criu();
    let work = tempfile::tempdir().unwrap();
    let counter = work.path().join("counter");
    let images_path = work.path().join("images");
    std::fs::create_dir(&images_path).unwrap();
    let images = File::open(&images_path).unwrap();

    let proc = spawn_counter(&counter);
    wait_for_counter(&counter, 20);

    let mut o = opts_for(&images, "dump.log");
    o.set_pid(proc.pid);
    o.set_leave_running(false);
    let mut rec = recorder(None);
    c.dump(o, &mut rec, &[]).unwrap();
    let pre = rec
        .seen
        .iter()
        .position(|s| s == "pre-dump")
        .expect("pre-dump notified");
    let post = rec
        .seen
        .iter()
        .position(|s| s == "post-dump")
        .expect("post-dump notified");
    assert!(pre < post, "order: {:?}", rec.seen);
    proc.reap();
    reap_orphans();
    assert!(
        !proc.alive(),
        "dump with leave_running=false must stop the tree"
    );
    let dumped = read_counter(&counter).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        read_counter(&counter).unwrap(),
        dumped,
        "counter moved after dump"
    );

    let stats = ferry::criu::read_dump_stats(&images_path).unwrap();
    assert!(
        stats.pages_scanned > 0 && stats.pages_written > 0,
        "{stats:?}"
    );

    let mut o = opts_for(&images, "restore.log");
    o.set_rst_sibling(true);
    let mut rec = recorder(None);
    let pid = c.restore(o, &mut rec, &[]).unwrap();
    let restored = ProcGuard { pid };
    assert_eq!(pid, proc.pid, "CRIU restores the original pid");
    assert_eq!(rec.restored_pid, Some(pid), "post-restore carries the pid");
    let pr = rec
        .seen
        .iter()
        .position(|s| s == "pre-restore")
        .expect("pre-restore notified");
    let po = rec
        .seen
        .iter()
        .position(|s| s == "post-restore")
        .expect("post-restore notified");
    assert!(pr < po, "order: {:?}", rec.seen);

    let now = wait_for_counter(&counter, dumped + 3);
    assert!(restored.alive());
    assert!(
        now > dumped && now < dumped + 1000,
        "dumped at {dumped}, now {now}"
    );
    let rstats = ferry::criu::read_restore_stats(&images_path).unwrap();
    assert!(
        rstats.forking_time_us > 0 || rstats.restore_time_us > 0,
        "{rstats:?}"
    );
}

#[test]
fn restore_from_empty_dir_reports_criu_error_and_log() {
    let _s = serial();
    let c = criu();
    let dir = tempfile::tempdir().unwrap();
    let images = File::open(dir.path()).unwrap();
    let mut o = opts_for(&images, "restore.log");
    o.set_rst_sibling(true);
    let err = c.restore(o, &mut AckAll, &[]).unwrap_err();
    let failure = err
        .failure()
        .unwrap_or_else(|| panic!("no CRIU failure in {err:?}"));
    assert!(
        failure.errmsg.is_some(),
        "CRIU sent no cr_errmsg: {failure:?}"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    let summary = failure.summary();
    assert!(msg.contains(&summary), "{msg}");
    // The reason shown is CRIU's own: its errmsg or an error line of its log.
    assert!(
        failure
            .errmsg
            .as_deref()
            .is_some_and(|m| m.contains(&summary))
            || failure.log_excerpt.iter().any(|l| l.contains(&summary)),
        "{summary:?} is not from CRIU: {failure:?}"
    );
    assert!(!summary.contains("RLIMIT_NOFILE"), "{msg}");
    let log = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("restore.log");
    assert_eq!(failure.log_path.as_deref(), Some(log.as_path()));
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(
        failure.log_excerpt.iter().any(|l| l.contains("Error")),
        "{:?}",
        failure.log_excerpt
    );
    let detail = err.detail().unwrap();
    assert!(detail.contains("Error"), "{detail}");
}

#[test]
fn refusing_pre_dump_aborts_and_leaves_the_process_running() {
    let _s = serial();
    let c = criu();
    let work = tempfile::tempdir().unwrap();
    let counter = work.path().join("counter");
    let images = File::open(work.path()).unwrap();
    let proc = spawn_counter(&counter);
    wait_for_counter(&counter, 5);

    let mut o = opts_for(&images, "dump.log");
    o.set_pid(proc.pid);
    o.set_leave_running(false);
    let mut rec = recorder(Some("pre-dump"));
    let err = c.dump(o, &mut rec, &[]).unwrap_err();
    match &err {
        Error::Notify { script, source, .. } => {
            assert_eq!(script, "pre-dump");
            assert!(source.to_string().contains("test refuses pre-dump"));
        }
        other => panic!("expected a notify error, got {other:?}"),
    }
    assert!(err.to_string().contains("test refuses pre-dump"), "{err}");
    assert_eq!(rec.seen, vec!["pre-dump".to_string()]);
    assert!(proc.alive());
    let before = read_counter(&counter).unwrap();
    wait_for_counter(&counter, before + 3);
}

#[test]
fn page_server_starts_in_background() {
    let _s = serial();
    let c = criu();
    let dir = tempfile::tempdir().unwrap();
    let images = File::open(dir.path()).unwrap();
    let server = c.page_server(page_server_opts(&images)).unwrap();
    assert!(server.pid > 1 && server.port > 0, "{server:?}");
    let guard = ProcGuard { pid: server.pid };
    assert!(guard.alive());
}

/// The connection a TLS page server accepts has no Nagle delay from its first byte, so its
/// handshake never waits for a delayed ACK: set on the listening socket, inherited by the
/// accepted one while CRIU waits for a handshake that does not come.
#[test]
fn page_server_connection_has_no_nagle_delay() {
    use migrate::certs::{generate_ca, generate_host, Validity};
    let _s = serial();
    let c = criu();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = generate_ca(&pki, "test", Validity::days(1)).unwrap();
    let tls = generate_host(&ca, &pki, "b", &["127.0.0.1".into()], Validity::days(1)).unwrap();
    let images = File::open(dir.path()).unwrap();
    let mut o = page_server_opts(&images);
    ferry::criu::set_tls(&mut o, &tls);
    let server = c.page_server(o).unwrap();
    let _guard = ProcGuard { pid: server.pid };
    let port = server.port as u16;
    assert!(ferry::criu::page_socket::no_delay_on_listener(server.pid, port).unwrap());
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let accepted = || {
        let pidfd = ferry::proc::pidfd_open(server.pid).ok()?;
        std::fs::read_dir(format!("/proc/{}/fd", server.pid))
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|fd| {
                // SAFETY: plain syscall; a new descriptor we own when it succeeds.
                let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
                (dup >= 0)
                    .then(|| std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(dup as i32) }))
            })
            // The accepted connection: the one TCP socket with a peer.
            .find(|sk| sk.peer_addr().is_ok())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let sk = loop {
        if let Some(sk) = accepted() {
            break sk;
        }
        assert!(
            Instant::now() < deadline,
            "the page server accepted nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        sk.nodelay().unwrap(),
        "the accepted connection waits for Nagle"
    );
}

#[test]
fn missing_binary_is_not_found() {
    let c = Criu::with_binary(PathBuf::from("/nonexistent/criu"));
    let err = c.version().unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}

/// Runs a request that fails at once (a restore of nothing) and returns its log: what CRIU said
/// of its kernel-facts cache is at the top.
fn probe_log(c: &Criu) -> String {
    let dir = tempfile::tempdir().unwrap();
    let images = File::open(dir.path()).unwrap();
    let mut o = opts_for(&images, "restore.log");
    o.set_rst_sibling(true);
    c.restore(o, &mut AckAll, &[]).unwrap_err();
    std::fs::read_to_string(dir.path().join("restore.log")).unwrap()
}

/// Where `/run` is not a tmpfs CRIU cannot keep its kernel-facts cache; ferry keeps it for it on
/// a root-only tmpfs directory, linked from `/run/criu.kdat`, and makes it again after a
/// "reboot" (the tmpfs emptied), after CRIU found it stale, and never through a directory or
/// link someone else made. Where `/run` is a tmpfs, CRIU keeps it itself.
#[test]
fn criu_finds_its_kernel_facts_cache() {
    use ferry::criu::kdat_cache::{cache_file, ensure, Outcome, CACHE_DIR, LINK};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _s = serial();
    let c = criu();
    let bin = ferry::criu::find_binary().unwrap();
    let target = cache_file();
    let loaded = format!("Loaded kdat cache from {LINK}");
    let run_is_tmpfs = nix::sys::statfs::statfs("/run").unwrap().filesystem_type()
        == nix::sys::statfs::TMPFS_MAGIC;
    if run_is_tmpfs {
        // CRIU's own cache from an earlier request, if any: it makes it again.
        if std::fs::symlink_metadata(LINK).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(LINK).unwrap();
        }
        assert_eq!(ensure(&bin), Outcome::CriuKeepsIt);
        probe_log(&c);
        let m = std::fs::symlink_metadata(LINK).unwrap();
        assert!(m.is_file(), "CRIU kept no cache of its own in /run");
        assert!(probe_log(&c).contains(&loaded));
        return;
    }
    let ours = || std::fs::read_link(LINK).ok().as_deref() == Some(target.as_path());
    let present = std::fs::symlink_metadata(LINK).is_ok();
    assert!(!present || ours(), "{LINK} exists and is not ferry's link");

    // Made from nothing: a link into a root-only tmpfs directory, to a file CRIU wrote.
    let _ = std::fs::remove_file(LINK);
    let _ = std::fs::remove_file(&target);
    assert_eq!(ensure(&bin), Outcome::Made);
    assert!(ours(), "{LINK} is not a link to {}", target.display());
    let dir = std::fs::symlink_metadata(CACHE_DIR).unwrap();
    assert_eq!((dir.uid(), dir.permissions().mode() & 0o777), (0, 0o700));
    assert!(std::fs::metadata(&target).unwrap().len() > 0);
    assert_eq!(ensure(&bin), Outcome::Present);
    assert!(
        probe_log(&c).contains(&loaded),
        "CRIU did not load the cache"
    );

    // A reboot empties the tmpfs: the dangling link's file is made again before CRIU starts.
    std::fs::remove_file(&target).unwrap();
    assert!(
        probe_log(&c).contains(&loaded),
        "not made again after a reboot"
    );

    // A cache CRIU finds stale (another CRIU build's): CRIU removes the link and probes; the
    // next start makes it again.
    let len = std::fs::metadata(&target).unwrap().len() as usize;
    std::fs::write(&target, vec![0x5a; len]).unwrap();
    let log = probe_log(&c);
    assert!(log.contains("Stale"), "CRIU took a stale cache: {log}");
    assert!(
        std::fs::symlink_metadata(LINK).is_err(),
        "CRIU left the stale link"
    );
    assert!(
        probe_log(&c).contains(&loaded),
        "not made again after CRIU found it stale"
    );

    // A CRIU killed while saving left its half-written `criu.kdat.tmp` (CRIU saves with
    // O_EXCL, so it would never save again): the cache is made all the same.
    std::fs::remove_file(LINK).unwrap();
    std::fs::remove_file(&target).unwrap();
    let tmp = Path::new(CACHE_DIR).join("criu.kdat.tmp");
    std::fs::write(&tmp, b"half").unwrap();
    assert_eq!(ensure(&bin), Outcome::Made);
    assert!(std::fs::metadata(&target).unwrap().len() > 4);
    assert!(std::fs::symlink_metadata(&tmp).is_err(), "{tmp:?} left");

    // Never through a directory someone else could write, nor a link ferry did not make.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::os::unix::fs::chown(CACHE_DIR, Some(0), Some(0));
            if std::fs::read_link(LINK).ok().as_deref() == Some(Path::new("/dev/null")) {
                let _ = std::fs::remove_file(LINK);
            }
        }
    }
    let _restore = Restore;
    std::fs::remove_file(LINK).unwrap();
    std::os::unix::fs::chown(CACHE_DIR, Some(65534), Some(65534)).unwrap();
    assert!(
        matches!(ensure(&bin), Outcome::Without(why) if why.contains("only root")),
        "a directory owned by another user was used"
    );
    assert!(std::fs::symlink_metadata(LINK).is_err());
    assert!(!probe_log(&c).contains(&loaded));
    std::os::unix::fs::chown(CACHE_DIR, Some(0), Some(0)).unwrap();
    std::os::unix::fs::symlink("/dev/null", LINK).unwrap();
    assert!(
        matches!(ensure(&bin), Outcome::Without(why) if why.contains("did not make")),
        "a link ferry did not make was replaced"
    );
    std::fs::remove_file(LINK).unwrap();
    assert_eq!(ensure(&bin), Outcome::Made);
}
