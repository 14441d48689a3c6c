//! Post-copy's processes on both hosts: CRIU serving the pages of a lazy
//! dump on the source, and CRIU's lazy-pages daemon fetching them on the
//! destination.
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use migrate::mode::LazyPagesPlan;
use migrate::HostError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// CRIU's log of the lazy-pages daemon, in the images directory.
const DAEMON_LOG: &str = "lazy-pages.log";
/// The socket the daemon listens on for the restore, in the images dir.
const DAEMON_SOCKET: &str = "lazy-pages.socket";
/// How long the daemon may take to get ready.
const READY: Duration = Duration::from_secs(30);

/// The pipe CRIU's lazy dump writes a byte to (`status_fd`) once it
/// serves pages.
pub(super) struct StatusPipe {
    read: OwnedFd,
    pub(super) write: OwnedFd,
}

impl StatusPipe {
    pub(super) fn new() -> Result<StatusPipe, HostError> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(StatusPipe { read, write })
    }

    /// Waits up to `timeout` for CRIU's byte.
    pub(super) fn wait(&self, timeout: Duration) -> Result<bool, HostError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        Ok(poll(&mut fds, ms)? > 0)
    }
}

/// The criu processes forked by thread `tid` of this process (the thread
/// that runs a dump).
pub(super) fn criu_children(tid: i32) -> Vec<i32> {
    let path = format!("/proc/self/task/{tid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "criu")
        })
        .collect()
}

/// Stops the lazy dump's CRIU (thread `tid`'s criu): CRIU has no request
/// that stops a page server, and a lazy dump told to roll back at
/// post-dump still starts serving. The tree stays frozen in its cgroup.
pub(super) fn stop_criu(tid: i32) {
    for pid in criu_children(tid) {
        tracing::info!(pid, "stopping the lazy dump's criu");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// CRIU's lazy-pages daemon on the destination, a child of this process
/// that dies with it.
pub(super) struct Daemon {
    child: Child,
    images: PathBuf,
    exit: Option<std::process::ExitStatus>,
    /// Bounds its connection to the source (see criu::page_socket).
    _stream: crate::criu::page_socket::PageSocket,
}

impl Daemon {
    /// Starts `criu lazy-pages` as `plan` says and waits until the restore
    /// can connect to it.
    pub(super) fn spawn(criu: &Path, plan: &LazyPagesPlan) -> Result<Daemon, HostError> {
        let mut cmd = Command::new(criu);
        cmd.args(plan.args())
            .args(["--log-file", DAEMON_LOG, "-v4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. Without its daemon the
        // restored container would read zeroes where pages are missing;
        // should this process die the container is stopped and the
        // daemon goes too.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let stream = crate::criu::page_socket::PageSocket::bound_client(child.id(), plan.port);
        let mut d = Daemon {
            child,
            images: plan.images_dir.clone(),
            exit: None,
            _stream: stream,
        };
        let deadline = Instant::now() + READY;
        while !d.images.join(DAEMON_SOCKET).exists() {
            if let Some(s) = d.child.try_wait()? {
                d.exit = Some(s);
                return Err(d.failed("exited before it was ready").into());
            }
            if Instant::now() > deadline {
                d.stop();
                return Err(format!("criu lazy-pages was not ready after {READY:?}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// `Ok(true)` once it fetched every page and exited, `Ok(false)` while
    /// it runs, an error if it failed.
    pub(super) fn done(&mut self) -> Result<bool, HostError> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        match self.exit {
            None => Ok(false),
            Some(s) if s.success() => Ok(true),
            Some(s) => Err(self.failed(&format!("failed ({s})")).into()),
        }
    }

    fn failed(&self, what: &str) -> String {
        let log = self.images.join(DAEMON_LOG);
        let errors: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Error"))
            .take(3)
            .map(str::to_string)
            .collect();
        format!(
            "criu lazy-pages {what}{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join(" | "))
            }
        )
    }

    pub(super) fn stop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
