//! The relay loop: one thread moving bytes between CRIU's end of the
//! local socket pair and the network (through TLS when set), both
//! nonblocking, driven by poll(2).
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use rustls::Connection;

use super::{io_err, poll, pollfd, PageStreamError, RelayStats, BLOCK, BULK};

/// A byte buffer filled at the end and drained from the front.
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: vec![0; BLOCK],
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Free space at the end (only once drained, so reads stay large).
    fn space(&mut self) -> Option<&mut [u8]> {
        self.is_empty().then(|| &mut self.data[..])
    }
}

/// Nonblocking I/O: `Ok(None)` when it would block.
fn nb<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Moves bytes between CRIU's socket (`local`) and the peer (`tcp`,
/// through `tls` when set), both nonblocking, until the stream ends.
pub(super) struct Relay {
    local: UnixStream,
    tcp: TcpStream,
    tls: Option<Connection>,
    stop: UnixStream,
    /// From CRIU, not yet on the wire (plaintext mode).
    up: Buf,
    /// For CRIU, not yet written to it.
    down: Buf,
    /// Raw bytes from the wire, not yet given to TLS.
    raw: Buf,
    /// CRIU closed its end: nothing more goes up.
    local_eof: bool,
    /// The peer ended the stream: nothing more comes down.
    remote_eof: bool,
    /// Our end of the wire was closed for writing.
    sent_eof: bool,
    stats: RelayStats,
    /// When the first byte came from CRIU, and the last large read.
    first_up: Option<Instant>,
    last_bulk: Option<Instant>,
}

impl Relay {
    pub(super) fn new(
        local: UnixStream,
        tcp: TcpStream,
        mut tls: Option<Connection>,
        stop: UnixStream,
    ) -> Result<Relay, PageStreamError> {
        if let Some(c) = &mut tls {
            // The relay bounds what it buffers itself (one block at a time).
            c.set_buffer_limit(None);
        }
        local.set_nonblocking(true).map_err(io_err("socket"))?;
        tcp.set_nonblocking(true).map_err(io_err("socket"))?;
        Ok(Relay {
            local,
            tcp,
            tls,
            stop,
            up: Buf::new(),
            down: Buf::new(),
            raw: Buf::new(),
            local_eof: false,
            remote_eof: false,
            sent_eof: false,
            stats: RelayStats::default(),
            first_up: None,
            last_bulk: None,
        })
    }

    pub(super) fn run(mut self) -> Result<RelayStats, PageStreamError> {
        let r = self.pump().map(|mut s| {
            if let (Some(a), Some(b)) = (self.first_up, self.last_bulk) {
                s.elapsed = b.saturating_duration_since(a);
            }
            s
        });
        if r.is_err() {
            // CRIU must see the failure at once: it is blocked on its end.
            let _ = self.local.shutdown(Shutdown::Both);
            let _ = self.tcp.shutdown(Shutdown::Both);
        }
        r
    }

    fn wants_wire_write(&self) -> bool {
        match &self.tls {
            Some(c) => c.wants_write(),
            None => !self.up.is_empty(),
        }
    }

    /// The stream is over: either CRIU finished and everything it sent is
    /// on the wire (the destination, once its page server exits), or the
    /// peer ended it and CRIU has everything that came (the source, once
    /// the page server answered and hung up).
    fn done(&self) -> bool {
        (self.local_eof && self.sent_eof) || (self.remote_eof && self.down.is_empty())
    }

    fn pump(&mut self) -> Result<RelayStats, PageStreamError> {
        loop {
            while !self.done() && self.step()? {}
            if self.done() {
                if self.remote_eof {
                    let _ = self.local.shutdown(Shutdown::Write);
                }
                return Ok(self.stats);
            }
            let mut local_ev = 0;
            if !self.local_eof && !self.wants_wire_write() {
                local_ev |= libc::POLLIN;
            }
            if !self.down.is_empty() {
                local_ev |= libc::POLLOUT;
            }
            let mut tcp_ev = 0;
            if !self.remote_eof && self.down.is_empty() && self.raw.is_empty() {
                tcp_ev |= libc::POLLIN;
            }
            if self.wants_wire_write() {
                tcp_ev |= libc::POLLOUT;
            }
            // A closed CRIU end reports POLLHUP even when not asked for:
            // leave it out while nothing is wanted of it.
            let local_fd = if local_ev == 0 {
                -1
            } else {
                self.local.as_raw_fd()
            };
            let mut fds = [
                pollfd(local_fd, local_ev),
                pollfd(self.tcp.as_raw_fd(), tcp_ev),
                pollfd(self.stop.as_raw_fd(), libc::POLLIN),
            ];
            poll(&mut fds, -1)?;
            if fds[2].revents != 0 {
                return Err(PageStreamError::Stopped);
            }
            if fds[1].revents & libc::POLLERR != 0 {
                let e = self.tcp.take_error().ok().flatten();
                return Err(io_err("connection")(
                    e.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ECONNRESET)),
                ));
            }
        }
    }

    /// One round of every transfer that can make progress; whether any did.
    fn step(&mut self) -> Result<bool, PageStreamError> {
        let mut moved = false;
        moved |= self.read_criu()?;
        moved |= self.send_wire()?;
        moved |= self.recv_wire()?;
        moved |= self.write_criu()?;
        Ok(moved)
    }

    fn read_criu(&mut self) -> Result<bool, PageStreamError> {
        if self.local_eof || self.wants_wire_write() {
            return Ok(false);
        }
        let Some(space) = self.up.space() else {
            return Ok(false);
        };
        let n = match nb((&self.local).read(space)) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            // CRIU went away abruptly: the same as its end of stream.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(io_err("reading from CRIU")(e)),
        };
        if n == 0 {
            self.local_eof = true;
            if let Some(c) = &mut self.tls {
                c.send_close_notify();
            }
            return Ok(true);
        }
        let now = Instant::now();
        self.first_up.get_or_insert(now);
        if n >= BULK {
            self.last_bulk = Some(now);
        }
        self.stats.up += n as u64;
        match &mut self.tls {
            Some(c) => {
                c.writer()
                    .write_all(&self.up.data[..n])
                    .map_err(io_err("encrypting"))?;
            }
            None => self.up.end = n,
        }
        Ok(true)
    }

    fn send_wire(&mut self) -> Result<bool, PageStreamError> {
        let mut moved = false;
        loop {
            let r = match &mut self.tls {
                Some(c) if c.wants_write() => nb(c.write_tls(&mut self.tcp)),
                Some(_) => break,
                None if !self.up.is_empty() => nb((&self.tcp).write(self.up.pending())),
                None => break,
            };
            match r.map_err(io_err("sending"))? {
                Some(n) => {
                    if self.tls.is_none() {
                        self.up.consume(n);
                    }
                    moved = true;
                }
                None => break,
            }
        }
        if self.local_eof && !self.sent_eof && !self.wants_wire_write() {
            let _ = self.tcp.shutdown(Shutdown::Write);
            self.sent_eof = true;
            moved = true;
        }
        Ok(moved)
    }

    fn recv_wire(&mut self) -> Result<bool, PageStreamError> {
        if self.remote_eof || !self.down.is_empty() {
            return Ok(false);
        }
        let mut moved = false;
        if let Some(space) = self.raw.space() {
            match nb((&self.tcp).read(space)).map_err(io_err("receiving"))? {
                None => {}
                Some(0) => return self.wire_closed(),
                Some(n) => {
                    self.raw.end = n;
                    moved = true;
                }
            }
        }
        if self.tls.is_none() {
            // Plaintext: the bytes read are CRIU's as they are.
            std::mem::swap(&mut self.raw, &mut self.down);
            return Ok(moved);
        }
        // Feed the records read to TLS, a bounded amount at a time.
        while !self.raw.is_empty() {
            let c = self.tls.as_mut().expect("checked above");
            let mut rd = &self.raw.data[self.raw.start..self.raw.end];
            match c.read_tls(&mut rd) {
                // After the peer's close_notify TLS takes no more.
                Ok(0) => self.raw.consume(self.raw.pending().len()),
                Ok(n) => self.raw.consume(n),
                // Its plaintext buffer is full: drain it first.
                Err(e) if e.kind() == io::ErrorKind::Other => {}
                Err(e) => return Err(io_err("receiving")(e)),
            }
            c.process_new_packets()
                .map_err(|e| PageStreamError::Protocol(format!("TLS: {e}")))?;
            let got = self.drain_plaintext()?;
            moved |= got;
            if !self.down.is_empty() {
                break;
            }
        }
        Ok(moved)
    }

    /// The peer closed the connection: the end of the stream in
    /// plaintext; with TLS only after its close_notify (anything else is
    /// a truncation).
    fn wire_closed(&mut self) -> Result<bool, PageStreamError> {
        let Some(c) = &mut self.tls else {
            self.remote_eof = true;
            return Ok(true);
        };
        let st = c
            .process_new_packets()
            .map_err(|e| PageStreamError::Protocol(format!("TLS: {e}")))?;
        // Once our side has ended, the peer may hang up without a word.
        if !st.peer_has_closed() && !self.local_eof {
            return Err(PageStreamError::Truncated);
        }
        if st.plaintext_bytes_to_read() == 0 {
            self.remote_eof = true;
            return Ok(true);
        }
        // What came before the close_notify still goes to CRIU first.
        self.drain_plaintext()
    }

    /// Takes the decrypted bytes TLS holds into `down`.
    fn drain_plaintext(&mut self) -> Result<bool, PageStreamError> {
        let Some(c) = &mut self.tls else {
            return Ok(false);
        };
        let Some(space) = self.down.space() else {
            return Ok(false);
        };
        match nb(c.reader().read(space)) {
            Ok(Some(0)) => {
                self.remote_eof = true;
                Ok(true)
            }
            Ok(Some(n)) => {
                self.down.end = n;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(PageStreamError::Truncated),
            Err(e) => Err(io_err("decrypting")(e)),
        }
    }

    fn write_criu(&mut self) -> Result<bool, PageStreamError> {
        let mut moved = false;
        if self.down.is_empty() && self.tls.is_some() && !self.remote_eof {
            moved |= self.drain_plaintext()?;
        }
        while !self.down.is_empty() {
            match nb((&self.local).write(self.down.pending())) {
                Ok(Some(n)) => {
                    self.stats.down += n as u64;
                    self.down.consume(n);
                    moved = true;
                }
                Ok(None) => break,
                Err(e) => return Err(io_err("writing to CRIU")(e)),
            }
        }
        Ok(moved)
    }
}
