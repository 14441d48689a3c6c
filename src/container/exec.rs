//! `exec`: run another process inside a live container, in its namespaces
//! and cgroup.
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Process;

use super::{sys, Container, Error, Result, Status};
use crate::sync::{self, Msg};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// The caller does not wait: the process is left to the nearest
    /// subreaper (conmon, for podman), which then reaps it and reads its
    /// exit status, as with `runc exec --detach`.
    pub detach: bool,
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

impl Container {
    /// Starts the process; returns once it has exec'ed.
    pub fn exec(&self, opts: &ExecOptions) -> Result<ExecHandle> {
        let _span = tracing::info_span!("exec", id = %self.id()).entered();
        self.require(
            &[Status::Created, Status::Running],
            "exec needs a created or running container",
        )?;
        if let Some((field, value)) = crate::spec::nul_in_process(&opts.process) {
            return Err(Error::NulInProcess { field, value });
        }
        if opts.process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::NoArgs);
        }
        let terminal = opts.process.terminal().unwrap_or(false);
        crate::console::check(
            terminal,
            opts.console_socket.as_deref(),
            "the exec'd process",
        )?;
        let pty = match terminal {
            true => Some(crate::console::open_pty()?),
            false => None,
        };
        let init = self.state.pid;
        let joins: Vec<(PathBuf, CloneFlags)> = NAMESPACES
            .iter()
            .filter(|(name, _)| !same_ns(init, name))
            .map(|(name, flag)| (crate::proc::ns_path(init, name), *flag))
            .collect();
        let cgroup = self.cgroup_or_err()?;
        let env = {
            let mut p = opts.process.clone();
            let mut env = self
                .state
                .config
                .process()
                .as_ref()
                .and_then(|p| p.env().clone())
                .unwrap_or_default();
            for kv in p.env().clone().unwrap_or_default() {
                let key = kv.split('=').next().unwrap_or_default().to_string();
                env.retain(|e| e.split('=').next() != Some(key.as_str()));
                env.push(kv);
            }
            p.set_env(Some(env));
            crate::init::environment(&p)
        };
        // The container's seccomp filter applies to exec'd processes too.
        let seccomp = self
            .state
            .config
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        let (parent_ch, child_ch) = sync::pair().map_err(sys("socketpair"))?;
        // SAFETY: single-threaded; the child execs or exits.
        match unsafe { fork() }.map_err(sys("fork"))? {
            ForkResult::Child => {
                drop(parent_ch);
                let err = exec_child(
                    &child_ch,
                    &joins,
                    &opts.process,
                    &env,
                    pty.as_ref(),
                    opts.detach,
                    seccomp.as_ref(),
                );
                let _ = child_ch.send(&Msg::Failed(err));
                std::process::exit(127);
            }
            ForkResult::Parent { child } => {
                drop(child_ch);
                let fail = |e: Error| {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    e
                };
                // The process answers at once once it joined the namespaces;
                // a stuck one is killed rather than waited for forever.
                parent_ch
                    .set_recv_timeout(Some(super::create::INIT_TIMEOUT))
                    .map_err(|e| fail(Error::InitLost(e)))?;
                // The exec'd process forks again to enter the pid namespace;
                // its cgroup is joined by the first child before anything runs.
                if let Err(e) = cgroup.add_task(child.as_raw()) {
                    return Err(fail(e.into()));
                }
                parent_ch
                    .send(&Msg::Go {
                        state_json: String::new(),
                        cgroup_dirs: Vec::new(),
                    })
                    .map_err(|e| fail(Error::InitLost(e)))?;
                let pid = match parent_ch.recv() {
                    Ok(Some(Msg::Pid(pid))) => Pid::from_raw(pid),
                    Ok(Some(Msg::Failed(m))) => return Err(fail(Error::Init(m))),
                    other => return Err(fail(Error::InitUnexpected(format!("{other:?}")))),
                };
                // Wait for the grandchild's exec (its CLOEXEC channel closes).
                match parent_ch.recv() {
                    Ok(None) => {}
                    Ok(Some(Msg::Failed(m))) => return Err(fail(Error::Init(m))),
                    other => return Err(fail(Error::InitUnexpected(format!("{other:?}")))),
                }
                if let (Some(p), Some(sock)) = (&pty, &opts.console_socket) {
                    crate::console::send_fd(sock, &p.master, &p.name)?;
                }
                if let Some(pf) = &opts.pid_file {
                    super::fsutil::write_pid_file(pf, pid.as_raw())?;
                }
                Ok(ExecHandle { relay: child, pid })
            }
        }
    }
}

/// A started exec: `pid` is the process in the container; `relay` is ferry's
/// direct child that forked it into the pid namespace and exits with its
/// status, so waiting for `relay` is waiting for `pid` (without `detach`;
/// with it the relay exits at once).
#[derive(Debug, Clone, Copy)]
pub struct ExecHandle {
    pub relay: Pid,
    pub pid: Pid,
}

/// Runs in the forked child: joins the namespaces, forks into the pid
/// namespace and execs. Returns only an error text.
fn exec_child(
    ch: &sync::Channel,
    joins: &[(PathBuf, CloneFlags)],
    process: &Process,
    env: &[String],
    pty: Option<&crate::console::Pty>,
    detach: bool,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> String {
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    if let Err(e) = crate::init::mark_fds_cloexec() {
        return e;
    }
    match ch.recv() {
        Ok(Some(Msg::Go { .. })) => {}
        other => return format!("exec: no go-ahead: {other:?}"),
    }
    let mut files = Vec::new();
    for (path, flag) in joins {
        match std::fs::File::open(path) {
            Ok(f) => files.push((f, *flag, path.clone())),
            Err(e) => return format!("open {}: {e}", path.display()),
        }
    }
    for (f, flag, path) in &files {
        if let Err(e) = nix::sched::setns(f, *flag) {
            return format!("join {}: {e}", path.display());
        }
    }
    drop(files);
    // SAFETY: single-threaded child.
    match unsafe { fork() } {
        Err(e) => format!("fork into pid namespace: {e}"),
        Ok(ForkResult::Parent { child }) => {
            let _ = ch.send(&Msg::Pid(child.as_raw()));
            if detach {
                // Orphan the process so the subreaper becomes its parent.
                std::process::exit(0);
            }
            // Relay the exit status; keep the channel open only in the child.
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 255,
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Child) => {
            if let Some(p) = pty {
                if let Err(e) = nix::unistd::setsid() {
                    return format!("setsid: {e}");
                }
                // SAFETY: TIOCSCTTY on our pty slave.
                unsafe {
                    libc::ioctl(
                        std::os::fd::AsRawFd::as_raw_fd(&p.slave),
                        libc::TIOCSCTTY,
                        0,
                    )
                };
                for fd in 0..3 {
                    // SAFETY: duplicating our own pty slave onto stdio.
                    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&p.slave), fd) } < 0 {
                        return format!("dup2 pty: {}", std::io::Error::last_os_error());
                    }
                }
            }
            let args = process.args().clone().unwrap_or_default();
            if args.is_empty() {
                return "exec: no command given".into();
            }
            let program = match crate::init::resolve_program(&args[0], env) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let nnp = process.no_new_privileges().unwrap_or(false);
            if let (Some(s), false) = (seccomp, nnp) {
                if let Err(e) = crate::seccomp::load(s) {
                    return e;
                }
            }
            if let Err(e) = crate::init::set_user_and_caps(process) {
                return e;
            }
            if let Err(e) = crate::rootfs::chdir_in_root(process.cwd()) {
                return e;
            }
            if nnp {
                if let Err(e) = nix::sys::prctl::set_no_new_privs() {
                    return format!("no_new_privs: {e}");
                }
                if let Some(s) = seccomp {
                    if let Err(e) = crate::seccomp::load(s) {
                        return e;
                    }
                }
            }
            crate::init::Exec {
                program,
                args,
                env: env.to_vec(),
                state_json: String::new(),
            }
            .exec()
        }
    }
}
