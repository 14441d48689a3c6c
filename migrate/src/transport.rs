//! The channel between two agents: a TCP connection, optionally wrapped in
//! mutual TLS, carrying [`crate::wire`] frames.
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::{self, Security, TlsError};
use crate::wire::{self, Compression, Frame, FrameType, WireError};

/// A byte stream the channel can run over.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Errors of the channel: framing, TLS, or time.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("no answer from the peer within {0:?}")]
    Timeout(Duration),
}

/// An established, authenticated (or explicitly insecure) connection.
pub struct Channel {
    stream: Box<dyn Stream>,
    tcp: Option<TcpStream>,
    ca: Option<PathBuf>,
    /// The certificate the peer presented and the handshake verified (DER).
    peer_cert: Option<Vec<u8>>,
    timeout: Option<Duration>,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer_addr())
            .field("tls", &self.ca.is_some())
            .finish()
    }
}

impl Channel {
    /// A channel over any stream (no TLS); for tests and local pipes.
    pub fn from_stream(stream: Box<dyn Stream>) -> Channel {
        Channel {
            stream,
            tcp: None,
            ca: None,
            peer_cert: None,
            timeout: None,
            sent: 0,
            received: 0,
        }
    }

    fn over_tcp(
        stream: Box<dyn Stream>,
        tcp: TcpStream,
        ca: Option<PathBuf>,
        peer_cert: Option<Vec<u8>>,
    ) -> Channel {
        Channel {
            stream,
            tcp: Some(tcp),
            ca,
            peer_cert,
            timeout: None,
            sent: 0,
            received: 0,
        }
    }

    /// The peer's certificate as the TLS handshake verified it (DER).
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.peer_cert.as_deref()
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.peer_addr().ok())
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// Bytes written and read so far, frame headers included.
    pub fn bytes(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// A handle that can cut the connection from another thread (to
    /// interrupt a blocked read on cancellation or shutdown).
    pub fn closer(&self) -> Option<Closer> {
        self.tcp
            .as_ref()
            .and_then(|t| t.try_clone().ok())
            .map(Closer)
    }

    /// Bounds every following read; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        if let Some(t) = &self.tcp {
            let _ = t.set_read_timeout(timeout);
            let _ = t.set_write_timeout(timeout);
        }
    }

    fn map_err(&self, e: WireError) -> TransportError {
        match e {
            WireError::Io(io) => {
                if let Some(r) = tls::rustls_error(&io) {
                    let ca = self.ca.clone().unwrap_or_default();
                    return TransportError::Tls(tls::explain(r, &ca));
                }
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    return TransportError::Timeout(self.timeout.unwrap_or_default());
                }
                TransportError::Wire(WireError::Io(io))
            }
            e => TransportError::Wire(e),
        }
    }

    fn write(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), TransportError> {
        wire::write_frame(&mut self.stream, kind, payload).map_err(|e| self.map_err(e))?;
        self.sent += (wire::HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Sends one control message.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        let payload = wire::encode_control(msg);
        self.write(FrameType::Control, &payload)
    }

    /// Sends one chunk of a byte stream; returns the bytes put on the wire.
    pub fn send_data(
        &mut self,
        chunk: &[u8],
        compression: Compression,
    ) -> Result<usize, TransportError> {
        let n =
            wire::write_data(&mut self.stream, chunk, compression).map_err(|e| self.map_err(e))?;
        self.sent += n as u64;
        Ok(n)
    }

    /// Ends a byte stream.
    pub fn send_end(&mut self) -> Result<(), TransportError> {
        self.write(FrameType::End, &[])
    }

    /// Reads the next frame, whatever its type.
    pub fn recv_frame(&mut self) -> Result<Frame, TransportError> {
        let f = wire::read_frame(&mut self.stream).map_err(|e| self.map_err(e))?;
        self.received += (wire::HEADER_LEN + f.payload.len()) as u64;
        Ok(f)
    }

    /// Reads the next frame, which must be a control message of type `T`.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, TransportError> {
        let f = self.recv_frame()?;
        Ok(wire::decode_control(&f)?)
    }
}

/// Cuts a channel's connection from another thread.
#[derive(Debug)]
pub struct Closer(TcpStream);

impl Closer {
    pub fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// Default bound on connecting and on the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long unacknowledged data or unanswered keepalives may last before
/// the kernel declares the connection dead. A cut link (as opposed to a
/// closed connection) is then noticed in about this time, even by a side
/// that is only waiting, instead of after TCP's default quarter of an hour.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn setsockopt_int(tcp: &TcpStream, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// No Nagle delay; keepalives and a user timeout so a dead peer is found.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let dead = DEAD_PEER_TIMEOUT.as_secs() as libc::c_int;
    setsockopt_int(tcp, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, dead / 3);
    setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, dead / 6);
    setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    setsockopt_int(tcp, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, dead * 1000);
}

fn drive_handshake<C, S>(
    conn: &mut C,
    tcp: &mut TcpStream,
    ca: &std::path::Path,
) -> Result<(), TransportError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(tcp) {
            if let Some(r) = tls::rustls_error(&e) {
                // complete_io already tried to send the alert rustls
                // queued; make sure nothing is left behind.
                let _ = conn.write_tls(tcp);
                return Err(TransportError::Tls(tls::explain(r, ca)));
            }
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Err(TransportError::Timeout(HANDSHAKE_TIMEOUT));
            }
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(TransportError::Wire(WireError::Closed));
            }
            return Err(TransportError::Wire(WireError::Io(e)));
        }
    }
    // Flush our last handshake flight.
    while conn.wants_write() {
        conn.write_tls(tcp)
            .map_err(|e| TransportError::Wire(WireError::Io(e)))?;
    }
    Ok(())
}

/// Connects to a destination agent. `server_name` is what its certificate
/// must name (usually the address in `--to`).
pub fn connect(
    addr: SocketAddr,
    server_name: &str,
    security: &Security,
) -> Result<Channel, TransportError> {
    let tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .map_err(|source| TransportError::Connect { addr, source })?;
    tune(&tcp);
    match security {
        Security::Insecure => plain(tcp),
        Security::Tls(creds) => {
            let name = tls::server_name(server_name)?;
            let conn = ClientConnection::new(creds.client_config()?, name)
                .map_err(|e| TransportError::Tls(TlsError::Config(e)))?;
            secured(conn, tcp, creds)
        }
    }
}

/// Runs the server side of the handshake on an accepted connection. With
/// TLS, a peer without a certificate signed by our CA is refused here,
/// before any message is read.
pub fn accept(tcp: TcpStream, security: &Security) -> Result<Channel, TransportError> {
    tune(&tcp);
    match security {
        Security::Insecure => plain(tcp),
        Security::Tls(creds) => {
            let conn = ServerConnection::new(creds.server_config()?)
                .map_err(|e| TransportError::Tls(TlsError::Config(e)))?;
            secured(conn, tcp, creds)
        }
    }
}

/// A channel straight over `tcp` (no TLS).
fn plain(tcp: TcpStream) -> Result<Channel, TransportError> {
    let clone = tcp
        .try_clone()
        .map_err(|e| TransportError::Wire(e.into()))?;
    Ok(Channel::over_tcp(Box::new(tcp), clone, None, None))
}

/// A channel over `conn` on `tcp` once its handshake (either side's) is
/// done, bounded by the handshake timeout.
fn secured<C, S>(
    mut conn: C,
    mut tcp: TcpStream,
    creds: &tls::Credentials,
) -> Result<Channel, TransportError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>> + Send + 'static,
    S: rustls::SideData + 'static,
    StreamOwned<C, TcpStream>: Stream,
{
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    drive_handshake(&mut conn, &mut tcp, &creds.paths().ca)?;
    let _ = tcp.set_read_timeout(None);
    let peer_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec());
    let clone = tcp
        .try_clone()
        .map_err(|e| TransportError::Wire(e.into()))?;
    Ok(Channel::over_tcp(
        Box::new(StreamOwned::new(conn, tcp)),
        clone,
        Some(creds.paths().ca.clone()),
        peer_cert,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getsockopt_int(tcp: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int we own.
        let r = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                level,
                name,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn connections_detect_dead_peers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        tune(&c);
        assert_eq!(getsockopt_int(&c, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            getsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            30_000
        );
        assert_eq!(getsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
    }
}
