//! `restore`: a container from a directory of CRIU images and a bundle.
//!
//! Like runc: the rootfs is bind-mounted so CRIU finds a mount point, criu
//! itself is put into the new container's cgroup (and the dumped cgroup tree
//! is re-rooted there, so several copies of one image get one cgroup each),
//! external mounts map to the sources of the restore bundle's config.json,
//! and the recorded stdio pipes are replaced by the caller's. Everything is
//! undone if the restore fails.
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::criu_opts::{self, criu_flags_of, CriuDirs, CriuFlags};
use super::externals::{self, External};
use super::image_dir::{check_images, check_mountpoints};
use super::netns_image;
use super::plan::{Claim, Plan};
use super::tmpfs_image;
use super::{io, sys, Container, Error, HoldError, Result};
use crate::criu::{self, CgMode, Criu, Notify, NotifyHandler, Opts, ReqType, Request};
use crate::hooks::{self, Kind};
use crate::network::{self, LockMethod, VethConfig};
use crate::proto::rpc::Inherit_fd;
use crate::rootfs::RootDir;
use crate::state::{State, StateDir};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub image_path: PathBuf,
    /// Where CRIU writes its log (default: the image path).
    pub work_path: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<CgMode>,
    /// Let ferry, not CRIU, set up the network namespace (veth included).
    pub empty_ns_network: bool,
    pub auto_dedup: bool,
    pub lazy_pages: bool,
    pub lsm_profile: Option<String>,
    /// SELinux context CRIU puts on the restored mounts that carry one
    /// (`context=` mount option), as CRI-O asks for restores into pods.
    pub lsm_mount_context: Option<String>,
    /// Restore established TCP connections closed instead of repairing
    /// them (for images dumped with `--tcp-established`).
    pub tcp_close: bool,
    pub network_lock: LockMethod,
    /// Cgroup path to use instead of config.json's `linux.cgroupsPath`
    /// (or the default), e.g. below another parent on a migration target.
    pub cgroup_path: Option<String>,
    /// Who makes the container's cgroup (ferry, or systemd as a scope).
    pub cgroup_driver: crate::cgroups::Driver,
}

impl RestoreOptions {
    pub fn new(
        id: impl Into<String>,
        bundle: impl Into<PathBuf>,
        image_path: impl Into<PathBuf>,
    ) -> RestoreOptions {
        RestoreOptions {
            id: id.into(),
            bundle: bundle.into(),
            image_path: image_path.into(),
            work_path: None,
            pid_file: None,
            console_socket: None,
            tcp_established: false,
            ext_unix_sk: false,
            shell_job: false,
            file_locks: false,
            manage_cgroups_mode: None,
            empty_ns_network: false,
            auto_dedup: false,
            lazy_pages: false,
            lsm_profile: None,
            lsm_mount_context: None,
            tcp_close: false,
            network_lock: LockMethod::Nftables,
            cgroup_path: None,
            cgroup_driver: crate::cgroups::Driver::Cgroupfs,
        }
    }
}

/// Called once the tree is restored, before any of it runs again (CRIU's
/// post-restore notification): while it blocks the tree stays stopped;
/// `Ok` lets it run, `Err` makes CRIU kill it and the restore fail (and be
/// undone).
pub trait RestoreHold {
    fn restored(&mut self, pid: i32) -> std::result::Result<(), HoldError>;
}

/// A restored, running container. Its init is a child of the caller.
#[derive(Debug)]
pub struct Restored {
    pub container: Container,
    pub stats: Option<criu::RestoreStats>,
    pub hook_warnings: Vec<hooks::Error>,
}

/// Runs hooks when the namespaces exist, adopts the restored init, hands a
/// pty master to the console socket, and locks the veth's host end while
/// CRIU restores the network.
struct RestoreHandler<'a, 'h> {
    state: &'a State,
    dir: &'a StateDir,
    veth: Option<&'a VethConfig>,
    create_veth: bool,
    method: LockMethod,
    locked: bool,
    console_socket: Option<&'a Path>,
    pid: Option<i32>,
    veth_made: bool,
    /// The veth ferry made has its host end down until CRIU unlocks the
    /// network.
    held: bool,
    /// Bring `lo` up in the new namespace (ferry keeps a namespace without
    /// a veth, whose `lo` was up).
    lo_up: bool,
    /// ferry made and filled the namespace before CRIU, which runs inside
    /// it: CRIU takes no network lock there and sends no network
    /// notifications, so the traffic is let through at pre-resume.
    made_ahead: bool,
    hold: Option<&'h mut dyn RestoreHold>,
    append: super::append_stdio::AppendStdio,
}

impl RestoreHandler<'_, '_> {
    /// Puts ferry's part in the new namespace of `pid` (a process, or the
    /// thread holding a namespace made ahead): the veth, made with its
    /// traffic held, or `lo` up.
    fn fill(&mut self, pid: i32) -> network::Result<()> {
        if let (true, Some(v)) = (self.create_veth, self.veth) {
            let hooks = self.state.config.hooks().as_ref();
            let hooks_now = [Kind::Prestart, Kind::CreateRuntime]
                .into_iter()
                .any(|k| !hooks::of_kind(hooks, k).is_empty());
            let hold = self.method != LockMethod::Skip;
            // Hooks that run at setup-namespaces may need the host end up
            // (a route through it): ferry's firewall lock holds the
            // traffic for them instead.
            if hold && !hooks_now {
                network::create_held(v, pid)?;
                self.held = true;
            } else {
                network::create(v, pid)?;
            }
            self.veth_made = true;
            if hold && hooks_now {
                network::lock(v, self.method)?;
                self.locked = true;
            }
        } else if self.lo_up {
            network::loopback_up(pid)?;
        }
        Ok(())
    }

    /// Lets the container's traffic through: the host end up, ferry's
    /// lock removed.
    fn unlock(&mut self) -> network::Result<()> {
        if let (true, Some(v)) = (self.held, self.veth) {
            network::release_host_end(v)?;
            self.held = false;
        }
        self.remove_lock()
    }

    /// Removes ferry's lock only: after a failed restore the host end
    /// stays down while the pair is removed.
    fn remove_lock(&mut self) -> network::Result<()> {
        if let (true, Some(v)) = (self.locked, self.veth) {
            network::unlock(v, self.method)?;
            self.locked = false;
        }
        Ok(())
    }
}

impl NotifyHandler for RestoreHandler<'_, '_> {
    fn notify(&mut self, event: Notify) -> std::result::Result<(), criu::HandlerError> {
        tracing::debug!(event = %event, "criu notification");
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match event {
            Notify::SetupNamespaces { pid } => {
                self.pid = Some(pid);
                if !self.made_ahead {
                    self.fill(pid).map_err(|x| e(&x))?;
                }
                let hooks = self.state.config.hooks().as_ref();
                let json = self.state.creating_json(pid);
                hooks::run(hooks, Kind::Prestart, &json).map_err(|x| e(&x))?;
                hooks::run(hooks, Kind::CreateRuntime, &json).map_err(|x| e(&x))?;
            }
            Notify::NetworkLock => {
                if let Some(v) = self.veth {
                    if network::link_exists_on_host(&v.host_if) {
                        network::lock(v, self.method).map_err(|x| e(&x))?;
                        self.locked = true;
                    }
                }
            }
            Notify::NetworkUnlock => self.unlock().map_err(|x| e(&x))?,
            // After CRIU took the sockets out of repair mode, before the
            // tree runs.
            Notify::PreResume if self.made_ahead => self.unlock().map_err(|x| e(&x))?,
            Notify::PostRestore { pid } => {
                self.pid = Some(pid);
                if let Err(err) = self.append.reapply(pid) {
                    tracing::warn!(%err, "could not put stdio back in append mode");
                }
                // Recorded before the tree may run: if this process dies
                // from here on, `delete --force` still finds and kills it.
                let mut s = self.state.clone();
                s.pid = pid;
                s.pid_start_time =
                    crate::proc::start_time(pid).ok_or("the restored init exited before it ran")?;
                self.dir.save(&s).map_err(|x| e(&x))?;
                if let (false, Some(v)) = (self.create_veth, self.veth) {
                    // CRIU recreated the pair; the host end needs its address.
                    self.veth_made = true;
                    if !self.locked && self.method != LockMethod::Skip {
                        network::lock(v, self.method).map_err(|x| e(&x))?;
                        self.locked = true;
                    }
                    network::configure_host(v).map_err(|x| e(&x))?;
                }
                if let Some(h) = self.hold.as_mut() {
                    h.restored(pid).map_err(|x| e(&x))?;
                }
            }
            Notify::OrphanPtsMaster { master } => {
                let sock = self.console_socket.ok_or(
                    "the checkpoint has a terminal, but no console socket was given to hand it to",
                )?;
                crate::console::send_fd(sock, &master, "/dev/ptmx").map_err(|x| e(&x))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Duplicates this process's fds 0-2 above 2, so criu can inherit them.
fn dup_stdio() -> Result<[OwnedFd; 3]> {
    let dup = |fd: RawFd| -> Result<OwnedFd> {
        // SAFETY: fds 0-2 are open for the life of the process.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map(|n| {
                // SAFETY: F_DUPFD returned a new descriptor we own.
                unsafe { std::os::fd::FromRawFd::from_raw_fd(n) }
            })
            .map_err(sys(format!("duplicating fd {fd}")))
    };
    Ok([dup(0)?, dup(1)?, dup(2)?])
}

/// The cgroup paths `pid` sits in, as CRIU's cgroup roots (runc does the same).
fn cgroup_roots(pid: u32) -> Result<Vec<crate::proto::rpc::Cgroup_root>> {
    Ok(crate::cgroups::memberships(Some(pid))?
        .into_iter()
        .map(|m| {
            let mut r = crate::proto::rpc::Cgroup_root::new();
            if !m.controllers.is_empty() {
                r.set_ctrl(m.controllers);
            }
            r.set_path(m.path);
            r
        })
        .collect())
}

impl RestoreOptions {
    fn criu_flags(&self) -> CriuFlags {
        criu_flags_of!(self)
    }
}

/// A veth that CRIU or ferry is to create must not exist yet.
fn check_veth_free(plan: &Plan, veth: Option<&VethConfig>) -> Result<()> {
    match veth {
        Some(v) if network::link_exists_on_host(&v.host_if) => Err(Error::VethExists {
            name: v.host_if.clone(),
            config: plan.bundle.join("config.json"),
        }),
        _ => Ok(()),
    }
}

/// The external mounts of the restore bundle, keyed where they resolve in
/// its rootfs, after checking the rootfs for mount points CRIU would
/// follow outside it.
fn restore_externals(plan: &Plan, claim: &Claim, images: &Path) -> Result<Vec<External>> {
    let spec = &plan.spec;
    let mut ext = externals::mounts(spec, &plan.bundle, Some(&claim.cgroup));
    let masked_keys: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    ext.extend(externals::masked_files_in(spec, &masked_keys));
    let in_root = RootDir::open(&plan.rootfs).map_err(|source| Error::Rootfs {
        rootfs: plan.rootfs.clone(),
        source,
    })?;
    externals::resolve_keys(&mut ext, &in_root, true)?;
    check_mountpoints(&in_root, images)?;
    Ok(ext)
}

/// tmpfs mounts made by ferry below the state directory for CRIU to bind
/// into the container; unmounted from there when dropped.
struct StagedTmpfs(Vec<PathBuf>);

impl Drop for StagedTmpfs {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(error = %e, path = %p.display(), "cannot unmount a staged tmpfs");
            }
            if let Err(e) = std::fs::remove_dir(p) {
                tracing::warn!(error = %e, path = %p.display(), "cannot remove a staged tmpfs's mount point");
            }
        }
    }
}

/// Makes the tmpfs mounts the images list (see [`tmpfs_image`]) and maps
/// each to its mount point in the container.
fn stage_tmpfs(images: &Path, dir: &StateDir, ext: &mut Vec<External>) -> Result<StagedTmpfs> {
    let mut staged = StagedTmpfs(Vec::new());
    let data = tmpfs_image::open_data(images)?;
    for (i, t) in tmpfs_image::read(images)?.iter().enumerate() {
        let at = dir.file(&format!("tmpfs-{i}"));
        std::fs::create_dir(&at).map_err(io(format!("creating {}", at.display())))?;
        staged.0.push(at.clone());
        tmpfs_image::make(t, &at, data.as_ref())?;
        ext.push(External {
            key: t.key.clone(),
            source: at,
        });
    }
    Ok(staged)
}

/// Bind-mounts the rootfs below the state directory (CRIU wants the root
/// to be a mount point); the rollback unmounts it.
fn bind_root(rootfs: &Path, claim: &mut Claim) -> Result<PathBuf> {
    let criu_root = claim.dir.file("criu-root");
    std::fs::create_dir(&criu_root).map_err(io("creating criu-root"))?;
    mount(
        Some(rootfs),
        &criu_root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mounting {}", rootfs.display())))?;
    claim.rollback.root_mount = Some(criu_root.clone());
    mount(
        None::<&str>,
        &criu_root,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("making criu-root private"))?;
    Ok(criu_root)
}

/// The stdio of the dumped init as the images record it: pipes
/// (`descriptors.json`) and external files, to be replaced by the caller's.
struct RecordedStdio {
    pipes: Vec<String>,
    files: Vec<(i32, String)>,
}

impl RecordedStdio {
    fn read(images: &Path) -> Result<RecordedStdio> {
        Ok(RecordedStdio {
            pipes: externals::read_descriptors(images)?,
            files: externals::read_stdio_files(images)?,
        })
    }

    /// The inherit_fd entries that replace them with `stdio` (the
    /// caller's fds 0-2).
    fn inherit(&self, stdio: &[RawFd; 3]) -> Vec<Inherit_fd> {
        let mut inherit = externals::inherit_pipes(&self.pipes, stdio);
        inherit.extend(externals::inherit_files(&self.files, stdio));
        inherit
    }
}

/// The restore's CRIU options.
fn restore_opts(
    opts: &RestoreOptions,
    plan: &Plan,
    dirs: &CriuDirs,
    criu_root: &Path,
    ext: &[External],
    veth: Option<&VethConfig>,
    inherit_fd: Vec<Inherit_fd>,
) -> Opts {
    let ext_mnt = externals::restore_map(ext);
    let mut o = criu_opts::base(dirs, criu_root, ext_mnt, plan.terminal, &opts.criu_flags());
    o.set_rst_sibling(true);
    o.inherit_fd = inherit_fd;
    if let (Some(v), false) = (veth, opts.empty_ns_network) {
        let mut pair = crate::proto::rpc::Criu_veth_pair::new();
        pair.set_if_in(v.container_if.clone());
        pair.set_if_out(v.host_if.clone());
        o.veths.push(pair);
    }
    if let Some(p) = &opts.lsm_profile {
        o.set_lsm_profile(p.clone());
    }
    if let Some(c) = &opts.lsm_mount_context {
        o.set_lsm_mount_context(c.clone());
    }
    if opts.tcp_close {
        o.set_tcp_close(true);
    }
    o.set_notify_scripts(true);
    o
}

/// A criu started for a restore, in the container's cgroup (and in the
/// network namespace ferry made ahead), waiting for the request.
struct CriuReady {
    criu: criu::Started,
    /// The cgroups criu runs in, as CRIU's cgroup roots.
    cg_roots: Vec<crate::proto::rpc::Cgroup_root>,
    /// What ferry made of the network before CRIU: the veth (its host end
    /// held down, or locked), or `lo` up.
    veth_made: bool,
    held: bool,
    locked: bool,
}

impl<'a, 'h> RestoreHandler<'a, 'h> {
    fn new(
        state: &'a State,
        dir: &'a StateDir,
        opts: &'a RestoreOptions,
        kept: Option<&netns_image::Kept>,
        hold: Option<&'h mut dyn RestoreHold>,
    ) -> RestoreHandler<'a, 'h> {
        RestoreHandler {
            state,
            dir,
            veth: state.veth.as_ref(),
            create_veth: opts.empty_ns_network,
            method: opts.network_lock,
            locked: false,
            console_socket: opts.console_socket.as_deref(),
            pid: None,
            veth_made: false,
            held: false,
            lo_up: kept.is_some_and(|k| k.netns.lo_up),
            made_ahead: kept.is_some_and(|k| k.criu_inside),
            hold,
            append: super::append_stdio::AppendStdio::record(),
        }
    }
}

/// Starts the restore's criu in the container's cgroup, in the network
/// namespace ferry makes and fills first when `kept` says CRIU ran inside
/// it at the dump; `keep` are the descriptors criu inherits. The rollback
/// learns what ferry made.
fn start_criu(
    criu: &Criu,
    claim: &mut Claim,
    opts: &RestoreOptions,
    kept: Option<&netns_image::Kept>,
    keep: &[RawFd],
) -> Result<CriuReady> {
    let mut handler = RestoreHandler::new(&claim.state, &claim.dir, opts, kept, None);
    let netns = if handler.made_ahead {
        let ns = network::NewNetns::create().map_err(io("making a network namespace"))?;
        let filled = handler.fill(ns.pid());
        if handler.veth_made {
            claim.rollback.veth = claim.state.veth.clone();
        }
        filled?;
        Some(ns.into_file())
    } else {
        None
    };
    let (veth_made, held, locked) = (handler.veth_made, handler.held, handler.locked);
    let criu = match netns {
        Some(ns) => criu.clone().in_netns(ns),
        None => criu.clone(),
    };
    let cgroup = claim.rollback.cgroup.as_ref().expect("cgroup created");
    // criu restores into the cgroup it runs in; the image's cgroup tree is
    // re-rooted there.
    let criu = match cgroup.clone_target() {
        Some(dir) => criu.in_cgroup(dir),
        None => criu,
    };
    let mut cg_roots = Vec::new();
    let started = criu.start_checked(criu::MIN_VERSION, keep, |criu_pid, placed| {
        if !placed {
            cgroup
                .add_task(criu_pid as i32)
                .map_err(criu::HandlerError::new)?;
        }
        cg_roots = cgroup_roots(criu_pid).map_err(criu::HandlerError::new)?;
        Ok(())
    })?;
    Ok(CriuReady {
        criu: started,
        cg_roots,
        veth_made,
        held,
        locked,
    })
}

/// Sends the restore request to the criu [`start_criu`] made ready;
/// returns the restored init's pid. The rollback learns what CRIU and
/// ferry made.
fn run_criu(
    ready: CriuReady,
    mut o: Opts,
    work: &Path,
    claim: &mut Claim,
    opts: &RestoreOptions,
    kept: Option<&netns_image::Kept>,
    hold: Option<&mut dyn RestoreHold>,
) -> Result<i32> {
    let mut handler = RestoreHandler::new(&claim.state, &claim.dir, opts, kept, hold);
    handler.veth_made = ready.veth_made;
    handler.held = ready.held;
    handler.locked = ready.locked;
    o.cg_root = ready.cg_roots;
    let result = ready.criu.call(
        Request::new(ReqType::RESTORE, Some(o)).work_dir(work),
        &mut handler,
    );
    let result = result.map_err(Error::from);
    let unlocked = if result.is_ok() {
        handler.unlock()
    } else {
        handler.remove_lock()
    };
    let (seen_pid, veth_made) = (handler.pid, handler.veth_made);
    let veth = handler.veth.cloned();
    claim.rollback.pid = seen_pid;
    if veth_made {
        claim.rollback.veth = veth;
    }
    claim.rollback.unmount_root();
    let resp = result?;
    unlocked?;
    resp.restore
        .as_ref()
        .map(|r| r.pid())
        .ok_or(Error::RestoreWithoutPid)
}

/// `strict` fails on any cgroup of the image that exists, and the new
/// container's cgroup always does (CRIU runs in it, as under runc): refused
/// up front. `full` writes the recorded freezer state back into that
/// cgroup: refused for images that recorded a frozen one.
fn check_cgroup_mode(mode: Option<CgMode>, images: &Path) -> Result<()> {
    let name = match mode {
        Some(CgMode::FULL) => "full",
        Some(CgMode::STRICT) => return Err(Error::CgroupModeStrict),
        _ => return Ok(()),
    };
    if crate::images::cgroups::recorded_frozen(images).map_err(super::ImagesError::Damaged)? {
        return Err(Error::CgroupModeFreezes { mode: name });
    }
    Ok(())
}

/// The images at `opts.image_path`, complete, checked, recording the
/// namespace `kept` (what a restore was prepared for); their canonical
/// path.
fn check_complete(opts: &RestoreOptions, kept: Option<&netns_image::Kept>) -> Result<PathBuf> {
    let images = check_images(&opts.image_path)?;
    if !records(&images, kept)? {
        return Err(Error::PreparedForOtherNetwork { images });
    }
    check_cgroup_mode(opts.manage_cgroups_mode, &images)?;
    Ok(images)
}

/// Whether the images in `images` record `kept` (see [`netns_image`]).
fn records(images: &Path, kept: Option<&netns_image::Kept>) -> Result<bool> {
    Ok(netns_image::read(images)?.as_ref() == kept)
}

/// The options a restore runs with: a namespace ferry kept (see
/// [`netns_image`]) is made again by ferry.
fn effective_opts(opts: &RestoreOptions, kept: Option<&netns_image::Kept>) -> RestoreOptions {
    RestoreOptions {
        empty_ns_network: opts.empty_ns_network || kept.is_some(),
        ..opts.clone()
    }
}

/// A restore readied before its images are all there (a migration's
/// destination, while the source dumps): the container's state claimed,
/// its cgroup made, the network namespace ferry rebuilds made and filled,
/// and criu started in them, its version checked. What it needs of the
/// images is only what [`netns_image`] records, given to
/// [`Container::prepare_restore`]; [`PreparedRestore::restore`] refuses
/// images that record something else. Dropped unused, everything is
/// undone.
pub struct PreparedRestore {
    /// Dropped first: criu exits once its socket closes, before the
    /// rollback empties the cgroup it sits in. `None`: started by the
    /// restore (see [`Container::restore_with`]).
    criu: Option<CriuReady>,
    criu_binary: Criu,
    root: PathBuf,
    opts: RestoreOptions,
    plan: Plan,
    /// The images were complete and checked when prepared (a plain
    /// restore): their canonical path.
    checked_images: Option<PathBuf>,
    kept: Option<netns_image::Kept>,
    veth: Option<VethConfig>,
    stdio: [OwnedFd; 3],
    claim: Claim,
    /// Held until CRIU has resumed the tree on its breakpoints.
    _perf: criu::perf_hooks::Warm,
}

impl std::fmt::Debug for PreparedRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRestore")
            .field("id", &self.opts.id)
            .field("kept", &self.kept)
            .field("criu", &self.criu.as_ref().map(|c| c.criu.pid()))
            .finish()
    }
}

impl Container {
    /// Restores a container (see [`RestoreOptions`]).
    pub fn restore(root: &Path, opts: &RestoreOptions) -> Result<Restored> {
        Container::restore_with(root, opts, None)
    }

    /// Like [`Container::restore`], with a hold point before the restored
    /// tree runs (see [`RestoreHold`]).
    pub fn restore_with(
        root: &Path,
        opts: &RestoreOptions,
        hold: Option<&mut dyn RestoreHold>,
    ) -> Result<Restored> {
        let _span = tracing::info_span!("restore", id = %opts.id).entered();
        // What the images must hold is refused before anything is made.
        let images = check_images(&opts.image_path)?;
        let kept = netns_image::read(&images)?;
        check_cgroup_mode(opts.manage_cgroups_mode, &images)?;
        RecordedStdio::read(&images)?;
        // CRIU is started once the rootfs and tmpfs mounts are made: with
        // them made between its start and the request, its first
        // notification came 35-52 ms after the request instead of 23-36 ms
        // (five runs each, 2026-12-02).
        let mut prepared = Container::prepare_restore_with(root, opts, kept, true, false)?;
        prepared.checked_images = Some(images);
        prepared.restore(hold)
    }

    /// Readies the restore of `opts` (see [`PreparedRestore`]) for images
    /// whose [`netns_image`] record is `kept`; `opts.image_path` need not
    /// hold the images yet.
    pub fn prepare_restore(
        root: &Path,
        opts: &RestoreOptions,
        kept: Option<netns_image::Kept>,
    ) -> Result<PreparedRestore> {
        Container::prepare_restore_with(root, opts, kept, true, true)
    }

    /// Like [`Container::prepare_restore`], for a rootfs that is not in
    /// place yet either (a migration's shipped rootfs, whose last pass
    /// follows the dump): [`PreparedRestore::restore`] checks it.
    pub fn prepare_restore_before_rootfs(
        root: &Path,
        opts: &RestoreOptions,
        kept: Option<netns_image::Kept>,
    ) -> Result<PreparedRestore> {
        Container::prepare_restore_with(root, opts, kept, false, true)
    }

    fn prepare_restore_with(
        root: &Path,
        opts: &RestoreOptions,
        kept: Option<netns_image::Kept>,
        rootfs_now: bool,
        criu_now: bool,
    ) -> Result<PreparedRestore> {
        let _span = tracing::info_span!("prepare restore", id = %opts.id).entered();
        let perf = criu::perf_hooks::Warm::begin();
        let plan = if rootfs_now {
            Plan::load(&opts.id, &opts.bundle)?
        } else {
            Plan::load_before_rootfs(&opts.id, &opts.bundle)?
        };
        let opts = effective_opts(opts, kept.as_ref());
        if let Some(k) = &kept {
            netns_image::check_restorable(&plan.spec, k, &opts.image_path)?;
        }
        plan.check_console(opts.console_socket.as_deref())?;
        let mut veth = plan.veth()?;
        if let (Some(v), Some(own)) = (veth.as_mut(), &kept) {
            if v.mac.is_none() {
                v.mac.clone_from(&own.netns.mac);
            }
        }
        check_veth_free(&plan, veth.as_ref())?;
        let criu = Criu::new()?;
        criu.require_modes(false, false, opts.lazy_pages)?;

        // CRIU and the tree it restores run in the container's cgroup.
        let cgroup = plan.cgroup(opts.cgroup_path.as_deref(), opts.cgroup_driver)?;
        let mut claim = plan.claim(root, cgroup, |s| s.restoring(veth.clone()))?;
        claim.rollback.veth_lock = Some(opts.network_lock);
        claim.create_cgroup(plan.resources())?;
        let stdio = dup_stdio()?;
        let stdio_fds = stdio.each_ref().map(AsRawFd::as_raw_fd);
        let ready = match criu_now {
            true => Some(start_criu(
                &criu,
                &mut claim,
                &opts,
                kept.as_ref(),
                &stdio_fds,
            )?),
            false => None,
        };
        tracing::debug!(criu = ?ready.as_ref().map(|r| r.criu.pid()), "restore prepared");
        Ok(PreparedRestore {
            criu: ready,
            criu_binary: criu,
            root: root.to_path_buf(),
            opts,
            plan,
            checked_images: None,
            kept,
            veth,
            stdio,
            claim,
            _perf: perf,
        })
    }
}

impl PreparedRestore {
    /// Whether the images, now in, record the network namespace this
    /// restore was readied for (the container may have changed it since):
    /// else [`PreparedRestore::restore`] refuses them.
    pub fn fits_images(&self) -> bool {
        records(&self.opts.image_path, self.kept.as_ref()).unwrap_or(false)
    }

    /// Restores from the images, now complete, with an optional hold
    /// point before the restored tree runs (see [`RestoreHold`]).
    pub fn restore(self, hold: Option<&mut dyn RestoreHold>) -> Result<Restored> {
        let _span = tracing::info_span!("restore", id = %self.opts.id).entered();
        let PreparedRestore {
            criu: ready,
            criu_binary,
            root,
            opts,
            mut plan,
            checked_images,
            kept,
            veth,
            stdio,
            mut claim,
            _perf,
        } = self;
        // Checked again: it may have arrived (or gone) since.
        claim.state.rootfs = plan.find_rootfs()?.to_path_buf();
        let images = match checked_images {
            Some(images) => images,
            None => check_complete(&opts, kept.as_ref())?,
        };
        let dirs = CriuDirs::open(images, opts.work_path.as_deref(), "restore.log")?;
        let recorded = RecordedStdio::read(&dirs.images)?;
        let mut ext = restore_externals(&plan, &claim, &dirs.images)?;
        // Unmounted (from the host) once CRIU has bound them in, or failed.
        let staged = stage_tmpfs(&dirs.images, &claim.dir, &mut ext)?;
        // The rootfs bind is below the state directory.
        let criu_root = bind_root(&plan.rootfs, &mut claim)?;
        // CRIU mounts its cgroup yard in its work directory; recorded so
        // that `delete --force` can unmount it after a killed restore.
        std::fs::write(
            claim.dir.file(super::delete::CRIU_WORK_FILE),
            dirs.work.as_os_str().as_encoded_bytes(),
        )
        .map_err(io("recording CRIU's work directory"))?;
        let stdio_fds = stdio.each_ref().map(AsRawFd::as_raw_fd);
        let ready = match ready {
            Some(r) => r,
            None => start_criu(&criu_binary, &mut claim, &opts, kept.as_ref(), &stdio_fds)?,
        };
        let inherit = recorded.inherit(&stdio_fds);
        let o = restore_opts(
            &opts,
            &plan,
            &dirs,
            &criu_root,
            &ext,
            veth.as_ref(),
            inherit,
        );
        let pid = run_criu(ready, o, &dirs.work, &mut claim, &opts, kept.as_ref(), hold)?;

        drop(staged);
        claim.rollback.pid = Some(pid);
        claim.rollback.veth = veth.clone();
        claim.state.pid = pid;
        claim.state.pid_start_time =
            crate::proc::start_time(pid).ok_or(Error::RestoredInitExited)?;
        let (container, _lock) = claim.finish(&root, opts.pid_file.as_deref())?;
        let stats = criu::read_restore_stats(&dirs.images)
            .or_else(|_| criu::read_restore_stats(&dirs.work))
            .ok();
        let hook_warnings = hooks::run_all(
            container.state.config.hooks().as_ref(),
            Kind::Poststart,
            &container.oci_state_json(),
        );
        Ok(Restored {
            container,
            stats,
            hook_warnings,
        })
    }
}
