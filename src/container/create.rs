//! `create`: a container whose init is set up and waits for `start`.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use super::plan::{Claim, Plan};
use super::{io, sys, Container, Error, Result};
use crate::cgroups::clone_into::{child_body, Forked};
use crate::cgroups::CgroupDescriptor;
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
    /// Fds from 3 on that the container's program gets (runc's
    /// `--preserve-fds`); each must have been passed to ferry.
    pub preserve_fds: u32,
    /// Keep the caller's session keyring instead of a new one per
    /// container (runc's `--no-new-keyring`).
    pub no_new_keyring: bool,
    /// Who makes the container's cgroup (ferry, or systemd as a scope).
    pub cgroup_driver: crate::cgroups::Driver,
}

/// A freshly created container; the caller is the init's parent until it
/// exits, so foreground `run` can wait for it.
pub struct Created {
    pub container: Container,
    /// The terminal's master, for a caller that relays it (`relay_console`).
    pub console: Option<OwnedFd>,
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

pub fn create(root: &Path, opts: &CreateOptions) -> Result<Created> {
    let _span = tracing::info_span!("create", id = %opts.id).entered();
    let plan = Plan::load(&opts.id, &opts.bundle)?;
    let relay = plan.terminal && opts.relay_console && opts.console_socket.is_none();
    if !relay {
        plan.check_console(opts.console_socket.as_deref())?;
    }
    let veth = plan.veth()?;
    let ns = Namespaces::of(&plan.spec);
    if veth.is_some() && !ns.new_net {
        return Err(Error::VethNeedsNetns);
    }
    crate::process::fds::check_preserved(opts.preserve_fds).map_err(Error::PreserveFds)?;
    let no_new_keyring = opts.no_new_keyring;
    let mut claim = plan.claim(root, plan.cgroup(None, opts.cgroup_driver)?, |s| State {
        no_new_keyring,
        ..s
    })?;
    let fifos = make_fifos(&claim.dir)?;
    claim.create_cgroup(plan.resources())?;
    let (pid, channel, placed) = spawn_init(&plan, &claim, &ns, fifos, opts)?;
    claim.rollback.pid = Some(pid.as_raw());
    claim.state.set_init(pid.as_raw());
    claim.save()?;
    let init = InitSetup {
        plan: &plan,
        channel: &channel,
        pid,
        cgroup: claim.cgroup.clone(),
        placed,
    };
    let master = init.run(&mut claim, veth.as_ref(), ns.new_user)?;
    if let (Some(m), Some(sock)) = (&master, &opts.console_socket) {
        crate::console::send_fd(sock, m, "/dev/console")?;
    }
    let console = master.filter(|_| relay);
    if let Some(m) = &console {
        crate::console::clear_onlcr(m)?;
    }
    let (container, _lock) = claim.finish(root, opts.pid_file.as_deref())?;
    Ok(Created { container, console })
}

/// The namespaces of the init: made new (clone flags) or joined.
struct Namespaces {
    clone: CloneFlags,
    /// Joined with setns, a user namespace first.
    join: Vec<(CloneFlags, PathBuf)>,
    /// A pid namespace to create the init in.
    pid: Option<PathBuf>,
    new_user: bool,
    /// Unshared by the init once it is in its cgroup.
    new_cgroup: bool,
    new_uts: bool,
    new_net: bool,
}

impl Namespaces {
    fn of(spec: &Spec) -> Namespaces {
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        let mut clone = CloneFlags::empty();
        let mut join = Vec::new();
        let mut pid = None;
        for ns in &namespaces {
            match ns.path() {
                None => clone |= ns_flag(ns.typ()),
                Some(p) if ns.typ() == LinuxNamespaceType::Pid => pid = Some(p.clone()),
                Some(p) => join.push((ns_flag(ns.typ()), p.clone())),
            }
        }
        // The cgroup namespace is unshared after the init is in its cgroup.
        let new_cgroup = clone.contains(CloneFlags::CLONE_NEWCGROUP);
        clone.remove(CloneFlags::CLONE_NEWCGROUP);
        // A joined user namespace must come first.
        join.sort_by_key(|(f, _)| *f != CloneFlags::CLONE_NEWUSER);
        Namespaces {
            new_user: clone.contains(CloneFlags::CLONE_NEWUSER),
            new_uts: clone.contains(CloneFlags::CLONE_NEWUTS)
                || join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUTS),
            new_net: clone.contains(CloneFlags::CLONE_NEWNET),
            clone,
            join,
            pid,
            new_cgroup,
        }
    }
}

/// Makes the fifos `start` talks through and opens ferry's ends
/// (exec.fifo, exec.done), which the init inherits.
fn make_fifos(dir: &StateDir) -> Result<(OwnedFd, OwnedFd)> {
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
    Ok((open_rw(EXEC_FIFO)?, open_rw(EXEC_DONE)?))
}

/// Clones the container's init in its namespaces (and, where the kernel
/// allows, in its cgroup); returns it, ferry's end of the channel to it and
/// whether it was cloned into its cgroup.
fn spawn_init(
    plan: &Plan,
    claim: &Claim,
    ns: &Namespaces,
    (exec_fifo, exec_done): (OwnedFd, OwnedFd),
    opts: &CreateOptions,
) -> Result<(Pid, sync::Channel, bool)> {
    // setns on a pid namespace applies to the caller's next children: the
    // guard puts ours back once the init is cloned (or on any error).
    let pid_ns = match &ns.pid {
        Some(p) => Some(super::pid_ns::PidNsForChildren::join(p)?),
        None => None,
    };
    let (parent_ch, child_ch) = sync::pair().map_err(sys("socketpair"))?;
    // The init answers at once unless its createContainer hooks run.
    parent_ch.set_recv_timeout(hooks::bound(
        plan.spec.hooks().as_ref(),
        Kind::CreateContainer,
        INIT_TIMEOUT,
    ))?;
    let init = Init {
        spec: plan.spec.clone(),
        rootfs: plan.rootfs.clone(),
        no_pivot: opts.no_pivot,
        channel: child_ch,
        exec_fifo,
        exec_done,
        terminal: plan.terminal,
        join: ns.join.clone(),
        new_userns: ns.new_user,
        new_cgroupns: ns.new_cgroup,
        new_utsns: ns.new_uts,
        preserve_fds: opts.preserve_fds,
        keyring: (!opts.no_new_keyring).then(|| crate::process::Keyring {
            name: crate::process::keyring::name(&opts.id),
            in_userns: ns.new_user || ns.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER),
        }),
    };
    let mut init = Some(init);
    let (lock_fd, parent_fd) = (claim.lock.as_raw_fd(), parent_ch.as_raw_fd());
    // SAFETY (both clones): ferry is single-threaded here; the child only
    // closes its copies of the lock and of ferry's end of the channel (so
    // both go with this process: a killed create frees the lock, and the
    // init sees EOF and exits) and runs `Init::run`, which execs or exits.
    let mut in_child = || -> ! {
        unsafe {
            libc::close(lock_fd);
            libc::close(parent_fd);
        }
        let init = init.take().expect("init runs once");
        child_body(|| init.run())
    };
    // SAFETY: see above.
    let (pid, placed) = match unsafe { claim.made_cgroup().fork_into(ns.clone.bits()) } {
        Some(Forked::Child) => in_child(),
        Some(Forked::Parent(pid)) => (pid, true),
        None => {
            let mut stack = vec![0u8; 1 << 20];
            // SAFETY: see above.
            let pid = unsafe {
                nix::sched::clone(
                    Box::new(|| in_child()),
                    &mut stack,
                    ns.clone,
                    Some(libc::SIGCHLD),
                )
            }
            .map_err(sys("clone container init"))?;
            (pid, false)
        }
    };
    tracing::debug!(%pid, placed, "container init cloned");
    // The child owns its copies; ours must close so EOF/ENXIO work.
    drop(init);
    drop(pid_ns);
    Ok((pid, parent_ch, placed))
}

/// ferry's side of the init's setup, step by step over the channel.
struct InitSetup<'a> {
    plan: &'a Plan,
    channel: &'a sync::Channel,
    pid: Pid,
    /// Where the kernel counts OOM kills.
    cgroup: CgroupDescriptor,
    /// The init was cloned into its cgroup: no move needed.
    placed: bool,
}

impl InitSetup<'_> {
    /// Maps ids, puts the init in its cgroup, makes the veth, runs the
    /// prestart and createRuntime hooks, then lets the init finish; returns
    /// the console master of a terminal container.
    fn run(
        &self,
        claim: &mut Claim,
        veth: Option<&VethConfig>,
        new_userns: bool,
    ) -> Result<Option<OwnedFd>> {
        let pid = self.pid;
        let linux = self.plan.spec.linux().clone().unwrap_or_default();
        if new_userns {
            write_id_maps(pid, linux.uid_mappings(), linux.gid_mappings())?;
            self.channel.send(&Msg::Mapped).map_err(|e| self.lost(e))?;
        }
        match self.channel.recv().map_err(|e| self.lost(e))? {
            Some(Msg::NsReady) => {}
            other => return Err(self.child_error(other)),
        }
        if !self.placed {
            claim.made_cgroup().add_task(pid.as_raw())?;
        }
        if let Some(adj) = self
            .plan
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.oom_score_adj())
        {
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                .map_err(io("oomScoreAdj"))?;
        }
        if let Some(v) = veth {
            network::create(v, pid.as_raw())?;
            claim.rollback.veth = Some(v.clone());
            claim.state.veth = Some(v.clone());
            claim.save()?;
        } else if Namespaces::of(&self.plan.spec).new_net {
            // As runc: a new network namespace gets `lo` up.
            network::loopback_up(pid.as_raw())?;
        }
        if claim.state.pid_start_time == 0 {
            return Err(self.child_error(None));
        }
        let state_json = claim.state.creating_json(pid.as_raw());
        let hooks = self.plan.spec.hooks().as_ref();
        hooks::run(hooks, Kind::Prestart, &state_json)?;
        hooks::run(hooks, Kind::CreateRuntime, &state_json)?;
        let cgroup_dirs = self
            .cgroup
            .dirs
            .iter()
            .map(|(k, v)| (k.clone(), v.display().to_string()))
            .collect();
        self.channel
            .send(&Msg::Go {
                state_json,
                cgroup_dirs,
            })
            .map_err(|e| self.lost(e))?;
        self.wait_created()
    }

    /// Waits for the init's last word; a terminal container's init sends
    /// its console master first.
    fn wait_created(&self) -> Result<Option<OwnedFd>> {
        let mut master = None;
        loop {
            match self.channel.recv_fd().map_err(|e| self.lost(e))? {
                (Some(Msg::Console), Some(fd)) => master = Some(fd),
                (Some(Msg::Warning(w)), _) => tracing::warn!(container = %self.plan.id, "{w}"),
                (Some(Msg::Created), _) => break,
                (other, _) => return Err(self.child_error(other)),
            }
        }
        if self.plan.terminal && master.is_none() {
            return Err(Error::NoConsole);
        }
        Ok(master)
    }

    /// An init that vanishes may have been killed for a too small memory
    /// limit.
    fn lost(&self, e: sync::Error) -> Error {
        self.lost_with(e.into())
    }

    fn lost_with(&self, e: Error) -> Error {
        super::oom::init_lost(&self.cgroup, self.plan.resources(), e)
    }

    fn child_error(&self, msg: Option<Msg>) -> Error {
        match msg {
            Some(Msg::Failed(f)) => f.into(),
            Some(other) => Error::InitUnexpected(format!("{other:?}")),
            None => self.lost_with(Error::InitExited),
        }
    }
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

impl Container {
    /// Creates a container (see `CreateOptions`).
    pub fn create(root: &Path, opts: &CreateOptions) -> Result<Created> {
        create(root, opts)
    }
}
