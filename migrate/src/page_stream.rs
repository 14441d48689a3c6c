//! The memory page stream between the two CRIUs of a migration, owned by
//! the agents rather than by CRIU.
//!
//! Left to itself, CRIU's dump connects to the page server with a socket
//! that has no timeout: a link that silently drops packets freezes the
//! source until TCP gives up (about 15 minutes). Instead, each agent owns
//! the TCP connection (TLS 1.3 with the operator's certificates, unless
//! insecure) and hands its CRIU one end of a local socket pair
//! (`criu_opts.ps.fd`); a relay thread moves the bytes between the two.
//! The TCP socket has a user timeout and keepalives
//! ([`DEAD_PEER_TIMEOUT`]), so a cut link fails the relay within seconds;
//! the relay then closes CRIU's end, CRIU fails the dump (the source
//! resumes) or the page server exits (the destination cleans up).
//!
//! CRIU does not run its own TLS on a socket it is handed (its dump side
//! skips the handshake when `ps.fd` is set), so the encryption is the
//! relay's. The relay reads and writes in large blocks (CRIU's own TLS
//! path moves 16 KiB records through a 64 KiB pipe, which is where most
//! of its time went).
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, Connection, ServerConnection};

use crate::tls::{self, Credentials, TlsError, TlsPaths};
use crate::transport::{self, HANDSHAKE_TIMEOUT};

mod relay;
use relay::Relay;

/// How long sent data may stay unacknowledged, or an idle connection
/// unanswered, before the kernel declares the page stream dead.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(8);
/// Idle time before the first keepalive probe, and between probes.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// Bytes moved per read.
const BLOCK: usize = 1 << 20;
/// A read from CRIU at least this large carries pages (its requests and
/// answers are a few dozen bytes).
pub const BULK: usize = 64 << 10;
/// Send buffer of each end of the local socket pair: a few blocks, so
/// CRIU and the relay rarely wait for each other.
const LOCAL_BUFFER: libc::c_int = 4 << 20;

/// Why the page stream failed.
#[derive(Debug, thiserror::Error)]
pub enum PageStreamError {
    #[error("page stream: cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("page stream: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("page stream: the source did not connect within {0:?}")]
    NoPeer(Duration),
    #[error("page stream: {0}")]
    Tls(#[from] TlsError),
    #[error("page stream: {0}")]
    Protocol(String),
    #[error(
        "page stream: the peer stopped answering for {}s (link cut or host gone)",
        DEAD_PEER_TIMEOUT.as_secs()
    )]
    DeadPeer,
    #[error("page stream: the peer closed the connection without finishing TLS (truncated)")]
    Truncated,
    #[error("page stream: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("page stream: stopped")]
    Stopped,
    #[error("page stream: the relay thread panicked")]
    Panicked,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> PageStreamError {
    move |source| {
        if source.raw_os_error() == Some(libc::ETIMEDOUT) {
            PageStreamError::DeadPeer
        } else {
            PageStreamError::Io { what, source }
        }
    }
}

/// Bytes the relay moved: `up` from CRIU to the peer, `down` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub up: u64,
    pub down: u64,
    /// From CRIU's first byte to its last large write (at least
    /// [`BULK`]): on the source, the time CRIU took to stream its pages
    /// (what is still in flight then is at most a few MiB of buffers).
    pub elapsed: Duration,
}

/// A user timeout and keepalives, so a dead peer or a cut link is noticed
/// within [`DEAD_PEER_TIMEOUT`] whether the stream is sending or waiting;
/// no Nagle delay (CRIU's small requests wait for answers).
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ka = KEEPALIVE.as_secs() as libc::c_int;
    transport::setsockopt_int(tcp, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    transport::setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, ka);
    transport::setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, ka);
    transport::setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    let user = DEAD_PEER_TIMEOUT.as_millis() as libc::c_int;
    transport::setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user);
}

/// A local socket pair with large send buffers: (CRIU's end, the relay's).
fn local_pair() -> Result<(UnixStream, UnixStream), PageStreamError> {
    let (a, b) = UnixStream::pair().map_err(io_err("socket pair"))?;
    for s in [&a, &b] {
        // SO_SNDBUFFORCE passes the system limit (root); else what it allows.
        if setsockopt(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, LOCAL_BUFFER).is_err() {
            let _ = setsockopt(s, libc::SOL_SOCKET, libc::SO_SNDBUF, LOCAL_BUFFER);
        }
    }
    Ok((a, b))
}

fn setsockopt(fd: &impl AsRawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One page stream: CRIU's end of the local socket pair, and the relay
/// thread that carries it over the network.
pub struct PageStream {
    criu: Option<OwnedFd>,
    stop: UnixStream,
    thread: Option<JoinHandle<Result<RelayStats, PageStreamError>>>,
    port: u16,
}

impl std::fmt::Debug for PageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStream")
            .field("criu_fd", &self.criu.as_ref().map(|c| c.as_raw_fd()))
            .field("port", &self.port)
            .finish()
    }
}

impl PageStream {
    /// The descriptor to hand CRIU (`criu_opts.ps.fd`; CRIU must inherit
    /// it at this number).
    pub fn criu_fd(&self) -> Option<RawFd> {
        self.criu.as_ref().map(|c| c.as_raw_fd())
    }

    /// Closes this process's copy of CRIU's end, once CRIU holds its own:
    /// when CRIU exits, the relay sees the end of the stream.
    pub fn close_criu_end(&mut self) {
        self.criu = None;
    }

    /// The local TCP port (the destination's listening port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the relay has ended (finished or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the relay to end by itself, then stops it;
    /// returns what it moved or why it failed.
    pub fn finish(mut self, timeout: Duration) -> Result<RelayStats, PageStreamError> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.join()
    }

    fn join(&mut self) -> Result<RelayStats, PageStreamError> {
        let _ = (&self.stop).write(&[1]);
        self.criu = None;
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Err(PageStreamError::Panicked)),
            None => Err(PageStreamError::Stopped),
        }
    }
}

impl Drop for PageStream {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

fn spawn<F>(criu: UnixStream, port: u16, work: F) -> Result<PageStream, PageStreamError>
where
    F: FnOnce(UnixStream) -> Result<RelayStats, PageStreamError> + Send + 'static,
{
    let (stop, stop_rx) = UnixStream::pair().map_err(io_err("socket pair"))?;
    let thread = std::thread::Builder::new()
        .name("page-stream".into())
        .spawn(move || {
            let r = work(stop_rx);
            match &r {
                Err(PageStreamError::Stopped) => {}
                Err(e) => tracing::warn!(error = %e, "page stream failed"),
                Ok(s) => tracing::debug!(up = s.up, down = s.down, "page stream ended"),
            }
            r
        })
        .map_err(io_err("thread"))?;
    Ok(PageStream {
        criu: Some(criu.into()),
        stop,
        thread: Some(thread),
        port,
    })
}

/// Source side: connects to the destination's page stream at `addr`
/// (TLS with `tls`, checking that the peer's certificate names
/// `server_name`) and starts relaying.
pub fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Option<&TlsPaths>,
) -> Result<PageStream, PageStreamError> {
    let mut tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .map_err(|source| PageStreamError::Connect { addr, source })?;
    tune(&tcp);
    let conn = match tls {
        None => None,
        Some(paths) => {
            let creds = Credentials::load_unchecked(paths)?;
            let name = tls::server_name(server_name)?;
            let mut c =
                ClientConnection::new(creds.client_config()?, name).map_err(TlsError::Config)?;
            handshake(&mut c, &mut tcp, &paths.ca)?;
            Some(Connection::Client(c))
        }
    };
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
    let (criu, local) = local_pair()?;
    spawn(criu, port, move |stop| {
        Relay::new(local, tcp, conn, stop)?.run()
    })
}

/// Destination side: listens on `ip` (port chosen by the kernel), accepts
/// one source within `accept_timeout` (TLS with `tls`: it must present a
/// certificate of the operator CA; others are turned away and the wait
/// goes on, so a stranger knocking first cannot take the source's place)
/// and relays.
pub fn listen(
    ip: IpAddr,
    tls: Option<&TlsPaths>,
    accept_timeout: Duration,
) -> Result<PageStream, PageStreamError> {
    let addr = SocketAddr::new(ip, 0);
    let listener =
        TcpListener::bind(addr).map_err(|source| PageStreamError::Listen { addr, source })?;
    let port = listener
        .local_addr()
        .map_err(|source| PageStreamError::Listen { addr, source })?
        .port();
    let creds = tls.map(Credentials::load_unchecked).transpose()?;
    let (criu, local) = local_pair()?;
    spawn(criu, port, move |stop| {
        let deadline = Instant::now() + accept_timeout;
        let mut refused = None;
        let (tcp, conn) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut tcp = match accept(&listener, &stop, left) {
                Ok(tcp) => tcp,
                // Say why the one who came was refused, if anyone came.
                Err(PageStreamError::NoPeer(_)) => {
                    return Err(refused.unwrap_or(PageStreamError::NoPeer(accept_timeout)))
                }
                Err(e) => return Err(e),
            };
            tune(&tcp);
            let Some(creds) = &creds else {
                break (tcp, None);
            };
            let mut c = ServerConnection::new(creds.server_config()?).map_err(TlsError::Config)?;
            match handshake(&mut c, &mut tcp, &creds.paths().ca) {
                Ok(()) => break (tcp, Some(Connection::Server(c))),
                Err(e) => {
                    tracing::warn!(error = %e, "page stream: refused a connection");
                    refused = Some(e);
                }
            }
        };
        drop(listener);
        Relay::new(local, tcp, conn, stop)?.run()
    })
}

/// Waits for one connection, or the stop signal, or the timeout.
fn accept(
    listener: &TcpListener,
    stop: &UnixStream,
    timeout: Duration,
) -> Result<TcpStream, PageStreamError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PageStreamError::NoPeer(timeout));
        }
        let mut fds = [
            pollfd(listener.as_raw_fd(), libc::POLLIN),
            pollfd(stop.as_raw_fd(), libc::POLLIN),
        ];
        poll(&mut fds, left.as_millis().min(i32::MAX as u128) as i32)?;
        if fds[1].revents != 0 {
            return Err(PageStreamError::Stopped);
        }
        if fds[0].revents != 0 {
            let (tcp, _) = listener.accept().map_err(io_err("accept"))?;
            return Ok(tcp);
        }
    }
}

/// Runs a TLS handshake on blocking `tcp`, bounded by the handshake timeout.
fn handshake<C, S>(conn: &mut C, tcp: &mut TcpStream, ca: &Path) -> Result<(), PageStreamError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let r = transport::drive_handshake(conn, tcp, ca);
    let _ = tcp.set_read_timeout(None);
    let _ = tcp.set_write_timeout(None);
    r.map_err(|e| match e {
        transport::TransportError::Tls(t) => PageStreamError::Tls(t),
        e => PageStreamError::Protocol(e.to_string()),
    })
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<(), PageStreamError> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed pollfd array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(PageStreamError::Io {
                what: "poll",
                source: e,
            });
        }
    }
}

#[cfg(test)]
mod tests;
