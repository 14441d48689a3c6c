//! Netlink dumps (links, addresses, routes, rules, nftables tables) of a
//! process's network namespace, asked of the kernel directly: no tool is
//! started, so a dump costs microseconds, not a process spawn.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const HDR_LEN: usize = 16;

pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTM_GETRULE: u16 = 34;
/// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE`.
pub(super) const NFT_GETTABLE: u16 = (10 << 8) | 1;

/// A netlink socket of `protocol` in the network namespace of `pid`.
pub(super) fn socket_in(pid: i32, protocol: i32) -> io::Result<OwnedFd> {
    super::make_in_netns_of(pid, || socket_here(protocol))
}

/// A netlink socket of `protocol` in the caller's network namespace.
pub(super) fn socket_here(protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One netlink message: the header (`typ`, `flags`, `seq`), then `body`.
pub(super) fn message(typ: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HDR_LEN + body.len());
    m.extend_from_slice(&((HDR_LEN + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&typ.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

pub(super) fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The messages (type, body after the header) of one read.
pub(super) fn receive(fd: &OwnedFd) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut rest = &buf[..n as usize];
    while rest.len() >= HDR_LEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < HDR_LEN || len > rest.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let typ = u16::from_ne_bytes([rest[4], rest[5]]);
        out.push((typ, rest[HDR_LEN..len].to_vec()));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// The (negative) errno of an NLMSG_ERROR body; 0 for an acknowledgement.
pub(super) fn error_code(body: &[u8]) -> i32 {
    body.get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(-libc::EIO)
}

/// Sends a dump request of `typ` with `body` and returns the body of every
/// reply message.
pub(super) fn dump(fd: &OwnedFd, typ: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    send(fd, &message(typ, NLM_F_REQUEST | NLM_F_DUMP, 1, body))?;
    let mut out = Vec::new();
    loop {
        for (typ, msg) in receive(fd)? {
            match typ {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    return match error_code(&msg) {
                        0 => Ok(out),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    }
                }
                _ => out.push(msg),
            }
        }
    }
}

/// Sends one request of `typ` with `body` and waits for the kernel's
/// acknowledgement.
pub(super) fn request(fd: &OwnedFd, typ: u16, body: &[u8]) -> io::Result<()> {
    request_flags(fd, typ, 0, body)
}

/// Sends `req` and reads the kernel's acknowledgement.
fn ack(fd: &OwnedFd, req: &[u8]) -> io::Result<()> {
    send(fd, req)?;
    match receive(fd)?.first() {
        Some((NLMSG_ERROR, body)) if body.len() >= 4 => match error_code(body) {
            0 => Ok(()),
            code => Err(io::Error::from_raw_os_error(-code)),
        },
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no netlink acknowledgement",
        )),
    }
}

/// Brings `lo` (always interface 1) up in the network namespace of `pid`.
pub(super) fn loopback_up(pid: i32) -> io::Result<()> {
    link_up(&socket_in(pid, libc::NETLINK_ROUTE)?, 1)
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

/// One netlink attribute: header, payload, padding.
pub(super) fn attr(out: &mut Vec<u8>, typ: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&typ.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

/// A nested attribute whose payload `fill` writes.
pub(super) fn nested(out: &mut Vec<u8>, typ: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(typ | 0x8000).to_ne_bytes());
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

pub(super) fn name_z(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// `ifinfomsg` for interface `index` with `flags` changed under `change`.
fn ifinfo(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLM_F_CREATE_EXCL: u16 = 0x400 | 0x200;
/// `ip addr replace`: the address is set whether or not it was there.
const NLM_F_CREATE_REPLACE: u16 = 0x400 | 0x100;
// rtnetlink attribute types (linux/if_link.h, linux/if_addr.h), for this
// module's requests and own_netns's reading of dumps.
pub(super) const IFLA_ADDRESS: u16 = 1;
pub(super) const IFLA_IFNAME: u16 = 3;
pub(super) const IFLA_MTU: u16 = 4;
pub(super) const IFA_ADDRESS: u16 = 1;
pub(super) const IFA_LOCAL: u16 = 2;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

/// Sends a request with extra header flags (create, exclusive).
fn request_flags(fd: &OwnedFd, typ: u16, extra: u16, body: &[u8]) -> io::Result<()> {
    ack(
        fd,
        &message(typ, NLM_F_REQUEST | NLM_F_ACK | extra, 1, body),
    )
}

/// The interface index of `name` in the namespace of socket `fd`.
pub(super) fn index_of(fd: &OwnedFd, name: &str) -> io::Result<i32> {
    for m in dump(fd, 18, &[0u8; 16])? {
        if m.len() < 16 {
            continue;
        }
        let found = attrs(&m, 16).iter().any(|(t, v)| {
            *t == IFLA_IFNAME && v.split(|b| *b == 0).next() == Some(name.as_bytes())
        });
        if found {
            return Ok(i32::from_ne_bytes(m[4..8].try_into().expect("4 bytes")));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface {name}"),
    ))
}

/// Makes the pair: `host` in the namespace of socket `fd`, `peer` (with
/// `mac`, if any) in the namespace `peer_ns`.
pub(super) fn add_veth(
    fd: &OwnedFd,
    host: &str,
    peer: &str,
    peer_ns: &std::fs::File,
    mac: Option<[u8; 6]>,
) -> io::Result<()> {
    let mut b = ifinfo(0, 0, 0);
    attr(&mut b, IFLA_IFNAME, &name_z(host));
    nested(&mut b, IFLA_LINKINFO, |b| {
        attr(b, IFLA_INFO_KIND, b"veth");
        nested(b, IFLA_INFO_DATA, |b| {
            nested(b, VETH_INFO_PEER, |b| {
                b.extend_from_slice(&ifinfo(0, 0, 0));
                attr(b, IFLA_IFNAME, &name_z(peer));
                attr(
                    b,
                    IFLA_NET_NS_FD,
                    &(peer_ns.as_raw_fd() as u32).to_ne_bytes(),
                );
                if let Some(m) = mac {
                    attr(b, IFLA_ADDRESS, &m);
                }
            });
        });
    });
    request_flags(fd, RTM_NEWLINK, NLM_F_CREATE_EXCL, &b)
}

/// Sets `addr`/`prefix` on interface `name` (as `ip addr replace`) and
/// brings it up.
pub(super) fn address_and_up(
    fd: &OwnedFd,
    name: &str,
    addr: Option<(std::net::IpAddr, u8)>,
) -> io::Result<()> {
    let index = address(fd, name, addr)?;
    link_up(fd, index)
}

/// Brings interface `index` up.
pub(super) fn link_up(fd: &OwnedFd, index: i32) -> io::Result<()> {
    let up = libc::IFF_UP as u32;
    request(fd, RTM_NEWLINK, &ifinfo(index, up, up))
}

/// Sets `addr`/`prefix` on interface `name` (as `ip addr replace`), leaving
/// its link state alone; returns its index.
pub(super) fn address(
    fd: &OwnedFd,
    name: &str,
    addr: Option<(std::net::IpAddr, u8)>,
) -> io::Result<i32> {
    let index = index_of(fd, name)?;
    if let Some((ip, prefix)) = addr {
        let (family, bytes) = match ip {
            std::net::IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            std::net::IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let mut b = vec![family, prefix, 0, 0];
        b.extend_from_slice(&(index as u32).to_ne_bytes());
        attr(&mut b, 2, &bytes); // IFA_LOCAL
        attr(&mut b, 1, &bytes); // IFA_ADDRESS
        request_flags(fd, RTM_NEWADDR, NLM_F_CREATE_REPLACE, &b)?;
    }
    Ok(index)
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

    #[test]
    fn nested_attributes_carry_their_whole_length() {
        let mut b = Vec::new();
        nested(&mut b, IFLA_LINKINFO, |b| {
            attr(b, IFLA_INFO_KIND, b"veth");
            nested(b, IFLA_INFO_DATA, |b| attr(b, IFLA_IFNAME, &name_z("eth0")));
        });
        let outer = attrs(&b, 0);
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, IFLA_LINKINFO);
        let inner = attrs(outer[0].1, 0);
        assert_eq!(inner[0], (IFLA_INFO_KIND, &b"veth"[..]));
        let data = attrs(inner[1].1, 0);
        assert_eq!(data, vec![(IFLA_IFNAME, &b"eth0\0"[..])]);
    }
}
