//! `create`: a container whose init is set up and waits for `start`.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType};

use super::{io, sys, Container, Error, Result};
use crate::cgroups::Cgroup;
use crate::hooks::{self, Kind};
use crate::init::Init;
use crate::network::{self, VethConfig};
use crate::state::{State, StateDir, EXEC_DONE, EXEC_FIFO};
use crate::sync::{self, Msg};

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    /// With process.terminal and no console socket: the caller relays the
    /// terminal itself and gets its master in [`Created::console`]; like
    /// runc's, that terminal leaves "\n" alone (the caller's adds "\r").
    pub relay_console: bool,
}

/// A freshly created container; the caller is the init's parent until it
/// exits, so foreground `run` can wait for it.
pub struct Created {
    pub container: Container,
    /// The terminal's master, for a caller that relays it (`relay_console`).
    pub console: Option<OwnedFd>,
}

/// What must be undone if creation fails half-way.
struct Undo {
    dir: StateDir,
    cgroup: Option<Cgroup>,
    veth: Option<VethConfig>,
    pid: Option<Pid>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(v) = &self.veth {
            let _ = network::remove(v);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove();
        }
        let _ = self.dir.remove();
    }
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// How long the init may take to report each setup step (beyond its hooks).
pub(crate) const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Default cgroup path when config.json has none: below the caller's cgroup.
pub fn default_cgroup_path(id: &str) -> String {
    format!("ferry/{id}")
}

pub fn create(root: &Path, opts: &CreateOptions) -> Result<Created> {
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
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let relay = terminal && opts.relay_console && opts.console_socket.is_none();
    if !relay {
        check_console(terminal, opts.console_socket.as_deref())?;
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let veth = VethConfig::from_annotations(&annotations)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    if veth.is_some()
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
    {
        return Err(Error::Usage(format!(
            "annotation {} needs a new network namespace in linux.namespaces",
            network::VETH_ANNOTATION
        )));
    }

    let cgroup_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| default_cgroup_path(&opts.id));
    let cgroup_desc = crate::cgroups::CgroupDescriptor::resolve(&cgroup_path)?;

    let dir = new_state_dir(root, &opts.id)?;
    let mut undo = Undo {
        dir: dir.clone(),
        cgroup: None,
        veth: None,
        pid: None,
        armed: true,
    };
    let lock = dir.lock()?;
    cgroup_desc.check_reusable()?;
    // Recorded before anything exists that would need undoing, so that
    // `delete --force` can remove what a killed create left.
    let mut state = State::creating(&opts.id, &bundle, &rootfs, annotations, &cgroup_desc, &spec);
    dir.save(&state)?;

    for name in [EXEC_FIFO, EXEC_DONE] {
        nix::unistd::mkfifo(&dir.file(name), Mode::from_bits_truncate(0o600))
            .map_err(sys(format!("mkfifo {}", dir.file(name).display())))?;
    }
    let open_rw = |name: &str| -> Result<OwnedFd> {
        nix::fcntl::open(
            &dir.file(name),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("open {name}")))
    };
    let exec_fifo = open_rw(EXEC_FIFO)?;
    let exec_done = open_rw(EXEC_DONE)?;

    let cgroup = Cgroup::create_from(cgroup_desc.clone(), linux.resources().as_ref())?;
    undo.cgroup = Some(cgroup);

    let mut clone_flags = CloneFlags::empty();
    let mut join = Vec::new();
    let mut pid_ns_path = None;
    for ns in &namespaces {
        match ns.path() {
            None => clone_flags |= ns_flag(ns.typ()),
            Some(p) if ns.typ() == LinuxNamespaceType::Pid => pid_ns_path = Some(p.clone()),
            Some(p) => join.push((ns_flag(ns.typ()), p.clone())),
        }
    }
    // The cgroup namespace is unshared after the init is in its cgroup.
    let new_cgroupns = clone_flags.contains(CloneFlags::CLONE_NEWCGROUP);
    clone_flags.remove(CloneFlags::CLONE_NEWCGROUP);
    // A joined user namespace must come first.
    join.sort_by_key(|(f, _)| *f != CloneFlags::CLONE_NEWUSER);
    let new_userns = clone_flags.contains(CloneFlags::CLONE_NEWUSER);
    let new_utsns = clone_flags.contains(CloneFlags::CLONE_NEWUTS)
        || join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUTS);

    // setns on a pid namespace applies to the caller's next children: the
    // guard puts ours back once the init is cloned (or on any error).
    let pid_ns = match &pid_ns_path {
        Some(p) => Some(super::pid_ns::PidNsForChildren::join(p).map_err(Error::Init)?),
        None => None,
    };

    let (parent_ch, child_ch) = sync::pair().map_err(sys("socketpair"))?;
    // The init answers at once unless its createContainer hooks run.
    parent_ch.set_recv_timeout(hooks::bound(
        spec.hooks().as_ref(),
        Kind::CreateContainer,
        INIT_TIMEOUT,
    ))?;
    let init = Init {
        spec: spec.clone(),
        rootfs: rootfs.clone(),
        no_pivot: opts.no_pivot,
        channel: child_ch,
        exec_fifo,
        exec_done,
        terminal,
        join,
        new_userns,
        new_cgroupns,
        new_utsns,
    };
    let mut init = Some(init);
    let mut stack = vec![0u8; 1 << 20];
    let (lock_fd, parent_fd) = (lock.as_raw_fd(), parent_ch.as_raw_fd());
    // SAFETY: ferry is single-threaded here; the child only closes its
    // copies of the lock and of ferry's end of the channel (so both go
    // with this process: a killed create frees the lock, and the init sees
    // EOF and exits) and runs `Init::run`, which execs or exits.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| {
                libc::close(lock_fd);
                libc::close(parent_fd);
                init.take().expect("init runs once").run()
            }),
            &mut stack,
            clone_flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(sys("clone container init"))?;
    // The child owns its copies; ours must close so EOF/ENXIO work.
    drop(init);
    drop(pid_ns);
    undo.pid = Some(pid);
    state.pid = pid.as_raw();
    state.pid_start_time = crate::proc::start_time(pid.as_raw()).unwrap_or(0);
    dir.save(&state)?;

    // An init that vanishes may have been killed for a too small memory limit.
    let lost_with = |e: Error| super::oom::init_lost(&cgroup_desc, linux.resources().as_ref(), e);
    let lost = |e: sync::Error| lost_with(e.into());
    let child_error = |msg: Option<Msg>| -> Error {
        match msg {
            Some(Msg::Failed(f)) => f.into(),
            Some(other) => Error::Init(format!("unexpected message {other:?}")),
            None => lost_with(Error::Init("exited during setup".into())),
        }
    };
    let recv = |ch: &sync::Channel| ch.recv().map_err(lost);

    if new_userns {
        write_id_maps(pid, linux.uid_mappings(), linux.gid_mappings())?;
        parent_ch.send(&Msg::Mapped).map_err(lost)?;
    }
    match recv(&parent_ch)? {
        Some(Msg::NsReady) => {}
        other => return Err(child_error(other)),
    }
    undo.cgroup
        .as_ref()
        .expect("cgroup")
        .add_task(pid.as_raw())?;
    if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(io("oomScoreAdj"))?;
    }
    if let Some(v) = &veth {
        network::create(v, pid.as_raw())?;
        undo.veth = Some(v.clone());
        state.veth = Some(v.clone());
        dir.save(&state)?;
    }
    if state.pid_start_time == 0 {
        return Err(child_error(None));
    }
    let state_json = creating_state_json(&state);
    hooks::run(spec.hooks().as_ref(), Kind::Prestart, &state_json)?;
    hooks::run(spec.hooks().as_ref(), Kind::CreateRuntime, &state_json)?;
    parent_ch
        .send(&Msg::Go {
            state_json,
            cgroup_dirs: cgroup_desc
                .dirs
                .iter()
                .map(|(k, v)| (k.clone(), v.display().to_string()))
                .collect(),
        })
        .map_err(lost)?;
    // A terminal container's init sends its console master first.
    let mut master = None;
    loop {
        match parent_ch.recv_fd().map_err(lost)? {
            (Some(Msg::Console), Some(fd)) => master = Some(fd),
            (Some(Msg::Warning(w)), _) => tracing::warn!(container = %opts.id, "{w}"),
            (Some(Msg::Created), _) => break,
            (other, _) => return Err(child_error(other)),
        }
    }
    if terminal && master.is_none() {
        return Err(Error::Init("the init sent no console".into()));
    }
    if let (Some(m), Some(sock)) = (&master, &opts.console_socket) {
        crate::console::send_fd(sock, m, "/dev/console")?;
    }
    let console = master.filter(|_| relay);
    if let Some(m) = &console {
        crate::console::clear_onlcr(m)?;
    }
    state.stdio = (0..3)
        .map(|fd| crate::proc::fd_target(pid.as_raw(), fd).unwrap_or_default())
        .collect();
    state.creating = false;
    dir.save(&state)?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, pid.as_raw())?;
    }
    undo.armed = false;
    drop(lock);
    Ok(Created {
        container: Container {
            root: root.to_path_buf(),
            dir,
            state,
        },
        console,
    })
}

/// A terminal needs a console socket and a console socket a terminal; the
/// socket must exist before anything is set up.
pub(crate) fn check_console(terminal: bool, socket: Option<&Path>) -> Result<()> {
    match (terminal, socket) {
        (true, None) => Err(Error::Usage(
            "config.json sets process.terminal: pass --console-socket (or set terminal to false)"
                .into(),
        )),
        (false, Some(_)) => Err(Error::Usage(
            "--console-socket needs process.terminal set to true in config.json".into(),
        )),
        (true, Some(sock)) => Ok(crate::console::check_socket(sock)?),
        (false, None) => Ok(()),
    }
}

/// Claims `id` under `root`: its directory is created exclusively, so two
/// commands racing for one ID cannot both win.
pub(crate) fn new_state_dir(root: &Path, id: &str) -> Result<StateDir> {
    std::fs::create_dir_all(root).map_err(io(format!("state root {}", root.display())))?;
    let dir = StateDir::new(root, id);
    dir.create().map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists(id.to_string())
        } else {
            io(format!("creating {}", dir.path.display()))(e)
        }
    })?;
    Ok(dir)
}

/// The state hooks see during create (status "creating").
fn creating_state_json(state: &State) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": state.id,
        "status": "creating",
        "pid": state.pid,
        "bundle": state.bundle,
        "annotations": state.annotations,
    })
    .to_string()
}

fn write_id_maps(
    pid: Pid,
    uid: &Option<Vec<LinuxIdMapping>>,
    gid: &Option<Vec<LinuxIdMapping>>,
) -> Result<()> {
    let fmt = |m: &Option<Vec<LinuxIdMapping>>| {
        m.clone()
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(uid)).map_err(io("writing uid_map"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(gid)).map_err(io("writing gid_map"))?;
    Ok(())
}

/// Writes the pid file atomically, as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io(format!("pid file {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("pid file {}", path.display())))
}

impl Container {
    /// Creates a container (see `CreateOptions`).
    pub fn create(root: &Path, opts: &CreateOptions) -> Result<Created> {
        create(root, opts)
    }
}
