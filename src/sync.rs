//! The message channel between `ferry create` (or `exec`) and the process
//! it is setting up (a SOCK_SEQPACKET socketpair).
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Parent → child: uid/gid maps are written.
    Mapped,
    /// Child → parent: namespaces are in place.
    NsReady,
    /// Parent → child: cgroup, network and runtime hooks done; go on.
    Go {
        state_json: String,
        cgroup_dirs: Vec<(String, String)>,
    },
    /// Child → parent: the console's pty master (sent with the message).
    Console,
    /// Child → parent: set up and waiting for `start`.
    Created,
    /// Child → parent (exec): the pid of the process in the container.
    Pid(i32),
    /// Child → parent: a part of the config the kernel refused, left out
    /// as runc leaves it out; the parent logs it and goes on.
    Warning(String),
    /// Child → parent: setup failed.
    Failed(Failure),
}

/// Why the child gave up: the setup step, the errno when a system call
/// refused, and the text naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub step: String,
    pub errno: Option<i32>,
    pub message: String,
}

impl Failure {
    pub fn new(step: &str, message: impl Into<String>) -> Failure {
        Failure {
            step: step.into(),
            errno: None,
            message: message.into(),
        }
    }

    /// A refused system call: `context` names what was asked.
    pub fn sys(step: &str, context: impl std::fmt::Display, errno: Errno) -> Failure {
        Failure {
            step: step.into(),
            errno: Some(errno as i32),
            message: format!("{context}: {errno}"),
        }
    }

    pub fn io(step: &str, context: impl std::fmt::Display, e: &std::io::Error) -> Failure {
        Failure {
            step: step.into(),
            errno: e.raw_os_error(),
            message: format!("{context}: {e}"),
        }
    }

    /// Wraps the text of helpers that report only text.
    pub fn at(step: &'static str) -> impl Fn(String) -> Failure {
        move |message| Failure::new(step, message)
    }

    pub fn errno(&self) -> Option<Errno> {
        self.errno.map(Errno::from_raw)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let errno = match &e {
            Error::Sys { source, .. } => Some(*source as i32),
            _ => None,
        };
        Failure {
            step: "sync".into(),
            errno,
            message: e.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no answer within the time allowed (is it stuck, or its cgroup frozen?)")]
    TimedOut,
    #[error("sync {op}: {source}")]
    Sys { op: &'static str, source: Errno },
    #[error("sync message: {0}")]
    Malformed(#[from] serde_json::Error),
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Sys { op, source }
}

pub struct Channel {
    fd: OwnedFd,
}

pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl std::os::fd::AsRawFd for Channel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Channel {
    /// Makes `recv` and `recv_fd` fail once `timeout` passes without a
    /// message (`None`: wait as long as it takes).
    pub fn set_recv_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), Error> {
        let tv = nix::sys::time::TimeVal::from(libc::timeval {
            tv_sec: timeout.map(|t| t.as_secs() as libc::time_t).unwrap_or(0),
            tv_usec: timeout
                .map(|t| t.subsec_micros() as libc::suseconds_t)
                .unwrap_or(0),
        });
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(sys("timeout"))
    }

    pub fn send(&self, msg: &Msg) -> Result<(), Error> {
        let data = serde_json::to_vec(msg).expect("sync message serializes");
        send(self.fd.as_raw_fd(), &data, MsgFlags::empty())
            .map(|_| ())
            .map_err(sys("send"))
    }

    /// Sends a message with a file descriptor attached (SCM_RIGHTS).
    pub fn send_fd(&self, msg: &Msg, fd: &OwnedFd) -> Result<(), Error> {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let data = serde_json::to_vec(msg).expect("sync message serializes");
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[std::io::IoSlice::new(&data)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map(|_| ())
        .map_err(sys("send"))
    }

    /// Receives one message and the descriptor sent with it, if any.
    pub fn recv_fd(&self) -> Result<(Option<Msg>, Option<OwnedFd>), Error> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        use std::os::fd::FromRawFd;
        let mut buf = vec![0u8; 1 << 20];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(Error::TimedOut),
                Err(e) => return Err(sys("recv")(e)),
                Ok(m) => {
                    let mut fd = None;
                    for c in m.cmsgs().map_err(sys("recv"))? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            // SAFETY: the kernel just gave us these descriptors.
                            fd = fds.first().map(|f| unsafe { OwnedFd::from_raw_fd(*f) });
                        }
                    }
                    break (m.bytes, fd);
                }
            }
        };
        if n == 0 {
            return Ok((None, fd));
        }
        let msg = serde_json::from_slice(&buf[..n])?;
        Ok((Some(msg), fd))
    }

    /// Receives one message; `None` when the peer closed its end.
    pub fn recv(&self) -> Result<Option<Msg>, Error> {
        let mut buf = vec![0u8; 1 << 20];
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(Error::TimedOut),
                r => break r.map_err(sys("recv"))?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&buf[..n])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_crosses_the_channel_with_its_step_and_errno() {
        let (parent, child) = pair().unwrap();
        let sent = Failure::sys("user", "setuid 1000", Errno::EPERM);
        child.send(&Msg::Failed(sent.clone())).unwrap();
        let Some(Msg::Failed(got)) = parent.recv().unwrap() else {
            panic!("no failure received");
        };
        assert_eq!(got, sent);
        assert_eq!(got.errno(), Some(Errno::EPERM));
        let err = crate::Error::from(got);
        assert_eq!(
            err.to_string(),
            "container init: setuid 1000: EPERM: Operation not permitted"
        );
        assert!(matches!(err, crate::Error::Setup(f) if f.step == "user"));
    }

    #[test]
    fn a_silent_peer_times_out_and_a_closed_one_is_eof() {
        let (parent, child) = pair().unwrap();
        parent
            .set_recv_timeout(Some(std::time::Duration::from_millis(10)))
            .unwrap();
        assert!(matches!(parent.recv(), Err(Error::TimedOut)));
        drop(child);
        assert!(matches!(parent.recv(), Ok(None)));
    }
}
