//! One `criu swrk` process and the SOCK_SEQPACKET conversation with it.
use std::ffi::CString;
use std::fs::File;
use std::io::{IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use protobuf::Message;
use tracing::debug;

use super::errors::{Error, Result};
use super::notify::{HandlerError, Notify, NotifyHandler};
use crate::proto::rpc::{Criu_opts, Criu_req, Criu_req_type, Criu_resp};

/// Most descriptors accepted with one message; CRIU sends at most one.
const MAX_FDS_PER_MESSAGE: usize = 8;
/// How long criu gets to exit once its socket is closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How much of criu's stderr is kept for error reports.
const STDERR_TAIL: u64 = 4096;

fn io_err(context: &'static str) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |e| Error::Socket {
        context,
        source: std::io::Error::from(e),
    }
}

/// Sends one message (one datagram on the SEQPACKET socket).
pub(crate) fn send_message(fd: BorrowedFd<'_>, bytes: &[u8]) -> nix::Result<()> {
    loop {
        match send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(nix::errno::Errno::EMSGSIZE),
        }
    }
}

/// Receives one whole message and the descriptors passed with it, sizing the
/// buffer with `MSG_PEEK | MSG_TRUNC` first. `None` means the peer closed.
pub(crate) fn recv_message(fd: BorrowedFd<'_>) -> nix::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let len = loop {
        // SAFETY: a zero-length peek writes nothing.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            e => return Err(e),
        }
    };
    let mut buf = vec![0u8; len.max(1)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let (bytes, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg[..]),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => r?,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        break (msg.bytes, fds, truncated);
    };
    if truncated {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some((buf, fds)))
}

/// What a request ended with.
pub(crate) struct Exchange {
    pub resp: Criu_resp,
    /// The script the handler refused, and why.
    pub refused: Option<(String, HandlerError)>,
}

/// A running `criu swrk`. Dropping it closes the socket and reaps criu.
pub struct Session {
    sock: Option<OwnedFd>,
    child: Option<CriuProcess>,
    stderr: File,
    binary: PathBuf,
    exit: Option<ExitStatus>,
    /// Whether criu was forked into the cgroup it was asked to start in.
    in_cgroup: bool,
}

/// criu's process, reaped by pid: it is not always std's child.
struct CriuProcess {
    pid: i32,
}

impl CriuProcess {
    fn wait_flags(&self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        loop {
            // SAFETY: plain system call on our own child.
            match unsafe { libc::waitpid(self.pid, &mut status, flags) } {
                0 => return Ok(None),
                -1 if nix::errno::Errno::last() == nix::errno::Errno::EINTR => continue,
                -1 => return Err(std::io::Error::last_os_error()),
                _ => return Ok(Some(ExitStatus::from_raw(status))),
            }
        }
    }

    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.wait_flags(libc::WNOHANG)
    }

    fn wait(&self) -> std::io::Result<ExitStatus> {
        self.wait_flags(0)?
            .ok_or_else(|| std::io::Error::other("waitpid returned no status"))
    }

    fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Session {
    /// Starts `binary swrk <fd>`. Only the socket and `keep_fds` survive the
    /// exec, at their current numbers; stdin and stdout are /dev/null and
    /// stderr goes to an unnamed temp file kept for error reports.
    /// With `netns` (an open namespace file), criu runs in that network
    /// namespace.
    pub fn spawn(binary: &Path, keep_fds: &[RawFd], netns: Option<RawFd>) -> Result<Session> {
        Session::spawn_with(binary, keep_fds, false, netns, None, None)
    }

    /// Like [`Session::spawn`], with criu forked into the cgroup v2
    /// directory `cgroup` (see [`crate::cgroups::clone_into`]) where the
    /// kernel allows; [`Session::in_cgroup`] says whether it was.
    pub fn spawn_into(
        binary: &Path,
        keep_fds: &[RawFd],
        netns: Option<RawFd>,
        cgroup: BorrowedFd<'_>,
    ) -> Result<Session> {
        Session::spawn_with(binary, keep_fds, false, netns, None, Some(cgroup))
    }

    /// Like [`Session::spawn`], with criu leading a process group of its
    /// own (whose ID is its pid): what it forks off (a page server) stays
    /// in that group, so it can be found after criu is gone.
    pub fn spawn_in_own_group(binary: &Path, keep_fds: &[RawFd]) -> Result<Session> {
        Session::spawn_with(binary, keep_fds, true, None, None, None)
    }

    /// Starts criu in a mount namespace of its own where `run_dir` is mounted on `/run`: it
    /// writes its kernel-facts cache there (see [`super::kdat_cache`]).
    pub(crate) fn spawn_with_run_dir(binary: &Path, run_dir: CString) -> Result<Session> {
        Session::spawn_with(binary, &[], false, None, Some(run_dir), None)
    }

    fn spawn_with(
        binary: &Path,
        keep_fds: &[RawFd],
        own_group: bool,
        netns: Option<RawFd>,
        run_dir: Option<CString>,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> Result<Session> {
        if run_dir.is_none() {
            super::kdat_cache::ensure(binary);
        }
        for &fd in keep_fds {
            if fd < 3 {
                return Err(Error::BadFd {
                    fd,
                    reason: "descriptors 0-2 are criu's own stdio".into(),
                });
            }
            if nix::fcntl::fcntl(
                // SAFETY: only used for the F_GETFD probe below.
                unsafe { BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_GETFD,
            )
            .is_err()
            {
                return Err(Error::BadFd {
                    fd,
                    reason: "not an open descriptor".into(),
                });
            }
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io_err("socketpair"))?;
        let stderr = tempfile::tempfile().map_err(|source| Error::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        let child_stderr = stderr.try_clone().map_err(|source| Error::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;

        let mut keep: Vec<RawFd> = keep_fds.to_vec();
        keep.push(theirs.as_raw_fd());
        if let Some(cg) = cgroup {
            debug_assert!(
                !own_group && run_dir.is_none(),
                "not done by fork_exec_into"
            );
            match fork_exec_into(cg, binary, &keep, theirs.as_raw_fd(), &stderr, netns) {
                Ok(pid) => {
                    drop(theirs);
                    debug!(pid, binary = %binary.display(), inherited = ?keep_fds, "criu swrk started in its cgroup");
                    return Ok(Session {
                        sock: Some(ours),
                        child: Some(CriuProcess { pid }),
                        stderr,
                        binary: binary.to_path_buf(),
                        exit: None,
                        in_cgroup: true,
                    });
                }
                // Moved once it runs instead, which reports what the
                // cgroup itself refuses.
                Err(e) => debug!(error = %e, "criu not forked into its cgroup"),
            }
        }
        let mut cmd = Command::new(binary);
        cmd.arg("swrk")
            .arg(theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(child_stderr));
        if own_group {
            cmd.process_group(0);
        }
        // SAFETY: the closure only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(dir) = &run_dir {
                    let none = std::ptr::null();
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            none,
                            c"/".as_ptr(),
                            none,
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            dir.as_ptr(),
                            c"/run".as_ptr(),
                            none,
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                netns_and_fds(netns, &keep)
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
        drop(theirs);
        let pid = child.id() as i32;
        // Reaped by pid from here on (std's handle neither waits nor kills
        // when dropped).
        drop(child);
        debug!(pid, binary = %binary.display(), inherited = ?keep_fds, "criu swrk started");
        Ok(Session {
            sock: Some(ours),
            child: Some(CriuProcess { pid }),
            stderr,
            binary: binary.to_path_buf(),
            exit: None,
            in_cgroup: false,
        })
    }

    /// The swrk process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid as u32)
    }

    /// Whether criu was forked into the cgroup [`Session::spawn_into`]
    /// named (else the caller moves it).
    pub fn in_cgroup(&self) -> bool {
        self.in_cgroup
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn sock(&self) -> Result<BorrowedFd<'_>> {
        self.sock
            .as_ref()
            .map(|s| s.as_fd())
            .ok_or_else(|| Error::Protocol("session already closed".into()))
    }

    fn send_req(&self, req: &Criu_req) -> Result<bool> {
        let bytes = req.write_to_bytes().map_err(Error::Encode)?;
        match send_message(self.sock()?, &bytes) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => Ok(false),
            Err(e) => Err(io_err("send")(e)),
        }
    }

    /// Sends `req` and answers notifications until the final response.
    /// `Ok(None)`: criu went away without a final response.
    pub(crate) fn exchange(
        &mut self,
        req: &Criu_req,
        handler: &mut dyn NotifyHandler,
    ) -> Result<Option<Exchange>> {
        debug!(request = ?req.type_(), "criu request");
        if !self.send_req(req)? {
            return Ok(None);
        }
        let mut refused: Option<(String, HandlerError)> = None;
        loop {
            let (bytes, fds) = match recv_message(self.sock()?) {
                Ok(Some(m)) => m,
                Ok(None) | Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
                Err(e) => return Err(io_err("recv")(e)),
            };
            let resp = Criu_resp::parse_from_bytes(&bytes).map_err(Error::Decode)?;
            if resp.type_() != Criu_req_type::NOTIFY {
                debug!(response = ?resp.type_(), success = resp.success(), "criu response");
                return Ok(Some(Exchange { resp, refused }));
            }
            let script = resp.notify.script().to_string();
            let pid = resp.notify.pid;
            debug!(script = %script, ?pid, fds = fds.len(), "criu notify");
            let mut reply = Criu_req::new();
            reply.set_type(Criu_req_type::NOTIFY);
            let mut ok = false;
            if refused.is_none() {
                let result = Notify::from_script(&script, pid, fds.into_iter().next())
                    .map_err(HandlerError::from)
                    .and_then(|event| {
                        let query = matches!(event, Notify::QueryExtFiles);
                        handler.notify(event)?;
                        Ok(query)
                    });
                match result {
                    Ok(query) => {
                        ok = true;
                        if query {
                            let mut opts = Criu_opts::new();
                            opts.set_images_dir_fd(-1);
                            opts.external = handler.external_files();
                            reply.opts = Some(opts).into();
                        }
                    }
                    Err(why) => {
                        debug!(script = %script, %why, "notify handler refused");
                        refused = Some((script, why));
                    }
                }
            }
            reply.set_notify_success(ok);
            if !self.send_req(&reply)? {
                return Ok(None);
            }
        }
    }

    /// The last few KiB criu wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        let mut f = &self.stderr;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)))
            .is_err()
        {
            return String::new();
        }
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Closes the socket and reaps criu (killing it if it does not exit
    /// within a few seconds). Idempotent.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.sock = None;
        if let Some(child) = self.child.take() {
            let deadline = Instant::now() + EXIT_GRACE;
            // Woken the moment criu exits: a sleep between looks added up
            // to its length to every call, a migration's restore included.
            let pidfd = crate::proc::pidfd_open(child.pid).ok();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => match &pidfd {
                        Some(fd) => {
                            crate::proc::wait_exit(fd, deadline - Instant::now());
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    },
                    Ok(None) => {
                        debug!(pid = child.pid, "criu did not exit, killing it");
                        child.kill();
                        break child.wait().ok();
                    }
                    Err(_) => break None,
                }
            };
            debug!(?status, "criu swrk exited");
            self.exit = status;
        }
        self.exit
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Forks criu into `cgroup` and execs `binary swrk <sock>` there, with
/// what [`Session::spawn_with`]'s `Command` sets up: `keep` inherited at
/// their numbers, everything else closed, stdin and stdout on /dev/null,
/// stderr on `stderr`, the default signal mask and SIGPIPE action, the
/// network namespace `netns`. Returns criu's pid once it has exec'd.
fn fork_exec_into(
    cgroup: BorrowedFd<'_>,
    binary: &Path,
    keep: &[RawFd],
    sock: RawFd,
    stderr: &File,
    netns: Option<RawFd>,
) -> std::io::Result<i32> {
    use crate::cgroups::clone_into::{fork_into, Forked};
    use std::os::unix::ffi::OsStrExt;
    let prog = CString::new(binary.as_os_str().as_bytes())?;
    let sock_arg = CString::new(sock.to_string())?;
    let argv = [
        prog.as_ptr(),
        c"swrk".as_ptr(),
        sock_arg.as_ptr(),
        std::ptr::null(),
    ];
    // Both above 2, so that the child's dup2 onto 0-2 never overwrites one
    // of them (or leaves a close-on-exec copy in place).
    let above_stdio = |fd: BorrowedFd<'_>| -> std::io::Result<OwnedFd> {
        Ok(
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                // SAFETY: F_DUPFD returned a new descriptor we own.
                .map(|n| unsafe { OwnedFd::from_raw_fd(n) })?,
        )
    };
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let devnull = above_stdio(devnull.as_fd())?;
    let stderr = above_stdio(stderr.as_fd())?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child = ChildSetup {
        argv: &argv,
        keep,
        devnull: devnull.as_raw_fd(),
        stderr: stderr.as_raw_fd(),
        netns,
        report: err_w.as_raw_fd(),
    };
    // SAFETY: the child only makes async-signal-safe system calls, then
    // execs or exits (ChildSetup::exec).
    let pid = match unsafe { fork_into(cgroup, 0)? } {
        Forked::Child => unsafe { child.exec() },
        Forked::Parent(pid) => pid.as_raw(),
    };
    drop(err_w);
    // The report pipe closes at the exec; an errno comes first if it failed.
    let mut errno = [0u8; 4];
    let mut got = 0;
    let mut r = File::from(err_r);
    while got < errno.len() {
        match r.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Whether it exec'd is unknown: it must not live on beside
                // the criu the caller starts instead.
                let criu = CriuProcess { pid };
                criu.kill();
                let _ = criu.wait();
                return Err(e);
            }
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    let _ = CriuProcess { pid }.wait();
    Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// What criu's child side of [`fork_exec_into`] needs, prepared before the
/// fork: nothing is allocated after it.
struct ChildSetup<'a> {
    argv: &'a [*const libc::c_char; 4],
    keep: &'a [RawFd],
    devnull: RawFd,
    stderr: RawFd,
    netns: Option<RawFd>,
    report: RawFd,
}

impl ChildSetup<'_> {
    /// # Safety
    /// Only in the child of a fork.
    unsafe fn exec(&self) -> ! {
        // SAFETY: async-signal-safe system calls on the child's own state.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let ok = libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == 0
                && libc::signal(libc::SIGPIPE, libc::SIG_DFL) != libc::SIG_ERR
                && netns_and_fds(self.netns, self.keep).is_ok()
                && libc::dup2(self.devnull, 0) == 0
                && libc::dup2(self.devnull, 1) == 1
                && libc::dup2(self.stderr, 2) == 2;
            if ok {
                libc::execv(self.argv[0], self.argv.as_ptr());
            }
            let errno = *libc::__errno_location();
            libc::write(
                self.report,
                (&errno as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>(),
            );
            libc::_exit(127)
        }
    }
}

/// In criu's forked child, either way it was forked: enters the network
/// namespace `netns`, and leaves only `keep` (at their numbers) open
/// across the exec. System calls only.
fn netns_and_fds(netns: Option<RawFd>, keep: &[RawFd]) -> std::io::Result<()> {
    // SAFETY: plain system calls on the child's own state.
    unsafe {
        if let Some(ns) = netns {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        close_others_on_exec();
        for &fd in keep {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec (in the forked child).
fn close_others_on_exec() {
    // SAFETY: plain system calls on the child's own descriptor table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        let max = libc::sysconf(libc::_SC_OPEN_MAX);
        let max = if max <= 0 {
            1024
        } else {
            max.min(1 << 20) as RawFd
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Describes how a process ended, e.g. "exited with status 1".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "exit status unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!(
                "killed by signal {}",
                nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string())
            ),
            _ => format!("{s}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn messages_of_any_size_arrive_whole() {
        let (a, b) = pair();
        for size in [1usize, 100, 4096, 4097, 60_000] {
            let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            send_message(a.as_fd(), &msg).unwrap();
            let (got, fds) = recv_message(b.as_fd()).unwrap().unwrap();
            assert_eq!(got, msg, "size {size}");
            assert!(fds.is_empty());
        }
    }

    #[test]
    fn descriptors_arrive_with_their_message() {
        let (a, b) = pair();
        let f = File::open("/dev/null").unwrap();
        let fds = [f.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"hello")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        send_message(a.as_fd(), b"next").unwrap();
        let (got, fds) = recv_message(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(fds.len(), 1);
        let flags = nix::fcntl::fcntl(fds[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fds must be close-on-exec"
        );
        let (got, fds) = recv_message(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, b"next");
        assert!(fds.is_empty());
    }

    #[test]
    fn peer_close_is_end_of_stream() {
        let (a, b) = pair();
        drop(a);
        assert!(recv_message(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(Some(ExitStatus::from_raw(1 << 8))),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(Some(ExitStatus::from_raw(9))),
            "killed by signal SIGKILL"
        );
        assert_eq!(describe_exit(None), "exit status unknown");
    }

    /// Only the descriptors named survive into criu: checked with a stand-in
    /// binary that lists its open descriptors.
    #[test]
    fn only_named_fds_are_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fds");
        let script = dir.path().join("fake-criu");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nls /proc/$$/fd > {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let wanted = File::open("/dev/null").unwrap();
        let unwanted = File::open("/dev/null").unwrap();
        // Make the unwanted one inheritable to prove the child closes it anyway.
        nix::fcntl::fcntl(
            unwanted.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let mut s = Session::spawn(&script, &[wanted.as_raw_fd()], None).unwrap();
        let status = s.wait().unwrap();
        assert!(status.success());
        let listed: Vec<i32> = std::fs::read_to_string(&out)
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(listed.contains(&wanted.as_raw_fd()), "{listed:?}");
        assert!(!listed.contains(&unwanted.as_raw_fd()), "{listed:?}");
        assert!(matches!(
            Session::spawn(&script, &[1], None),
            Err(Error::BadFd { fd: 1, .. })
        ));
        assert!(matches!(
            Session::spawn(&script, &[9999], None),
            Err(Error::BadFd { fd: 9999, .. })
        ));
    }
}
