//! Netlink dumps (links, addresses, routes, rules, nftables tables) of a
//! process's network namespace, asked of the kernel directly: no tool is
//! started, so a dump costs microseconds, not a process spawn.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const HDR_LEN: usize = 16;

pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTM_GETRULE: u16 = 34;
/// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE`.
pub(super) const NFT_GETTABLE: u16 = (10 << 8) | 1;

/// A netlink socket of `protocol` in the network namespace of `pid`
/// (a socket belongs to the namespace it was made in: a short-lived
/// thread enters the namespace, makes it and ends).
pub(super) fn socket_in(pid: i32, protocol: i32) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on a descriptor we own; setns changes
            // only this thread, which ends right after.
            unsafe {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    protocol,
                );
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(OwnedFd::from_raw_fd(fd))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netlink thread panicked")))
    })
}

/// Sends a dump request of `typ` with `body` and returns the body of every
/// reply message.
pub(super) fn dump(fd: &OwnedFd, typ: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let mut req = Vec::with_capacity(HDR_LEN + body.len());
    req.extend_from_slice(&((HDR_LEN + body.len()) as u32).to_ne_bytes());
    req.extend_from_slice(&typ.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(body);
    // SAFETY: the buffer is valid for its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= HDR_LEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let mtype = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < HDR_LEN || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let msg = &rest[HDR_LEN..len];
            match mtype {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = msg
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(out);
                }
                _ => out.push(msg.to_vec()),
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
}

/// Sends one request of `typ` with `body` and waits for the kernel's
/// acknowledgement.
pub(super) fn request(fd: &OwnedFd, typ: u16, body: &[u8]) -> io::Result<()> {
    const NLM_F_ACK: u16 = 4;
    let mut req = Vec::with_capacity(HDR_LEN + body.len());
    req.extend_from_slice(&((HDR_LEN + body.len()) as u32).to_ne_bytes());
    req.extend_from_slice(&typ.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(body);
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < HDR_LEN + 4 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no netlink acknowledgement",
        ));
    }
    match i32::from_ne_bytes(buf[HDR_LEN..HDR_LEN + 4].try_into().expect("4 bytes")) {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(-code)),
    }
}

/// Brings `lo` (always interface 1) up in the network namespace of `pid`.
pub(super) fn loopback_up(pid: i32) -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    let fd = socket_in(pid, libc::NETLINK_ROUTE)?;
    let up = libc::IFF_UP as u32;
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&1i32.to_ne_bytes());
    body.extend_from_slice(&up.to_ne_bytes());
    body.extend_from_slice(&up.to_ne_bytes());
    request(&fd, RTM_NEWLINK, &body)
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes (type, payload) of a message body after its fixed
/// header of `fixed` bytes.
pub(super) fn attrs(body: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = body.get(fixed..).unwrap_or(&[]);
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let typ = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        out.push((typ, &rest[4..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_aligned() {
        // fixed header of 4 bytes, then a 5-byte attribute (padded to 8)
        // and a 8-byte one.
        let mut b = vec![0u8; 4];
        b.extend_from_slice(&5u16.to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        b.extend_from_slice(&[b'x', 0, 0, 0]);
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&4u16.to_ne_bytes());
        b.extend_from_slice(&1500u32.to_ne_bytes());
        let a = attrs(&b, 4);
        assert_eq!(a, vec![(3, &b"x"[..]), (4, &1500u32.to_ne_bytes()[..])]);
        // A length past the end stops the walk instead of reading beyond.
        let mut bad = vec![0u8; 4];
        bad.extend_from_slice(&200u16.to_ne_bytes());
        bad.extend_from_slice(&3u16.to_ne_bytes());
        assert!(attrs(&bad, 4).is_empty());
    }
}
