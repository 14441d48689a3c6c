//! The order of the steps from a fresh child to a process ready to exec.
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use oci_spec::runtime::{LinuxSeccomp, Process};

use super::caps::Sets;
use super::{fds, program, user, Failure, Program, Result};

/// First thing in a freshly forked or cloned child: signals ferry blocked
/// must not stay blocked in the container, and no inherited descriptor may
/// survive the exec.
/// `preserve` fds from 3 on are passed to the program (`--preserve-fds`).
pub fn enter(preserve: u32) -> Result<()> {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    fds::mark_cloexec(preserve)
}

/// The session keyring a container's processes join (none with
/// `--no-new-keyring`).
pub struct Keyring {
    pub name: String,
    /// In a user namespace the keyring is made searchable by others.
    pub in_userns: bool,
}

/// A process one exec away from the user program.
pub struct Ready {
    pub program: Program,
    /// Parts of the config the kernel refused and that were left out.
    pub warnings: Vec<String>,
}

/// The last steps before exec, run in the container's namespaces and root:
/// the session keyring, rlimits, the program's lookup (while still privileged), seccomp, the
/// working directory, user and capabilities, no_new_privs.
///
/// The working directory is entered while still privileged, so a user
/// runs in a directory it may not search itself (as with runc); if that
/// fails, it is tried again as the user (a directory only they may search).
///
/// Without no_new_privs a seccomp filter needs CAP_SYS_ADMIN: it is loaded
/// before the capabilities go (as runc does); with it, as late as possible,
/// so that fewer of ferry's own system calls must pass the filter.
pub fn finish(
    process: &Process,
    env: Vec<String>,
    seccomp: Option<&LinuxSeccomp>,
    keyring: Option<&Keyring>,
) -> Result<Ready> {
    if let Some(k) = keyring {
        super::keyring::join(&k.name, k.in_userns)?;
    }
    apply_rlimits(process)?;
    let args = process.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(Failure::new("program", "exec: no command given"));
    };
    let path = program::resolve_program(arg0, &env)?;
    let caps = Sets::of(process)?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(s), false) = (seccomp, nnp) {
        crate::seccomp::load(s).map_err(Failure::at("seccomp"))?;
    }
    let cwd_done = crate::rootfs::chdir_in_root(process.cwd()).is_ok();
    caps.limit_bounding()?;
    user::switch(process.user())?;
    if !cwd_done {
        crate::rootfs::chdir_in_root(process.cwd()).map_err(Failure::at("cwd"))?;
    }
    let warnings = caps.apply()?;
    if nnp {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Failure::sys("no_new_privs", "no_new_privs", e))?;
        if let Some(s) = seccomp {
            crate::seccomp::load(s).map_err(Failure::at("seccomp"))?;
        }
    }
    Ok(Ready {
        program: Program { path, args, env },
        warnings,
    })
}

fn apply_rlimits(process: &Process) -> Result<()> {
    for rl in process.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        let res = crate::spec::rlimit_resource(rl.typ());
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err(Failure::io(
                "rlimits",
                format!("setrlimit {:?} {}/{}", rl.typ(), rl.soft(), rl.hard()),
                &std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}
