//! CRIU's connection to a page server, set as a migration needs it. CRIU
//! connects by itself (and runs its TLS on the connection), so ferry takes a
//! duplicate of the socket from the CRIU process (`pidfd_getfd`) and sets:
//!
//! - a bound on silence: `TCP_USER_TIMEOUT` and keepalive probes. CRIU sets
//!   no timeout of its own, so a link that silently drops packets mid-memory
//!   kept the dump, and the container's freeze, waiting until TCP gave up
//!   (`tcp_retries2`, about 15 minutes). Now CRIU's write fails after
//!   [`USER_TIMEOUT`], the dump fails and the source resumes.
//! - no cork. CRIU corks the connection (`TCP_CORK`, once after connecting)
//!   and never uncorks it: the small `PS_IOV_CLOSE` that ends every dump
//!   and pre-dump waited in the kernel until the 200 ms cork timer expired,
//!   while CRIU waited for the answer with the tree frozen. Measured on a
//!   migration of a 1 MiB container: 180-204 ms between CRIU's "Disconnect
//!   from the page server" and the page server's "Session over", with or
//!   without TLS; 1.7 ms uncorked. CRIU sets `TCP_NODELAY` after its first
//!   pages, so what it writes afterwards leaves at once.
//! - no delay from its first byte (`TCP_NODELAY`), on both ends. Before its
//!   first pages CRIU runs its TLS handshake with Nagle's algorithm on: a
//!   flight of several small records held its second record until the
//!   peer's delayed ACK, 40 ms later, with the tree frozen. Measured on a
//!   1 MiB migration: the handshake took 3 ms or 45-50 ms, about one run in
//!   two. The dump's socket gets it as soon as it is found; the page
//!   server's listening socket gets it before anyone connects
//!   ([`no_delay_on_listener`]), and the connection it accepts inherits it.
//!
//! Post-copy's page stream gets the same bound on both ends: the
//! connection the lazy dump's CRIU accepted on the source
//! ([`PageSocket::bound_served`]) and the one the lazy-pages daemon made on
//! the destination ([`PageSocket::bound_client`]). Without it a cut link
//! left both waiting until ferry's control channel noticed its peer gone.
//!
//! Where the kernel lacks `pidfd_getfd` (before 5.6) nothing is changed.
use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often CRIU's descriptors are looked at until its socket is found:
/// it connects right after the pre-dump notification.
const POLL: Duration = Duration::from_millis(1);
/// The same for post-copy's connections, which come seconds later and
/// cost no frozen time.
const POLL_LAZY: Duration = Duration::from_millis(20);
/// After this long a page server socket that was never corked is left
/// alone (CRIU did not connect, or corks no more).
const GIVE_UP: Duration = Duration::from_secs(30);
/// Longest time data sent on the page stream may stay unacknowledged (and
/// an idle link unanswered to keepalive probes) before CRIU's write fails.
/// A loaded destination writing pages to disk answers within milliseconds;
/// seconds of silence mean the link or the peer is gone.
pub const USER_TIMEOUT: Duration = Duration::from_secs(8);

/// Which of a CRIU process's connections is the page stream, and what is
/// done to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// CRIU connected to `port` of a page server: a dump (bounded, then
    /// uncorked once CRIU corked it) or the lazy-pages daemon (bounded).
    Connected { port: u16, uncork: bool },
    /// CRIU accepted it on its own `port`: a lazy dump serving pages.
    Served { port: u16 },
    /// Not a stream: the socket a page server listens on at `port`.
    Listening { port: u16 },
}

/// The watcher; stopped (and joined) when dropped.
pub struct PageSocket {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageSocket {
    /// Watches CRIU `criu_pid` (a dump) for a TCP socket connected to
    /// `port` of the page server: bounds it, and uncorks it once corked.
    pub fn watch(criu_pid: u32, port: u16) -> PageSocket {
        Self::start(criu_pid, Stream::Connected { port, uncork: true })
    }

    /// Bounds the connection CRIU `criu_pid` (the lazy-pages daemon) makes
    /// to the page server at `port`, whenever it comes.
    pub fn bound_client(criu_pid: u32, port: u16) -> PageSocket {
        Self::start(
            criu_pid,
            Stream::Connected {
                port,
                uncork: false,
            },
        )
    }

    /// Bounds the connection CRIU `criu_pid` (a lazy dump) accepts on its
    /// page server `port`, whenever it comes.
    pub fn bound_served(criu_pid: u32, port: u16) -> PageSocket {
        Self::start(criu_pid, Stream::Served { port })
    }

    fn start(criu_pid: u32, stream: Stream) -> PageSocket {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("page-socket".into())
            .spawn(move || match watch(criu_pid, stream, &flag) {
                Ok(true) => tracing::debug!(criu_pid, ?stream, "page stream socket set"),
                Ok(false) => tracing::debug!(criu_pid, ?stream, "no page stream socket seen"),
                Err(e) => tracing::warn!(criu_pid, ?stream, error = %e, "cannot set CRIU's page stream socket"),
            })
            .ok();
        PageSocket { stop, thread }
    }
}

impl Drop for PageSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(pid: u32, stream: Stream, stop: &AtomicBool) -> std::io::Result<bool> {
    let pidfd = crate::proc::pidfd_open(pid as i32)?;
    let start = Instant::now();
    // The page server socket once found (not corked yet: CRIU may still be
    // in its TLS handshake), and the descriptors already ruled out.
    let mut found: Option<OwnedFd> = None;
    let mut ruled_out = HashSet::new();
    let uncork = matches!(stream, Stream::Connected { uncork: true, .. });
    // A dump's socket comes at once or not at all; post-copy's whenever
    // the other host gets there (until the watcher is dropped).
    let (poll, give_up) = if uncork {
        (POLL, GIVE_UP)
    } else {
        (POLL_LAZY, Duration::MAX)
    };
    while !stop.load(Ordering::Relaxed) && start.elapsed() < give_up {
        if found.is_none() {
            found = find_socket(&pidfd, pid, stream, &mut ruled_out)?;
            if let Some(sk) = &found {
                bound_silence(sk)?;
                if !uncork {
                    return Ok(true);
                }
                // Sends what Nagle holds, and from now on at once.
                set_opt(sk, libc::TCP_NODELAY, 1)?;
            }
        }
        if let Some(sk) = &found {
            if get_opt(sk, libc::TCP_CORK)? != 0 {
                set_opt(sk, libc::TCP_CORK, 0)?;
                return Ok(true);
            }
        }
        std::thread::sleep(poll);
    }
    Ok(false)
}

/// Sets `TCP_NODELAY` on the socket CRIU `pid` (a page server) listens on at `port`: the
/// connection it accepts inherits it, so that its TLS handshake is not held by Nagle's
/// algorithm. Whether the socket was found.
pub fn no_delay_on_listener(pid: i32, port: u16) -> std::io::Result<bool> {
    let pidfd = crate::proc::pidfd_open(pid)?;
    let stream = Stream::Listening { port };
    match find_socket(&pidfd, pid as u32, stream, &mut HashSet::new())? {
        Some(sk) => set_opt(&sk, libc::TCP_NODELAY, 1).map(|()| true),
        None => Ok(false),
    }
}

/// Fails the connection after [`USER_TIMEOUT`] of silence, sending or idle.
pub(super) fn bound_silence(sk: &OwnedFd) -> std::io::Result<()> {
    let secs = USER_TIMEOUT.as_secs() as libc::c_int;
    set_opt(
        sk,
        libc::TCP_USER_TIMEOUT,
        USER_TIMEOUT.as_millis() as libc::c_int,
    )?;
    set_opt_level(sk, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_opt(sk, libc::TCP_KEEPIDLE, (secs / 4).max(1))?;
    set_opt(sk, libc::TCP_KEEPINTVL, (secs / 4).max(1))?;
    set_opt(sk, libc::TCP_KEEPCNT, 3)
}

/// CRIU's TCP socket that is `stream`, duplicated into ferry.
fn find_socket(
    pidfd: &OwnedFd,
    pid: u32,
    stream: Stream,
    ruled_out: &mut HashSet<(RawFd, PathBuf)>,
) -> std::io::Result<Option<OwnedFd>> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        // CRIU is gone: nothing left to uncork.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        // A number is reused for another file once closed: the pair
        // names one file.
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let key = (fd, target);
        if ruled_out.contains(&key) {
            continue;
        }
        if !key.1.to_string_lossy().starts_with("socket:") {
            ruled_out.insert(key);
            continue;
        }
        // SAFETY: plain syscall; the result is checked.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Closed meanwhile.
                Some(libc::EBADF) => continue,
                _ => return Err(err),
            }
        }
        // SAFETY: a new descriptor we own.
        let dup = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
        if get_opt_level(&dup, libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP {
            ruled_out.insert(key);
            continue;
        }
        let listening = get_opt_level(&dup, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
        let ours = match stream {
            // A listening socket (the lazy dump's page server) is never a stream itself.
            _ if listening != matches!(stream, Stream::Listening { .. }) => Some(false),
            Stream::Connected { port, .. } => peer_port(&dup).map(|p| p == port),
            Stream::Served { port } => peer_port(&dup).map(|_| local_port(&dup) == Some(port)),
            Stream::Listening { port } => Some(local_port(&dup) == Some(port)),
        };
        match ours {
            Some(true) => return Ok(Some(dup)),
            // Not connected yet: looked at again next time.
            None => {}
            Some(false) => {
                ruled_out.insert(key);
            }
        }
    }
    Ok(None)
}

fn peer_port(sk: &OwnedFd) -> Option<u16> {
    port_of(sk, libc::getpeername)
}

pub(super) fn local_port(sk: &OwnedFd) -> Option<u16> {
    port_of(sk, libc::getsockname)
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The port `name` (getpeername or getsockname) gives for `sk`.
fn port_of(sk: &OwnedFd, name: NameFn) -> Option<u16> {
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd and buffer of the given length.
    let r = unsafe {
        name(
            sk.as_raw_fd(),
            &mut addr as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in.
            let a = unsafe { &*(&addr as *const _ as *const libc::sockaddr_in) };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6.
            let a = unsafe { &*(&addr as *const _ as *const libc::sockaddr_in6) };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

fn get_opt(sk: &OwnedFd, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    get_opt_level(sk, libc::SOL_TCP, opt)
}

fn get_opt_level(
    sk: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, an int buffer of the given length.
    let r = unsafe {
        libc::getsockopt(
            sk.as_raw_fd(),
            level,
            opt,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

pub(super) fn set_opt(sk: &OwnedFd, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
    set_opt_level(sk, libc::SOL_TCP, opt, v)
}

fn set_opt_level(
    sk: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: valid fd, an int of the given length.
    let r = unsafe {
        libc::setsockopt(
            sk.as_raw_fd(),
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// The connection a child process accepted on its listening port (a
    /// lazy dump's page server) is found, past the listening socket, and
    /// bounded.
    #[test]
    fn a_served_connection_of_another_process_is_bounded() {
        // The "CRIU": listens on a port the kernel picks, accepts one
        // connection, holds it. Raw syscalls only after fork.
        let lsk = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let sa_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid socket and address.
        unsafe {
            assert_eq!(
                libc::bind(lsk, &sa as *const _ as *const libc::sockaddr, sa_len),
                0
            );
            assert_eq!(libc::listen(lsk, 1), 0);
        }
        // SAFETY: a fresh descriptor we own.
        let lsk = unsafe { OwnedFd::from_raw_fd(lsk) };
        let port = local_port(&lsk).unwrap();
        let raw = lsk.as_raw_fd();
        // SAFETY: the child only makes syscalls before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let c = libc::accept(raw, std::ptr::null_mut(), std::ptr::null_mut());
                libc::sleep(5);
                libc::close(c);
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(lsk);
                let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let pid = child.as_raw() as u32;
                let watch = PageSocket::bound_served(pid, port);
                let pidfd = crate::proc::pidfd_open(pid as i32).unwrap();
                let want = USER_TIMEOUT.as_millis() as libc::c_int;
                let bounded = (0..100).any(|_| {
                    std::thread::sleep(Duration::from_millis(20));
                    let stream = Stream::Served { port };
                    find_socket(&pidfd, pid, stream, &mut HashSet::new())
                        .unwrap()
                        .is_some_and(|sk| get_opt(&sk, libc::TCP_USER_TIMEOUT).unwrap() == want)
                });
                drop(watch);
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                assert!(bounded, "the served connection was never bounded");
            }
        }
    }

    /// A corked socket in a child process is found by its peer port,
    /// bounded and uncorked: a small write then arrives at once instead of
    /// after the kernel's 200 ms cork timer.
    #[test]
    fn a_corked_socket_of_another_process_is_bounded_and_uncorked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        // The "CRIU": a child that connects, corks, waits for a byte on a
        // pipe, then writes one small message. Raw syscalls only (no
        // allocation after fork in a threaded test binary).
        let (go_r, go_w) = nix::unistd::pipe().unwrap();
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let go_r = go_r.as_raw_fd();
        // SAFETY: the child only makes syscalls before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let sk = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::connect(
                    sk,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                let one: libc::c_int = 1;
                libc::setsockopt(
                    sk,
                    libc::SOL_TCP,
                    libc::TCP_CORK,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                let mut b = 0u8;
                libc::read(go_r, &mut b as *mut _ as *mut libc::c_void, 1);
                libc::write(sk, b"close".as_ptr() as *const libc::c_void, 5);
                libc::usleep(500_000);
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => {
                let (mut conn, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 5];
                    conn.read_exact(&mut buf).unwrap();
                    tx.send(Instant::now()).unwrap();
                });
                let watch = PageSocket::watch(child.as_raw() as u32, port);
                // Uncorked within a few polls.
                std::thread::sleep(Duration::from_millis(100));
                let sent = Instant::now();
                nix::unistd::write(&go_w, b"x").unwrap();
                let arrived = rx.recv_timeout(Duration::from_secs(2)).unwrap();
                drop(watch);
                let _ = nix::sys::wait::waitpid(child, None);
                let waited = arrived.saturating_duration_since(sent);
                assert!(
                    waited < Duration::from_millis(100),
                    "the small write waited {waited:?}"
                );
            }
        }
    }
}
