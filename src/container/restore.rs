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

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::checkpoint::{criu_lock_method, open_dir, CRIU_LOG_LEVEL};
use super::externals;
use super::{io, sys, Container, Error, Result};
use crate::cgroups::Cgroup;
use crate::criu::{self, image, CgMode, Criu, Notify, NotifyHandler, Opts, ReqType, Request};
use crate::hooks::{self, Kind};
use crate::network::{self, LockMethod, VethConfig};
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
    pub network_lock: LockMethod,
    /// Cgroup path to use instead of config.json's `linux.cgroupsPath`
    /// (or the default), e.g. below another parent on a migration target.
    pub cgroup_path: Option<String>,
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
            network_lock: LockMethod::Nftables,
            cgroup_path: None,
        }
    }
}

/// Called once the tree is restored, before any of it runs again (CRIU's
/// post-restore notification): while it blocks the tree stays stopped;
/// `Ok` lets it run, `Err` makes CRIU kill it and the restore fail (and be
/// undone).
pub trait RestoreHold {
    fn restored(&mut self, pid: i32) -> std::result::Result<(), String>;
}

/// A restored, running container. Its init is a child of the caller.
#[derive(Debug)]
pub struct Restored {
    pub container: Container,
    pub log: PathBuf,
    pub stats: Option<criu::RestoreStats>,
    pub hook_warnings: Vec<hooks::Error>,
}

/// Checks that `path` holds a CRIU checkpoint before anything is set up.
pub fn check_images(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Usage(format!(
            "image path {}: {e}; pass the directory `ferry checkpoint --image-path` wrote",
            path.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "image path {} is not a directory",
            path.display()
        )));
    }
    let marker = path.join(crate::freeze_guard::INCOMPLETE_MARKER);
    if marker.exists() {
        return Err(Error::Usage(format!(
            "{} holds an incomplete checkpoint (the dump failed or was interrupted; {} \
             says so): checkpoint the container again",
            path.display(),
            marker.display()
        )));
    }
    let inventory = path.join("inventory.img");
    if !inventory.exists() {
        return Err(Error::Usage(format!(
            "{} holds no CRIU checkpoint (inventory.img is missing)",
            path.display()
        )));
    }
    image::read_single::<protobuf::well_known_types::empty::Empty>(
        &inventory,
        image::INVENTORY_MAGIC,
    )
    .map_err(|e| Error::Criu(e.into()))?;
    // Every process's pages must be there: CRIU can hang on a short pages image.
    let damaged =
        |e: crate::images::ImageError| Error::Usage(format!("{e}: the checkpoint is damaged"));
    let dir = crate::images::ImageDir::open(path).map_err(damaged)?;
    for p in dir.process_tree().map_err(damaged)? {
        dir.memory(p.pid).map_err(damaged)?;
    }
    std::fs::canonicalize(path).map_err(io(format!("image path {}", path.display())))
}

/// What must be undone if the restore fails half-way.
struct Undo {
    dir: StateDir,
    cgroup: Option<Cgroup>,
    veth: Option<VethConfig>,
    /// How the veth's host end may have been locked.
    lock_method: LockMethod,
    root_mount: Option<PathBuf>,
    pid: Option<i32>,
    armed: bool,
}

impl Undo {
    fn unmount_root(&mut self) {
        if let Some(p) = self.root_mount.take() {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&p);
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.unmount_root();
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = &self.cgroup {
            for p in cg.pids().unwrap_or_default() {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = cg.thaw();
        }
        if let Some(v) = &self.veth {
            let _ = network::unlock(v, self.lock_method);
            let _ = network::remove(v);
        }
        if let Some(cg) = &self.cgroup {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while cg.pids().is_ok_and(|p| !p.is_empty()) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = cg.remove();
        }
        let _ = self.dir.remove();
    }
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
    hold: Option<&'h mut dyn RestoreHold>,
}

impl RestoreHandler<'_, '_> {
    fn state_json(&self, pid: i32) -> String {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.state.id,
            "status": "creating",
            "pid": pid,
            "bundle": self.state.bundle,
            "annotations": self.state.annotations,
        })
        .to_string()
    }

    fn unlock(&mut self) -> std::result::Result<(), String> {
        if let (true, Some(v)) = (self.locked, self.veth) {
            network::unlock(v, self.method).map_err(|e| e.to_string())?;
            self.locked = false;
        }
        Ok(())
    }
}

impl NotifyHandler for RestoreHandler<'_, '_> {
    fn notify(&mut self, event: Notify) -> std::result::Result<(), String> {
        tracing::debug!(event = %event, "criu notification");
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match event {
            Notify::SetupNamespaces { pid } => {
                self.pid = Some(pid);
                if let (true, Some(v)) = (self.create_veth, self.veth) {
                    network::create(v, pid).map_err(|x| e(&x))?;
                    self.veth_made = true;
                }
                let hooks = self.state.config.hooks().as_ref();
                let json = self.state_json(pid);
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
            Notify::NetworkUnlock => self.unlock()?,
            Notify::PostRestore { pid } => {
                self.pid = Some(pid);
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
                    h.restored(pid)?;
                }
            }
            Notify::OrphanPtsMaster { master } => {
                let sock = self
                    .console_socket
                    .ok_or("the checkpoint has a terminal: pass --console-socket")?;
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

/// Refuses a rootfs where a mount point CRIU will restore directly in the
/// rootfs directory is, or passes through, a symlink: CRIU resolves mount
/// points itself, outside the container's root, so such a link could point
/// it at the host.
fn check_mountpoints(root: &RootDir, images: &Path) -> Result<()> {
    let mounts = crate::images::ImageDir::open(images)
        .and_then(|d| d.mounts())
        .map_err(|e| Error::Usage(format!("{e}: the checkpoint is damaged")))?;
    let ids: Vec<u32> = mounts.iter().map(|m| m.id).collect();
    let Some(top) = mounts.iter().find(|m| {
        crate::rootfs::resolve::lexical(Path::new(&m.mountpoint)) == Path::new("/")
            && (m.parent_id == m.id || !ids.contains(&m.parent_id))
    }) else {
        return Ok(());
    };
    for m in mounts
        .iter()
        .filter(|m| m.parent_id == top.id && m.id != top.id)
    {
        let path = crate::rootfs::resolve::lexical(Path::new(&m.mountpoint));
        match root.resolve_no_symlinks(&path) {
            Ok(_) => {}
            Err(e) if e.errno == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(Error::Usage(format!(
                    "rootfs {}: mount point {e}; CRIU would follow it outside the rootfs: make it the directory or file the checkpoint had",
                    root.host_path().display()
                )))
            }
        }
    }
    Ok(())
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
        crate::id::validate(&opts.id).map_err(|source| Error::InvalidId {
            id: opts.id.clone(),
            source,
        })?;
        let bundle = std::fs::canonicalize(&opts.bundle)
            .map_err(|_| crate::spec::Error::NoBundle(opts.bundle.clone()))?;
        let spec = crate::spec::load(&bundle)?;
        crate::spec::validate(&spec, &bundle)?;
        let rootfs = crate::spec::rootfs(&spec, &bundle)?;
        let rootfs =
            std::fs::canonicalize(&rootfs).map_err(io(format!("rootfs {}", rootfs.display())))?;
        let images = check_images(&opts.image_path)?;
        let work = match &opts.work_path {
            Some(w) => super::checkpoint::writable_dir(w, "work path")?,
            None => images.clone(),
        };
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        super::create::check_console(terminal, opts.console_socket.as_deref())?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let veth = VethConfig::from_annotations(&annotations)?;
        if let Some(v) = &veth {
            if network::link_exists_on_host(&v.host_if) {
                return Err(Error::Usage(format!(
                    "veth {}: an interface with this name already exists on the host; change the {} annotation in {}",
                    v.host_if,
                    network::VETH_ANNOTATION,
                    bundle.join("config.json").display()
                )));
            }
        }
        let recorded = externals::read_descriptors(&images)?;
        let stdio_files = externals::read_stdio_files(&images)?;
        let criu = Criu::new()?;
        criu.require_modes(false, false, opts.lazy_pages)?;

        let linux = spec.linux().clone().unwrap_or_default();
        let cgroup_path = opts.cgroup_path.clone().unwrap_or_else(|| {
            linux
                .cgroups_path()
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| super::create::default_cgroup_path(&opts.id))
        });
        let cgroup_desc = crate::cgroups::CgroupDescriptor::resolve(&cgroup_path)?;

        let dir = super::create::new_state_dir(root, &opts.id)?;
        let mut undo = Undo {
            dir: dir.clone(),
            cgroup: None,
            veth: None,
            lock_method: opts.network_lock,
            root_mount: None,
            pid: None,
            armed: true,
        };
        let _lock = dir.lock()?;
        cgroup_desc.check_reusable()?;
        // Recorded before anything exists that would need undoing, so that
        // `delete --force` can remove what a killed restore left (CRIU and
        // the tree it restores run in this cgroup; the rootfs bind is
        // below the state directory).
        let mut state = State {
            veth: veth.clone(),
            // A restored container's process runs at once: no `start`.
            started: true,
            ..State::creating(&opts.id, &bundle, &rootfs, annotations, &cgroup_desc, &spec)
        };
        dir.save(&state)?;
        let cgroup = Cgroup::create_from(cgroup_desc.clone(), linux.resources().as_ref())?;
        undo.cgroup = Some(cgroup);

        let mut ext = externals::mounts(&spec, &bundle, Some(&cgroup_desc));
        let masked_keys: Vec<String> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default();
        ext.extend(externals::masked_files_in(&spec, &masked_keys));
        let in_root = RootDir::open(&rootfs).map_err(|source| Error::Rootfs {
            rootfs: rootfs.clone(),
            source,
        })?;
        externals::resolve_keys(&mut ext, &in_root, true)?;
        check_mountpoints(&in_root, &images)?;
        drop(in_root);
        // CRIU wants the root to be a mount point.
        let criu_root = dir.file("criu-root");
        std::fs::create_dir(&criu_root).map_err(io("creating criu-root"))?;
        mount(
            Some(&rootfs),
            &criu_root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("bind-mounting {}", rootfs.display())))?;
        undo.root_mount = Some(criu_root.clone());
        mount(
            None::<&str>,
            &criu_root,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("making criu-root private"))?;

        // CRIU mounts its cgroup yard in its work directory; recorded so
        // that `delete --force` can unmount it after a killed restore.
        std::fs::write(
            dir.file(super::delete::CRIU_WORK_FILE),
            work.as_os_str().as_encoded_bytes(),
        )
        .map_err(io("recording CRIU's work directory"))?;
        let images_fd = open_dir(&images)?;
        let work_fd = open_dir(&work)?;
        let stdio = dup_stdio()?;
        let stdio_fds = [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ];
        let mut o = Opts::new();
        o.set_images_dir_fd(images_fd.as_raw_fd());
        o.set_work_dir_fd(work_fd.as_raw_fd());
        o.set_log_file("restore.log".into());
        o.set_log_level(CRIU_LOG_LEVEL);
        o.set_root(criu_root.to_string_lossy().into_owned());
        o.set_rst_sibling(true);
        o.set_manage_cgroups(true);
        if let Some(m) = opts.manage_cgroups_mode {
            o.set_manage_cgroups_mode(m);
        }
        o.ext_mnt = externals::restore_map(&ext);
        o.inherit_fd = externals::inherit_pipes(&recorded, &stdio_fds);
        o.inherit_fd
            .extend(externals::inherit_files(&stdio_files, &stdio_fds));
        if let (Some(v), false) = (&veth, opts.empty_ns_network) {
            let mut pair = crate::proto::rpc::Criu_veth_pair::new();
            pair.set_if_in(v.container_if.clone());
            pair.set_if_out(v.host_if.clone());
            o.veths.push(pair);
        }
        if terminal {
            o.set_orphan_pts_master(true);
        }
        o.set_tcp_established(opts.tcp_established);
        o.set_ext_unix_sk(opts.ext_unix_sk);
        o.set_shell_job(opts.shell_job);
        o.set_file_locks(opts.file_locks);
        o.set_auto_dedup(opts.auto_dedup);
        o.set_network_lock(criu_lock_method(opts.network_lock));
        if opts.empty_ns_network {
            o.set_empty_ns(libc::CLONE_NEWNET as u32);
        }
        if opts.lazy_pages {
            o.set_lazy_pages(true);
        }
        if let Some(p) = &opts.lsm_profile {
            o.set_lsm_profile(p.clone());
        }
        o.set_notify_scripts(true);

        let keep: Vec<RawFd> = stdio_fds.to_vec();
        let mut handler = RestoreHandler {
            state: &state,
            dir: &dir,
            veth: veth.as_ref(),
            create_veth: opts.empty_ns_network,
            method: opts.network_lock,
            locked: false,
            console_socket: opts.console_socket.as_deref(),
            pid: None,
            veth_made: false,
            hold,
        };
        let cgroup = undo.cgroup.as_ref().expect("cgroup");
        let result = criu.call_checked(
            criu::MIN_VERSION,
            Request::new(ReqType::RESTORE, Some(o)).work_dir(&work),
            &mut handler,
            &keep,
            &mut |criu_pid, opts| {
                // criu restores into the cgroup it runs in; re-root the
                // image's cgroup tree there.
                cgroup
                    .add_task(criu_pid as i32)
                    .map_err(|e| e.to_string())?;
                let roots = cgroup_roots(criu_pid).map_err(|e| e.to_string())?;
                if let Some(o) = opts.as_mut() {
                    o.cg_root = roots;
                }
                Ok(())
            },
        );
        let unlocked = handler.unlock();
        let (seen_pid, veth_made) = (handler.pid, handler.veth_made);
        undo.pid = seen_pid;
        if veth_made {
            undo.veth = veth.clone();
        }
        undo.unmount_root();
        let resp = result?;
        unlocked.map_err(Error::Usage)?;
        let pid = resp
            .restore
            .as_ref()
            .map(|r| r.pid())
            .ok_or_else(|| Error::Init("criu answered the restore without a pid".into()))?;
        undo.pid = Some(pid);
        if veth.is_some() {
            undo.veth = veth.clone();
        }
        state.pid = pid;
        state.pid_start_time = crate::proc::start_time(pid)
            .ok_or_else(|| Error::Init("the restored init exited at once".into()))?;
        state.stdio = (0..3)
            .map(|fd| crate::proc::fd_target(pid, fd).unwrap_or_default())
            .collect();
        state.creating = false;
        dir.save(&state)?;
        if let Some(pf) = &opts.pid_file {
            super::create::write_pid_file(pf, pid)?;
        }
        undo.armed = false;
        drop(undo);
        let stats = criu::read_restore_stats(&images)
            .or_else(|_| criu::read_restore_stats(&work))
            .ok();
        let container = Container {
            root: root.to_path_buf(),
            dir,
            state,
        };
        let hook_warnings = hooks::run_all(
            container.state.config.hooks().as_ref(),
            Kind::Poststart,
            &container.oci_state_json(),
        );
        Ok(Restored {
            container,
            log: work.join("restore.log"),
            stats,
            hook_warnings,
        })
    }
}
