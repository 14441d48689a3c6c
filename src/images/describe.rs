//! Human descriptions of files, sockets and filesystem types in the images.
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::proto::files::{Fd_types, File_entry, Inet_sk_entry, Unix_sk_entry};

/// The kind of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Pipe,
    Fifo,
    Tcp,
    Udp,
    Inet,
    Unix,
    Netlink,
    Packet,
    Tty,
    Eventfd,
    Eventpoll,
    Inotify,
    Fanotify,
    Signalfd,
    Timerfd,
    Namespace,
    Tun,
    Memfd,
    Bpfmap,
    Pidfd,
    External,
    Other,
}

impl FileKind {
    pub fn from_type(t: Fd_types) -> FileKind {
        match t {
            Fd_types::REG => FileKind::File,
            Fd_types::PIPE => FileKind::Pipe,
            Fd_types::FIFO => FileKind::Fifo,
            Fd_types::INETSK => FileKind::Inet,
            Fd_types::UNIXSK => FileKind::Unix,
            Fd_types::EVENTFD => FileKind::Eventfd,
            Fd_types::EVENTPOLL => FileKind::Eventpoll,
            Fd_types::INOTIFY => FileKind::Inotify,
            Fd_types::SIGNALFD => FileKind::Signalfd,
            Fd_types::PACKETSK => FileKind::Packet,
            Fd_types::TTY | Fd_types::CTL_TTY => FileKind::Tty,
            Fd_types::FANOTIFY => FileKind::Fanotify,
            Fd_types::NETLINKSK => FileKind::Netlink,
            Fd_types::NS => FileKind::Namespace,
            Fd_types::TUNF => FileKind::Tun,
            Fd_types::EXT => FileKind::External,
            Fd_types::TIMERFD => FileKind::Timerfd,
            Fd_types::MEMFD => FileKind::Memfd,
            Fd_types::BPFMAP => FileKind::Bpfmap,
            Fd_types::PIDFD => FileKind::Pidfd,
            Fd_types::UND | Fd_types::AUTOFS_PIPE => FileKind::Other,
        }
    }

    pub fn is_socket(self) -> bool {
        matches!(
            self,
            FileKind::Tcp
                | FileKind::Udp
                | FileKind::Inet
                | FileKind::Unix
                | FileKind::Netlink
                | FileKind::Packet
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Pipe => "pipe",
            FileKind::Fifo => "fifo",
            FileKind::Tcp => "tcp",
            FileKind::Udp => "udp",
            FileKind::Inet => "inet",
            FileKind::Unix => "unix",
            FileKind::Netlink => "netlink",
            FileKind::Packet => "packet",
            FileKind::Tty => "tty",
            FileKind::Eventfd => "eventfd",
            FileKind::Eventpoll => "eventpoll",
            FileKind::Inotify => "inotify",
            FileKind::Fanotify => "fanotify",
            FileKind::Signalfd => "signalfd",
            FileKind::Timerfd => "timerfd",
            FileKind::Namespace => "namespace",
            FileKind::Tun => "tun",
            FileKind::Memfd => "memfd",
            FileKind::Bpfmap => "bpfmap",
            FileKind::Pidfd => "pidfd",
            FileKind::External => "external",
            FileKind::Other => "other",
        }
    }
}

/// Kind and description of one files.img entry.
pub fn describe(f: &File_entry) -> (FileKind, String) {
    let t = f.type_();
    let kind = FileKind::from_type(t);
    match t {
        Fd_types::REG => match f.reg.as_ref() {
            Some(r) => (kind, r.name().to_string()),
            None => (kind, "(regular file)".into()),
        },
        Fd_types::PIPE => (
            kind,
            format!(
                "pipe:[{}]",
                f.pipe.as_ref().map(|p| p.pipe_id()).unwrap_or(0)
            ),
        ),
        Fd_types::FIFO => (
            kind,
            format!(
                "fifo:[{}]",
                f.fifo.as_ref().map(|p| p.pipe_id()).unwrap_or(0)
            ),
        ),
        Fd_types::INETSK => match f.isk.as_ref() {
            Some(s) => inet(s),
            None => (kind, "(inet socket)".into()),
        },
        Fd_types::UNIXSK => match f.usk.as_ref() {
            Some(s) => (kind, unix(s)),
            None => (kind, "(unix socket)".into()),
        },
        Fd_types::NS => match f.nsf.as_ref() {
            Some(n) => (kind, format!("{}:[{}]", ns_name(n.ns_cflag()), n.ns_id())),
            None => (kind, "(namespace)".into()),
        },
        Fd_types::TTY => (
            kind,
            format!(
                "tty:[{}]",
                f.tty.as_ref().map(|t| t.tty_info_id()).unwrap_or(0)
            ),
        ),
        Fd_types::MEMFD => (
            kind,
            format!(
                "memfd:[{}]",
                f.memfd.as_ref().map(|m| m.inode_id()).unwrap_or(0)
            ),
        ),
        _ => (kind, format!("{}:[{}]", kind.name(), f.id())),
    }
}

fn ns_name(cflag: u32) -> &'static str {
    match cflag as i32 {
        libc::CLONE_NEWNET => "net",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWCGROUP => "cgroup",
        _ => "ns",
    }
}

/// Addresses are stored as the kernel's network-order words, read on a
/// little-endian host.
fn addr(family: u32, words: &[u32]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if family == libc::AF_INET6 as u32 && bytes.len() >= 16 {
        let a: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        format!("[{}]", Ipv6Addr::from(a))
    } else if bytes.len() >= 4 {
        let a: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
        Ipv4Addr::from(a).to_string()
    } else {
        "*".to_string()
    }
}

fn tcp_state(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

fn inet(s: &Inet_sk_entry) -> (FileKind, String) {
    let (kind, proto) = match s.proto() as i32 {
        libc::IPPROTO_TCP => (FileKind::Tcp, "tcp"),
        libc::IPPROTO_UDP => (FileKind::Udp, "udp"),
        _ => (FileKind::Inet, "inet"),
    };
    let v6 = if s.family() == libc::AF_INET6 as u32 {
        "6"
    } else {
        ""
    };
    let src = format!("{}:{}", addr(s.family(), &s.src_addr), s.src_port());
    let text = if s.state() == 10 || s.dst_port() == 0 {
        format!("{proto}{v6} {src} ({})", tcp_state(s.state()))
    } else {
        format!(
            "{proto}{v6} {src} -> {}:{} ({})",
            addr(s.family(), &s.dst_addr),
            s.dst_port(),
            tcp_state(s.state())
        )
    };
    (kind, text)
}

fn unix(s: &Unix_sk_entry) -> String {
    let ty = match s.type_() as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unix",
    };
    let name = s.name();
    let shown = if name.is_empty() {
        String::new()
    } else if name[0] == 0 {
        format!(" @{}", String::from_utf8_lossy(&name[1..]))
    } else {
        format!(" {}", String::from_utf8_lossy(name))
    };
    let peer = if s.peer() != 0 {
        format!(" peer:[{}]", s.peer())
    } else {
        String::new()
    };
    format!(
        "unix {ty}{shown} ({}) ino:[{}]{peer}",
        tcp_state(s.state()),
        s.ino()
    )
}

/// Name of CRIU's `fstype` enum value (images/mnt.proto).
pub fn fstype_name(v: u32) -> &'static str {
    match v {
        1 => "proc",
        2 => "sysfs",
        3 => "devtmpfs",
        4 => "binfmt_misc",
        5 => "tmpfs",
        6 => "devpts",
        7 => "simfs",
        8 => "pstore",
        9 => "securityfs",
        10 => "fusectl",
        11 => "debugfs",
        12 => "cgroup",
        13 => "aufs",
        14 => "mqueue",
        15 => "fuse",
        16 => "auto",
        17 => "overlay",
        18 => "autofs",
        19 => "tracefs",
        23 => "cgroup2",
        _ => "unsupported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_addresses_and_states() {
        let mut s = Inet_sk_entry::new();
        s.set_family(libc::AF_INET as u32);
        s.set_proto(libc::IPPROTO_TCP as u32);
        s.set_state(1);
        s.set_src_port(8080);
        s.set_dst_port(40000);
        // 127.0.0.1 as the kernel stores it, read little-endian.
        s.src_addr = vec![u32::from_le_bytes([127, 0, 0, 1])];
        s.dst_addr = vec![u32::from_le_bytes([10, 1, 2, 3])];
        let (k, d) = inet(&s);
        assert_eq!(k, FileKind::Tcp);
        assert_eq!(d, "tcp 127.0.0.1:8080 -> 10.1.2.3:40000 (ESTABLISHED)");
        s.set_state(10);
        s.set_dst_port(0);
        assert_eq!(inet(&s).1, "tcp 127.0.0.1:8080 (LISTEN)");
    }

    #[test]
    fn unix_abstract_names() {
        let mut s = Unix_sk_entry::new();
        s.set_type(libc::SOCK_STREAM as u32);
        s.set_state(10);
        s.set_ino(77);
        s.set_name(b"\0ferry".to_vec());
        assert_eq!(unix(&s), "unix stream @ferry (LISTEN) ino:[77]");
    }
}
