//! Migration of a real process tree with the real CRIU (through ferry's
//! CRIU client): memory pages go from the dumping CRIU to a CRIU page
//! server over CRIU's own TLS with certificates from `certs`, the other
//! images through the agents, and the tree is restored held and started
//! only on commit. Needs root and CRIU >= 4.1; skips with the reason
//! otherwise.
//!
//! Both "hosts" share this machine, so the process runs in its own pid
//! namespace (`unshare --pid --fork`): the restored tree gets a new one and
//! can coexist with the held source tree, as containers do.
mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{contents, Pki, Serving};
use ferry::criu::{AckAll, Criu, Opts};
use ferry::proto::rpc::Criu_page_server_info;
use migrate::dest::DestConfig;
use migrate::source::{self, SourceConfig, SourceState};
use migrate::{
    CancelToken, DestFactory, DestHost, DestInfo, DumpOutcome, DumpPlan, Features, HostError,
    PageServer, PageServerPlan, RestorePlan, Restored, RootfsMode, SourceHost, SourceInfo,
    TlsPaths,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (CRIU takes global locks), with this process as the
/// reaper of orphans (page servers, restored trees).
fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: plain prctl on this process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    g
}

fn reap() {
    while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

/// CRIU, or why these tests cannot run here.
fn criu_or_skip() -> Option<Criu> {
    if !nix::unistd::geteuid().is_root() {
        common::skip("needs root to run CRIU");
        return None;
    }
    let c = match Criu::new() {
        Ok(c) => c,
        Err(e) => {
            common::skip(&e.to_string());
            return None;
        }
    };
    match c.require(ferry::criu::MIN_VERSION).and_then(|_| c.check()) {
        Ok(()) => Some(c),
        Err(e) => {
            common::skip(&format!("criu is not usable here: {e}"));
            None
        }
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// `pid` and all its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let c = children(all[i]);
        all.extend(c);
        i += 1;
    }
    all
}

fn signal_tree(pid: i32, sig: Signal) {
    for p in tree(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

fn read_counter(f: &Path) -> Option<u64> {
    std::fs::read_to_string(f).ok()?.trim().parse().ok()
}

fn wait_counter(f: &Path, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = read_counter(f) {
            if n >= at_least {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "counter never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn opts(images: &File, log: &str) -> Opts {
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file(log.into());
    o.set_log_level(4);
    o
}

fn set_tls(o: &mut Opts, tls: Option<&TlsPaths>) {
    if let Some(t) = tls {
        o.set_tls(true);
        o.set_tls_cacert(t.ca.display().to_string());
        o.set_tls_cert(t.cert.display().to_string());
        o.set_tls_key(t.key.display().to_string());
    }
}

/// How a runtime maps a [`DumpPlan`] onto CRIU's options.
fn dump_opts(plan: &DumpPlan, pid: i32, images: &File) -> Opts {
    let mut o = opts(images, migrate::mode::DUMP_LOG);
    o.set_pid(pid);
    o.set_leave_stopped(plan.leave_stopped);
    o.set_track_mem(plan.track_mem);
    o.set_lazy_pages(plan.lazy_pages);
    if let Some(p) = &plan.parent_img {
        o.set_parent_img(p.clone());
    }
    if let Some(t) = &plan.page_server {
        let mut ps = Criu_page_server_info::new();
        ps.set_address(t.address.clone());
        ps.set_port(t.port as i32);
        o.ps = Some(ps).into();
    }
    set_tls(&mut o, plan.tls.as_ref());
    o
}

/// A shell counting into a file, alone in a pid namespace.
struct RealSource {
    criu: Criu,
    unshare: i32,
    init: i32,
    bundle: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl RealSource {
    fn start(criu: Criu, dir: &Path, counter: &Path) -> RealSource {
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo $i > {0}.tmp; mv {0}.tmp {0}; sleep 0.05; done",
            counter.display()
        );
        RealSource::run(criu, dir, &["sh", "-c", &script])
    }

    /// Runs `argv` as the init of a new pid namespace, in its own session.
    fn run(criu: Criu, dir: &Path, argv: &[&str]) -> RealSource {
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "setsid"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setpgid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("unshare (util-linux)");
        let unshare = child.id() as i32;
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        let init = loop {
            if let Some(&c) = children(unshare).first() {
                // setsid execs sh in place.
                if std::fs::read_link(format!("/proc/{c}/exe"))
                    .map(|e| !e.ends_with("setsid"))
                    .unwrap_or(false)
                {
                    break c;
                }
            }
            assert!(Instant::now() < deadline, "unshare did not start its child");
            std::thread::sleep(Duration::from_millis(10));
        };
        RealSource {
            criu,
            unshare,
            init,
            bundle,
            log: Default::default(),
        }
    }

    fn kill_all(&self) {
        signal_tree(self.unshare, Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.unshare), None);
        reap();
    }
}

impl Drop for RealSource {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn features(c: &Criu) -> Features {
    let f = c.features().unwrap();
    Features {
        mem_track: f.mem_track,
        lazy_pages: f.lazy_pages,
    }
}

impl SourceHost for RealSource {
    fn id(&self) -> String {
        "counter".into()
    }

    fn preflight(&mut self) -> Result<SourceInfo, HostError> {
        self.log.lock().unwrap().push("preflight".into());
        let dir = tempfile::tempdir()?;
        let images = File::open(dir.path())?;
        self.criu.cpuinfo_dump(opts(&images, "cpuinfo.log"))?;
        let cpuinfo = std::fs::read(dir.path().join("cpuinfo.img"))?;
        let (arch, kernel) = migrate::host::uname();
        Ok(SourceInfo {
            id: self.id(),
            criu_version: self.criu.version()?.to_string(),
            kernel,
            arch,
            features: features(&self.criu),
            cpuinfo: Some(cpuinfo),
            bundle: self.bundle.clone(),
            config_json: r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#.into(),
            rootfs: self.bundle.join("rootfs"),
            memory_bytes: 1 << 20,
            extra: serde_json::Value::Null,
        })
    }

    fn dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        self.log.lock().unwrap().push("dump".into());
        let images = File::open(&plan.images_dir)?;
        let called = Instant::now();
        self.criu
            .dump(dump_opts(plan, self.init, &images), &mut AckAll, &[])?;
        let stats = ferry::criu::read_dump_stats(&plan.images_dir)?;
        Ok(DumpOutcome {
            frozen_at: Some(called),
            freeze: Duration::from_micros(stats.freezing_time_us as u64),
            dump: Duration::from_micros(stats.frozen_time_us as u64),
            memory_transfer: Some(Duration::from_micros(stats.memwrite_time_us as u64)),
            pages_written: stats.pages_written,
            pages_skipped: stats.pages_skipped_parent,
        })
    }

    fn resume(&mut self) -> Result<(), HostError> {
        self.log.lock().unwrap().push("resume".into());
        signal_tree(self.init, Signal::SIGCONT);
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), HostError> {
        self.log.lock().unwrap().push("destroy".into());
        self.kill_all();
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Behaviour {
    /// Removed from the images before restoring, to make CRIU fail.
    break_image: Option<&'static str>,
}

struct RealDest {
    criu: Criu,
    root: PathBuf,
    restored: Option<i32>,
    page_server: Option<i32>,
    counter: PathBuf,
    behaviour: Behaviour,
    log: Arc<Mutex<Vec<String>>>,
}

impl DestHost for RealDest {
    fn preflight(&mut self, info: &SourceInfo, _shared: bool) -> Result<DestInfo, HostError> {
        self.log.lock().unwrap().push("preflight".into());
        // CPU compatibility: CPUINFO_CHECK against the source's image.
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("cpuinfo.img"),
            info.cpuinfo
                .as_deref()
                .ok_or("no cpuinfo from the source")?,
        )?;
        let images = File::open(dir.path())?;
        self.criu.cpuinfo_check(opts(&images, "cpuinfo.log"))?;
        let (arch, kernel) = migrate::host::uname();
        Ok(DestInfo {
            criu_version: self.criu.version()?.to_string(),
            kernel,
            arch,
            features: features(&self.criu),
            images_dir: self.root.join("images").join(&info.id),
            bundle_dir: self.root.join("bundles").join(&info.id),
            free_bytes: migrate::host::free_bytes(&self.root),
            early_images: false,
        })
    }

    fn start_page_server(&mut self, plan: &PageServerPlan) -> Result<PageServer, HostError> {
        self.log.lock().unwrap().push("page-server".into());
        let images = File::open(&plan.images_dir)?;
        let mut o = opts(&images, "page-server.log");
        let mut ps = Criu_page_server_info::new();
        ps.set_address(plan.address.clone());
        ps.set_port(plan.port as i32);
        o.ps = Some(ps).into();
        if let Some(p) = &plan.parent_img {
            o.set_parent_img(p.clone());
        }
        set_tls(&mut o, plan.tls.as_ref());
        o.set_tls_no_cn_verify(plan.tls_no_cn_verify);
        let s = self.criu.page_server(o)?;
        self.page_server = Some(s.pid);
        Ok(PageServer {
            port: s.port as u16,
            pid: Some(s.pid),
        })
    }

    fn restore(&mut self, plan: &RestorePlan) -> Result<Restored, HostError> {
        self.log.lock().unwrap().push("restore".into());
        reap();
        if let Some(name) = self.behaviour.break_image {
            std::fs::remove_file(plan.images_dir.join(name))?;
        }
        let images = File::open(&plan.images_dir)?;
        let mut o = opts(&images, "restore.log");
        o.set_rst_sibling(true);
        o.set_leave_stopped(plan.hold);
        let pid = self.criu.restore(o, &mut AckAll, &[])?;
        self.restored = Some(pid);
        // Held: the counter does not move until start.
        let at = read_counter(&self.counter);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            read_counter(&self.counter),
            at,
            "restored tree ran before start"
        );
        Ok(Restored {
            pid,
            prepared: false,
        })
    }

    fn start(&mut self) -> Result<(), HostError> {
        self.log.lock().unwrap().push("start".into());
        signal_tree(self.restored.ok_or("nothing restored")?, Signal::SIGCONT);
        Ok(())
    }

    fn abort(&mut self) -> Result<(), HostError> {
        self.log.lock().unwrap().push("abort".into());
        for pid in [self.restored.take(), self.page_server.take()]
            .into_iter()
            .flatten()
        {
            if state(pid).is_some() {
                signal_tree(pid, Signal::SIGKILL);
            }
        }
        reap();
        Ok(())
    }
}

struct Factory {
    criu: Criu,
    root: PathBuf,
    counter: PathBuf,
    behaviour: Behaviour,
    log: Arc<Mutex<Vec<String>>>,
    restored: Arc<Mutex<Option<i32>>>,
}

/// Hands the restored pid to the test once the migration is over.
struct Tracked(RealDest, Arc<Mutex<Option<i32>>>);

impl DestHost for Tracked {
    fn preflight(&mut self, i: &SourceInfo, s: bool) -> Result<DestInfo, HostError> {
        self.0.preflight(i, s)
    }
    fn start_page_server(&mut self, p: &PageServerPlan) -> Result<PageServer, HostError> {
        self.0.start_page_server(p)
    }
    fn restore(&mut self, p: &RestorePlan) -> Result<Restored, HostError> {
        let r = self.0.restore(p)?;
        *self.1.lock().unwrap() = Some(r.pid);
        Ok(r)
    }
    fn start(&mut self) -> Result<(), HostError> {
        self.0.start()
    }
    fn abort(&mut self) -> Result<(), HostError> {
        *self.1.lock().unwrap() = None;
        self.0.abort()
    }
}

impl DestFactory for Factory {
    fn host(&self, _id: &str) -> Result<Box<dyn DestHost>, HostError> {
        Ok(Box::new(Tracked(
            RealDest {
                criu: self.criu.clone(),
                root: self.root.clone(),
                restored: None,
                page_server: None,
                counter: self.counter.clone(),
                behaviour: self.behaviour.clone(),
                log: self.log.clone(),
            },
            self.restored.clone(),
        )))
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    counter: PathBuf,
    src: RealSource,
    dst_root: PathBuf,
    factory: Arc<Factory>,
    work: PathBuf,
}

impl Setup {
    fn dest_config(&self) -> DestConfig {
        let mut c = DestConfig::new(self.pki.dst_security());
        // One machine: the source's bundle is the "shared storage".
        c.shared_rootfs_under = vec![self.src.bundle.clone()];
        c
    }
}

fn setup(criu: Criu, behaviour: Behaviour) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let src = RealSource::start(criu.clone(), &dir.path().join("a"), &counter);
    let dst_root = dir.path().join("b");
    std::fs::create_dir_all(&dst_root).unwrap();
    let factory = Arc::new(Factory {
        criu,
        root: dst_root.clone(),
        counter: counter.clone(),
        behaviour,
        log: Default::default(),
        restored: Default::default(),
    });
    Setup {
        work: dir.path().join("a/work"),
        _dir: dir,
        pki: Pki::new(),
        counter,
        src,
        dst_root,
        factory,
    }
}

#[test]
fn real_process_migrates_with_pages_over_criu_tls() {
    let _g = serial();
    let Some(criu) = criu_or_skip() else { return };
    let mut s = setup(criu, Behaviour::default());
    let before = wait_counter(&s.counter, 10);
    let serving = Serving::start(s.dest_config(), s.factory.clone());
    let mut cfg = SourceConfig::new(serving.addr, s.pki.src_security(), &s.work);
    cfg.rootfs = RootfsMode::Shared;
    let report = source::migrate(&mut s.src, &cfg, &mut |_| {}, &CancelToken::new())
        .unwrap_or_else(|f| panic!("{f}"));
    serving.idle();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let restored = s.factory.restored.lock().unwrap().expect("restored pid");
    // The count goes on from where it was, in the restored tree.
    let at_dump = read_counter(&s.counter).unwrap();
    assert!(at_dump >= before);
    let now = wait_counter(&s.counter, at_dump + 5);
    assert!(
        now < at_dump + 1000,
        "counter restarted? {at_dump} -> {now}"
    );
    assert!(
        state(restored).is_some_and(|c| c != 'Z'),
        "restored tree runs"
    );
    assert!(
        state(s.src.init).is_none_or(|c| c == 'Z'),
        "source destroyed"
    );
    assert_eq!(*s.src.log.lock().unwrap(), ["preflight", "dump", "destroy"]);
    assert_eq!(
        *s.factory.log.lock().unwrap(),
        ["preflight", "page-server", "restore", "start"]
    );
    assert!(report.tls);
    assert!(report.pages.written > 0, "{report:?}");
    assert!(report.bytes.images > 0);
    assert!(report.timings.downtime >= report.timings.restore);
    // Images are removed on both sides once the container runs.
    assert!(!s.dst_root.join("images/counter").exists());
    assert!(contents(&s.work).is_empty());
    signal_tree(restored, Signal::SIGKILL);
    reap();
}

#[test]
fn real_restore_failure_resumes_the_source() {
    let _g = serial();
    let Some(criu) = criu_or_skip() else { return };
    let mut s = setup(
        criu,
        Behaviour {
            break_image: Some("pstree.img"),
        },
    );
    wait_counter(&s.counter, 5);
    let serving = Serving::start(s.dest_config(), s.factory.clone());
    let mut cfg = SourceConfig::new(serving.addr, s.pki.src_security(), &s.work);
    cfg.rootfs = RootfsMode::Shared;
    let f = source::migrate(&mut s.src, &cfg, &mut |_| {}, &CancelToken::new()).unwrap_err();
    serving.idle();
    assert_eq!(f.source, SourceState::Resumed, "{f}");
    assert!(f.to_string().contains("restore failed"), "{f}");
    // The source counts on, in the original tree.
    let at = read_counter(&s.counter).unwrap();
    wait_counter(&s.counter, at + 5);
    assert!(matches!(state(s.src.init), Some(c) if c != 'Z' && c != 'T'));
    assert_eq!(*s.src.log.lock().unwrap(), ["preflight", "dump", "resume"]);
    assert_eq!(
        s.factory.log.lock().unwrap().last().map(String::as_str),
        Some("abort")
    );
    let left: Vec<_> = contents(&s.dst_root)
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    assert!(left.is_empty(), "left on the destination: {left:?}");
}

/// A CRIU page server on 127.0.0.1 writing `ps_dir`, presenting `tls`
/// (no name check: the peers share 127.0.0.1).
fn page_server_on(
    criu: &Criu,
    s: &Setup,
    root: &Path,
    ps_dir: &Path,
    tls: &TlsPaths,
) -> (RealDest, PageServer) {
    let mut dest = RealDest {
        criu: criu.clone(),
        root: root.to_path_buf(),
        restored: None,
        page_server: None,
        counter: s.counter.clone(),
        behaviour: Behaviour::default(),
        log: Default::default(),
    };
    let ps = dest
        .start_page_server(&PageServerPlan {
            images_dir: ps_dir.to_path_buf(),
            address: "127.0.0.1".into(),
            port: 0,
            parent_img: None,
            tls: Some(tls.clone()),
            tls_no_cn_verify: true,
        })
        .unwrap();
    (dest, ps)
}

/// A final dump into `src_dir` (left stopped) streaming to the page
/// server on 127.0.0.1:`port` with `tls`.
fn dump_to(src_dir: &Path, port: u16, tls: TlsPaths) -> DumpPlan {
    DumpPlan {
        kind: migrate::mode::DumpKind::Dump,
        images_dir: src_dir.to_path_buf(),
        parent_img: None,
        track_mem: false,
        page_server: Some(migrate::mode::PageServerTarget {
            address: "127.0.0.1".into(),
            port,
        }),
        tls: Some(tls),
        peer_cert: None,
        leave_stopped: true,
        lazy_pages: false,
    }
}

#[test]
fn page_server_refuses_a_dump_from_an_untrusted_certificate() {
    let _g = serial();
    let Some(criu) = criu_or_skip() else { return };
    let s = setup(criu.clone(), Behaviour::default());
    wait_counter(&s.counter, 3);
    let dir = tempfile::tempdir().unwrap();
    let ps_dir = dir.path().join("ps");
    let src_dir = dir.path().join("src");
    std::fs::create_dir_all(&ps_dir).unwrap();
    std::fs::create_dir_all(&src_dir).unwrap();
    // Page server with the destination's credentials.
    let (mut dest, ps) = page_server_on(&criu, &s, dir.path(), &ps_dir, &s.pki.dst);
    // A dump presenting a certificate from another CA.
    let plan = dump_to(&src_dir, ps.port, s.pki.rogue());
    let images = File::open(&src_dir).unwrap();
    let e = criu
        .dump(dump_opts(&plan, s.src.init, &images), &mut AckAll, &[])
        .unwrap_err();
    let log = std::fs::read_to_string(ps_dir.join("page-server.log")).unwrap_or_default();
    assert!(
        log.contains("The certificate is NOT trusted"),
        "page server log: {log}\ndump error: {e}"
    );
    // CRIU resumes the tree after a failed dump; no pages were written.
    let at = read_counter(&s.counter).unwrap();
    wait_counter(&s.counter, at + 3);
    assert!(!ps_dir.join("pages-1.img").exists());
    dest.abort().unwrap();
}

/// A dump whose CRIU reaches the page server under another address (a
/// runtime's relay, see [`DumpPlan::peer_cert`]) trusts exactly the
/// certificate the control channel verified: a page server presenting
/// another certificate from the same CA is refused, the pinned one
/// accepted, both without a name check.
#[test]
fn a_pinned_page_server_certificate_is_the_only_one_accepted() {
    let _g = serial();
    let Some(criu) = criu_or_skip() else { return };
    let s = setup(criu.clone(), Behaviour::default());
    wait_counter(&s.counter, 3);
    let dir = tempfile::tempdir().unwrap();
    // The destination's certificate as the control channel would pin it.
    let dst_pem = std::fs::read(&s.pki.dst.cert).unwrap();
    let pin = dir.path().join("destination.pem");
    migrate::tls::write_pinned(pem::parse(dst_pem).unwrap().contents(), &pin).unwrap();
    let attempt = |name: &str, server: &TlsPaths| {
        let ps_dir = dir.path().join(format!("{name}-ps"));
        let src_dir = dir.path().join(format!("{name}-src"));
        std::fs::create_dir_all(&ps_dir).unwrap();
        std::fs::create_dir_all(&src_dir).unwrap();
        let (mut dest, ps) = page_server_on(&criu, &s, dir.path(), &ps_dir, server);
        let mut plan = dump_to(
            &src_dir,
            ps.port,
            TlsPaths {
                ca: pin.clone(),
                ..s.pki.src.clone()
            },
        );
        plan.peer_cert = Some(pin.clone());
        plan.leave_stopped = false;
        let images = File::open(&src_dir).unwrap();
        let mut o = dump_opts(&plan, s.src.init, &images);
        o.set_tls_no_cn_verify(true);
        o.set_leave_running(true);
        let r = criu.dump(o, &mut AckAll, &[]);
        let log = std::fs::read_to_string(src_dir.join(migrate::mode::DUMP_LOG)).unwrap();
        dest.abort().unwrap();
        (r, log, ps_dir)
    };
    // Another host's certificate, signed by the same CA.
    let (r, log, ps_dir) = attempt("other", &s.pki.src);
    assert!(
        r.is_err(),
        "a page server with another certificate was accepted"
    );
    assert!(log.contains("Invalid certificate"), "dump log: {log}");
    assert!(!pages_in(&ps_dir), "pages arrived: {:?}", contents(&ps_dir));
    let at = read_counter(&s.counter).unwrap();
    wait_counter(&s.counter, at + 3);
    // The destination's own.
    let (r, log, ps_dir) = attempt("pinned", &s.pki.dst);
    r.unwrap_or_else(|e| panic!("{e}\ndump log: {log}"));
    assert!(
        pages_in(&ps_dir),
        "no pages arrived: {:?}",
        contents(&ps_dir)
    );
    let at = read_counter(&s.counter).unwrap();
    wait_counter(&s.counter, at + 3);
}

/// Whether a page server wrote pages into `dir`.
fn pages_in(dir: &Path) -> bool {
    contents(dir).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
    })
}

/// The `memhog` example next to this test binary, if it was built (plain
/// `cargo test` builds examples; `cargo test --test criu` does not).
fn memhog() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples/memhog");
    p.is_file().then_some(p)
}

fn read_memhog(f: &Path) -> Option<(u64, String, String)> {
    let s = std::fs::read_to_string(f).ok()?;
    let mut it = s.split_whitespace();
    Some((
        it.next()?.parse().ok()?,
        it.next()?.to_string(),
        it.next()?.to_string(),
    ))
}

#[test]
fn memory_of_a_real_process_arrives_intact() {
    let _g = serial();
    let Some(criu) = criu_or_skip() else { return };
    let Some(hog) = memhog() else {
        common::skip("examples/memhog is not built (run `cargo test -p ferry-migrate`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut src = RealSource::run(
        criu.clone(),
        &dir.path().join("a"),
        &[hog.to_str().unwrap(), state.to_str().unwrap(), "64"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (n0, crc0, _) = loop {
        if let Some(x) = read_memhog(&state).filter(|x| x.0 >= 3) {
            break x;
        }
        assert!(Instant::now() < deadline, "memhog did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pki = Pki::new();
    let dst_root = dir.path().join("b");
    std::fs::create_dir_all(&dst_root).unwrap();
    let factory = Arc::new(Factory {
        criu,
        root: dst_root.clone(),
        counter: dir.path().join("no-counter"),
        behaviour: Behaviour::default(),
        log: Default::default(),
        restored: Default::default(),
    });
    let mut dcfg = DestConfig::new(pki.dst_security());
    dcfg.shared_rootfs_under = vec![src.bundle.clone()];
    let serving = Serving::start(dcfg, factory.clone());
    let mut cfg = SourceConfig::new(serving.addr, pki.src_security(), dir.path().join("work"));
    cfg.rootfs = RootfsMode::Shared;
    let report = source::migrate(&mut src, &cfg, &mut |_| {}, &CancelToken::new())
        .unwrap_or_else(|f| panic!("{f}"));
    serving.idle();
    let restored = factory.restored.lock().unwrap().expect("restored pid");
    // 64 MiB of pages went through the TLS page server.
    assert!(
        report.pages.written >= 64 * 256,
        "pages written: {}",
        report.pages.written
    );
    eprintln!(
        "64 MiB process: dump {:?}, memory {:?}, restore {:?}, downtime {:?}",
        report.timings.dump,
        report.timings.memory_transfer,
        report.timings.restore,
        report.timings.downtime
    );
    let (n1, _, _) = read_memhog(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (n2, crc_a, crc_b) = loop {
        if let Some(x) = read_memhog(&state).filter(|x| x.0 >= n1 + 3) {
            break x;
        }
        assert!(Instant::now() < deadline, "restored memhog does not run");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(n1 >= n0 && n2 > n1, "count went {n0} -> {n1} -> {n2}");
    assert_eq!(crc_a, crc0, "the restored process is the same one");
    assert_eq!(crc_b, crc0, "its memory arrived intact");
    signal_tree(restored, Signal::SIGKILL);
    reap();
}
