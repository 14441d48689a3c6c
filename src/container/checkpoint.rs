//! `checkpoint`: dump a running container into a directory of CRIU images.
//!
//! ferry freezes the cgroup itself when CRIU is ready (waiting only as long
//! as the kernel needs) and hands CRIU a tree that is already frozen. Mounts from outside
//! the container are declared external, stdio identities are recorded in
//! `descriptors.json`, and the veth's host end is locked while CRIU holds
//! the network. If anything fails the container runs on as before.
use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::externals;
use super::{io, Container, Error, Result, Status};
use crate::criu::{self, CgMode, Criu, DumpStats, Notify, NotifyHandler, Opts, ReqType, Request};
use crate::freeze_guard::{
    DumpDirs, FreezeGuard, Freezer, GuardHandle, OnDeath, Target, INCOMPLETE_MARKER,
};
use crate::network::{self, LockMethod, VethConfig};

/// CRIU's log level for dumps and restores: enough to explain failures.
pub(crate) const CRIU_LOG_LEVEL: i32 = 4;

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    /// Where CRIU writes its log (default: the image path).
    pub work_path: Option<PathBuf>,
    /// Images of a previous (pre-)dump this one is relative to.
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    /// Keep the processes frozen after the dump (`ferry resume` or `delete`).
    pub leave_stopped: bool,
    pub tcp_established: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub lazy_pages: bool,
    /// CRIU writes a byte here once lazy pages can be served.
    pub status_fd: Option<RawFd>,
    /// Send memory pages to a CRIU page server instead of the image dir.
    pub page_server: Option<(String, u16)>,
    /// TLS material for CRIU's page-server connection (PEM files).
    pub page_server_tls: Option<migrate::TlsPaths>,
    pub pre_dump: bool,
    pub manage_cgroups_mode: Option<CgMode>,
    pub empty_ns_network: bool,
    pub auto_dedup: bool,
    pub network_lock: LockMethod,
}

impl CheckpointOptions {
    pub fn new(image_path: impl Into<PathBuf>) -> CheckpointOptions {
        CheckpointOptions {
            image_path: image_path.into(),
            work_path: None,
            parent_path: None,
            leave_running: false,
            leave_stopped: false,
            tcp_established: false,
            tcp_skip_in_flight: false,
            link_remap: false,
            ext_unix_sk: false,
            shell_job: false,
            file_locks: false,
            lazy_pages: false,
            status_fd: None,
            page_server: None,
            page_server_tls: None,
            pre_dump: false,
            manage_cgroups_mode: None,
            empty_ns_network: false,
            auto_dedup: false,
            network_lock: LockMethod::Nftables,
        }
    }
}

/// Called while CRIU holds the dumped tree frozen, after every image is
/// written: `Ok` lets the dump finish (the tree dies unless it is left
/// running), `Err` makes CRIU resume the tree where it was. `guard` is the
/// freeze guard: the caller tells it what ferry's death would mean from
/// here on.
pub trait PostDump {
    fn post_dump(
        &mut self,
        images: &Path,
        guard: Option<GuardHandle>,
    ) -> std::result::Result<(), String>;

    /// After a refused post-dump: leave the cgroup frozen (and the freeze
    /// to the user) instead of thawing it.
    fn keep_frozen(&self) -> bool {
        false
    }
}

/// What a checkpoint produced.
#[derive(Debug)]
pub struct Checkpointed {
    pub images: PathBuf,
    pub log: PathBuf,
    pub stats: Option<DumpStats>,
    /// The container was removed after the dump (neither left running nor
    /// stopped, and not a pre-dump).
    pub removed: bool,
}

/// Fails unless `path` is (or can become) a writable directory.
pub(crate) fn writable_dir(path: &Path, what: &str) -> Result<PathBuf> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Usage(format!(
                "{what} {} is not a directory: pass a directory path",
                path.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| {
                Error::Usage(format!("cannot create {what} {}: {e}", path.display()))
            })?;
        }
        Err(e) => return Err(io(format!("{what} {}", path.display()))(e)),
    }
    tempfile::tempfile_in(path).map_err(|e| {
        Error::Usage(format!(
            "{what} {} is not writable ({e}): pick a writable directory",
            path.display()
        ))
    })?;
    std::fs::canonicalize(path).map_err(io(format!("{what} {}", path.display())))
}

pub(crate) fn open_dir(path: &Path) -> Result<File> {
    File::open(path).map_err(io(format!("opening {}", path.display())))
}

pub(crate) fn criu_lock_method(m: LockMethod) -> criu::NetworkLock {
    match m {
        LockMethod::Iptables => criu::NetworkLock::IPTABLES,
        LockMethod::Nftables => criu::NetworkLock::NFTABLES,
        LockMethod::Skip => criu::NetworkLock::SKIP,
    }
}

/// Freezes the cgroup when CRIU is ready to dump, locks and unlocks the
/// veth's host end when CRIU says so, and passes post-dump on to the
/// caller's hold point.
struct DumpHandler<'a, 'p> {
    /// The cgroup to freeze at pre-dump (None when already paused).
    freeze: Option<&'a crate::cgroups::Cgroup>,
    frozen: bool,
    veth: Option<&'a VethConfig>,
    method: LockMethod,
    locked: bool,
    images: &'a Path,
    post_dump: Option<&'p mut dyn PostDump>,
    /// Where CRIU's own network lock is recorded before CRIU makes it.
    criu_lock: CriuLockRecorder<'a>,
    guard: &'a RefCell<Option<FreezeGuard>>,
}

/// Records the CRIU run's network lock in the state directory (at
/// pre-dump, before CRIU locks), so a failed or killed dump's lock can be
/// removed by the rollback or by `delete --force`.
struct CriuLockRecorder<'a> {
    dir: &'a crate::state::StateDir,
    /// CRIU's log, whose first lines name its run id.
    log: &'a Path,
    method: LockMethod,
    init_pid: i32,
    /// The container has no network namespace of its own.
    shares_netns: bool,
}

impl CriuLockRecorder<'_> {
    fn record(&self) -> std::result::Result<(), String> {
        if self.method == LockMethod::Skip {
            return Ok(());
        }
        let run_id = criu::netlock::run_id(self.log)
            .ok_or("cannot read CRIU's run id from its log (needed to undo its network lock)")?;
        let ours = criu::netlock::netns_inode(None);
        let theirs = criu::netlock::netns_inode(Some(self.init_pid));
        let (netns, netns_pid) = match (ours, theirs) {
            (Some(o), Some(t)) if o == t => (o, None),
            (_, Some(t)) => (t, Some(self.init_pid)),
            // The init is dying (a zombie has no namespaces to show), yet
            // CRIU may still lock: where depends on the configuration.
            (Some(o), None) if self.shares_netns => (o, None),
            // In the container's own namespace, which goes with it.
            _ => return Ok(()),
        };
        self.dir
            .record_criu_lock(&crate::state::CriuLock {
                run_id,
                method: self.method,
                netns,
                netns_pid,
            })
            .map_err(|e| e.to_string())
    }
}

impl NotifyHandler for DumpHandler<'_, '_> {
    fn notify(&mut self, event: Notify) -> std::result::Result<(), String> {
        tracing::debug!(event = %event, "criu notification");
        match event {
            // CRIU sends pre-dump after its own start-up and before it
            // collects the tree: freezing here (with a fine-grained wait)
            // keeps that start-up out of the frozen time, and CRIU finds
            // the tree frozen instead of polling the freezer every 100 ms.
            Notify::PreDump => {
                self.criu_lock.record()?;
                if let (Some(cg), false) = (self.freeze, self.frozen) {
                    cg.freeze().map_err(|e| e.to_string())?;
                    self.frozen = true;
                }
            }
            Notify::NetworkLock => {
                if let Some(v) = self.veth {
                    network::lock(v, self.method).map_err(|e| e.to_string())?;
                    self.locked = true;
                }
            }
            Notify::NetworkUnlock => self.unlock()?,
            Notify::PostDump => {
                if let Some(p) = self.post_dump.as_mut() {
                    let guard = self.guard.borrow().as_ref().map(FreezeGuard::handle);
                    p.post_dump(self.images, guard)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl DumpHandler<'_, '_> {
    fn unlock(&mut self) -> std::result::Result<(), String> {
        if let (true, Some(v)) = (self.locked, self.veth) {
            network::unlock(v, self.method).map_err(|e| e.to_string())?;
            self.locked = false;
        }
        Ok(())
    }
}

/// Marks `images` incomplete (see [`INCOMPLETE_MARKER`]) and removes the
/// statistics of an earlier dump, whose presence would mean "completed".
fn mark_incomplete(images: &Path, work: &Path) -> Result<()> {
    for dir in [images, work] {
        let stats = dir.join(criu::stats::DUMP_STATS_FILE);
        match std::fs::remove_file(&stats) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", stats.display()))(e))
            }
            _ => {}
        }
    }
    let marker = images.join(INCOMPLETE_MARKER);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&marker)?;
        std::io::Write::write_all(
            &mut f,
            b"ferry writes this file before a dump and removes it once the dump completed; \
              `ferry restore` refuses a directory that holds it.\n",
        )?;
        f.sync_all()?;
        File::open(images)?.sync_all()
    };
    write().map_err(io(format!("writing {}", marker.display())))
}

fn remove_marker(images: &Path) -> Result<()> {
    let marker = images.join(INCOMPLETE_MARKER);
    std::fs::remove_file(&marker)
        .and_then(|()| File::open(images)?.sync_all())
        .map_err(io(format!("removing {}", marker.display())))
}

impl Container {
    /// Checkpoints the container (see [`CheckpointOptions`]).
    pub fn checkpoint(self, opts: &CheckpointOptions) -> Result<Checkpointed> {
        self.checkpoint_with(opts, None)
    }

    /// Like [`Container::checkpoint`], with a hold point after the dump.
    pub fn checkpoint_with(
        self,
        opts: &CheckpointOptions,
        post_dump: Option<&mut dyn PostDump>,
    ) -> Result<Checkpointed> {
        if opts.leave_running && opts.leave_stopped {
            return Err(Error::Usage(
                "--leave-running and --leave-stopped exclude each other".into(),
            ));
        }
        let lock = self.dir.lock()?;
        // A lock recorded by a dump whose ferry was killed.
        super::delete::remove_criu_lock(&self.dir);
        let status = self.require(
            &[Status::Running, Status::Paused],
            "only a running or paused container can be checkpointed",
        )?;
        let criu = Criu::new()?;
        // Refused before anything is frozen.
        criu.require_modes(opts.pre_dump, opts.parent_path.is_some(), opts.lazy_pages)?;
        let images = writable_dir(&opts.image_path, "image path")?;
        let work = match &opts.work_path {
            Some(w) => writable_dir(w, "work path")?,
            None => images.clone(),
        };
        if let Some(p) = &opts.parent_path {
            // CRIU resolves the parent relative to the image dir.
            if !images.join(p).is_dir() {
                return Err(Error::Usage(format!(
                    "parent path {} is not a directory of a previous dump",
                    images.join(p).display()
                )));
            }
        }
        let images_fd = open_dir(&images)?;
        let work_fd = open_dir(&work)?;
        let cgroup = self.cgroup_or_err()?;
        let log_name = if opts.pre_dump {
            "pre-dump.log"
        } else {
            "dump.log"
        };

        let mut o = Opts::new();
        o.set_images_dir_fd(images_fd.as_raw_fd());
        o.set_work_dir_fd(work_fd.as_raw_fd());
        o.set_log_file(log_name.into());
        o.set_log_level(CRIU_LOG_LEVEL);
        o.set_pid(self.state.pid);
        o.set_root(self.state.rootfs.to_string_lossy().into_owned());
        o.set_manage_cgroups(true);
        if let Some(m) = opts.manage_cgroups_mode {
            o.set_manage_cgroups_mode(m);
        }
        let freezer = cgroup
            .dir("freezer")
            .or_else(|| cgroup.dir("unified"))
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(f) = freezer {
            o.set_freeze_cgroup(f);
        }
        let mut ext = externals::mounts(
            &self.state.config,
            &self.state.bundle,
            self.state.cgroup.as_ref(),
        );
        ext.extend(externals::masked_files(&self.state.config, self.state.pid));
        // Keyed by where each destination resolved inside the container.
        let proc_root = PathBuf::from(format!("/proc/{}/root", self.state.pid));
        let root = crate::rootfs::RootDir::open(&proc_root).map_err(|source| Error::Rootfs {
            rootfs: proc_root.clone(),
            source,
        })?;
        externals::resolve_keys(&mut ext, &root, false)?;
        o.ext_mnt = externals::dump_map(&ext);
        let terminal = self
            .state
            .config
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal {
            o.set_orphan_pts_master(true);
        }
        o.set_leave_running(opts.leave_running || opts.pre_dump);
        if opts.leave_stopped {
            o.set_leave_stopped(true);
        }
        o.set_tcp_established(opts.tcp_established);
        o.set_tcp_skip_in_flight(opts.tcp_skip_in_flight);
        o.set_link_remap(opts.link_remap);
        o.set_ext_unix_sk(opts.ext_unix_sk);
        o.set_shell_job(opts.shell_job);
        o.set_file_locks(opts.file_locks);
        o.set_auto_dedup(opts.auto_dedup);
        o.set_network_lock(criu_lock_method(opts.network_lock));
        if opts.empty_ns_network {
            o.set_empty_ns(libc::CLONE_NEWNET as u32);
        }
        if let Some(p) = &opts.parent_path {
            o.set_parent_img(p.to_string_lossy().into_owned());
            o.set_track_mem(true);
        }
        if opts.pre_dump {
            o.set_track_mem(true);
        }
        if opts.lazy_pages {
            o.set_lazy_pages(true);
        }
        if let Some(fd) = opts.status_fd {
            o.set_status_fd(fd);
        }
        if let Some((addr, port)) = &opts.page_server {
            let mut ps = crate::proto::rpc::Criu_page_server_info::new();
            ps.set_address(addr.clone());
            ps.set_port(i32::from(*port));
            o.ps = Some(ps).into();
        }
        if let Some(t) = &opts.page_server_tls {
            o.set_tls(true);
            o.set_tls_cacert(t.ca.to_string_lossy().into_owned());
            o.set_tls_cert(t.cert.to_string_lossy().into_owned());
            o.set_tls_key(t.key.to_string_lossy().into_owned());
        }
        let stdio_files = externals::stdio_external_files(self.state.pid);
        o.external = stdio_files.iter().map(|(_, k)| k.clone()).collect();
        if !opts.pre_dump {
            externals::write_descriptors(&images, &self.state.stdio)?;
            externals::write_stdio_files(&images, &stdio_files)?;
        }

        // Without a post-dump hold the images are the result: marked
        // incomplete until the dump's outcome is final. (With a hold, the
        // caller takes the images at the hold and owns their fate.)
        let freezer = Freezer::of(&cgroup)?;
        let marked = post_dump.is_none();
        if marked {
            mark_incomplete(&images, &work)?;
        }
        let was_paused = status == Status::Paused;
        let log = work.join(log_name);
        let guard: RefCell<Option<FreezeGuard>> = RefCell::new(None);
        let id = self.id().to_string();
        let mut arm = |criu_pid: u32, _: &mut Option<Opts>| -> std::result::Result<(), String> {
            let g = FreezeGuard::arm(&Target {
                freezer: freezer.clone(),
                // A paused container stays paused whatever happens.
                on_death: if was_paused {
                    OnDeath::Leave
                } else {
                    OnDeath::Thaw
                },
                id: &id,
                criu: Some(criu_pid as i32),
                dump: marked.then(|| DumpDirs {
                    images: images.clone(),
                    work: work.clone(),
                }),
            })
            .map_err(|e| e.to_string())?;
            *guard.borrow_mut() = Some(g);
            Ok(())
        };
        let mut handler = DumpHandler {
            freeze: (!was_paused).then_some(&cgroup),
            frozen: false,
            veth: self.state.veth.as_ref(),
            method: opts.network_lock,
            locked: false,
            images: &images,
            post_dump,
            criu_lock: CriuLockRecorder {
                dir: &self.dir,
                log: &log,
                method: opts.network_lock,
                init_pid: self.state.pid,
                shares_netns: !self
                    .state
                    .config
                    .linux()
                    .as_ref()
                    .and_then(|l| l.namespaces().as_ref())
                    .is_some_and(|n| {
                        n.iter()
                            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
                    }),
            },
            guard: &guard,
        };
        let fds: Vec<RawFd> = opts.status_fd.into_iter().collect();
        let kind = if opts.pre_dump {
            ReqType::PRE_DUMP
        } else {
            ReqType::DUMP
        };
        let result = criu.call_checked(
            criu::MIN_VERSION,
            Request::new(kind, Some(o)).work_dir(&work),
            &mut handler,
            &fds,
            &mut arm,
        );
        let unlocked = handler.unlock();
        // CRIU removes its network lock when it finishes, except when it
        // aborts or is killed, and except after a dump that left the tree
        // stopped or took TCP connections along (the restore releases those).
        let keep_lock =
            result.is_ok() && !opts.leave_running && (opts.leave_stopped || opts.tcp_established);
        if keep_lock {
            if !opts.leave_stopped {
                self.dir.clear_criu_lock();
            }
        } else {
            super::delete::remove_criu_lock(&self.dir);
        }
        let frozen = handler.frozen;
        let keep_frozen = handler.post_dump.as_ref().is_some_and(|p| p.keep_frozen());
        let killed = result.is_ok() && !opts.pre_dump && !opts.leave_running && !opts.leave_stopped;
        let unmarked = if result.is_ok() && marked {
            remove_marker(&images)
        } else {
            Ok(())
        };
        // A failed dump leaves the tree as it was; a paused one stays paused.
        let thawed = if frozen
            && ((result.is_err() && !keep_frozen)
                || (result.is_ok() && !killed && !opts.leave_stopped))
        {
            cgroup.thaw().is_ok()
        } else {
            true
        };
        // The freeze is handed back; if thawing failed the guard retries
        // as ferry leaves.
        if let (Some(g), true) = (guard.into_inner(), thawed) {
            if let Err(e) = g.disarm() {
                tracing::warn!(%e, "freeze guard");
            }
        }
        result?;
        unmarked?;
        unlocked.map_err(Error::Usage)?;
        let stats = if opts.pre_dump {
            None
        } else {
            criu::read_dump_stats(&images)
                .or_else(|_| criu::read_dump_stats(&work))
                .ok()
        };
        if killed {
            drop(lock);
            // CRIU killed the tree; the container is gone as with runc.
            let root = self.root.clone();
            Container::load(&root, &id)?.delete_keeping_import(true)?;
        }
        Ok(Checkpointed {
            images,
            log,
            stats,
            removed: killed,
        })
    }
}
