//! What the migration needs from the container runtime on each host.
//!
//! This crate moves bytes, authenticates peers and sequences the
//! migration; it never touches a container itself. The runtime (the
//! `ferry` crate) implements [`SourceHost`] for the container being sent
//! and [`DestHost`] (through a [`DestFactory`]) for the one being
//! received. The CRIU-level knobs of each request come ready-made in the
//! plan types of [`crate::mode`] ([`DumpPlan`], [`PageServerPlan`],
//! [`RestorePlan`]); the host maps them onto its CRIU client.
use std::path::Path;
use std::time::{Duration, Instant};

use crate::info::{CommitInfo, DestInfo, SourceInfo};
use crate::mode::{DumpPlan, LazyPagesPlan, Mode, PageServerPlan, RestorePlan};

/// An error from the host, carried with its message.
pub type HostError = Box<dyn std::error::Error + Send + Sync>;

/// What a dump or pre-dump did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpOutcome {
    /// When the container stopped running (start of the downtime); `None`
    /// means when `dump` was called.
    pub frozen_at: Option<Instant>,
    /// Time to freeze the container.
    pub freeze: Duration,
    /// Time of the dump itself (after the freeze).
    pub dump: Duration,
    /// Time CRIU spent writing memory (to the page server), if known.
    pub memory_transfer: Option<Duration>,
    /// Pages written (sent to the page server).
    pub pages_written: u64,
    /// Pages found unchanged since the parent (pre-copy) and not sent.
    pub pages_skipped: u64,
}

/// Post-copy on the source: how serving the pages stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagesState {
    /// CRIU still serves pages.
    Serving,
    /// CRIU's lazy dump ended well: the destination's lazy-pages daemon
    /// fetched every page.
    Served,
    /// Serving failed (or was never started).
    Failed(String),
}

/// The running container on the source host.
///
/// `dump` leaves the container frozen; afterwards exactly one of
/// `resume` (rollback: it runs on as if nothing happened) or `destroy`
/// (commit: it now runs on the destination) is called. `resume` is also
/// called after a failed `dump` and must then succeed whether or not the
/// container was frozen.
pub trait SourceHost: Send {
    /// The container's ID (sent before anything else, to authenticate).
    fn id(&self) -> String;

    /// Checks the container can be migrated and describes it. Nothing is
    /// frozen or written.
    fn preflight(&mut self) -> Result<SourceInfo, HostError>;

    /// The migration modes this implementation can drive (what the kernels
    /// allow is in the features each side reports). `auto` only picks among
    /// these. A host that implements [`SourceHost::pre_dump`] lists
    /// [`Mode::PreCopy`].
    fn modes(&self) -> &'static [Mode] {
        &[Mode::StopCopy]
    }

    /// Pre-dump (pre-copy iteration): memory only, the container keeps
    /// running. Only called when pre-copy was chosen.
    fn pre_dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError> {
        let _ = plan;
        Err("this runtime does not implement pre-dump".into())
    }

    /// Freezes the container and dumps it as `plan` says: images into
    /// `plan.images_dir`, memory pages to the page server in
    /// `plan.page_server` (over TLS with `plan.tls` when set). The
    /// container must stay frozen afterwards (`plan.leave_stopped`),
    /// network locked, until `resume` or `destroy`.
    fn dump(&mut self, plan: &DumpPlan) -> Result<DumpOutcome, HostError>;

    /// Before the final dump `plan`, while the container still runs: image
    /// files the dump will write again into `plan.images_dir`, made now so
    /// that they cross the link before the freeze (a copy of tmpfs
    /// contents, what the destination readies its restore with). The dump
    /// must leave a file it finds unchanged untouched (same mtime and
    /// ctime): only files it rewrote are sent again after it.
    fn early_images(&mut self, plan: &DumpPlan) -> Result<(), HostError> {
        let _ = plan;
        Ok(())
    }

    /// Rollback: the container runs again exactly where it was.
    fn resume(&mut self) -> Result<(), HostError>;

    /// Commit: remove the (frozen) source container and its resources.
    fn destroy(&mut self) -> Result<(), HostError>;

    /// Post-copy: lets the lazy dump held by `dump` (`plan.lazy_pages`) go
    /// on, so that CRIU serves the pages on `plan.page_server`; returns
    /// once it listens. The container stays frozen here. `resume` then
    /// stops CRIU and thaws the container; `destroy` follows
    /// [`PagesState::Served`].
    fn serve_pages(&mut self) -> Result<(), HostError> {
        Err("this runtime does not serve lazy pages".into())
    }

    /// Post-copy: stops serving pages (a rollback); the container stays
    /// frozen until `resume`.
    fn stop_serving(&mut self) {}

    /// Post-copy: how serving the pages stands (does not block).
    fn pages_state(&mut self) -> PagesState {
        PagesState::Failed("this runtime does not serve lazy pages".into())
    }

    /// The commit is about to be sent: from here on, until `destroy` or
    /// `resume`, the container must neither run here again nor be
    /// thawed by a safety net if this process dies (the destination may
    /// already run it); `commit` says how to ask the destination what
    /// became of it. An error stops the migration before the commit.
    fn commit_pending(&mut self, commit: &CommitInfo) -> Result<(), HostError> {
        let _ = commit;
        Ok(())
    }

    /// The commit's outcome could not be learnt: leave the container
    /// frozen here for the operator (neither `resume` nor `destroy`
    /// follows).
    fn in_doubt(&mut self) {}
}

/// A CRIU page server started by the destination host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageServer {
    pub port: u16,
    /// Its pid, to wait for it to finish writing (it exits when the dump
    /// that fed it ends).
    pub pid: Option<i32>,
}

/// The restored container on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Pid of the container's init process.
    pub pid: i32,
    /// The restore was prepared before the freeze (see
    /// [`DestHost::prepare_restore`]) and only CRIU's request was left.
    pub prepared: bool,
}

/// The container being received, on the destination host.
///
/// Call order on success: `preflight`, (`start_page_server`,
/// `finish_page_server`) once per pre-copy iteration and once for the
/// final dump, `restore`, `start`. On any failure before `start` returned
/// `abort` is called, and must remove everything the host created for this
/// container (page server, processes, cgroups, state, network); the
/// migration itself removes the files it wrote (images, bundle).
pub trait DestHost: Send {
    /// Checks this host can take the container: ID free, CPU compatible
    /// (CPUINFO_CHECK against `info.cpuinfo`), CRIU present and recent,
    /// enough disk space, the rootfs present when it is shared. Chooses
    /// the images and bundle directories. Nothing is written yet.
    fn preflight(&mut self, info: &SourceInfo, shared_rootfs: bool) -> Result<DestInfo, HostError>;

    /// Starts a CRIU page server as `plan` says and returns its port.
    fn start_page_server(&mut self, plan: &PageServerPlan) -> Result<PageServer, HostError>;

    /// Waits until the page server has written everything and exited.
    /// The default waits for its pid to disappear.
    fn finish_page_server(&mut self, ps: &PageServer, timeout: Duration) -> Result<(), HostError> {
        match ps.pid {
            Some(pid) => wait_pid_gone(pid, timeout),
            None => Ok(()),
        }
    }

    /// Restores the container from `plan.images_dir` into
    /// `plan.bundle_dir`, leaving it restored but not running (stopped or
    /// frozen) until `start`.
    fn restore(&mut self, plan: &RestorePlan) -> Result<Restored, HostError>;

    /// Before the final dump, once the images' early pass is staged in
    /// `early`: readies the restore of `plan` (state, cgroup, network
    /// namespace, CRIU started) so that `restore` is left with CRIU's
    /// request. `restore` uses it if the images then record what `early`
    /// did, and restores afresh otherwise; `abort` undoes it. An error
    /// refuses the migration while the source still runs. `Ok(false)`:
    /// nothing prepared.
    fn prepare_restore(&mut self, plan: &RestorePlan, early: &Path) -> Result<bool, HostError> {
        let _ = (plan, early);
        Ok(false)
    }

    /// Lets the restored container run (the source is then destroyed).
    fn start(&mut self) -> Result<(), HostError>;

    /// Post-copy, before `restore` (with `plan.lazy_pages`): starts CRIU's
    /// lazy-pages daemon, which fetches pages from the source as `plan`
    /// says, and returns once the restore can connect to it.
    fn start_lazy_pages(&mut self, plan: &LazyPagesPlan) -> Result<(), HostError> {
        let _ = plan;
        Err("this runtime does not restore with lazy pages".into())
    }

    /// Post-copy, after `start`: `Ok(true)` once every page has arrived
    /// (the container no longer needs the source), `Ok(false)` while
    /// pages are still coming, an error if fetching them failed. Until it
    /// answers `Ok(true)`, `abort` must stop the running container, and
    /// the host must stop it should this process die.
    fn lazy_pages_done(&mut self) -> Result<bool, HostError> {
        Err("this runtime does not restore with lazy pages".into())
    }

    /// Removes every trace of this container on this host.
    fn abort(&mut self) -> Result<(), HostError>;
}

/// Makes a [`DestHost`] for each incoming migration.
pub trait DestFactory: Send + Sync {
    fn host(&self, container_id: &str) -> Result<Box<dyn DestHost>, HostError>;

    /// What became of a migration of `container_id` this server has no
    /// record of (a server before it was killed): `Aborted` only when this
    /// host certainly does not run it and never started it, `Running` when
    /// it was started here, `InProgress` while that cannot be told yet,
    /// `None` when unknown.
    fn outcome_without_record(&self, _container_id: &str) -> Option<crate::proto::Outcome> {
        None
    }
}

impl<F> DestFactory for F
where
    F: Fn(&str) -> Result<Box<dyn DestHost>, HostError> + Send + Sync,
{
    fn host(&self, container_id: &str) -> Result<Box<dyn DestHost>, HostError> {
        self(container_id)
    }
}

/// Whether a process is gone (or a zombie) — for processes that are not
/// our children, like a page server CRIU started.
pub fn pid_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Polls until `pid` is gone or `timeout` passes.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> Result<(), HostError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !pid_gone(pid) {
        if Instant::now() >= deadline {
            return Err(format!("process {pid} still running after {timeout:?}").into());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

/// Machine architecture and kernel release of this host (`uname`).
pub fn uname() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.machine().to_string_lossy().into_owned(),
            u.release().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

/// Free bytes on the filesystem holding `path` (or its nearest existing
/// ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let st = nix::sys::statvfs::statvfs(p).ok()?;
            return Some(st.blocks_available() as u64 * st.fragment_size() as u64);
        }
        p = p.parent()?;
    }
}
