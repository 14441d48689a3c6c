//! The message channel between `ferry create` and the container's init while
//! the container is being set up (a SOCK_SEQPACKET socketpair).
use std::os::fd::{AsRawFd, OwnedFd};

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
    /// Child → parent: setup failed.
    Failed(String),
}

const TIMED_OUT: &str = "no answer within the time allowed (is it stuck, or its cgroup frozen?)";

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
    pub fn set_recv_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), String> {
        let tv = nix::sys::time::TimeVal::from(libc::timeval {
            tv_sec: timeout.map(|t| t.as_secs() as libc::time_t).unwrap_or(0),
            tv_usec: timeout
                .map(|t| t.subsec_micros() as libc::suseconds_t)
                .unwrap_or(0),
        });
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| format!("sync timeout: {e}"))
    }

    pub fn send(&self, msg: &Msg) -> Result<(), String> {
        let data = serde_json::to_vec(msg).expect("sync message serializes");
        send(self.fd.as_raw_fd(), &data, MsgFlags::empty())
            .map(|_| ())
            .map_err(|e| format!("sync send: {e}"))
    }

    /// Sends a message with a file descriptor attached (SCM_RIGHTS).
    pub fn send_fd(&self, msg: &Msg, fd: &OwnedFd) -> Result<(), String> {
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
        .map_err(|e| format!("sync send: {e}"))
    }

    /// Receives one message and the descriptor sent with it, if any.
    pub fn recv_fd(&self) -> Result<(Option<Msg>, Option<OwnedFd>), String> {
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
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Err(TIMED_OUT.into()),
                Err(e) => return Err(format!("sync recv: {e}")),
                Ok(m) => {
                    let mut fd = None;
                    for c in m.cmsgs().map_err(|e| format!("sync recv: {e}"))? {
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
        let msg = serde_json::from_slice(&buf[..n]).map_err(|e| format!("sync message: {e}"))?;
        Ok((Some(msg), fd))
    }

    /// Receives one message; `None` when the peer closed its end.
    pub fn recv(&self) -> Result<Option<Msg>, String> {
        let mut buf = vec![0u8; 1 << 20];
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Err(TIMED_OUT.into()),
                r => break r.map_err(|e| format!("sync recv: {e}"))?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| format!("sync message: {e}"))
    }
}
