//! A ferry container as the sending end of a migration.
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use migrate::mode::DumpKind;
use migrate::source::CommitInfo;
use migrate::{DumpOutcome, DumpPlan, HostError, Mode, PagesState, SourceHost, SourceInfo};

use super::{Event, Extra, Hold};
use crate::cgroups::FreezerState;
use crate::container::{CheckpointOptions, HoldError, PostDump};
use crate::criu::{DumpStats, PreDumpMode};
use crate::freeze_guard::{GuardHandle, OnDeath};
use crate::network::LockMethod;
use crate::{Container, Status};

/// How the source dumps.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Dump established TCP connections (restored with them).
    pub tcp_established: bool,
    /// Dump the file locks the container holds (restored with them).
    pub file_locks: bool,
    /// The destination uses this host's root filesystem (shared storage).
    pub shared_rootfs: bool,
    pub network_lock: LockMethod,
    /// The ferry binary: should this process die while a commit is in
    /// doubt, the freeze guard runs `ferry settle-commit` with it to ask
    /// the destination and resume or remove the container. Without it the
    /// container stays frozen for the operator.
    pub settle_with: Option<PathBuf>,
    /// How pre-copy rounds collect pages (`None`: CRIU's default, splice).
    pub pre_dump_mode: Option<PreDumpMode>,
}

impl Default for SourceOptions {
    fn default() -> SourceOptions {
        SourceOptions {
            tcp_established: false,
            file_locks: false,
            shared_rootfs: false,
            network_lock: LockMethod::Nftables,
            settle_with: None,
            pre_dump_mode: None,
        }
    }
}

type DumpResult = crate::container::Result<Option<DumpStats>>;

/// What the agent and the held dump share about the freeze.
#[derive(Default)]
struct Freeze {
    /// The freeze guard, handed over at the hold.
    guard: Option<GuardHandle>,
    /// The commit's outcome is unknown: the rollback must not thaw.
    keep_frozen: bool,
    /// The thread running the dump (its child is the dump's criu).
    tid: Option<i32>,
}

/// A dump held at CRIU's post-dump notification.
struct Held {
    decision: mpsc::Sender<bool>,
    thread: JoinHandle<()>,
    events: mpsc::Receiver<Event<DumpResult>>,
    freeze: Arc<Mutex<Freeze>>,
}

impl Held {
    /// Tells the freeze guard what ferry's death would mean from now on
    /// (and, with `settle`, what to run then).
    fn on_death(&self, what: OnDeath, settle: Option<&[OsString]>) -> Result<(), HostError> {
        let f = self.freeze.lock().map_err(|_| "the dump thread panicked")?;
        if let Some(g) = &f.guard {
            if let Some(argv) = settle {
                g.settle_with(argv)?;
            }
            g.on_death(what)?;
        }
        Ok(())
    }

    /// Tells the held dump what to do and waits for it to finish.
    fn release(self, commit: bool) -> Result<Option<DumpStats>, HostError> {
        let _ = self.decision.send(commit);
        let mut result = Err("the dump thread ended without a result".into());
        for ev in self.events.iter() {
            if let Event::Done(r) = ev {
                result = r.map_err(|e| e.to_string().into());
            }
        }
        let _ = self.thread.join();
        result
    }
}

/// The container `id` under the state root `root`, being migrated.
pub struct ContainerSource {
    root: PathBuf,
    id: String,
    opts: SourceOptions,
    held: Option<Held>,
    /// CRIU's statistics of the final dump, once it finished (commit).
    pub stats: Option<DumpStats>,
    /// When the post-dump hold was reached.
    pub dumped_at: Option<Instant>,
    /// CRIU can keep pidfds across pre-copy rounds (seen at preflight).
    pidfd_store_supported: bool,
    /// The pidfd store of this migration's rounds and final dump.
    pidfd_store: Option<OwnedFd>,
    /// Post-copy: the lazy dump's state.
    lazy: Option<Lazy>,
}

/// A lazy dump (post-copy) after its post-dump hold.
struct Lazy {
    status: super::lazy::StatusPipe,
    /// The hold was released: CRIU serves pages.
    serving: bool,
    /// How the dump ended, once it did.
    result: Option<Result<Option<DumpStats>, String>>,
}

impl ContainerSource {
    pub fn new(
        root: &Path,
        id: &str,
        opts: SourceOptions,
    ) -> crate::container::Result<ContainerSource> {
        let c = Container::load(root, id)?;
        Ok(ContainerSource {
            root: root.to_path_buf(),
            id: c.id().to_string(),
            opts,
            held: None,
            stats: None,
            dumped_at: None,
            pidfd_store_supported: false,
            pidfd_store: None,
            lazy: None,
        })
    }

    fn load(&self) -> Result<Container, HostError> {
        Ok(Container::load(&self.root, &self.id)?)
    }

    /// Patches the report with CRIU's own figures, known only once the
    /// dump finished (after the commit).
    pub fn complete_report(&self, r: &mut migrate::Report) {
        if let Some(s) = &self.stats {
            // Pre-copy rounds counted their own pages already; the held
            // dump's figures arrive only now.
            r.pages.written = s.pages_written;
            r.pages.skipped += s.pages_skipped_parent;
            r.pages.lazy = s.pages_lazy;
            r.bytes.memory =
                (r.pages.pre_dumped + s.pages_written + s.pages_lazy) * migrate::mode::PAGE_SIZE;
            r.timings.memory_transfer = Duration::from_micros(s.memwrite_time_us as u64);
        }
    }
}

impl Drop for ContainerSource {
    fn drop(&mut self) {
        // Never leave a tree held: dropping means rolling back.
        if let Some(h) = self.held.take() {
            let _ = h.release(false);
        }
    }
}

/// The dump thread's side of the hold.
struct SourceHold {
    hold: Hold<DumpResult>,
    freeze: Arc<Mutex<Freeze>>,
}

impl PostDump for SourceHold {
    fn post_dump(&mut self, _images: &Path, guard: Option<GuardHandle>) -> Result<(), HoldError> {
        if let Ok(mut f) = self.freeze.lock() {
            f.guard = guard;
        }
        self.hold
            .wait(0, "the source resumes")
            .map_err(HoldError::Declined)
    }

    fn keep_frozen(&self) -> bool {
        self.freeze.lock().map(|f| f.keep_frozen).unwrap_or(true)
    }
}

/// `ferry settle-commit` for the container `id` under `root`, asking the
/// destination in `c`.
fn settle_argv(ferry: &Path, root: &Path, id: &str, c: &CommitInfo) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        ferry.into(),
        "--root".into(),
        root.into(),
        "settle-commit".into(),
        id.into(),
        "--to".into(),
        c.to.to_string().into(),
        "--server-name".into(),
        c.server_name.clone().into(),
        "--migration-id".into(),
        c.migration_id.clone().into(),
    ];
    match c.security.paths() {
        Some(p) => {
            for (flag, path) in [("--ca", &p.ca), ("--cert", &p.cert), ("--key", &p.key)] {
                v.push(flag.into());
                v.push(path.into());
            }
        }
        None => v.push("--insecure".into()),
    }
    v
}

/// Resident memory of the container (cgroup usage, else the init's RSS).
fn memory_bytes(c: &Container) -> u64 {
    if let Ok(Some(cg)) = c.cgroup() {
        if let Ok(s) = cg.stats() {
            if s.memory.usage.usage > 0 {
                return s.memory.usage.usage;
            }
        }
    }
    std::fs::read_to_string(format!("/proc/{}/status", c.state.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CRIU reattaches a stdio file that is not in append mode only to a file
/// of the very same size, which the destination cannot offer: refuse
/// before anything is frozen.
fn check_stdio(id: &str, pid: i32) -> Result<(), HostError> {
    for (fd, name) in [(0, "stdin"), (1, "stdout"), (2, "stderr")] {
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0);
        if flags & libc::O_APPEND == 0 {
            let path = crate::proc::fd_target(pid, fd).unwrap_or_default();
            return Err(format!(
                "container {id}'s {name} is a regular file not opened for appending ({path}): \
                 CRIU can only reattach it to a file of the same size on the destination; \
                 run the container with stdio on pipes, /dev/null or files opened in append mode"
            )
            .into());
        }
    }
    Ok(())
}

impl ContainerSource {
    /// The checkpoint request for `plan`: pages to the destination's page
    /// server, held at post-dump.
    fn checkpoint_options(&self, plan: &DumpPlan) -> CheckpointOptions {
        let mut o = CheckpointOptions::new(&plan.images_dir);
        o.parent_path = plan.parent_img.as_ref().map(PathBuf::from);
        o.page_server = plan
            .page_server
            .as_ref()
            .map(|t| (t.address.clone(), t.port));
        o.page_server_tls = plan.tls.clone();
        o.page_server_pin = plan.peer_cert.clone();
        o.tcp_established = self.opts.tcp_established;
        o.file_locks = self.opts.file_locks;
        o.network_lock = self.opts.network_lock;
        o.pidfd_store = self.pidfd_store.as_ref().map(AsRawFd::as_raw_fd);
        o.lazy_pages = plan.lazy_pages;
        // CRIU counts a page client that hangs up as a finished transfer:
        // it must never kill the tree, which stays frozen (keep_frozen)
        // until the destination confirms every page.
        o.leave_running = plan.lazy_pages;
        o
    }

    /// The pidfd store for this migration's pre-dumps, made at the first
    /// one (where CRIU has it): with it a round whose processes died and
    /// whose pids were taken by others fails instead of dumping strangers.
    fn pidfd_store(&mut self) -> Result<(), HostError> {
        if self.pidfd_store_supported && self.pidfd_store.is_none() {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
            let sk = socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| format!("cannot create the pidfd store socket: {e}"))?;
            self.pidfd_store = Some(sk);
        }
        Ok(())
    }

    /// The error of a failed dump, with CRIU's log kept where the user can
    /// read it (the images directory is removed after a failure).
    fn dump_failed(&self, plan: &DumpPlan, error: String) -> HostError {
        self.criu_failed(plan, error, migrate::mode::DUMP_LOG, "-dump.log")
    }

    fn criu_failed(&self, plan: &DumpPlan, error: String, log: &str, kept: &str) -> HostError {
        let keep = plan
            .images_dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/tmp"));
        super::keep_log(
            error,
            &plan.images_dir,
            log,
            keep,
            &crate::id::file_name(&self.id, kept),
        )
        .into()
    }
}

/// A dump running in its own thread until it is held at post-dump; its
/// events come on the receiver returned beside it.
struct Dumping {
    decision: mpsc::Sender<bool>,
    thread: JoinHandle<()>,
    freeze: Arc<Mutex<Freeze>>,
}

impl Dumping {
    fn with_events(self, events: mpsc::Receiver<Event<DumpResult>>) -> Held {
        Held {
            decision: self.decision,
            thread: self.thread,
            events,
            freeze: self.freeze,
        }
    }
}

fn spawn_dump(
    c: Container,
    o: CheckpointOptions,
) -> Result<(Dumping, mpsc::Receiver<Event<DumpResult>>), HostError> {
    let (ev_tx, ev_rx) = mpsc::channel();
    let (dec_tx, dec_rx) = mpsc::channel();
    // A lazy dump that fails while serving resumes the tree in CRIU's
    // eyes; the freeze stays until the rollback knows the destination's
    // copy is stopped.
    let freeze = Arc::new(Mutex::new(Freeze {
        keep_frozen: o.lazy_pages,
        ..Freeze::default()
    }));
    let shared = freeze.clone();
    let thread = std::thread::Builder::new()
        .name("dump".into())
        .spawn(move || {
            if let Ok(mut f) = shared.lock() {
                f.tid = Some(nix::unistd::gettid().as_raw());
            }
            let mut hold = SourceHold {
                hold: Hold {
                    events: ev_tx.clone(),
                    decision: dec_rx,
                },
                freeze: shared,
            };
            let r = c.checkpoint_with(&o, Some(&mut hold)).map(|done| {
                for w in &done.hook_warnings {
                    tracing::warn!(warning = %w, "poststop hook");
                }
                done.stats
            });
            let _ = ev_tx.send(Event::Done(r));
        })?;
    let dumping = Dumping {
        decision: dec_tx,
        thread,
        freeze,
    };
    Ok((dumping, ev_rx))
}

/// When the container's cgroup started and finished freezing, as seen
/// while waiting for the dump to be held.
#[derive(Default)]
struct FreezeWatch {
    frozen_at: Option<Instant>,
    frozen_done: Option<Instant>,
}

impl FreezeWatch {
    fn poll(&mut self, cgroup: Option<&crate::cgroups::Cgroup>) {
        let (Some(cg), None) = (cgroup, self.frozen_done) else {
            return;
        };
        match cg.freezer_state() {
            Ok(FreezerState::Frozen) => {
                let now = Instant::now();
                self.frozen_at.get_or_insert(now);
                self.frozen_done = Some(now);
            }
            Ok(FreezerState::Freezing) => {
                self.frozen_at.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
    }

    /// The dump was held at `held`; `called` is when it was asked for.
    fn outcome(&self, called: Instant, held: Instant) -> DumpOutcome {
        let frozen = self.frozen_at.unwrap_or(called);
        let done = self.frozen_done.unwrap_or(frozen);
        DumpOutcome {
            frozen_at: Some(frozen),
            freeze: done.saturating_duration_since(frozen),
            dump: held.saturating_duration_since(done),
            memory_transfer: None,
            pages_written: 0,
            pages_skipped: 0,
        }
    }
}

/// A lock on a file of a root filesystem both hosts share cannot move: the
/// destination's CRIU waits to take it while this host, frozen until the
/// commit, still holds it (the restore then only ends at its timeout).
/// Refuse before anything is frozen. Locks on bind mounts cannot be told
/// apart this way (docs/migrate.md).
fn check_rootfs_locks(id: &str, init: i32, pids: &[i32]) -> Result<(), HostError> {
    let root_mnt = std::fs::read_to_string(format!("/proc/{init}/mountinfo"))?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(' ').next().map(String::from));
    let Some(root_mnt) = root_mnt else {
        return Ok(());
    };
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let on_root = info
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .is_some_and(|m| m.trim() == root_mnt);
            if on_root && info.lines().any(|l| l.starts_with("lock:")) {
                let path = std::fs::read_link(format!(
                    "/proc/{pid}/fd/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                return Err(format!(
                    "container {id} holds a lock on {} in its root filesystem, which the \
                     destination shares (--rootfs shared): it could not take the lock while \
                     this host holds it; use --rootfs ship, or release the lock",
                    path.display()
                )
                .into());
            }
        }
    }
    Ok(())
}

impl SourceHost for ContainerSource {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn early_images(&mut self, plan: &DumpPlan) -> Result<(), HostError> {
        let c = self.load()?;
        c.copy_tmpfs_ahead(&plan.images_dir)?;
        // What the destination readies its restore with.
        c.write_netns_ahead(&self.checkpoint_options(plan), &plan.images_dir)?;
        Ok(())
    }

    fn preflight(&mut self) -> Result<SourceInfo, HostError> {
        let c = self.load()?;
        let status = c.status();
        if status != Status::Running {
            return Err(format!(
                "container {} is {status}: only a running container can be migrated",
                self.id
            )
            .into());
        }
        if c.state.config.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
            return Err(format!(
                "container {} has a terminal: its pty cannot follow it to another host",
                self.id
            )
            .into());
        }
        check_stdio(&self.id, c.state.pid)?;
        if self.opts.file_locks && self.opts.shared_rootfs {
            check_rootfs_locks(&self.id, c.state.pid, &c.pids()?)?;
        }
        let criu = super::criu()?;
        let features = super::features(&criu)?;
        let dir = tempfile::tempdir()?;
        let images = std::fs::File::open(dir.path())?;
        criu.cpuinfo_dump(super::dir_opts(&images, "cpuinfo.log"))?;
        let cpuinfo = std::fs::read(dir.path().join("cpuinfo.img"))?;
        let (arch, kernel) = migrate::host::uname();
        let extra = Extra {
            tcp_established: self.opts.tcp_established,
            file_locks: self.opts.file_locks,
        };
        self.pidfd_store_supported = criu.features()?.pidfd_store;
        Ok(SourceInfo {
            id: self.id.clone(),
            criu_version: criu.version()?.to_string(),
            kernel,
            arch,
            features,
            cpuinfo: Some(cpuinfo),
            bundle: c.state.bundle.clone(),
            config_json: serde_json::to_string(&c.state.config)?,
            rootfs: c.state.rootfs.clone(),
            memory_bytes: memory_bytes(&c),
            extra: serde_json::to_value(extra)?,
        })
    }

    /// One pre-copy round: a pre-dump streaming the pages written since
    /// the last round to the destination's page server. The container is
    /// frozen only while CRIU collects the pages (with
    /// `PreDumpMode::VM_READ`, not even while it copies them).
    fn pre_dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        if plan.kind != DumpKind::PreDump || !plan.track_mem || plan.lazy_pages {
            return Err("a pre-copy round must be a pre-dump that tracks memory".into());
        }
        if self.held.is_some() {
            return Err("a dump of this container is already held".into());
        }
        self.pidfd_store()?;
        let c = self.load()?;
        let mut o = self.checkpoint_options(plan);
        o.pre_dump = true;
        o.pre_dump_mode = self.opts.pre_dump_mode;
        let called = Instant::now();
        let done = c
            .checkpoint(&o)
            .map_err(|e| self.criu_failed(plan, e.to_string(), "pre-dump.log", "-pre-dump.log"))?;
        let s = done.stats.ok_or_else(|| {
            format!(
                "CRIU wrote no statistics for the pre-dump in {}: the round's pages are unknown",
                plan.images_dir.display()
            )
        })?;
        let us = |v: u32| Duration::from_micros(u64::from(v));
        Ok(DumpOutcome {
            frozen_at: Some(called),
            freeze: us(s.freezing_time_us),
            dump: us(s.frozen_time_us),
            memory_transfer: Some(us(s.memwrite_time_us)),
            pages_written: s.pages_written,
            pages_skipped: s.pages_skipped_parent,
        })
    }

    fn dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        if plan.kind != DumpKind::Dump {
            return Err(
                "the final dump of a migration must be a dump (stop-copy, pre-copy or post-copy)"
                    .into(),
            );
        }
        if self.held.is_some() {
            return Err("a dump of this container is already held".into());
        }
        let c = self.load()?;
        let cgroup = c.cgroup()?;
        let mut o = self.checkpoint_options(plan);
        if plan.lazy_pages {
            let status = super::lazy::StatusPipe::new()?;
            o.status_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&status.write));
            self.lazy = Some(Lazy {
                status,
                serving: false,
                result: None,
            });
        }
        let called = Instant::now();
        let (held, ev_rx) = spawn_dump(c, o)?;
        // Wait for the hold, noting when the cgroup froze (ferry freezes it
        // itself just before CRIU runs).
        let mut watch = FreezeWatch::default();
        loop {
            match ev_rx.recv_timeout(Duration::from_millis(1)) {
                Ok(Event::Held(at, _)) => {
                    self.dumped_at = Some(at);
                    self.held = Some(held.with_events(ev_rx));
                    return Ok(watch.outcome(called, at));
                }
                Ok(Event::Done(r)) => {
                    let _ = held.thread.join();
                    return Err(match r {
                        Err(e) => self.dump_failed(plan, e.to_string()),
                        Ok(_) => "the dump finished without stopping at post-dump".into(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => watch.poll(cgroup.as_ref()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = held.thread.join();
                    return Err("the dump thread ended without a result".into());
                }
            }
        }
    }

    fn resume(&mut self) -> Result<(), HostError> {
        if self.lazy.is_some() {
            self.stop_serving();
            self.lazy = None;
        }
        if let Some(h) = self.held.take() {
            // Best effort: the rollback thaws in any case.
            if let Err(e) = h.on_death(OnDeath::Thaw, None) {
                tracing::warn!(%e, "freeze guard");
            }
            // CRIU resumes the tree and reports the dump as failed.
            if h.release(false).is_ok() {
                return Err("CRIU finished the dump although it was told to roll back".into());
            }
        }
        // After a failed dump ferry has already thawed the container.
        let c = self.load()?;
        match c.status() {
            Status::Running => Ok(()),
            Status::Paused => {
                if let Ok(Some(cg)) = c.cgroup() {
                    cg.thaw()?;
                }
                Ok(())
            }
            s => Err(format!("container {} is {s} after the rollback", self.id).into()),
        }
    }

    fn destroy(&mut self) -> Result<(), HostError> {
        if self.lazy.is_some() {
            // The destination has every page: CRIU is done (or stopped),
            // and the frozen tree is removed here.
            self.stop_serving();
            if let Some(Some(Ok(stats))) = self.lazy.take().map(|l| l.result) {
                self.stats = stats;
            }
            self.load()?.delete(true)?;
            return Ok(());
        }
        let h = self
            .held
            .take()
            .ok_or("no dump is held: nothing to commit")?;
        // The destination runs it: should ferry die now, the processes
        // CRIU would have killed are killed by the guard.
        // Best effort: the commit must go on whatever the guard says.
        if let Err(e) = h.on_death(OnDeath::Kill, None) {
            tracing::warn!(%e, "freeze guard");
        }
        self.stats = h.release(true)?;
        Ok(())
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::StopCopy, Mode::PreCopy, Mode::PostCopy]
    }

    fn serve_pages(&mut self) -> Result<(), HostError> {
        let (Some(l), Some(h)) = (self.lazy.as_mut(), self.held.as_ref()) else {
            return Err("no lazy dump is held".into());
        };
        let _ = h.decision.send(true);
        l.serving = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = match self.lazy.as_ref() {
                Some(l) => l.status.wait(Duration::from_millis(50))?,
                None => false,
            };
            if ready {
                return Ok(());
            }
            if let PagesState::Failed(e) = self.pages_state() {
                return Err(e.into());
            }
        }
        Err("CRIU did not start serving pages within 30 s".into())
    }

    fn pages_state(&mut self) -> PagesState {
        let Some(l) = self.lazy.as_mut() else {
            return PagesState::Failed("no lazy dump".into());
        };
        if l.result.is_none() {
            if let Some(h) = self.held.as_ref() {
                while let Ok(ev) = h.events.try_recv() {
                    if let Event::Done(r) = ev {
                        l.result = Some(r.map_err(|e| e.to_string()));
                    }
                }
            }
            if l.result.is_some() {
                if let Some(h) = self.held.take() {
                    let _ = h.thread.join();
                }
            }
        }
        match &l.result {
            None if l.serving => PagesState::Serving,
            None => PagesState::Failed("pages are not served yet".into()),
            Some(Ok(_)) => PagesState::Served,
            Some(Err(e)) => PagesState::Failed(e.clone()),
        }
    }

    fn stop_serving(&mut self) {
        let Some(l) = self.lazy.as_mut() else { return };
        if l.result.is_some() {
            return;
        }
        let Some(h) = self.held.take() else { return };
        if let Ok(f) = h.freeze.lock() {
            if let Some(tid) = f.tid {
                super::lazy::stop_criu(tid);
            }
        }
        let Held {
            decision,
            thread,
            events,
            ..
        } = h;
        // A hold still waiting at post-dump is declined; the dump then
        // reports its end (a failure: its criu was killed).
        drop(decision);
        let mut result = Err("the dump thread ended without a result".to_string());
        for ev in events.iter() {
            if let Event::Done(r) = ev {
                result = r.map_err(|e| e.to_string());
            }
        }
        let _ = thread.join();
        l.result = Some(result);
    }

    fn commit_pending(&mut self, commit: &CommitInfo) -> Result<(), HostError> {
        let h = self
            .held
            .as_ref()
            .ok_or("no dump is held: nothing to commit")?;
        let argv = self
            .opts
            .settle_with
            .as_ref()
            .map(|ferry| settle_argv(ferry, &self.root, &self.id, commit));
        h.on_death(OnDeath::Hold, argv.as_deref())
    }

    fn in_doubt(&mut self) {
        // CRIU lets go of the processes; the cgroup stays frozen and the
        // freeze is the operator's now.
        if let Some(h) = self.held.take() {
            if let Ok(mut f) = h.freeze.lock() {
                f.keep_frozen = true;
            }
            let _ = h.release(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn child_with_stdout(f: std::fs::File) -> std::process::Child {
        Command::new("sleep")
            .arg("10")
            .stdin(Stdio::null())
            .stdout(f)
            // Not the test's own stderr, which may be a file of any mode.
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn stdio_files_not_in_append_mode_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out");
        let mut c = child_with_stdout(std::fs::File::create(&path).unwrap());
        let e = check_stdio("c1", c.id() as i32).unwrap_err().to_string();
        let _ = c.kill();
        let _ = c.wait();
        assert!(e.contains("c1's stdout") && e.contains("append"), "{e}");
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut c = child_with_stdout(f);
        let r = check_stdio("c1", c.id() as i32);
        let _ = c.kill();
        let _ = c.wait();
        assert!(r.is_ok(), "{r:?}");
    }
}
