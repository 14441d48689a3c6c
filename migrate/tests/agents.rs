//! The migration state machine end to end over real sockets on 127.0.0.1
//! and real files, with hosts that record every call: memory "pages" go
//! from the source host to the destination's page server on their own TCP
//! connection, images and the rootfs through the agents.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{contents, Pki, Proxy, Serving};
use migrate::dest::DestConfig;
use migrate::mode::{DumpKind, Mode};
use migrate::source::{self, SourceConfig, SourceState};
use migrate::{
    CancelToken, DestFactory, DestHost, DestInfo, DumpOutcome, DumpPlan, Features, HostError,
    PageServer, PageServerPlan, Progress, RestorePlan, Restored, RootfsMode, SourceHost,
    SourceInfo,
};

type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, s: impl Into<String>) {
    l.lock().unwrap().push(s.into());
}

fn calls(l: &Log) -> Vec<String> {
    l.lock().unwrap().clone()
}

/// Hooks a test uses to act at a precise point of the migration.
type Hook = Box<dyn FnMut() + Send>;

/// A "container" made of a rootfs directory and a block of memory.
struct FakeSource {
    id: String,
    log: Log,
    rootfs: PathBuf,
    memory: Vec<u8>,
    features: Features,
    fail_dump: bool,
    on_dump: Option<Hook>,
}

impl FakeSource {
    fn new(id: &str, dir: &Path, log: Log) -> FakeSource {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hostname"), id).unwrap();
        std::fs::write(rootfs.join("data"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", rootfs.join("link")).unwrap();
        FakeSource {
            id: id.into(),
            log,
            rootfs,
            memory: (0..1_000_000u32).map(|i| (i % 253) as u8).collect(),
            features: Features {
                mem_track: false,
                lazy_pages: true,
            },
            fail_dump: false,
            on_dump: None,
        }
    }
}

impl SourceHost for FakeSource {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn preflight(&mut self) -> Result<SourceInfo, HostError> {
        log(&self.log, "preflight");
        let (arch, kernel) = migrate::host::uname();
        Ok(SourceInfo {
            id: self.id.clone(),
            criu_version: "4.2.1".into(),
            kernel,
            arch,
            features: self.features,
            cpuinfo: Some(vec![1, 2, 3, 0xff]),
            bundle: self.rootfs.parent().unwrap().to_path_buf(),
            config_json: r#"{"ociVersion":"1.0.2","root":{"path":"/old/rootfs"}}"#.into(),
            rootfs: self.rootfs.clone(),
            memory_bytes: self.memory.len() as u64,
            extra: serde_json::json!({"veth": "none"}),
        })
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::StopCopy, Mode::PreCopy]
    }

    fn pre_dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        let dir = plan
            .images_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        log(
            &self.log,
            format!("pre-dump {dir} parent={:?}", plan.parent_img.as_deref()),
        );
        assert_eq!(plan.kind, DumpKind::PreDump);
        assert!(plan.track_mem && !plan.leave_stopped);
        assert!(plan.images_dir.is_dir());
        // Each iteration finds half as much dirty memory.
        let i: u32 = dir.trim_start_matches("pre-").parse().unwrap();
        let bytes = 400_000usize >> (i - 1);
        let target = plan.page_server.as_ref().unwrap();
        let mut s = TcpStream::connect((target.address.as_str(), target.port))?;
        s.write_all(&self.memory[..bytes])?;
        let pages = bytes as u64 / 4096;
        // One millisecond per page, so the rule's arithmetic is predictable.
        std::thread::sleep(Duration::from_millis(pages));
        Ok(DumpOutcome {
            frozen_at: None,
            freeze: Duration::ZERO,
            dump: Duration::ZERO,
            // One millisecond per page, so the policy's arithmetic is exact.
            memory_transfer: Some(Duration::from_millis(pages)),
            pages_written: pages,
            pages_skipped: 0,
        })
    }

    /// A file the dump leaves as it is: it crosses before the freeze only.
    fn early_images(&mut self, plan: &DumpPlan) -> Result<(), HostError> {
        std::fs::write(plan.images_dir.join("early.img"), b"early")?;
        Ok(())
    }

    fn dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        log(&self.log, "dump");
        // Made before the freeze, in the images directory of this dump.
        assert_eq!(std::fs::read(plan.images_dir.join("early.img"))?, b"early");
        assert_eq!(plan.kind, DumpKind::Dump);
        assert!(plan.leave_stopped);
        let frozen_at = Instant::now();
        // The container writes while it is being frozen: the delta pass
        // must carry this.
        std::fs::write(self.rootfs.join("etc/hostname"), "changed at dump").unwrap();
        if let Some(h) = self.on_dump.as_mut() {
            h();
        }
        if self.fail_dump {
            return Err("criu dump failed: simulated".into());
        }
        std::fs::write(plan.images_dir.join("core-1.img"), b"core").unwrap();
        std::fs::write(plan.images_dir.join("pstree.img"), b"tree").unwrap();
        let target = plan
            .page_server
            .as_ref()
            .expect("pages go to the page server");
        let mut s = TcpStream::connect((target.address.as_str(), target.port))?;
        s.write_all(&self.memory)?;
        drop(s);
        Ok(DumpOutcome {
            frozen_at: Some(frozen_at),
            freeze: Duration::from_millis(1),
            dump: frozen_at.elapsed(),
            memory_transfer: None,
            pages_written: self.memory.len() as u64 / 4096,
            pages_skipped: 0,
        })
    }

    fn resume(&mut self) -> Result<(), HostError> {
        log(&self.log, "resume");
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), HostError> {
        log(&self.log, "destroy");
        Ok(())
    }

    fn commit_pending(&mut self, _: &source::CommitInfo) -> Result<(), HostError> {
        log(&self.log, "commit-pending");
        Ok(())
    }

    fn in_doubt(&mut self) {
        log(&self.log, "in-doubt");
    }
}

#[derive(Clone, Default)]
struct DestBehaviour {
    fail_restore: Option<String>,
    on_restore: Option<Arc<dyn Fn() + Send + Sync>>,
    on_start: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Blocks the restore until a message arrives.
    restore_gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
}

/// Receives into `<root>/images/<id>` and `<root>/bundles/<id>`; its page
/// server is a thread writing what arrives to `pages.img`.
struct FakeDest {
    root: PathBuf,
    log: Log,
    expect_memory: Vec<u8>,
    ps: Option<thread::JoinHandle<std::io::Result<()>>>,
    behaviour: DestBehaviour,
    id: String,
}

impl DestHost for FakeDest {
    fn preflight(&mut self, info: &SourceInfo, shared: bool) -> Result<DestInfo, HostError> {
        log(&self.log, format!("preflight {} shared={shared}", info.id));
        assert_eq!(info.cpuinfo.as_deref(), Some(&[1u8, 2, 3, 0xff][..]));
        let (arch, kernel) = migrate::host::uname();
        Ok(DestInfo {
            criu_version: "4.2.1".into(),
            kernel,
            arch,
            features: Features {
                mem_track: false,
                lazy_pages: true,
            },
            images_dir: self.root.join("images").join(&info.id),
            bundle_dir: self.root.join("bundles").join(&info.id),
            free_bytes: migrate::host::free_bytes(&self.root),
            early_images: false,
        })
    }

    fn start_page_server(&mut self, plan: &PageServerPlan) -> Result<PageServer, HostError> {
        match &plan.parent_img {
            None => log(&self.log, "page-server"),
            Some(p) => log(&self.log, format!("page-server parent={p}")),
        }
        assert!(plan.images_dir.is_dir());
        let l = TcpListener::bind((plan.address.as_str(), 0))?;
        let port = l.local_addr()?.port();
        let out = plan.images_dir.join("pages-1.img");
        self.ps = Some(thread::spawn(move || {
            l.set_nonblocking(false)?;
            let (mut s, _) = l.accept()?;
            let mut f = std::fs::File::create(out)?;
            std::io::copy(&mut s, &mut f)?;
            Ok(())
        }));
        Ok(PageServer { port, pid: None })
    }

    fn finish_page_server(&mut self, _ps: &PageServer, _t: Duration) -> Result<(), HostError> {
        log(&self.log, "page-server-done");
        if let Some(h) = self.ps.take() {
            h.join().unwrap()?;
        }
        Ok(())
    }

    fn restore(&mut self, plan: &RestorePlan) -> Result<Restored, HostError> {
        log(&self.log, "restore");
        if let Some(g) = &self.behaviour.restore_gate {
            let _ = g.lock().unwrap().recv_timeout(Duration::from_secs(20));
        }
        if let Some(f) = &self.behaviour.on_restore {
            f();
        }
        assert!(plan.hold);
        assert_eq!(plan.id, self.id);
        let mut pages = Vec::new();
        std::fs::File::open(plan.images_dir.join("pages-1.img"))?.read_to_end(&mut pages)?;
        assert_eq!(pages, self.expect_memory, "memory arrived intact");
        assert_eq!(std::fs::read(plan.images_dir.join("core-1.img"))?, b"core");
        if !plan.lazy_pages {
            assert_eq!(std::fs::read(plan.images_dir.join("early.img"))?, b"early");
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(plan.bundle_dir.join("config.json"))?)?;
        log(&self.log, format!("config root {}", cfg["root"]["path"]));
        if let Some(reason) = &self.behaviour.fail_restore {
            return Err(reason.clone().into());
        }
        Ok(Restored {
            pid: 4242,
            prepared: false,
        })
    }

    fn start(&mut self) -> Result<(), HostError> {
        log(&self.log, "start");
        if let Some(f) = &self.behaviour.on_start {
            f();
        }
        Ok(())
    }

    fn abort(&mut self) -> Result<(), HostError> {
        log(&self.log, "abort");
        if let Some(h) = self.ps.take() {
            // A page server nobody connected to: unblock and forget it.
            drop(h);
        }
        Ok(())
    }
}

struct Factory {
    root: PathBuf,
    log: Log,
    memory: Vec<u8>,
    behaviour: Mutex<DestBehaviour>,
}

impl DestFactory for Factory {
    fn host(&self, id: &str) -> Result<Box<dyn DestHost>, HostError> {
        log(&self.log, format!("host {id}"));
        Ok(Box::new(FakeDest {
            root: self.root.clone(),
            log: self.log.clone(),
            expect_memory: self.memory.clone(),
            ps: None,
            behaviour: self.behaviour.lock().unwrap().clone(),
            id: id.to_string(),
        }))
    }
}

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    src_dir: PathBuf,
    dst_root: PathBuf,
    src_log: Log,
    dst_log: Log,
    factory: Arc<Factory>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("a");
        let dst_root = dir.path().join("b");
        std::fs::create_dir_all(&src_dir).unwrap();
        std::fs::create_dir_all(&dst_root).unwrap();
        let dst_log: Log = Default::default();
        let factory = Arc::new(Factory {
            root: dst_root.clone(),
            log: dst_log.clone(),
            memory: (0..1_000_000u32).map(|i| (i % 253) as u8).collect(),
            behaviour: Mutex::new(DestBehaviour::default()),
        });
        World {
            _dir: dir,
            pki: Pki::new(),
            src_dir,
            dst_root,
            src_log: Default::default(),
            dst_log,
            factory,
        }
    }

    fn serve(&self) -> Serving {
        let mut cfg = DestConfig::new(self.pki.dst_security());
        cfg.timeouts.idle = Duration::from_secs(20);
        // Both "hosts" share this machine: the source's directory plays the
        // shared storage.
        cfg.shared_rootfs_under = vec![self.src_dir.clone()];
        Serving::start(cfg, self.factory.clone())
    }

    fn source(&self, id: &str) -> FakeSource {
        FakeSource::new(id, &self.src_dir.join(id), self.src_log.clone())
    }

    fn config(&self, to: std::net::SocketAddr) -> SourceConfig {
        let mut c = SourceConfig::new(to, self.pki.src_security(), self.src_dir.join("work"));
        c.rootfs = RootfsMode::Ship;
        c.compression = migrate::wire::Compression::Zstd;
        c.status_deadline = Duration::from_secs(10);
        c
    }

    /// A migration of `src` to the server at `to` with [`World::config`].
    fn migrate(&self, src: &mut FakeSource, to: std::net::SocketAddr) -> Outcome {
        migrate_with(src, &self.config(to))
    }

    fn behave(&self, b: DestBehaviour) {
        *self.factory.behaviour.lock().unwrap() = b;
    }

    /// Nothing of the migration is left on the destination.
    fn assert_dest_clean(&self) {
        let left = contents(&self.dst_root);
        let files: Vec<_> = left.iter().filter(|p| !p.is_dir()).collect();
        assert!(files.is_empty(), "left on the destination: {files:?}");
        for d in ["images", "bundles"] {
            let sub = contents(&self.dst_root.join(d));
            assert!(sub.is_empty(), "left in {d}: {sub:?}");
        }
    }

    /// The source's work dir holds nothing.
    fn assert_source_work_clean(&self) {
        let left = contents(&self.src_dir.join("work"));
        assert!(left.is_empty(), "left on the source: {left:?}");
    }
}

fn no_progress() -> impl FnMut(&Progress) {
    |_| {}
}

type Outcome = Result<migrate::Report, Box<source::Failure>>;

/// A migration of `src` with `cfg`, no progress report and no cancel.
fn migrate_with(src: &mut FakeSource, cfg: &SourceConfig) -> Outcome {
    source::migrate(src, cfg, &mut no_progress(), &CancelToken::new())
}

#[test]
fn stop_copy_with_shipped_rootfs_succeeds() {
    let w = World::new();
    let serving = w.serve();
    let mut src = w.source("c1");
    let mut phases = Vec::new();
    let report = source::migrate(
        &mut src,
        &w.config(serving.addr),
        &mut |p: &Progress| {
            if phases.last() != Some(&p.phase) {
                phases.push(p.phase)
            }
        },
        &CancelToken::new(),
    )
    .unwrap();
    serving.idle();
    assert_eq!(
        calls(&w.src_log),
        ["preflight", "dump", "commit-pending", "destroy"]
    );
    assert_eq!(
        calls(&w.dst_log),
        [
            "host c1",
            "preflight c1 shared=false",
            "page-server",
            "page-server-done",
            "restore",
            "config root \"rootfs\"",
            "start"
        ]
    );
    // The bundle arrived, with the change made during the freeze.
    let bundle = w.dst_root.join("bundles/c1");
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/hostname")).unwrap(),
        "changed at dump"
    );
    assert_eq!(
        std::fs::read_link(bundle.join("rootfs/link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert!(bundle.join("config.json").is_file());
    // The images are gone once the container runs.
    assert!(!w.dst_root.join("images/c1").exists());
    w.assert_source_work_clean();

    assert_eq!(report.mode, Some(Mode::StopCopy));
    assert!(report.tls);
    assert_eq!(report.not_used.len(), 2, "{:?}", report.not_used);
    assert!(report.bytes.rootfs_precopy >= 300_000);
    assert_eq!(report.bytes.rootfs_delta, "changed at dump".len() as u64);
    // The early image is not sent again: the dump left it as it was.
    assert_eq!(report.bytes.early_images, 5);
    assert_eq!(report.bytes.images, 8);
    assert_eq!(report.pages.written, 1_000_000 / 4096);
    assert!(report.timings.downtime > Duration::ZERO);
    assert!(report.timings.total >= report.timings.downtime);
    assert_eq!(report.dest_pid, Some(4242));
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["timings"]["downtime"].as_f64().unwrap() > 0.0,
        "{json}"
    );
    assert_eq!(json["mode"], "stop-copy");
    use migrate::Phase::*;
    assert_eq!(
        phases,
        [
            Connect,
            Preflight,
            RootfsPrecopy,
            Dump,
            RootfsDelta,
            Images,
            Restore,
            Switchover,
            Done
        ]
    );
}

#[test]
fn restore_failure_on_the_destination_resumes_the_source() {
    let w = World::new();
    w.behave(DestBehaviour {
        fail_restore: Some("container c2 already exists".into()),
        ..Default::default()
    });
    let serving = w.serve();
    let mut src = w.source("c2");
    let f = w.migrate(&mut src, serving.addr).unwrap_err();
    serving.idle();
    assert_eq!(f.source, SourceState::Resumed);
    assert_eq!(f.phase, migrate::Phase::Restore);
    let msg = f.to_string();
    assert!(msg.contains("container c2 already exists"), "{msg}");
    assert!(msg.contains("resumed on this host"), "{msg}");
    assert_eq!(calls(&w.src_log), ["preflight", "dump", "resume"]);
    let d = calls(&w.dst_log);
    assert_eq!(d.last().unwrap(), "abort", "{d:?}");
    assert!(!d.contains(&"start".to_string()));
    w.assert_dest_clean();
    w.assert_source_work_clean();
}

#[test]
fn connection_cut_mid_transfer_resumes_the_source_and_cleans_the_destination() {
    let w = World::new();
    let serving = w.serve();
    let proxy = Arc::new(Proxy::new(serving.addr));
    let mut src = w.source("c3");
    // A large change during the freeze, cut in the middle of its transfer.
    let rootfs = src.rootfs.clone();
    let p = proxy.clone();
    src.on_dump = Some(Box::new(move || {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 255) as u8).collect();
        std::fs::write(rootfs.join("data"), big).unwrap();
        p.cut_s2d_after(1_000_000);
    }));
    let mut cfg = w.config(proxy.addr);
    cfg.compression = migrate::wire::Compression::None;
    let f = migrate_with(&mut src, &cfg).unwrap_err();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(f.source, SourceState::Resumed, "{f}");
    assert_eq!(f.phase, migrate::Phase::RootfsDelta, "{f}");
    assert_eq!(calls(&w.src_log), ["preflight", "dump", "resume"]);
    serving.idle();
    let d = calls(&w.dst_log);
    assert_eq!(d.last().unwrap(), "abort", "{d:?}");
    w.assert_dest_clean();
    w.assert_source_work_clean();
}

#[test]
fn bad_credentials_are_refused_before_anything_is_touched() {
    let w = World::new();
    let serving = w.serve();
    for (name, security) in [
        (
            "untrusted",
            migrate::Security::Tls(Arc::new(
                migrate::tls::Credentials::load_unchecked(&w.pki.rogue()).unwrap(),
            )),
        ),
        ("insecure", migrate::Security::Insecure),
    ] {
        let mut src = w.source(&format!("c4-{name}"));
        let mut cfg = w.config(serving.addr);
        cfg.security = security;
        let f = migrate_with(&mut src, &cfg).unwrap_err();
        assert_eq!(f.source, SourceState::Untouched, "{name}: {f}");
        assert_eq!(f.phase, migrate::Phase::Connect, "{name}: {f}");
        assert!(
            calls(&w.src_log).is_empty(),
            "{name}: {:?}",
            calls(&w.src_log)
        );
        assert!(
            calls(&w.dst_log).is_empty(),
            "{name}: {:?}",
            calls(&w.dst_log)
        );
        let msg = f.to_string();
        assert!(
            msg.contains("the peer refused our certificate: unknown CA")
                || msg.contains("it is speaking TLS"),
            "{name}: {msg}"
        );
    }
    // A destination with a certificate the source does not trust.
    let mut cfg = DestConfig::new(migrate::Security::Tls(Arc::new(
        migrate::tls::Credentials::load_unchecked(&w.pki.rogue()).unwrap(),
    )));
    cfg.timeouts.idle = Duration::from_secs(5);
    let rogue_dest = Serving::start(cfg, w.factory.clone());
    let mut src = w.source("c4-rogue-dest");
    let f = w.migrate(&mut src, rogue_dest.addr).unwrap_err();
    assert!(f.to_string().contains("peer certificate rejected"), "{f}");
    assert!(calls(&w.src_log).is_empty());
    assert!(calls(&w.dst_log).is_empty());
    w.assert_dest_clean();
    // The honest source still gets through.
    let mut src = w.source("c4-good");
    w.migrate(&mut src, serving.addr).unwrap();
}

#[test]
fn failed_dump_resumes_and_aborts_the_destination() {
    let w = World::new();
    let serving = w.serve();
    let mut src = w.source("c5");
    src.fail_dump = true;
    let f = w.migrate(&mut src, serving.addr).unwrap_err();
    serving.idle();
    assert_eq!(f.source, SourceState::Resumed);
    assert!(
        f.to_string()
            .contains("dump failed: criu dump failed: simulated"),
        "{f}"
    );
    assert_eq!(calls(&w.src_log), ["preflight", "dump", "resume"]);
    assert_eq!(calls(&w.dst_log).last().unwrap(), "abort");
    w.assert_dest_clean();
}

#[test]
fn cancel_during_the_dump_rolls_back() {
    let w = World::new();
    let serving = w.serve();
    let cancel = CancelToken::new();
    let mut src = w.source("c6");
    let c = cancel.clone();
    src.on_dump = Some(Box::new(move || c.cancel()));
    let f = source::migrate(
        &mut src,
        &w.config(serving.addr),
        &mut no_progress(),
        &cancel,
    )
    .unwrap_err();
    serving.idle();
    assert!(matches!(f.error, migrate::Error::Cancelled), "{f}");
    assert_eq!(f.source, SourceState::Resumed);
    assert_eq!(calls(&w.src_log), ["preflight", "dump", "resume"]);
    assert_eq!(calls(&w.dst_log).last().unwrap(), "abort");
    w.assert_dest_clean();
}

#[test]
fn explicit_unavailable_mode_is_refused_before_freezing() {
    let w = World::new();
    let serving = w.serve();
    let mut src = w.source("c7");
    let mut cfg = w.config(serving.addr);
    cfg.mode = migrate::ModeRequest::PreCopy;
    let f = migrate_with(&mut src, &cfg).unwrap_err();
    serving.idle();
    assert_eq!(f.source, SourceState::Untouched);
    assert!(
        f.to_string().contains("pre-copy migration is not possible"),
        "{f}"
    );
    assert!(f.to_string().contains("soft-dirty"), "{f}");
    assert_eq!(calls(&w.src_log), ["preflight"]);
    assert_eq!(calls(&w.dst_log).last().unwrap(), "abort");
    w.assert_dest_clean();
}

#[test]
fn one_migration_per_id_but_several_ids_at_once() {
    let w = World::new();
    let (gate_tx, gate_rx) = mpsc::channel();
    w.behave(DestBehaviour {
        restore_gate: Some(Arc::new(Mutex::new(gate_rx))),
        ..Default::default()
    });
    let serving = w.serve();
    let addr = serving.addr;
    // First migration of "same" blocks in the destination's restore.
    let mut first = w.source("same");
    let cfg = w.config(addr);
    let t = thread::spawn(move || migrate_with(&mut first, &cfg));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !calls(&w.dst_log).contains(&"restore".to_string()) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    }
    // A second one for the same ID is refused; the first is untouched.
    let dup_dir = w.src_dir.join("dup");
    let mut dup = FakeSource::new("same", &dup_dir, Default::default());
    let f = w.migrate(&mut dup, addr).unwrap_err();
    assert!(f.to_string().contains("already in progress"), "{f}");
    assert_eq!(f.source, SourceState::Untouched);
    // Another ID goes through meanwhile (its restore is gated too).
    w.behave(DestBehaviour::default());
    let mut other = w.source("other");
    w.migrate(&mut other, addr).unwrap();
    gate_tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    serving.idle();
}

#[test]
fn shutdown_of_the_destination_mid_migration_rolls_back_both_sides() {
    let w = World::new();
    let serving = Arc::new(Mutex::new(Some(w.serve())));
    let addr = serving.lock().unwrap().as_ref().unwrap().addr;
    let mut src = w.source("c8");
    let s = serving.clone();
    src.on_dump = Some(Box::new(move || {
        // SIGTERM on the destination while the source is frozen.
        let serving = s.lock().unwrap().take().unwrap();
        serving.stop();
    }));
    let f = w.migrate(&mut src, addr).unwrap_err();
    assert_eq!(f.source, SourceState::Resumed, "{f}");
    assert_eq!(calls(&w.src_log), ["preflight", "dump", "resume"]);
    assert_eq!(calls(&w.dst_log).last().unwrap(), "abort");
    w.assert_dest_clean();
}

#[test]
fn lost_commit_is_aborted_and_the_source_resumes() {
    let w = World::new();
    let serving = w.serve();
    let proxy = Arc::new(Proxy::new(serving.addr));
    let p = proxy.clone();
    // The source's next bytes after the restore (the commit) are lost.
    w.behave(DestBehaviour {
        on_restore: Some(Arc::new(move || p.cut_s2d_after(0))),
        ..Default::default()
    });
    let mut src = w.source("c9");
    let f = w.migrate(&mut src, proxy.addr).unwrap_err();
    serving.idle();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(f.source, SourceState::Resumed, "{f}");
    assert_eq!(
        calls(&w.src_log),
        ["preflight", "dump", "commit-pending", "resume"]
    );
    let d = calls(&w.dst_log);
    assert!(!d.contains(&"start".to_string()), "{d:?}");
    assert_eq!(d.last().unwrap(), "abort");
    w.assert_dest_clean();
}

#[test]
fn unanswerable_commit_leaves_the_source_to_the_operator() {
    let w = World::new();
    let serving = w.serve();
    let proxy = Arc::new(Proxy::new(serving.addr));
    let p = proxy.clone();
    // The destination starts the container; nothing it says reaches the
    // source any more, the status queries' answers included.
    w.behave(DestBehaviour {
        on_start: Some(Arc::new(move || {
            let p = p.clone();
            p.cut_d2s_after(0);
            thread::spawn(move || {
                for _ in 0..600 {
                    p.cut_d2s_after(0);
                    thread::sleep(Duration::from_millis(5));
                }
            });
        })),
        ..Default::default()
    });
    let mut src = w.source("c13");
    let mut cfg = w.config(proxy.addr);
    cfg.status_deadline = Duration::from_secs(1);
    let f = migrate_with(&mut src, &cfg).unwrap_err();
    serving.idle();
    assert_eq!(f.source, SourceState::InDoubt, "{f}");
    // Told before the commit went out, and told that it stays frozen;
    // neither resumed nor destroyed.
    assert_eq!(
        calls(&w.src_log),
        ["preflight", "dump", "commit-pending", "in-doubt"]
    );
    assert!(f.to_string().contains("left frozen"), "{f}");
}

#[test]
fn lost_running_confirmation_is_recovered_by_asking() {
    let w = World::new();
    let serving = w.serve();
    let proxy = Arc::new(Proxy::new(serving.addr));
    let p = proxy.clone();
    let started = Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    // The destination starts the container; its "running" is lost.
    w.behave(DestBehaviour {
        on_start: Some(Arc::new(move || {
            s2.store(true, Ordering::SeqCst);
            p.cut_d2s_after(0)
        })),
        ..Default::default()
    });
    let mut src = w.source("c10");
    let report = w.migrate(&mut src, proxy.addr).unwrap();
    serving.idle();
    assert!(started.load(Ordering::SeqCst));
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(
        calls(&w.src_log),
        ["preflight", "dump", "commit-pending", "destroy"]
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("reports the container running")),
        "{:?}",
        report.warnings
    );
    assert!(!calls(&w.dst_log).contains(&"abort".to_string()));
}

#[test]
fn shared_rootfs_must_exist_on_the_destination() {
    let w = World::new();
    let serving = w.serve();
    let mut src = w.source("c11");
    let mut cfg = w.config(serving.addr);
    cfg.rootfs = RootfsMode::Shared;
    // Same machine: the path exists, so this works and nothing is shipped.
    let r = migrate_with(&mut src, &cfg).unwrap();
    assert_eq!(r.bytes.rootfs_precopy, 0);
    serving.idle();
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.dst_root.join("bundles/c11/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg_json["root"]["path"].as_str().unwrap(),
        src.rootfs.display().to_string()
    );
    // Once it is gone, the destination refuses in preflight.
    std::fs::remove_dir_all(&src.rootfs).unwrap();
    let mut src = FakeSource::new("c12", &w.src_dir.join("c12"), w.src_log.clone());
    std::fs::remove_dir_all(&src.rootfs).unwrap();
    let f = migrate_with(&mut src, &cfg).unwrap_err();
    assert!(
        f.to_string().contains("is not a directory on this host"),
        "{f}"
    );
    assert_eq!(f.source, SourceState::Untouched);
}

#[test]
fn pre_copy_iterates_until_the_downtime_fits_then_dumps_with_the_parent_chain() {
    let w = World::new();
    let serving = w.serve();
    let mut src = w.source("p1");
    src.features.mem_track = true;
    let mut cfg = w.config(serving.addr);
    cfg.rootfs = RootfsMode::Shared;
    cfg.max_downtime = Some(Duration::from_millis(60));
    let report = migrate_with(&mut src, &cfg).unwrap_or_else(|f| panic!("{f}"));
    serving.idle();
    // 97 pages (all the memory: 97 ms at 1 page/ms, over the 60 ms
    // target), then 48 pages found dirty in the ~100 ms since: about half
    // a page per ms, so about 24 dirty again after round 2's ~50 ms, which
    // fits.
    assert_eq!(
        calls(&w.src_log),
        [
            "preflight",
            "pre-dump pre-1 parent=None",
            "pre-dump pre-2 parent=Some(\"../pre-1\")",
            "dump",
            "commit-pending",
            "destroy"
        ]
    );
    let d = calls(&w.dst_log);
    let ps: Vec<_> = d.iter().filter(|c| c.starts_with("page-server")).collect();
    assert_eq!(
        ps,
        [
            "page-server",
            "page-server-done",
            "page-server parent=../pre-1",
            "page-server-done",
            "page-server parent=../pre-2",
            "page-server-done"
        ]
    );
    assert_eq!(report.mode, Some(Mode::PreCopy));
    assert_eq!(report.pre_copy.len(), 2);
    assert_eq!(report.pages.pre_dumped, 97 + 48);
    assert_eq!(report.pre_copy[0].predicted_pages, 97);
    let p = report.pre_copy[1].predicted_pages;
    assert!((10..=40).contains(&p), "{:?}", report.pre_copy);
    assert_eq!(
        report.predicted_downtime,
        report.pre_copy[1].predicted_downtime
    );
    let stop = report.pre_copy_stop.as_deref().unwrap();
    assert!(
        stop.contains("within the downtime target of 60 ms"),
        "{stop}"
    );
    let lines = report.summary().join("\n");
    assert!(lines.contains("pre-copy round 2: 48 pages"), "{lines}");
}

#[test]
fn a_peer_sending_a_dotdot_path_is_refused_and_cleaned_up() {
    use migrate::files::{EntryHeader, Kind, Name, TreeMsg};
    use migrate::proto::{Msg, PROTOCOL};
    let w = World::new();
    let serving = w.serve();
    let mut ch =
        migrate::transport::connect(serving.addr, "127.0.0.1", &w.pki.src_security()).unwrap();
    ch.set_timeout(Some(Duration::from_secs(10)));
    ch.send(&Msg::Hello {
        protocol: PROTOCOL,
        software: "evil".into(),
        migration_id: "0123".into(),
        container_id: "evil".into(),
    })
    .unwrap();
    assert!(matches!(ch.recv::<Msg>().unwrap(), Msg::Welcome { .. }));
    let mut src = w.source("evil");
    let info = src.preflight().unwrap();
    ch.send(&Msg::Preflight {
        info: Box::new(info),
        rootfs: RootfsMode::Ship,
    })
    .unwrap();
    assert!(matches!(ch.recv::<Msg>().unwrap(), Msg::PreflightOk { .. }));
    ch.send(&Msg::Rootfs { pass: 1 }).unwrap();
    ch.send(&TreeMsg::Begin { pass: 1 }).unwrap();
    ch.send(&TreeMsg::Entry(EntryHeader {
        path: Name::Utf8("etc/../../../../evil".into()),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        size: 4,
        target: None,
        rdev: 0,
    }))
    .unwrap();
    let _ = ch.send_data(b"evil", migrate::wire::Compression::None);
    let _ = ch.send_end();
    match ch.recv::<Msg>().unwrap() {
        Msg::Error { reason } => {
            assert!(reason.contains("'..' path component"), "{reason}")
        }
        m => panic!("expected an error, got {m:?}"),
    }
    serving.idle();
    assert_eq!(calls(&w.dst_log).last().unwrap(), "abort");
    w.assert_dest_clean();
    assert!(!w.dst_root.parent().unwrap().join("evil").exists());
}
