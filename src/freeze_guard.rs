//! A freeze that cannot outlive the ferry process that made it.
//!
//! Before ferry freezes a container for a dump it arms a [`FreezeGuard`]: a
//! small process, forked twice (so nobody has to reap it) into its own
//! session (so a Ctrl-C or a kill of ferry's process group does not reach
//! it), that holds a pidfd of ferry and waits. If ferry hands the freeze
//! back ([`FreezeGuard::disarm`]: thawed again, or frozen on purpose) the
//! guard exits. If ferry dies first, the guard waits for CRIU to exit too
//! (CRIU, when its swrk socket closes, rolls the dump back and writes the
//! freezer state it found, FROZEN, back before it lets go of the
//! processes) and then does what ferry last asked ([`OnDeath`]): thaw the
//! cgroup, kill its processes, or leave it frozen (and run a command that
//! settles it, such as `ferry settle-commit`).
//!
//! It also completes a dump ferry did not live to finish: when CRIU's
//! `stats-dump` (written only after a successful dump) appears in the
//! work directory, the guard removes the image directory's
//! [`INCOMPLETE_MARKER`].
//!
//! The guard runs only system calls prepared before the fork: it does not
//! depend on ferry's threads, allocator or locks.
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroups::Cgroup;

/// Left in an image directory by a dump that has not (yet) completed;
/// `ferry restore` refuses a directory that holds it.
pub const INCOMPLETE_MARKER: &str = "ferry-dump-incomplete";
/// What CRIU writes into its work directory once a dump succeeded.
const CRIU_DUMP_STATS: &str = crate::criu::stats::DUMP_STATS_FILE;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot arm the freeze guard ({op}): {source}; nothing was frozen")]
    Arm {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("cannot use the freezer of cgroup {path}: {why}")]
    Freezer { path: String, why: String },
    #[error("settle command too long for the freeze guard ({len} bytes, {args} arguments; at most {SETTLE_MAX} and {SETTLE_ARGS})")]
    SettleTooLong { len: usize, args: usize },
    #[error("cannot tell the freeze guard (pid {pid}) to {what}: {source}")]
    Control {
        pid: i32,
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the guard does if ferry dies before disarming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeath {
    /// Thaw the cgroup: the processes run on as before the dump.
    Thaw,
    /// Kill every process in the cgroup, then thaw it so they die: the
    /// container runs elsewhere now.
    Kill,
    /// Leave the cgroup frozen: the container may be running elsewhere,
    /// and it must never run twice. The guard then execs the settle
    /// command, if ferry gave one ([`GuardHandle::settle_with`]), or says
    /// so on stderr.
    Hold,
    /// Leave the cgroup as it is: the freeze is not ferry's (the
    /// container was paused before).
    Leave,
}

impl OnDeath {
    fn byte(self) -> u8 {
        match self {
            OnDeath::Thaw => b'T',
            OnDeath::Kill => b'K',
            OnDeath::Hold => b'H',
            OnDeath::Leave => b'L',
        }
    }
}

const DISARM: u8 = b'D';
/// Followed by a little-endian u16 length and that many bytes: the
/// NUL-terminated arguments of the settle command.
const SETTLE: u8 = b'S';
/// Longest settle command: the message must fit one atomic pipe write.
const SETTLE_MAX: usize = libc::PIPE_BUF - 3;
/// Most arguments of a settle command.
const SETTLE_ARGS: usize = 63;

/// A dump's image and work directories, for completing the dump after
/// ferry's death.
#[derive(Debug, Clone)]
pub struct DumpDirs {
    pub images: PathBuf,
    pub work: PathBuf,
}

/// A cgroup's freezer, as files.
#[derive(Debug, Clone)]
pub struct Freezer {
    /// The directory holding `freezer.state` (v1) or `cgroup.freeze` (v2).
    pub dir: PathBuf,
    pub v2: bool,
}

impl Freezer {
    pub fn of(cgroup: &Cgroup) -> Result<Freezer> {
        let desc = cgroup.descriptor();
        let dir = desc.freezer_dir().ok_or_else(|| Error::Freezer {
            path: desc.path.clone(),
            why: "it has no freezer directory on this host".into(),
        })?;
        Ok(Freezer {
            dir: dir.to_path_buf(),
            v2: desc.is_v2(),
        })
    }
}

/// What to guard.
#[derive(Debug)]
pub struct Target<'a> {
    pub freezer: Freezer,
    /// What ferry's death means until told otherwise.
    pub on_death: OnDeath,
    /// The container, for the message of [`OnDeath::Hold`].
    pub id: &'a str,
    /// CRIU's pid: the guard waits for it to exit before acting.
    pub criu: Option<i32>,
    /// Remove [`INCOMPLETE_MARKER`] from `images` once the dump turns out
    /// to have succeeded.
    pub dump: Option<DumpDirs>,
}

/// The armed guard. Dropping it without [`FreezeGuard::disarm`] counts as
/// ferry's death (the guard acts as told).
#[derive(Debug)]
pub struct FreezeGuard {
    ctl: GuardHandle,
}

/// A cloneable way to change what the guard does (for threads other than
/// the one that armed it).
#[derive(Debug, Clone)]
pub struct GuardHandle {
    pipe: Arc<OwnedFd>,
    pid: i32,
}

impl GuardHandle {
    /// From now on, ferry's death means `what`.
    pub fn on_death(&self, what: OnDeath) -> Result<()> {
        self.send(what.byte(), "change what it does")
    }

    /// With [`OnDeath::Hold`]: once ferry and CRIU are gone, the guard
    /// execs `argv` (program first) to settle the held container instead
    /// of only saying that it stays frozen.
    pub fn settle_with(&self, argv: &[std::ffi::OsString]) -> Result<()> {
        let mut body = Vec::new();
        for a in argv {
            let a = a.as_bytes();
            if a.contains(&0) {
                return Err(Error::Control {
                    pid: self.pid,
                    what: "take a settle command",
                    source: std::io::Error::other("an argument holds a NUL byte"),
                });
            }
            body.extend_from_slice(a);
            body.push(0);
        }
        if argv.is_empty() || body.len() > SETTLE_MAX || argv.len() > SETTLE_ARGS {
            return Err(Error::SettleTooLong {
                len: body.len(),
                args: argv.len(),
            });
        }
        let mut msg = vec![SETTLE];
        msg.extend_from_slice(&(body.len() as u16).to_le_bytes());
        msg.extend_from_slice(&body);
        self.write(&msg, "take a settle command")
    }

    /// The guard's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn send(&self, byte: u8, what: &'static str) -> Result<()> {
        self.write(&[byte], what)
    }

    /// One write (atomic: at most PIPE_BUF bytes).
    fn write(&self, msg: &[u8], what: &'static str) -> Result<()> {
        loop {
            match nix::unistd::write(&*self.pipe, msg) {
                Ok(n) if n == msg.len() => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => unreachable!("a pipe write of at most PIPE_BUF bytes is atomic"),
                Err(e) => {
                    return Err(Error::Control {
                        pid: self.pid,
                        what,
                        source: e.into(),
                    })
                }
            }
        }
    }
}

impl FreezeGuard {
    /// Arms a guard that thaws `t.cgroup` if this process dies. Call it
    /// before freezing.
    pub fn arm(t: &Target<'_>) -> Result<FreezeGuard> {
        Self::arm_watching(std::process::id() as i32, t)
    }

    /// Like [`FreezeGuard::arm`], watching process `watch` instead of this
    /// one.
    pub(crate) fn arm_watching(watch: i32, t: &Target<'_>) -> Result<FreezeGuard> {
        let plan = Plan::new(watch, t)?;
        let pid = plan.spawn()?;
        tracing::debug!(guard = pid, freezer = %t.freezer.dir.display(), "freeze guard armed");
        Ok(FreezeGuard {
            ctl: GuardHandle {
                pipe: Arc::new(plan.ctl_w),
                pid,
            },
        })
    }

    pub fn handle(&self) -> GuardHandle {
        self.ctl.clone()
    }

    pub fn on_death(&self, what: OnDeath) -> Result<()> {
        self.ctl.on_death(what)
    }

    /// The freeze is handed back (thawed by ferry, or frozen on purpose):
    /// the guard exits without touching the cgroup.
    pub fn disarm(self) -> Result<()> {
        let r = self.ctl.send(DISARM, "stand down");
        tracing::debug!(guard = self.ctl.pid, "freeze guard disarmed");
        r
    }
}

fn arm_err(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |e| Error::Arm {
        op,
        source: e.into(),
    }
}

fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    crate::proc::pidfd_open(pid)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Freezer {
        path: p.display().to_string(),
        why: "the path holds a NUL byte".into(),
    })
}

fn open_dir(p: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Everything the guard needs, prepared before the fork.
struct Plan {
    watch: OwnedFd,
    criu: Option<OwnedFd>,
    ctl_r: OwnedFd,
    ctl_w: OwnedFd,
    /// cgroup v1 `freezer.state` or v2 `cgroup.freeze`.
    freezer: CString,
    on_death: u8,
    thawed: &'static [u8],
    procs: CString,
    dump: Option<(OwnedFd, OwnedFd)>,
    marker: CString,
    stats: CString,
    hold_message: Vec<u8>,
    dev_null: CString,
}

impl Plan {
    fn new(watch: i32, t: &Target<'_>) -> Result<Plan> {
        let dir = &t.freezer.dir;
        let (file, thawed): (_, &'static [u8]) = if t.freezer.v2 {
            ("cgroup.freeze", b"0")
        } else {
            ("freezer.state", b"THAWED")
        };
        let watch = pidfd_open(watch).map_err(arm_err("pidfd_open of ferry"))?;
        let criu = t
            .criu
            .map(pidfd_open)
            .transpose()
            .map_err(arm_err("pidfd_open of criu"))?;
        let (ctl_r, ctl_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(arm_err("pipe2"))?;
        let dump = match &t.dump {
            Some(d) => Some((
                open_dir(&d.images).map_err(arm_err("open the image directory"))?,
                open_dir(&d.work).map_err(arm_err("open the work directory"))?,
            )),
            None => None,
        };
        let hold_message = format!(
            "ferry: a migration of container {} was interrupted after its commit was sent: \
             it stays frozen here so that it never runs twice; check the destination, then \
             `ferry resume {0}` or `ferry delete -f {0}`\n",
            t.id
        )
        .into_bytes();
        Ok(Plan {
            watch,
            criu,
            ctl_r,
            ctl_w,
            freezer: cstring(&dir.join(file))?,
            on_death: t.on_death.byte(),
            thawed,
            procs: cstring(&dir.join("cgroup.procs"))?,
            dump,
            marker: CString::new(INCOMPLETE_MARKER).expect("no NUL"),
            stats: CString::new(CRIU_DUMP_STATS).expect("no NUL"),
            hold_message,
            dev_null: CString::new("/dev/null").expect("no NUL"),
        })
    }

    /// Forks the guard; returns its pid once it is ready.
    fn spawn(&self) -> Result<i32> {
        // The guard writes its pid here once it is set up.
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(arm_err("pipe2"))?;
        let mut keep = [
            2,
            ready_w.as_raw_fd(),
            self.ctl_r.as_raw_fd(),
            self.watch.as_raw_fd(),
            self.criu.as_ref().map_or(-1, |f| f.as_raw_fd()),
            self.dump.as_ref().map_or(-1, |d| d.0.as_raw_fd()),
            self.dump.as_ref().map_or(-1, |d| d.1.as_raw_fd()),
        ];
        keep.sort_unstable();
        // SAFETY: the children run only async-signal-safe system calls on
        // memory prepared above, then _exit.
        match unsafe { libc::fork() } {
            -1 => Err(arm_err("fork")(nix::errno::Errno::last())),
            0 => unsafe {
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => self.run(&keep, ready_w.as_raw_fd()),
                    _ => libc::_exit(0),
                }
            },
            middle => {
                drop(ready_w);
                let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(middle), None)
                    .map_err(arm_err("waitpid"))?;
                // Its pid, then EOF once it has closed every descriptor
                // it does not keep.
                let mut got = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(ready_r), &mut got)
                    .map_err(|source| Error::Arm { op: "read", source })?;
                match status {
                    nix::sys::wait::WaitStatus::Exited(_, 0) if got.len() == 4 => {
                        Ok(i32::from_ne_bytes([got[0], got[1], got[2], got[3]]))
                    }
                    _ => Err(Error::Arm {
                        op: "fork",
                        source: std::io::Error::other("the guard did not start"),
                    }),
                }
            }
        }
    }
}

mod guard;
#[cfg(test)]
mod tests;
