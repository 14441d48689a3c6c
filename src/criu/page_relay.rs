//! A relay between CRIU dumping from inside a container's network namespace
//! and a page server outside it.
//!
//! Run in the host's namespace, CRIU dumps the container's namespace as a
//! foreign one and walks the host's whole conntrack table for it: 19-22 ms
//! of a migration's frozen time on these machines, more on a busy host.
//! Run inside the kept namespace, as local checkpoints do, it cannot reach
//! the destination. The relay joins the two: a socket bound to 127.0.0.1
//! in the container's namespace, which CRIU connects to, and a TCP
//! connection from ferry's namespace to the page server, with the bytes
//! spliced across unchanged. CRIU's TLS runs end to end through it (the
//! relay sees only ciphertext).
//!
//! - The relay listens only once the tree is frozen ([`PageRelay::open`]):
//!   no process of the container can connect in CRIU's place.
//! - The upstream connection is made before the freeze, so the frozen time
//!   pays no round trip for it.
//! - It is bounded like CRIU's own ([`super::page_socket`]): after
//!   [`USER_TIMEOUT`](super::page_socket::USER_TIMEOUT) of
//!   silence the relay resets CRIU's connection, CRIU's
//!   write fails, the dump fails and the tree resumes. A reset rather than
//!   a close: CRIU blocked writing pages into a relay that stopped reading
//!   would otherwise wait for ever.
use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::page_socket::{bound_silence, local_port, set_opt};

/// Bound on connecting to the page server (it is already listening).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay waits for CRIU to connect once it listens: CRIU
/// connects right after the pre-dump notification, or fails.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pipe between the two sockets: CRIU writes pages in batches of up to
/// 512 KiB; the default 64 KiB pipe would cut each into many splices.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The relay of one dump; its threads stop (and are joined) when dropped.
pub struct PageRelay {
    /// Bound to 127.0.0.1 in the container's namespace; listening once
    /// opened.
    listener: OwnedFd,
    port: u16,
    /// The connection to the page server, until the relay takes it.
    upstream: RefCell<Option<TcpStream>>,
    /// A duplicate of the upstream socket: shut down on drop, which ends
    /// both directions.
    upstream_dup: OwnedFd,
    stop: Arc<AtomicBool>,
    thread: RefCell<Option<JoinHandle<()>>>,
    /// Why the relay ended badly, if it did.
    failure: Arc<Mutex<Option<String>>>,
}

impl PageRelay {
    /// Binds the relay's socket in the network namespace of `pid` and
    /// connects to the page server at `addr`:`port` from the caller's.
    pub fn bind(pid: i32, addr: &str, port: u16) -> Result<PageRelay, RelayError> {
        let listener = bind_loopback_in(pid).map_err(RelayError::Bind)?;
        let local =
            local_port(&listener).ok_or_else(|| RelayError::Bind(io::Error::last_os_error()))?;
        let upstream = connect(addr, port)?;
        let sk = OwnedFd::from(upstream.try_clone().map_err(RelayError::Socket)?);
        bound_silence(&sk).map_err(RelayError::Socket)?;
        upstream.set_nodelay(true).map_err(RelayError::Socket)?;
        Ok(PageRelay {
            listener,
            port: local,
            upstream: RefCell::new(Some(upstream)),
            upstream_dup: sk,
            stop: Arc::new(AtomicBool::new(false)),
            thread: RefCell::new(None),
            failure: Arc::new(Mutex::new(None)),
        })
    }

    /// The port CRIU connects to on 127.0.0.1 inside the namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Listens (the tree is frozen now) and relays CRIU's connection.
    pub fn open(&self) -> io::Result<()> {
        let Some(upstream) = self.upstream.borrow_mut().take() else {
            return Ok(());
        };
        // SAFETY: plain syscall on a socket we own.
        if unsafe { libc::listen(self.listener.as_raw_fd(), 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = self.listener.try_clone()?;
        let stop = self.stop.clone();
        let failure = self.failure.clone();
        let port = self.port;
        let t = std::thread::Builder::new()
            .name("page-relay".into())
            .spawn(move || {
                match relay(&listener, upstream.into(), &stop) {
                    Ok(Some((up, down))) => tracing::debug!(port, up, down, "page relay done"),
                    // The dump failed before CRIU got there: its own error
                    // says why.
                    Ok(None) => tracing::debug!(port, "CRIU never connected to the page relay"),
                    Err(e) => {
                        let why = format!("the page stream through ferry's relay failed ({e})");
                        tracing::debug!(port, why, "page relay");
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                }
            })?;
        *self.thread.borrow_mut() = Some(t);
        Ok(())
    }

    /// Stops the relay (CRIU is done with it) and says why it failed, if
    /// it did: what a failed dump's error adds.
    pub fn finish(mut self) -> Option<String> {
        self.stop_and_join();
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: plain syscall on a descriptor we own. Ends both
        // directions of a relay still running (CRIU gave up or was killed).
        unsafe { libc::shutdown(self.upstream_dup.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.get_mut().take() {
            let _ = t.join();
        }
    }
}

impl Drop for PageRelay {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The first of `addr`'s addresses (an IP address or a name, as CRIU
/// takes it) where the page server at `port` answers.
fn connect(addr: &str, port: u16) -> Result<TcpStream, RelayError> {
    let tos = (addr, port)
        .to_socket_addrs()
        .map_err(|source| RelayError::Resolve {
            addr: addr.to_string(),
            source,
        })?;
    let mut last = None;
    for to in tos {
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(source) => last = Some(RelayError::Connect { to, source }),
        }
    }
    Err(last.unwrap_or_else(|| RelayError::Resolve {
        addr: addr.to_string(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }))
}

/// Why a relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot bind the page relay inside the container's network namespace: {0}")]
    Bind(#[source] io::Error),
    #[error("cannot resolve the page server address {addr}: {source}; give its IP address")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the page server at {to}: {source}; check that it listens there and that this host can reach it")]
    Connect {
        to: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the connection to the page server: {0}")]
    Socket(#[source] io::Error),
}

/// Accepts CRIU's connection and splices both ways until both ends are
/// done: the bytes each way, or None if CRIU never came.
fn relay(
    listener: &OwnedFd,
    upstream: OwnedFd,
    stop: &AtomicBool,
) -> io::Result<Option<(u64, u64)>> {
    let accepted = accept(listener, stop);
    // One connection only: a later one (or any, once the relay gave up)
    // is reset instead of waiting in the backlog for an answer that never
    // comes. SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    let Some(down) = accepted? else {
        return Ok(None);
    };
    set_opt(&down, libc::TCP_NODELAY, 1)?;
    let (down2, up2) = (down.try_clone()?, upstream.try_clone()?);
    // The page server's side (TLS handshake, answers) to CRIU.
    let back = std::thread::Builder::new()
        .name("page-relay-back".into())
        .spawn(move || {
            let r = pump(&up2, &down2);
            end_direction(&r, &up2, &down2);
            r
        })?;
    let fwd = pump(&down, &upstream);
    end_direction(&fwd, &down, &upstream);
    let back = back
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("page relay thread panicked")));
    if fwd.is_err() || back.is_err() {
        reset(&down);
    }
    Ok(Some((fwd?, back?)))
}

/// After one direction: its end passed on as a FIN, or on an error both
/// sockets shut down so the other direction stops too.
fn end_direction(r: &io::Result<u64>, from: &OwnedFd, to: &OwnedFd) {
    // SAFETY: plain syscalls on descriptors we own.
    unsafe {
        match r {
            Ok(_) => libc::shutdown(to.as_raw_fd(), libc::SHUT_WR),
            Err(_) => {
                libc::shutdown(from.as_raw_fd(), libc::SHUT_RDWR);
                libc::shutdown(to.as_raw_fd(), libc::SHUT_RDWR)
            }
        };
    }
}

/// Makes the close of CRIU's connection a reset: its next write fails
/// instead of filling a buffer nobody reads.
fn reset(sk: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, a linger of the given length.
    unsafe {
        libc::setsockopt(
            sk.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// The first connection on `listener`, polled so that a dropped relay
/// stops waiting.
fn accept(listener: &OwnedFd, stop: &AtomicBool) -> io::Result<Option<OwnedFd>> {
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < ACCEPT_TIMEOUT {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 20) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // Interrupted, or a connection reset before it was taken.
            if matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::ECONNABORTED | libc::EAGAIN)
            ) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: a new descriptor we own.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    Ok(None)
}

/// Splices `from` into `to` through a pipe until `from` ends.
fn pump(from: &OwnedFd, to: &OwnedFd) -> io::Result<u64> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: a two-int buffer.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new descriptors we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain syscall; a smaller pipe only costs more splices.
    let size = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    let chunk = if size > 0 { size as usize } else { 1 << 16 };
    let mut total = 0u64;
    loop {
        let n = splice(from, &w, chunk)?;
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = splice(&r, to, left)?;
            if m == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            left -= m;
        }
        total += n as u64;
    }
}

fn splice(from: &OwnedFd, to: &OwnedFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain syscall on descriptors we own.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A TCP socket bound to 127.0.0.1 (a port the kernel picks) in the
/// network namespace of `pid`.
fn bind_loopback_in(pid: i32) -> io::Result<OwnedFd> {
    crate::network::make_in_netns_of(pid, || {
        // SAFETY: plain syscalls; the results are checked.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sk = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            if libc::bind(
                sk.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(sk)
        }
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A page server on 127.0.0.1 and a relay to it from this process's
    /// own namespace, with the relay's upstream connection accepted.
    fn relay_to_server() -> (PageRelay, TcpStream) {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let relay = PageRelay::bind(std::process::id() as i32, "127.0.0.1", port).unwrap();
        let (up, _) = server.accept().unwrap();
        (relay, up)
    }

    /// Nothing can connect before the relay is opened; then bytes pass
    /// both ways unchanged and each side's end reaches the other.
    #[test]
    fn relays_both_ways_once_opened() {
        let (relay, mut up) = relay_to_server();
        let early = TcpStream::connect(("127.0.0.1", relay.port()));
        assert_eq!(
            early.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        relay.open().unwrap();
        let mut criu = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let mut w = criu.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        up.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "{} bytes arrived of {}", got.len(), data.len());
        // One connection only: a second one is refused, not left waiting.
        let second = TcpStream::connect(("127.0.0.1", relay.port()));
        assert!(second.is_err(), "a second connection was taken");
        up.write_all(b"closed").unwrap();
        drop(up);
        let mut answer = String::new();
        criu.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "closed");
    }

    /// A page server's side that fails resets CRIU's connection: a writer
    /// blocked on it gets an error instead of waiting for ever.
    #[test]
    fn a_failed_page_server_side_resets_criu() {
        let (relay, up) = relay_to_server();
        relay.open().unwrap();
        let mut criu = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        criu.write_all(b"first pages").unwrap();
        // The page server's side is reset (not closed in order).
        reset(&OwnedFd::from(up));
        let chunk = vec![0u8; 1 << 16];
        let start = Instant::now();
        let failed = loop {
            if let Err(e) = criu.write_all(&chunk) {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "CRIU's side still writable after 5 s"
            );
        };
        assert!(
            matches!(
                failed.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{failed}"
        );
    }
}
