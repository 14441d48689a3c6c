//! The container's init process between clone and exec: joins namespaces,
//! builds the rootfs, drops privileges, waits for `start`, runs the user
//! program. Errors travel to `ferry create` over the sync channel (before
//! start) or the exec.done fifo (after); this code never returns.
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{sethostname, setsid, Gid, Uid};
use oci_spec::runtime::Spec;

use crate::process::{self, Failure, Result};
use crate::rootfs::mountfd::MountFd;
use crate::rootfs::{self, RootDir, Setup};
use crate::sync::{Channel, Msg};

pub struct Init {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub no_pivot: bool,
    pub channel: Channel,
    /// Opened O_RDWR: the init blocks reading it until `start` writes.
    pub exec_fifo: OwnedFd,
    /// Opened O_RDWR|O_CLOEXEC: closed by a successful exec, so `start` sees
    /// EOF; an exec failure writes the reason into it first.
    pub exec_done: OwnedFd,
    /// process.terminal: the init makes its console in the container's own
    /// devpts and sends the master to the parent.
    pub terminal: bool,
    /// Namespaces to join by path, in order.
    pub join: Vec<(CloneFlags, PathBuf)>,
    pub new_userns: bool,
    pub new_cgroupns: bool,
    pub new_utsns: bool,
    /// Fds from 3 on passed to the program (`--preserve-fds`).
    pub preserve_fds: u32,
    /// The session keyring to join (none with `--no-new-keyring`).
    pub keyring: Option<process::Keyring>,
}

/// What the parent sends with its go-ahead.
struct Go {
    state_json: String,
    cgroup_dirs: Vec<(String, String)>,
}

impl Init {
    /// Entry point in the cloned child.
    pub fn run(mut self) -> ! {
        let (program, state_json) = match self.setup() {
            Ok(ready) => ready,
            Err(failure) => {
                let _ = self.channel.send(&Msg::Failed(failure));
                std::process::exit(1);
            }
        };
        let _ = self.channel.send(&Msg::Created);
        drop(self.channel);
        let mut done = std::fs::File::from(self.exec_done);
        let mut fifo = std::fs::File::from(self.exec_fifo);
        let mut byte = [0u8; 1];
        loop {
            match fifo.read(&mut byte) {
                Ok(1) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => std::process::exit(1),
            }
        }
        drop(fifo);
        if let Err(e) = crate::hooks::run(
            self.spec.hooks().as_ref(),
            crate::hooks::Kind::StartContainer,
            &state_json,
        ) {
            let _ = done.write_all(e.to_string().as_bytes());
            std::process::exit(1);
        }
        let failure = program.exec();
        let _ = done.write_all(failure.message.as_bytes());
        std::process::exit(127);
    }

    /// Everything up to the exec; returns the program and the state the
    /// startContainer hooks get.
    fn setup(&mut self) -> Result<(process::Program, String)> {
        process::enter(self.preserve_fds)?;
        let go = self.namespaces()?;
        setsid().map_err(|e| Failure::sys("session", "setsid", e))?;
        if self.new_utsns {
            self.set_names()?;
        }
        let setup = Setup {
            spec: &self.spec,
            rootfs: &self.rootfs,
            cgroup_dirs: &go.cgroup_dirs,
            in_userns: self.new_userns,
        };
        setup.prepare().map_err(Failure::at("rootfs"))?;
        if self.terminal {
            self.console()?;
        }
        crate::hooks::run(
            self.spec.hooks().as_ref(),
            crate::hooks::Kind::CreateContainer,
            &go.state_json,
        )
        .map_err(|e| Failure::new("hooks", e.to_string()))?;
        rootfs::enter(&self.rootfs, self.no_pivot).map_err(Failure::at("rootfs"))?;
        // Sysctls go in before /proc/sys becomes read-only (as runc does).
        crate::sysctl::apply(&self.spec).map_err(Failure::at("sysctl"))?;
        rootfs::finish(&self.spec).map_err(Failure::at("rootfs"))?;
        let p = self.spec.process().clone().unwrap_or_default();
        let seccomp = self.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let ready = process::finish(
            &p,
            process::environment(&p),
            seccomp.as_ref(),
            self.keyring.as_ref(),
        )?;
        for w in ready.warnings {
            self.channel.send(&Msg::Warning(w))?;
        }
        Ok((ready.program, go.state_json))
    }

    /// Becomes root of a new user namespace, joins the configured
    /// namespaces, waits for the parent's go-ahead (it puts the init in its
    /// cgroup meanwhile), then unshares the cgroup namespace.
    fn namespaces(&self) -> Result<Go> {
        if self.new_userns {
            match self.channel.recv()? {
                Some(Msg::Mapped) => {}
                other => {
                    let m = format!("expected uid/gid maps, got {other:?}");
                    return Err(Failure::new("sync", m));
                }
            }
            let (uid, gid) = (Uid::from_raw(0), Gid::from_raw(0));
            nix::unistd::setresgid(gid, gid, gid)
                .map_err(|e| Failure::sys("user namespace", "setresgid 0 in user namespace", e))?;
            nix::unistd::setresuid(uid, uid, uid)
                .map_err(|e| Failure::sys("user namespace", "setresuid 0 in user namespace", e))?;
        }
        for (flag, path) in &self.join {
            let f = std::fs::File::open(path).map_err(|e| {
                Failure::io(
                    "namespaces",
                    format!("open namespace {}", path.display()),
                    &e,
                )
            })?;
            setns(&f, *flag).map_err(|e| {
                Failure::sys(
                    "namespaces",
                    format!("join namespace {}", path.display()),
                    e,
                )
            })?;
        }
        self.channel.send(&Msg::NsReady)?;
        let go = match self.channel.recv()? {
            Some(Msg::Go {
                state_json,
                cgroup_dirs,
            }) => Go {
                state_json,
                cgroup_dirs,
            },
            Some(Msg::Failed(f)) => return Err(f),
            other => {
                let m = format!("expected go-ahead, got {other:?}");
                return Err(Failure::new("sync", m));
            }
        };
        if self.new_cgroupns {
            unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| Failure::sys("namespaces", "unshare cgroup namespace", e))?;
        }
        Ok(go)
    }

    /// hostname and domainname, in a UTS namespace of the container's own.
    fn set_names(&self) -> Result<()> {
        if let Some(h) = self.spec.hostname() {
            sethostname(h).map_err(|e| Failure::sys("hostname", format!("sethostname {h}"), e))?;
        }
        if let Some(d) = self.spec.domainname() {
            let c = CString::new(d.as_str())
                .map_err(|_| Failure::new("hostname", "domainname has a NUL"))?;
            // SAFETY: valid C string and length.
            if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                return Err(Failure::sys("hostname", "setdomainname", Errno::last()));
            }
        }
        Ok(())
    }

    /// Opens a pty in the container's own devpts (as runc does, so the
    /// console belongs to the container and CRIU can restore it), binds the
    /// slave onto /dev/console, makes it the controlling terminal and stdio,
    /// and sends the master to the parent.
    fn console(&self) -> Result<()> {
        let fail = |m: String| Failure::new("console", format!("console: {m}"));
        let root = RootDir::open(&self.rootfs).map_err(|e| fail(format!("rootfs {e}")))?;
        let (n, master, slave) = process::tty::open_in(&root)?;
        if let Some(p) = self.spec.process() {
            process::tty::size(&master, p)?;
        }
        // The slave itself is bound onto /dev/console (no path to it).
        let console = root
            .create_file(Path::new("/dev/console"), 0o666)
            .map_err(|e| fail(e.to_string()))?;
        MountFd::clone_fd(slave.as_fd(), false)
            .and_then(|t| t.attach(console.as_fd()))
            .map_err(|e| {
                let what = format!("console: bind-mounting /dev/pts/{n} to /dev/console");
                Failure::sys("console", what, e)
            })?;
        process::tty::attach(slave.as_fd())?;
        self.channel.send_fd(&Msg::Console, &master)?;
        Ok(())
    }
}
