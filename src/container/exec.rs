//! `exec`: run another process inside a live container, in its namespaces
//! and cgroup.
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{LinuxSeccomp, Process};

use super::{sys, Container, Error, Result, Status};
use crate::cgroups::clone_into::{child_body, single_threaded, Forked};
use crate::process::{self, Failure};
use crate::sync::{self, Channel, Msg};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// The caller does not wait: the process is left to the nearest
    /// subreaper (conmon, for podman), which then reaps it and reads its
    /// exit status, as with `runc exec --detach`.
    pub detach: bool,
    /// With a terminal and no console socket: the caller relays the
    /// terminal itself and gets its master in [`ExecHandle::console`]; like
    /// runc's, that terminal leaves "\n" alone (the caller's adds "\r").
    pub relay_console: bool,
    /// Exec into a paused container too: the process starts once the
    /// container is resumed.
    pub ignore_paused: bool,
    /// Fds from 3 on that the process gets (runc's `--preserve-fds`).
    pub preserve_fds: u32,
}

/// Namespaces in the order they must be joined (user first, mount last).
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn same_ns(pid: i32, name: &str) -> bool {
    let ino = |p: PathBuf| std::fs::metadata(p).map(|m| m.ino()).ok();
    ino(crate::proc::ns_path(pid, name)) == ino(PathBuf::from(format!("/proc/self/ns/{name}")))
}

/// What the forked child needs to become the exec'd process.
struct ExecChild<'a> {
    joins: Vec<(PathBuf, CloneFlags)>,
    process: &'a Process,
    env: Vec<String>,
    terminal: Option<Terminal>,
    detach: bool,
    seccomp: Option<LinuxSeccomp>,
    preserve_fds: u32,
    keyring: Option<process::Keyring>,
}

impl Container {
    /// Starts the process; returns once it has exec'ed.
    pub fn exec(&self, opts: &ExecOptions) -> Result<ExecHandle> {
        let _span = tracing::info_span!("exec", id = %self.id()).entered();
        let status = self.require(
            &[Status::Created, Status::Running, Status::Paused],
            "exec needs a created or running container",
        )?;
        if status == Status::Paused && !opts.ignore_paused {
            return Err(self.wrong_state(status, "cannot exec in a paused container"));
        }
        check_process(&opts.process)?;
        crate::process::fds::check_preserved(opts.preserve_fds).map_err(Error::PreserveFds)?;
        let terminal = exec_terminal(opts)?;
        let wants_terminal = terminal.is_some();
        let cgroup = self.cgroup_or_err()?;
        let init = self.state.pid;
        let child = ExecChild {
            joins: NAMESPACES
                .iter()
                .filter(|(name, _)| !same_ns(init, name))
                .map(|(name, flag)| (crate::proc::ns_path(init, name), *flag))
                .collect(),
            process: &opts.process,
            env: self.exec_env(&opts.process),
            terminal,
            detach: opts.detach,
            // The container's seccomp filter applies to exec'd processes too.
            seccomp: self
                .state
                .config
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().clone()),
            preserve_fds: opts.preserve_fds,
            // The container's session keyring, joined by name.
            keyring: (!self.state.no_new_keyring).then(|| process::Keyring {
                name: process::keyring::name(self.id()),
                in_userns: crate::spec::has_namespace(
                    &self.state.config,
                    oci_spec::runtime::LinuxNamespaceType::User,
                ),
            }),
        };
        let (parent_ch, child_ch) = sync::pair().map_err(sys("socketpair"))?;
        // Forked into the container's cgroup where the kernel allows, else
        // moved there by the handshake. The relay's code allocates: forked
        // so only without other threads (glibc's fork handlers do not run
        // for this fork).
        let into = match single_threaded() {
            // SAFETY: single-threaded; the child execs or exits.
            true => unsafe { cgroup.fork_into(0) },
            false => None,
        };
        let (relay, placed) = match into {
            Some(Forked::Child) => {
                drop(parent_ch);
                child_body(|| child.run(child_ch))
            }
            Some(Forked::Parent(pid)) => (pid, true),
            None => {
                // SAFETY: single-threaded; the child execs or exits.
                match unsafe { fork() }.map_err(sys("fork"))? {
                    ForkResult::Child => {
                        drop(parent_ch);
                        child_body(|| child.run(child_ch))
                    }
                    ForkResult::Parent { child } => (child, false),
                }
            }
        };
        drop(child_ch);
        tracing::debug!(%relay, placed, "exec relay forked");
        // In a frozen cgroup the process waits for the thaw, however long.
        let timeout = (status != Status::Paused).then_some(super::create::INIT_TIMEOUT);
        let joined = (!placed).then_some(&cgroup);
        let (pid, master) = handshake(&parent_ch, relay, joined, timeout).inspect_err(|_| {
            let _ = nix::sys::signal::kill(relay, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(relay, None);
        })?;
        if wants_terminal && master.is_none() {
            return Err(Error::ExecNoTerminal);
        }
        if let (Some(m), Some(sock)) = (&master, &opts.console_socket) {
            crate::console::send_fd(sock, m, "/dev/ptmx")?;
        }
        if let Some(pf) = &opts.pid_file {
            super::fsutil::write_pid_file(pf, pid.as_raw())?;
        }
        let console = master.filter(|_| opts.console_socket.is_none());
        Ok(ExecHandle {
            relay,
            pid,
            console,
        })
    }

    /// The container's environment with the process's own variables over it.
    fn exec_env(&self, process: &Process) -> Vec<String> {
        let mut env = self
            .state
            .config
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        for kv in process.env().iter().flatten() {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        let mut p = process.clone();
        p.set_env(Some(env));
        process::environment(&p)
    }
}

fn check_process(process: &Process) -> Result<()> {
    if let Some((field, value)) = crate::spec::nul_in_process(process) {
        return Err(Error::NulInProcess { field, value });
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::NoArgs);
    }
    Ok(())
}

/// The terminal for a process that asks for one, to be handed to the
/// console socket or relayed by the caller.
fn exec_terminal(opts: &ExecOptions) -> Result<Option<Terminal>> {
    let terminal = opts.process.terminal().unwrap_or(false);
    if terminal && opts.console_socket.is_none() && opts.relay_console {
        return Ok(Some(Terminal { relayed: true }));
    }
    crate::console::check(
        terminal,
        opts.console_socket.as_deref(),
        "the exec'd process",
    )?;
    Ok(terminal.then_some(Terminal { relayed: false }))
}

/// The process's terminal, made in the container's devpts by the process
/// itself (as runc does), so it has a name there.
struct Terminal {
    relayed: bool,
}

impl Terminal {
    /// In the container, as a session leader: makes the terminal the
    /// controlling one and stdio, and sends the master to the parent.
    fn attach(&self, ch: &Channel, process: &Process) -> process::Result<()> {
        let fail = |e: String| Failure::new("console", format!("console: {e}"));
        let root = crate::rootfs::RootDir::open(std::path::Path::new("/"))
            .map_err(|e| fail(format!("root {e}")))?;
        let (_, master, slave) = process::tty::open_in(&root)?;
        process::tty::size(&master, process)?;
        if self.relayed {
            crate::console::clear_onlcr(&master).map_err(|e| fail(e.to_string()))?;
        }
        process::tty::attach(slave.as_fd())?;
        ch.send_fd(&Msg::Console, &master)?;
        Ok(())
    }
}

/// The parent's side: puts the relay in `cgroup` (unless it was forked
/// there), lets it go on, and waits until the process in the container has
/// exec'ed (its copy of the CLOEXEC channel closes). Returns that process's
/// pid and the master of its terminal, if it has one.
fn handshake(
    ch: &Channel,
    relay: Pid,
    cgroup: Option<&crate::cgroups::Cgroup>,
    timeout: Option<std::time::Duration>,
) -> Result<(Pid, Option<OwnedFd>)> {
    // The process answers at once once it joined the namespaces;
    // a stuck one is killed rather than waited for forever.
    ch.set_recv_timeout(timeout)?;
    // The exec'd process forks again to enter the pid namespace;
    // its cgroup is joined by the first child before anything runs.
    if let Some(cgroup) = cgroup {
        cgroup.add_task(relay.as_raw())?;
    }
    ch.send(&Msg::Go {
        state_json: String::new(),
        cgroup_dirs: Vec::new(),
    })?;
    // The relay's pid and the process's terminal come in either order.
    let (mut pid, mut master) = (None, None);
    loop {
        match ch.recv_fd()? {
            (None, _) => break,
            (Some(Msg::Pid(p)), _) => pid = Some(Pid::from_raw(p)),
            (Some(Msg::Console), Some(fd)) => master = Some(fd),
            (Some(Msg::Warning(w)), _) => tracing::warn!(?pid, "exec: {w}"),
            (Some(Msg::Failed(f)), _) => return Err(f.into()),
            (other, _) => return Err(Error::InitUnexpected(format!("{other:?}"))),
        }
    }
    let pid = pid.ok_or(Error::ExecNoPid)?;
    Ok((pid, master))
}

impl ExecChild<'_> {
    /// Runs in the forked child: joins the namespaces, forks into the pid
    /// namespace and execs; what went wrong goes to the parent.
    fn run(&self, ch: Channel) -> ! {
        let failure = match self.enter(&ch) {
            Err(f) => f,
            Ok(ForkResult::Parent { child }) => relay(ch, child, self.detach),
            Ok(ForkResult::Child) => match self.prepare(&ch) {
                Ok(program) => program.exec(),
                Err(f) => f,
            },
        };
        let _ = ch.send(&Msg::Failed(failure));
        std::process::exit(127);
    }

    /// Waits for the go-ahead, joins the namespaces and forks, so the
    /// child starts in the container's pid namespace.
    fn enter(&self, ch: &Channel) -> process::Result<ForkResult> {
        process::enter(self.preserve_fds)?;
        match ch.recv()? {
            Some(Msg::Go { .. }) => {}
            other => {
                return Err(Failure::new(
                    "sync",
                    format!("exec: no go-ahead: {other:?}"),
                ))
            }
        }
        join(&self.joins)?;
        // SAFETY: single-threaded child.
        unsafe { fork() }.map_err(|e| Failure::sys("namespaces", "fork into pid namespace", e))
    }

    /// In the container's namespaces: the terminal, then the steps every
    /// process of the container goes through.
    fn prepare(&self, ch: &Channel) -> process::Result<process::Program> {
        if let Some(t) = &self.terminal {
            nix::unistd::setsid().map_err(|e| Failure::sys("session", "setsid", e))?;
            t.attach(ch, self.process)?;
        }
        let ready = process::finish(
            self.process,
            self.env.clone(),
            self.seccomp.as_ref(),
            self.keyring.as_ref(),
        )?;
        for w in ready.warnings {
            ch.send(&Msg::Warning(w))?;
        }
        Ok(ready.program)
    }
}

/// Opens every namespace first (the paths are in the host's mount
/// namespace, which joining the container's own hides), then joins them.
fn join(joins: &[(PathBuf, CloneFlags)]) -> process::Result<()> {
    let mut files = Vec::new();
    for (path, flag) in joins {
        let f = std::fs::File::open(path)
            .map_err(|e| Failure::io("namespaces", format!("open {}", path.display()), &e))?;
        files.push((f, *flag, path));
    }
    for (f, flag, path) in &files {
        nix::sched::setns(f, *flag)
            .map_err(|e| Failure::sys("namespaces", format!("join {}", path.display()), e))?;
    }
    Ok(())
}

/// The first child after forking the process into the pid namespace:
/// reports its pid, lets go of the channel (so the parent sees it close on
/// the exec) and exits with the process's status (at once with `detach`,
/// so the subreaper becomes the process's parent).
fn relay(ch: Channel, child: Pid, detach: bool) -> ! {
    let _ = ch.send(&Msg::Pid(child.as_raw()));
    drop(ch);
    if detach {
        std::process::exit(0);
    }
    let code = match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    };
    std::process::exit(code);
}

/// A started exec: `pid` is the process in the container; `relay` is ferry's
/// direct child that forked it into the pid namespace and exits with its
/// status, so waiting for `relay` is waiting for `pid` (without `detach`;
/// with it the relay exits at once).
#[derive(Debug)]
pub struct ExecHandle {
    pub relay: Pid,
    pub pid: Pid,
    /// The terminal's master, for a caller that relays it (`relay_console`).
    pub console: Option<OwnedFd>,
}
