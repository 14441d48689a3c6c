//! Pseudo-terminals for `process.terminal` and handing the master end to the
//! caller's `--console-socket` (SCM_RIGHTS), as runc does.
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("console socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the terminal size to {rows}x{cols}: {source}")]
    Size {
        rows: u64,
        cols: u64,
        source: nix::errno::Errno,
    },
    #[error("cannot set the terminal's mode: {0}")]
    Mode(nix::errno::Errno),
    #[error("console socket {path}: sending the terminal failed: {source}")]
    Send {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    /// A terminal is asked for, but there is nowhere to hand it to.
    #[error("{0} asks for a terminal, but no console socket was given to hand it to")]
    NoSocket(&'static str),
    /// A console socket is given, but no terminal is asked for.
    #[error("a console socket was given, but {0} asks for no terminal")]
    NoTerminal(&'static str),
}

/// Sets a terminal's window size (rows and columns, as process.consoleSize
/// gives them).
pub fn set_size(fd: &impl AsRawFd, rows: u64, cols: u64) -> Result<(), Error> {
    let fail = |source| Error::Size { rows, cols, source };
    let ws = libc::winsize {
        ws_row: u16::try_from(rows).map_err(|_| fail(nix::errno::Errno::ERANGE))?,
        ws_col: u16::try_from(cols).map_err(|_| fail(nix::errno::Errno::ERANGE))?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(r).map(drop).map_err(fail)
}

/// Stops the terminal turning "\n" into "\r\n" on output, as runc does
/// for a terminal it relays: the caller's own terminal does that.
pub fn clear_onlcr(fd: &impl AsFd) -> Result<(), Error> {
    use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
    let mut t = tcgetattr(fd).map_err(Error::Mode)?;
    t.output_flags.remove(OutputFlags::ONLCR);
    tcsetattr(fd, SetArg::TCSANOW, &t).map_err(Error::Mode)
}

/// Connects to `path` and sends `fd` with `name` as the message body.
pub fn send_fd(path: &Path, fd: &OwnedFd, name: &str) -> Result<(), Error> {
    let sock = UnixStream::connect(path).map_err(|source| Error::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let body = if name.is_empty() { "pty" } else { name };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(body.as_bytes())],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(|source| Error::Send {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Checks that a console socket path exists and is a socket before anything
/// is created, so a typo fails fast.
pub fn check_socket(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(Error::Socket {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a unix socket"),
        }),
        Err(source) => Err(Error::Socket {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A terminal needs a console socket and a console socket a terminal; the
/// socket must exist before anything is set up. `asker` names what sets
/// the terminal ("config.json's process.terminal").
pub fn check(terminal: bool, socket: Option<&Path>, asker: &'static str) -> Result<(), Error> {
    match (terminal, socket) {
        (true, None) => Err(Error::NoSocket(asker)),
        (false, Some(_)) => Err(Error::NoTerminal(asker)),
        (true, Some(sock)) => check_socket(sock),
        (false, None) => Ok(()),
    }
}
