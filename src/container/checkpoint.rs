//! `checkpoint`: dump a running container into a directory of CRIU images.
//!
//! ferry freezes the cgroup itself when CRIU is ready (waiting only as long
//! as the kernel needs) and hands CRIU a tree that is already frozen. Mounts from outside
//! the container are declared external, stdio identities are recorded in
//! `descriptors.json`, and the veth's host end is locked while CRIU holds
//! the network. If anything fails the container runs on as before.
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::criu_opts::{self, criu_flags_of, CriuDirs, CriuFlags};
use super::externals;
use super::fsutil::writable_dir;
use super::image_dir::{mark_incomplete, remove_marker};
use super::netns_image;
use super::tmpfs_image;
use super::{io, Container, Error, HoldError, Result, Status};
use crate::cgroups::Cgroup;
use crate::criu::page_relay::PageRelay;
use crate::criu::{
    self, CgMode, Criu, DumpStats, Notify, NotifyHandler, Opts, PreDumpMode, ReqType, Request,
};
use crate::freeze_guard::{DumpDirs, FreezeGuard, Freezer, GuardHandle, OnDeath, Target};
use crate::hooks;
use crate::network::{self, LockMethod, VethConfig};
use crate::spec;
use oci_spec::runtime::LinuxNamespaceType;

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
    /// The page server's own certificate (PEM), as a verified channel to
    /// its host presented it. With it (or without TLS) CRIU may dump from
    /// inside the container's network namespace and reach the page server
    /// through a relay, checking the page server against this certificate
    /// (see [`criu::page_relay`]).
    pub page_server_pin: Option<PathBuf>,
    pub pre_dump: bool,
    /// How a pre-dump collects pages (CRIU's default: splice, which keeps
    /// the tree frozen while it copies them; VM_READ reads them after the
    /// tree runs again).
    pub pre_dump_mode: Option<PreDumpMode>,
    /// A SOCK_DGRAM unix socket of this process, kept open across the
    /// pre-dumps and the dump of one series: CRIU keeps pidfds of the tree
    /// in it and fails a later iteration whose pids were reused by other
    /// processes (pidfd_store_sk).
    pub pidfd_store: Option<RawFd>,
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
            page_server_pin: None,
            pre_dump: false,
            pre_dump_mode: None,
            pidfd_store: None,
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
    ) -> std::result::Result<(), HoldError>;

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
    pub stats: Option<DumpStats>,
    /// The container was removed after the dump (neither left running nor
    /// stopped, and not a pre-dump).
    pub removed: bool,
    /// Failures of the poststop hooks run when it was removed (warnings,
    /// as the OCI spec has them).
    pub hook_warnings: Vec<hooks::Error>,
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
    /// The network namespace ferry keeps instead of CRIU, checked again
    /// once the tree is frozen (at CRIU's network lock).
    own_netns: Option<OwnNetnsCheck<'a>>,
    /// The listed tmpfs mounts, checked again once the tree is frozen.
    tmpfs: &'a [tmpfs_image::Tmpfs],
    tmpfs_verified: bool,
    /// CRIU runs inside the container's network namespace (see
    /// [`netns_image::criu_can_run_inside`]).
    criu_inside: bool,
    /// Opened (listening) once the tree is frozen.
    relay: Option<&'a PageRelay>,
    /// The images say the tree stays in the cgroups CRIU is restored in
    /// (see `images::cgroups::record_inherited_cgroups`).
    cgroups_inherited: bool,
}

/// A recorded namespace (see [`netns_image`]) and whether the frozen tree
/// was found still holding it.
struct OwnNetnsCheck<'a> {
    recorded: &'a network::OwnNetns,
    pid: i32,
    verified: bool,
}

impl OwnNetnsCheck<'_> {
    fn verify(&mut self, veth: Option<&VethConfig>) -> std::result::Result<(), criu::HandlerError> {
        if self.verified {
            return Ok(());
        }
        if !netns_image::still_own(self.pid, veth, self.recorded)
            .map_err(criu::HandlerError::new)?
        {
            return Err(criu::HandlerError::from(
                "the container changed its network namespace while it was being checkpointed; run the checkpoint again".to_string(),
            ));
        }
        self.verified = true;
        Ok(())
    }
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
    fn record(&self) -> std::result::Result<(), criu::HandlerError> {
        if self.method == LockMethod::Skip {
            return Ok(());
        }
        let run_id = criu::netlock::run_id(self.log).ok_or_else(|| {
            criu::HandlerError::from(
                "cannot read CRIU's run id from its log (needed to undo its network lock)"
                    .to_string(),
            )
        })?;
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
            .map_err(criu::HandlerError::new)
    }
}

impl NotifyHandler for DumpHandler<'_, '_> {
    fn notify(&mut self, event: Notify) -> std::result::Result<(), criu::HandlerError> {
        tracing::debug!(event = %event, "criu notification");
        match event {
            // CRIU sends pre-dump after its own start-up and before it
            // collects the tree: freezing here (with a fine-grained wait)
            // keeps that start-up out of the frozen time, and CRIU finds
            // the tree frozen instead of polling the freezer every 100 ms.
            Notify::PreDump => {
                self.criu_lock.record()?;
                if let (Some(cg), false) = (self.freeze, self.frozen) {
                    cg.freeze().map_err(criu::HandlerError::new)?;
                    self.frozen = true;
                }
                // CRIU inside the namespace takes no network lock of its
                // own and says nothing at that point: held here, frozen.
                if self.criu_inside {
                    self.hold_network()?;
                }
                // Only once the namespace is verified to hold nothing of the
                // container's own (no firewall that could turn CRIU's
                // connection elsewhere); CRIU connects right after this
                // answer.
                if let Some(r) = self.relay {
                    r.open().map_err(|e| {
                        criu::HandlerError::from(format!("cannot open the page relay: {e}"))
                    })?;
                }
            }
            Notify::NetworkLock => self.hold_network()?,
            Notify::NetworkUnlock => self.unlock().map_err(criu::HandlerError::new)?,
            Notify::PostDump => {
                if let Some(c) = self.own_netns.as_mut() {
                    c.verify(self.veth)?;
                }
                self.verify_tmpfs()?;
                // ferry froze the tree, not its user: the images record
                // it running, so that a restore that writes the recorded
                // freezer state back (cgroup modes full and strict) does
                // not freeze the new container, and CRIU with it.
                if self.freeze.is_some() {
                    crate::images::cgroups::record_running(self.images)
                        .map_err(criu::HandlerError::new)?;
                }
                if self.cgroups_inherited {
                    crate::images::cgroups::record_inherited_cgroups(self.images)
                        .map_err(criu::HandlerError::new)?;
                }
                if let Some(p) = self.post_dump.as_mut() {
                    let guard = self.guard.borrow().as_ref().map(FreezeGuard::handle);
                    p.post_dump(self.images, guard)
                        .map_err(criu::HandlerError::new)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl DumpHandler<'_, '_> {
    /// Lists the tmpfs mounts declared external again, now that the tree
    /// is frozen, and copies their files' content: what the images keep.
    /// One the list can no longer carry (the container made a hard link
    /// or a socket in it before the freeze) fails the checkpoint.
    fn verify_tmpfs(&mut self) -> std::result::Result<(), criu::HandlerError> {
        if self.tmpfs_verified || self.tmpfs.is_empty() {
            return Ok(());
        }
        let pid = self.criu_lock.init_pid;
        let mut sink = tmpfs_image::DataSink::create(self.images).map_err(|e| {
            criu::HandlerError::from(format!(
                "cannot write {}: {e}",
                self.images.join(tmpfs_image::TMPFS_DATA_FILE).display()
            ))
        })?;
        let listed = |key: &str| self.tmpfs.iter().any(|t| t.key == key);
        let now =
            tmpfs_image::collect(pid, listed, Some(&mut sink)).map_err(criu::HandlerError::new)?;
        sink.finish().map_err(|e| {
            criu::HandlerError::from(format!(
                "cannot write {}: {e}",
                self.images.join(tmpfs_image::TMPFS_DATA_FILE).display()
            ))
        })?;
        if let Some(t) = self
            .tmpfs
            .iter()
            .find(|t| !now.iter().any(|n| n.key == t.key))
        {
            return Err(criu::HandlerError::from(format!(
                "the container changed {} while it was being checkpointed (a hard link, a socket, or too many entries); run the checkpoint again",
                t.key
            )));
        }
        tmpfs_image::write(self.images, &now).map_err(criu::HandlerError::new)?;
        self.tmpfs_verified = true;
        Ok(())
    }

    /// With the tree frozen and before CRIU locks anything: the kept
    /// namespace and tmpfs checked again, the veth's traffic held.
    fn hold_network(&mut self) -> std::result::Result<(), criu::HandlerError> {
        if let Some(c) = self.own_netns.as_mut() {
            c.verify(self.veth)?;
        }
        self.verify_tmpfs()?;
        if let (Some(v), false) = (self.veth, self.locked) {
            network::lock(v, self.method).map_err(criu::HandlerError::new)?;
            self.locked = true;
        }
        Ok(())
    }

    fn unlock(&mut self) -> network::Result<()> {
        if let (true, Some(v)) = (self.locked, self.veth) {
            network::unlock(v, self.method)?;
            self.locked = false;
        }
        Ok(())
    }
}

impl CheckpointOptions {
    fn criu_flags(&self) -> CriuFlags {
        criu_flags_of!(self)
    }

    fn log_name(&self) -> &'static str {
        if self.pre_dump {
            "pre-dump.log"
        } else {
            "dump.log"
        }
    }

    /// The tree dies with the dump (CRIU kills it), and the container
    /// with it, as with runc.
    fn kills(&self) -> bool {
        !self.pre_dump && !self.leave_running && !self.leave_stopped
    }

    /// Asks CRIU for the page server of a lazy or remote dump, or for the
    /// `relay` in front of it.
    fn set_page_server(&self, o: &mut Opts, relay: Option<&PageRelay>) {
        if let Some((addr, port)) = &self.page_server {
            let mut ps = crate::proto::rpc::Criu_page_server_info::new();
            match relay {
                Some(r) => {
                    ps.set_address("127.0.0.1".into());
                    ps.set_port(i32::from(r.port()));
                }
                None => {
                    ps.set_address(addr.clone());
                    ps.set_port(i32::from(*port));
                }
            }
            o.ps = Some(ps).into();
        }
        if let (Some(t), Some(pin), Some(_)) = (&self.page_server_tls, &self.page_server_pin, relay)
        {
            // CRIU would match the page server's certificate against
            // 127.0.0.1: it accepts the pinned certificate and no other
            // instead.
            let pinned = migrate::TlsPaths {
                ca: pin.clone(),
                ..t.clone()
            };
            crate::criu::set_tls(o, &pinned);
            o.set_tls_no_cn_verify(true);
        } else if let Some(t) = &self.page_server_tls {
            crate::criu::set_tls(o, t);
            // A lazy dump is the page server: CRIU would match the
            // client's certificate against its own listen address. The
            // chain is still checked against the CA.
            if self.lazy_pages {
                o.set_tls_no_cn_verify(true);
            }
        }
    }
}

/// One dump of a running or paused container.
struct Dump<'a> {
    container: &'a Container,
    opts: &'a CheckpointOptions,
    dirs: CriuDirs,
    cgroup: Cgroup,
    freezer: Freezer,
    /// A paused container stays paused whatever happens.
    was_paused: bool,
    /// Without a post-dump hold the images are the result: marked
    /// incomplete until the dump's outcome is final. (With a hold, the
    /// caller takes the images at the hold and owns their fate.)
    marked: bool,
    /// The network namespace holds only what ferry made: ferry, not CRIU,
    /// keeps it.
    own_netns: Option<network::OwnNetns>,
    /// tmpfs mounts ferry makes again from a list (see [`tmpfs_image`]).
    tmpfs: Vec<tmpfs_image::Tmpfs>,
    /// CRIU inside the kept namespace reaches the page server through it.
    relay: Option<PageRelay>,
}

/// Whether CRIU may run inside the kept namespace `own` of a container
/// made from `spec` for a dump with `opts` (see [`Dump::criu_inside`]).
fn may_run_inside(
    spec: &oci_spec::runtime::Spec,
    opts: &CheckpointOptions,
    own: &network::OwnNetns,
) -> bool {
    netns_image::criu_can_run_inside(spec, own) && !opts.lazy_pages && !opts.leave_stopped
}

/// Whether a relay may carry the pages to `opts.page_server`: with TLS
/// only when the page server's certificate can be pinned.
fn relay_may_carry(opts: &CheckpointOptions) -> bool {
    opts.page_server_tls.is_none() || opts.page_server_pin.is_some()
}

/// What a dump's CRIU call left for [`Dump::settle`].
struct DumpRun {
    result: criu::Result<criu::Response>,
    unlocked: network::Result<()>,
    frozen: bool,
    keep_frozen: bool,
    guard: Option<FreezeGuard>,
}

impl Dump<'_> {
    /// The network lock CRIU takes. None inside a namespace ferry keeps:
    /// the traffic it could hold passes the veth, which ferry holds itself
    /// (its host-side lock here, its host end down on restore). CRIU
    /// records the method in the images and its restore uses that one, so
    /// this also spares the restore CRIU's lock, whose removal waits for an
    /// RCU grace period (10-25 ms). A tree left stopped keeps CRIU's lock
    /// until it resumes: its sockets must stay silent while a copy may
    /// carry its connections on.
    fn criu_network_lock(&self) -> LockMethod {
        if self.own_netns.is_some() && !self.opts.leave_stopped {
            LockMethod::Skip
        } else {
            self.opts.network_lock
        }
    }

    /// Whether CRIU runs inside the kept namespace (see
    /// [`netns_image::criu_can_run_inside`]). With a page server only
    /// through a relay; not for a lazy dump (CRIU serves pages in the
    /// namespace it runs in), nor for a tree left stopped (CRIU's lock then
    /// stays).
    fn criu_inside(&self) -> bool {
        self.may_run_inside() && (self.opts.page_server.is_none() || self.relay.is_some())
    }

    fn may_run_inside(&self) -> bool {
        self.own_netns
            .as_ref()
            .is_some_and(|own| may_run_inside(&self.container.state.config, self.opts, own))
    }

    /// The relay CRIU inside the namespace sends its pages through, where
    /// it may run there: with TLS only if the page server's certificate
    /// can be pinned. A relay that cannot be bound leaves CRIU outside;
    /// a page server that cannot be reached fails the dump before the
    /// freeze.
    fn open_relay(&self) -> Result<Option<PageRelay>> {
        let o = self.opts;
        let Some((addr, port)) = &o.page_server else {
            return Ok(None);
        };
        if !self.may_run_inside() || !relay_may_carry(o) {
            return Ok(None);
        }
        match PageRelay::bind(self.container.state.pid, addr, *port) {
            Ok(r) => Ok(Some(r)),
            Err(e @ criu::page_relay::RelayError::Bind(_)) => {
                tracing::warn!(error = %e, "CRIU dumps from outside the container's network namespace");
                Ok(None)
            }
            Err(e) => Err(Error::PageRelay(e)),
        }
    }

    /// CRIU, inside the container's network namespace where it can run
    /// there.
    fn criu(&self, criu: &Criu) -> Result<Criu> {
        if !self.criu_inside() {
            return Ok(criu.clone());
        }
        let path = format!("/proc/{}/ns/net", self.container.state.pid);
        let ns = std::fs::File::open(&path).map_err(io(format!("opening {path}")))?;
        Ok(criu.clone().in_netns(ns.into()))
    }

    /// The dump's CRIU options; records the stdio of the init in the
    /// images (not for a pre-dump).
    fn criu_opts(&self) -> Result<Opts> {
        let (c, opts) = (self.container, self.opts);
        let state = &c.state;
        let terminal = state
            .config
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let mut ext = c.dump_externals()?;
        ext.extend(self.tmpfs.iter().map(|t| externals::External {
            key: t.key.clone(),
            source: t.key.clone().into(),
        }));
        let ext_mnt = externals::dump_map(&ext);
        let mut o = criu_opts::base(
            &self.dirs,
            &state.rootfs,
            ext_mnt,
            terminal,
            &CriuFlags {
                network_lock: self.criu_network_lock(),
                ..opts.criu_flags()
            },
        );
        o.set_pid(state.pid);
        if let Some(f) = self.cgroup.descriptor().freezer_dir() {
            o.set_freeze_cgroup(f.to_string_lossy().into_owned());
        }
        let memberships = crate::cgroups::memberships(Some(state.pid as u32))?;
        o.cgroup_dump_controller =
            criu_opts::own_cgroup_controllers(self.cgroup.descriptor(), &memberships);
        o.set_leave_running(opts.leave_running || opts.pre_dump);
        if opts.leave_stopped {
            o.set_leave_stopped(true);
        }
        o.set_tcp_skip_in_flight(opts.tcp_skip_in_flight);
        o.set_link_remap(opts.link_remap);
        if let Some(p) = &opts.parent_path {
            o.set_parent_img(p.to_string_lossy().into_owned());
            o.set_track_mem(true);
        }
        if opts.pre_dump {
            o.set_track_mem(true);
        }
        if let Some(m) = opts.pre_dump_mode {
            o.set_pre_dump_mode(m);
        }
        if let Some(sk) = opts.pidfd_store {
            o.set_pidfd_store_sk(sk);
        }
        if let Some(fd) = opts.status_fd {
            o.set_status_fd(fd);
        }
        opts.set_page_server(&mut o, self.relay.as_ref());
        let stdio_files = externals::stdio_external_files(state.pid);
        o.external = stdio_files.iter().map(|(_, k)| k.clone()).collect();
        if !opts.pre_dump {
            externals::write_descriptors(&self.dirs.images, &state.stdio)?;
            externals::write_stdio_files(&self.dirs.images, &stdio_files)?;
            if let Some(root) = crate::images::root_fs::of_process(state.pid) {
                crate::images::root_fs::write(&self.dirs.images, &root).map_err(io(format!(
                    "writing {}",
                    self.dirs
                        .images
                        .join(crate::images::root_fs::ROOT_FS_FILE)
                        .display()
                )))?;
            }
        }
        if let Some(own) = &self.own_netns {
            let criu_inside = self.criu_inside();
            if !criu_inside {
                o.set_empty_ns(libc::CLONE_NEWNET as u32);
            }
            let kept = netns_image::Kept {
                netns: own.clone(),
                criu_inside,
            };
            netns_image::write(&self.dirs.images, &kept)?;
        } else {
            netns_image::remove(&self.dirs.images)?;
        }
        if !self.tmpfs.is_empty() {
            tmpfs_image::write(&self.dirs.images, &self.tmpfs)?;
        }
        Ok(o)
    }

    /// Runs CRIU, with a freeze guard armed as soon as criu runs.
    fn run(&self, criu: &Criu, o: Opts, post_dump: Option<&mut dyn PostDump>) -> DumpRun {
        let (c, opts) = (self.container, self.opts);
        let guard: RefCell<Option<FreezeGuard>> = RefCell::new(None);
        // Pages to a page server: its connection bounded and uncorked (see
        // criu::page_socket) until the dump returns; a lazy dump's served
        // connection bounded.
        let page_socket: RefCell<Option<criu::page_socket::PageSocket>> = RefCell::new(None);
        let mut arm =
            |criu_pid: u32, _: &mut Option<Opts>| -> std::result::Result<(), criu::HandlerError> {
                use criu::page_socket::PageSocket;
                if let Some((_, port)) = &opts.page_server {
                    *page_socket.borrow_mut() = Some(match &self.relay {
                        _ if opts.lazy_pages => PageSocket::bound_served(criu_pid, *port),
                        Some(r) => PageSocket::watch(criu_pid, r.port()),
                        None => PageSocket::watch(criu_pid, *port),
                    });
                }
                let g = FreezeGuard::arm(&Target {
                    freezer: self.freezer.clone(),
                    on_death: if self.was_paused {
                        OnDeath::Leave
                    } else {
                        OnDeath::Thaw
                    },
                    id: c.id(),
                    criu: Some(criu_pid as i32),
                    dump: self.marked.then(|| DumpDirs {
                        images: self.dirs.images.clone(),
                        work: self.dirs.work.clone(),
                    }),
                })
                .map_err(criu::HandlerError::new)?;
                *guard.borrow_mut() = Some(g);
                Ok(())
            };
        let log = self.dirs.log();
        // Not for a pre-dump: CRIU puts the cgroup back in the state it
        // found it in when it lets the tree go, before it writes the pages,
        // so a cgroup ferry froze would stay frozen for the whole transfer.
        // Frozen by CRIU, it runs again as soon as the pages are collected.
        let mut handler = DumpHandler {
            freeze: (!self.was_paused && !opts.pre_dump).then_some(&self.cgroup),
            frozen: false,
            veth: c.state.veth.as_ref(),
            method: opts.network_lock,
            locked: false,
            images: &self.dirs.images,
            post_dump,
            criu_lock: CriuLockRecorder {
                dir: &c.dir,
                log: &log,
                method: self.criu_network_lock(),
                init_pid: c.state.pid,
                shares_netns: !spec::has_namespace(&c.state.config, LinuxNamespaceType::Network),
            },
            guard: &guard,
            own_netns: self.own_netns.as_ref().map(|recorded| OwnNetnsCheck {
                recorded,
                pid: c.state.pid,
                verified: false,
            }),
            tmpfs: &self.tmpfs,
            tmpfs_verified: false,
            criu_inside: self.criu_inside(),
            relay: self.relay.as_ref(),
            cgroups_inherited: !opts.pre_dump
                && !spec::has_namespace(&c.state.config, LinuxNamespaceType::Cgroup),
        };
        let fds: Vec<RawFd> = opts.status_fd.into_iter().collect();
        let kind = if opts.pre_dump {
            ReqType::PRE_DUMP
        } else {
            ReqType::DUMP
        };
        let result = criu.call_checked(
            criu::MIN_VERSION,
            Request::new(kind, Some(o)).work_dir(&self.dirs.work),
            &mut handler,
            &fds,
            &mut arm,
        );
        drop(page_socket.take());
        let unlocked = handler.unlock();
        // A pre-dump's cgroup was frozen by CRIU, which thaws it unless it
        // dies first: thawed in any case (a no-op when it is).
        let frozen = handler.frozen || (opts.pre_dump && !self.was_paused);
        let keep_frozen = handler.post_dump.as_ref().is_some_and(|p| p.keep_frozen());
        DumpRun {
            result,
            unlocked,
            frozen,
            keep_frozen,
            guard: guard.into_inner(),
        }
    }

    /// Puts things where the dump's outcome says: CRIU's network lock
    /// kept or removed, the images marked complete, the tree thawed (a
    /// failed dump leaves it as it was; a paused one stays paused), and
    /// the freeze handed back.
    fn settle(&self, run: DumpRun) -> Result<()> {
        let opts = self.opts;
        let ok = run.result.is_ok();
        // CRIU removes its network lock when it finishes, except when it
        // aborts or is killed, and except after a dump that left the tree
        // stopped or took TCP connections along (the restore releases those).
        let keep_lock = ok && !opts.leave_running && (opts.leave_stopped || opts.tcp_established);
        if keep_lock {
            if !opts.leave_stopped {
                self.container.dir.clear_criu_lock();
            }
        } else {
            super::delete::remove_criu_lock(&self.container.dir);
        }
        let unmarked = if ok && self.marked {
            remove_marker(&self.dirs.images)
        } else {
            Ok(())
        };
        let thaw =
            run.frozen && !run.keep_frozen && (!ok || (!opts.kills() && !opts.leave_stopped));
        let thawed = !thaw || self.cgroup.thaw().inspect_err(|e| {
            tracing::warn!(error = %e, "cannot thaw after the dump; the freeze guard retries as ferry leaves")
        }).is_ok();
        // The freeze is handed back; if thawing failed the guard retries
        // as ferry leaves.
        if let (Some(g), true) = (run.guard, thawed) {
            if let Err(e) = g.disarm() {
                tracing::warn!(%e, "freeze guard");
            }
        }
        run.result?;
        unmarked?;
        run.unlocked?;
        Ok(())
    }
}

impl Container {
    /// Copies the content of the container's tmpfs mounts into `images`
    /// while it runs, ahead of a dump into the same directory (see
    /// `tmpfs_image::copy_ahead`): what a migration sends before the
    /// freeze. Whether there was any.
    pub fn copy_tmpfs_ahead(&self, images: &Path) -> Result<bool> {
        self.require(
            &[Status::Running],
            "only a running container's tmpfs is copied ahead",
        )?;
        Ok(tmpfs_image::copy_ahead(self.state.pid, images))
    }

    /// The network namespace ferry keeps for a dump with `opts` (see
    /// [`netns_image`]): none for a pre-dump, nor where CRIU is told to
    /// leave it empty.
    fn own_netns_for(&self, opts: &CheckpointOptions) -> Result<Option<network::OwnNetns>> {
        if opts.pre_dump || opts.empty_ns_network {
            return Ok(None);
        }
        netns_image::own_netns(&self.state.config, self.state.pid, self.state.veth.as_ref())
    }

    /// Writes into `images` the record of the network namespace (see
    /// [`netns_image`]) that a dump with `opts` will write if the
    /// container keeps its network as it is and the page relay can be
    /// bound: a migration's destination prepares its restore from it
    /// before the freeze. The dump leaves it as it is, replaces it, or
    /// removes it. Nothing is written when the dump would write none.
    pub fn write_netns_ahead(&self, opts: &CheckpointOptions, images: &Path) -> Result<()> {
        self.require(
            &[Status::Running],
            "only a running container's network is recorded ahead",
        )?;
        let Some(own) = self.own_netns_for(opts)? else {
            return Ok(());
        };
        let criu_inside = may_run_inside(&self.state.config, opts, &own)
            && (opts.page_server.is_none() || relay_may_carry(opts));
        netns_image::write(
            images,
            &netns_image::Kept {
                netns: own,
                criu_inside,
            },
        )
    }

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
        let _span =
            tracing::info_span!("checkpoint", id = %self.id(), pre_dump = opts.pre_dump).entered();
        if opts.leave_running && opts.leave_stopped {
            return Err(Error::LeaveRunningAndStopped);
        }
        if opts.pre_dump_mode.is_some() && !opts.pre_dump {
            return Err(Error::PreDumpModeWithoutPreDump);
        }
        // CRIU's breakpoints at the parasite's cure find the perf hooks on.
        let _perf = criu::perf_hooks::Warm::begin();
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
        let dirs = CriuDirs::open(images, opts.work_path.as_deref(), opts.log_name())?;
        if let Some(p) = &opts.parent_path {
            // CRIU resolves the parent relative to the image dir.
            if !dirs.images.join(p).is_dir() {
                return Err(Error::NoParentDump(dirs.images.join(p)));
            }
        }
        let cgroup = self.cgroup_or_err()?;
        let mut dump = Dump {
            container: &self,
            opts,
            freezer: Freezer::of(&cgroup)?,
            cgroup,
            dirs,
            was_paused: status == Status::Paused,
            marked: post_dump.is_none(),
            own_netns: self.own_netns_for(opts)?,
            tmpfs: if opts.pre_dump {
                Vec::new()
            } else {
                tmpfs_image::collect(self.state.pid, |_| true, None)?
            },
            relay: None,
        };
        dump.relay = dump.open_relay()?;
        let o = dump.criu_opts()?;
        let criu = dump.criu(&criu)?;
        if dump.marked {
            mark_incomplete(&dump.dirs.images, &dump.dirs.work)?;
        }
        let run = dump.run(&criu, o, post_dump);
        // CRIU is done with the page server; the relay's socket would keep
        // the container's namespace alive.
        let relay_failure = dump.relay.take().and_then(PageRelay::finish);
        match (dump.settle(run), relay_failure) {
            (Err(e), Some(cause)) => {
                return Err(Error::PageStream {
                    cause,
                    source: Box::new(e),
                })
            }
            (r, _) => r?,
        }
        let Dump { dirs, .. } = dump;
        // A pre-dump writes its statistics too (its pages, its frozen time).
        let stats = criu::read_dump_stats(&dirs.images)
            .or_else(|_| criu::read_dump_stats(&dirs.work))
            .ok();
        let removed = opts.kills();
        let hook_warnings = if removed {
            drop(lock);
            // CRIU killed the tree; the container is gone as with runc.
            let (root, id) = (self.root.clone(), self.id().to_string());
            Container::load(&root, &id)?.delete_keeping_import(true)?
        } else {
            Vec::new()
        };
        Ok(Checkpointed {
            images: dirs.images,
            stats,
            removed,
            hook_warnings,
        })
    }

    /// The container's external mounts, keyed by where each destination
    /// resolves inside it.
    fn dump_externals(&self) -> Result<Vec<externals::External>> {
        let state = &self.state;
        let mut ext = externals::mounts(&state.config, &state.bundle, state.cgroup.as_ref());
        ext.extend(externals::masked_files(&state.config, state.pid));
        let proc_root = PathBuf::from(format!("/proc/{}/root", state.pid));
        let root = crate::rootfs::RootDir::open(&proc_root).map_err(|source| Error::Rootfs {
            rootfs: proc_root.clone(),
            source,
        })?;
        externals::resolve_keys(&mut ext, &root, false)?;
        Ok(ext)
    }
}
