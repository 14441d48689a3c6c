//! The container's init process between clone and exec: joins namespaces,
//! builds the rootfs, drops privileges, waits for `start`, runs the user
//! program. Errors travel to `ferry create` over the sync channel (before
//! start) or the exec.done fifo (after); this code never returns.
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{sethostname, setsid, Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, Spec};

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
}

type Result<T> = std::result::Result<T, String>;

impl Init {
    /// Opens a pty in the container's own devpts (as runc does, so the
    /// console belongs to the container and CRIU can restore it), binds the
    /// slave onto /dev/console, makes it the controlling terminal and stdio,
    /// and sends the master to the parent.
    fn console(&self) -> Result<()> {
        let err = |what: &str| format!("console: {what}: {}", std::io::Error::last_os_error());
        let root = RootDir::open(&self.rootfs).map_err(|e| format!("console: rootfs {e}"))?;
        let master: OwnedFd = root
            .open_file(
                Path::new("/dev/pts/ptmx"),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
            .map_err(|e| format!("console: {e} (is devpts mounted with newinstance?)"))?
            .into();
        // SAFETY: plain ioctl calls on descriptors this function owns.
        unsafe {
            let unlock: libc::c_int = 0;
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
                return Err(err("unlock pty"));
            }
            let mut n: libc::c_uint = 0;
            if libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) != 0 {
                return Err(err("pty number"));
            }
            let slave = libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY,
            );
            if slave < 0 {
                return Err(err("open pty slave"));
            }
            let slave = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave);
            // The slave itself is bound onto /dev/console (no path to it).
            let console = root
                .create_file(Path::new("/dev/console"), 0o666)
                .map_err(|e| format!("console: {e}"))?;
            MountFd::clone_fd(slave.as_fd(), false)
                .and_then(|t| t.attach(console.as_fd()))
                .map_err(|e| format!("console: bind-mounting /dev/pts/{n} to /dev/console: {e}"))?;
            if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
                return Err(err("set controlling terminal"));
            }
            for fd in 0..3 {
                if libc::dup2(slave.as_raw_fd(), fd) < 0 {
                    return Err(err("dup2 pty"));
                }
            }
            self.channel.send_fd(&Msg::Console, &master)?;
        }
        Ok(())
    }
}

impl Init {
    /// Entry point in the cloned child.
    pub fn run(mut self) -> ! {
        let exec = match self.setup() {
            Ok(exec) => exec,
            Err(msg) => {
                let _ = self.channel.send(&Msg::Failed(msg));
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
        let state_json = exec.state_json.clone();
        if let Err(e) = crate::hooks::run(
            self.spec.hooks().as_ref(),
            crate::hooks::Kind::StartContainer,
            &state_json,
        ) {
            let _ = done.write_all(e.to_string().as_bytes());
            std::process::exit(1);
        }
        let err = exec.exec();
        let _ = done.write_all(err.as_bytes());
        std::process::exit(127);
    }

    fn setup(&mut self) -> Result<Exec> {
        // Signals blocked by the parent must not stay blocked in the container.
        let _ =
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        mark_fds_cloexec()?;
        if self.new_userns {
            match self.channel.recv()? {
                Some(Msg::Mapped) => {}
                other => return Err(format!("expected uid/gid maps, got {other:?}")),
            }
            nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .map_err(|e| format!("setresgid 0 in user namespace: {e}"))?;
            nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .map_err(|e| format!("setresuid 0 in user namespace: {e}"))?;
        }
        for (flag, path) in &self.join {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
            setns(&f, *flag).map_err(|e| format!("join namespace {}: {e}", path.display()))?;
        }
        self.channel.send(&Msg::NsReady)?;
        let (state_json, cgroup_dirs) = match self.channel.recv()? {
            Some(Msg::Go {
                state_json,
                cgroup_dirs,
            }) => (state_json, cgroup_dirs),
            Some(Msg::Failed(m)) => return Err(m),
            other => return Err(format!("expected go-ahead, got {other:?}")),
        };
        if self.new_cgroupns {
            unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("unshare cgroup namespace: {e}"))?;
        }
        setsid().map_err(|e| format!("setsid: {e}"))?;
        if self.new_utsns {
            if let Some(h) = self.spec.hostname() {
                sethostname(h).map_err(|e| format!("sethostname {h}: {e}"))?;
            }
            if let Some(d) = self.spec.domainname() {
                let c = CString::new(d.as_str()).map_err(|_| "domainname has a NUL".to_string())?;
                // SAFETY: valid C string and length.
                if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                    return Err(format!(
                        "setdomainname: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
        let setup = Setup {
            spec: &self.spec,
            rootfs: &self.rootfs,
            cgroup_dirs: &cgroup_dirs,
            in_userns: self.new_userns,
        };
        setup.prepare()?;
        if self.terminal {
            self.console()?;
        }
        crate::hooks::run(
            self.spec.hooks().as_ref(),
            crate::hooks::Kind::CreateContainer,
            &state_json,
        )
        .map_err(|e| e.to_string())?;
        rootfs::enter(&self.rootfs, self.no_pivot)?;
        // Sysctls go in before /proc/sys becomes read-only (as runc does).
        crate::sysctl::apply(&self.spec)?;
        rootfs::finish(&self.spec)?;
        let process = self.spec.process().clone().unwrap_or_default();
        apply_rlimits(&process)?;
        let env = environment(&process);
        let args = process.args().clone().unwrap_or_default();
        let program = resolve_program(&args[0], &env)?;
        let seccomp = self.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let nnp = process.no_new_privileges().unwrap_or(false);
        // Without no_new_privs a filter needs CAP_SYS_ADMIN: load it before
        // the capabilities go (as runc does); with it, as late as possible.
        if let (Some(s), false) = (&seccomp, nnp) {
            crate::seccomp::load(s)?;
        }
        set_user_and_caps(&process)?;
        rootfs::chdir_in_root(process.cwd())?;
        if nnp {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
            if let Some(s) = &seccomp {
                crate::seccomp::load(s)?;
            }
        }
        Ok(Exec {
            program,
            args,
            env,
            state_json,
        })
    }
}

/// The user program, resolved and ready to exec.
pub struct Exec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub state_json: String,
}

impl Exec {
    /// Replaces this process; returns only the error text. A NUL byte in
    /// an argument is an error, never a silently emptied argument.
    pub fn exec(&self) -> String {
        let cstrs = |what: &str, v: &[String]| -> Result<Vec<CString>> {
            v.iter()
                .enumerate()
                .map(|(i, s)| {
                    CString::new(s.as_str())
                        .map_err(|_| format!("{what}[{i}] {s:?} contains a NUL byte"))
                })
                .collect()
        };
        let prepared = (|| -> Result<_> {
            let program = CString::new(self.program.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("program {} contains a NUL byte", self.program.display()))?;
            Ok((
                program,
                cstrs("args", &self.args)?,
                cstrs("env", &self.env)?,
            ))
        })();
        let (program, args, env) = match prepared {
            Ok(p) => p,
            Err(e) => return e,
        };
        let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
        format!("exec {}: {err}", self.program.display())
    }
}

/// Every inherited fd above stderr gets CLOEXEC so nothing leaks into the
/// user program; ferry's own fds already have it. Kernels before 5.11 lack
/// CLOSE_RANGE_CLOEXEC: there each fd listed in /proc/self/fd is marked.
pub fn mark_fds_cloexec() -> Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let why = std::io::Error::last_os_error();
    let fds = open_fds().map_err(|e| format!("close_range failed ({why}) and /proc/self/fd cannot be listed ({e}): inherited descriptors would leak into the container"))?;
    set_cloexec(&fds)
}

/// The descriptors above stderr, from /proc/self/fd.
fn open_fds() -> std::io::Result<Vec<i32>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect())
}

fn set_cloexec(fds: &[i32]) -> Result<()> {
    for &fd in fds {
        // SAFETY: only the descriptor flags change; fds that closed since
        // the listing (the directory's own) answer EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBADF) {
                return Err(format!("marking fd {fd} close-on-exec: {e}"));
            }
        }
    }
    Ok(())
}

pub fn environment(process: &oci_spec::runtime::Process) -> Vec<String> {
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = if process.user().uid() == 0 {
            "/root"
        } else {
            "/"
        };
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds `arg0` in the container's PATH, like execvp would.
pub fn resolve_program(arg0: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("exec {arg0}: no such executable in the container"))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| executable(p))
        .ok_or_else(|| format!("exec {arg0}: executable file not found in $PATH ({path})"))
}

fn apply_rlimits(process: &oci_spec::runtime::Process) -> Result<()> {
    for rl in process.rlimits().clone().unwrap_or_default() {
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        let res = crate::spec::rlimit_resource(rl.typ());
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err(format!(
                "setrlimit {:?} {}/{}: {}",
                rl.typ(),
                rl.soft(),
                rl.hard(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn cap_set(set: &Option<oci_spec::runtime::Capabilities>) -> Result<caps::CapsHashSet> {
    let mut out = caps::CapsHashSet::new();
    for c in set.clone().unwrap_or_default() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.insert(
            caps::Capability::from_str(&name).map_err(|_| format!("unknown capability {name}"))?,
        );
    }
    Ok(out)
}

/// Drops the bounding set, switches user keeping capabilities, then sets the
/// configured capability sets.
pub fn set_user_and_caps(process: &oci_spec::runtime::Process) -> Result<()> {
    let capabilities = process.capabilities().clone().unwrap_or_else(|| {
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(Default::default()));
        c.set_effective(Some(Default::default()));
        c.set_permitted(Some(Default::default()));
        c.set_inheritable(Some(Default::default()));
        c.set_ambient(Some(Default::default()));
        c
    });
    let bounding = cap_set(capabilities.bounding())?;
    let known = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for c in known.difference(&bounding) {
        caps::drop(None, caps::CapSet::Bounding, *c)
            .map_err(|e| format!("drop bounding {c}: {e}"))?;
    }
    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    let permitted = cap_set(capabilities.permitted())?;
    let effective = cap_set(capabilities.effective())?;
    let inheritable = cap_set(capabilities.inheritable())?;
    let ambient = cap_set(capabilities.ambient())?;
    // capset needs effective ⊆ permitted at every step: shrink effective first.
    caps::set(None, caps::CapSet::Effective, &effective)
        .map_err(|e| format!("effective caps: {e}"))?;
    caps::set(None, caps::CapSet::Inheritable, &inheritable)
        .map_err(|e| format!("inheritable caps: {e}"))?;
    caps::set(None, caps::CapSet::Permitted, &permitted)
        .map_err(|e| format!("permitted caps: {e}"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| format!("ambient caps: {e}"))?;
    for c in ambient {
        caps::raise(None, caps::CapSet::Ambient, c).map_err(|e| format!("ambient {c}: {e}"))?;
    }
    Ok(())
}

/// Writes `data` to `fd` ignoring errors (used for status reports).
pub fn write_all_fd(fd: &OwnedFd, data: &[u8]) {
    let _ = nix::unistd::write(fd, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_marks_inherited_fds_close_on_exec() {
        // SAFETY: a plain open without O_CLOEXEC, closed below.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(fd > 2);
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        // Only this fd is changed: the test harness's own must stay as they are.
        assert!(open_fds().unwrap().contains(&fd));
        set_cloexec(&[fd]).unwrap();
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        unsafe { libc::close(fd) };
    }
}
