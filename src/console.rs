//! Pseudo-terminals for `process.terminal` and handing the master end to the
//! caller's `--console-socket` (SCM_RIGHTS), as runc does.
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot allocate a pseudo-terminal: {0}")]
    Pty(nix::errno::Errno),
    #[error("console socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
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

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub name: String,
}

pub fn open_pty() -> Result<Pty, Error> {
    let pty = nix::pty::openpty(None, None).map_err(Error::Pty)?;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
        name,
    })
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
