//! Whether a container's network namespace holds only what ferry put there
//! (`lo` and its veth end with the annotation's address, the kernel's own
//! routes and rules, no firewall): then a restore rebuilds it from the
//! configuration instead of CRIU dumping and replaying it (which costs
//! `ip`, `iptables-save` and `nft` runs on both sides).
use serde::{Deserialize, Serialize};

use super::netlink::{
    self, attrs, dump, IFA_ADDRESS, IFA_LOCAL, IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU,
};
use super::VethConfig;

const RTPROT_KERNEL: u8 = 2;
/// A veth's MTU unless someone changed it.
const DEFAULT_MTU: u32 = 1500;

/// What a restore needs to rebuild the namespace as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnNetns {
    /// `lo` was up.
    pub lo_up: bool,
    /// The container end's MAC address (kept even when the annotation
    /// names none, so the link-local address stays the same too).
    pub mac: Option<String>,
}

/// Why a namespace is not ferry's own (CRIU dumps it then).
pub type Changed = String;

struct Link {
    index: i32,
    name: String,
    up: bool,
    mtu: u32,
    mac: Option<String>,
}

fn links(fd: &std::os::fd::OwnedFd) -> std::io::Result<Vec<Link>> {
    let mut out = Vec::new();
    for m in dump(fd, netlink::RTM_GETLINK, &[0u8; 16])? {
        if m.len() < 16 {
            continue;
        }
        let index = i32::from_ne_bytes(m[4..8].try_into().expect("4 bytes"));
        let flags = u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes"));
        let mut l = Link {
            index,
            name: String::new(),
            up: flags & libc::IFF_UP as u32 != 0,
            mtu: 0,
            mac: None,
        };
        for (t, v) in attrs(&m, 16) {
            match t {
                IFLA_IFNAME => {
                    l.name = String::from_utf8_lossy(v).trim_end_matches('\0').into();
                }
                IFLA_MTU if v.len() == 4 => {
                    l.mtu = u32::from_ne_bytes(v.try_into().expect("4 bytes"));
                }
                IFLA_ADDRESS if v.len() == 6 => {
                    let hex: Vec<String> = v.iter().map(|b| format!("{b:02x}")).collect();
                    l.mac = Some(hex.join(":"));
                }
                _ => {}
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// Addresses as (interface index, "addr/prefix").
fn addresses(fd: &std::os::fd::OwnedFd) -> std::io::Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    for m in dump(fd, netlink::RTM_GETADDR, &[0u8; 8])? {
        if m.len() < 8 {
            continue;
        }
        let prefix = m[1];
        let index = u32::from_ne_bytes(m[4..8].try_into().expect("4 bytes")) as i32;
        let a = attrs(&m, 8);
        let addr = a
            .iter()
            .find(|(t, _)| *t == IFA_LOCAL)
            .or_else(|| a.iter().find(|(t, _)| *t == IFA_ADDRESS))
            .and_then(|(_, v)| ip_of(v));
        if let Some(addr) = addr {
            out.push((index, format!("{addr}/{prefix}")));
        }
    }
    Ok(out)
}

fn ip_of(v: &[u8]) -> Option<std::net::IpAddr> {
    match v.len() {
        4 => Some(<[u8; 4]>::try_from(v).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(v).ok()?.into()),
        _ => None,
    }
}

/// The address as the kernel reports it ("10.0.0.2/24" stays, "fd00::02/64"
/// becomes "fd00::2/64").
fn canonical(addr: &str) -> String {
    match addr.split_once('/') {
        Some((a, p)) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) => format!("{ip}/{p}"),
            Err(_) => addr.to_string(),
        },
        None => addr.to_string(),
    }
}

fn is_link_local_v6(addr: &str) -> bool {
    addr.starts_with("fe80:") && addr.ends_with("/64")
}

/// Inspects the network namespace of `pid` (a container whose veth, if
/// any, is `veth`): `Ok(Ok(..))` when it holds only what ferry made,
/// `Ok(Err(why))` when the container changed it.
pub fn inspect(
    pid: i32,
    veth: Option<&VethConfig>,
) -> std::io::Result<std::result::Result<OwnNetns, Changed>> {
    let fd = netlink::socket_in(pid, libc::NETLINK_ROUTE)?;
    let links = links(&fd)?;
    let mut own = OwnNetns {
        lo_up: false,
        mac: None,
    };
    let mut veth_index = None;
    for l in &links {
        match (l.name.as_str(), veth) {
            ("lo", _) => own.lo_up = l.up,
            (name, Some(v)) if name == v.container_if => {
                if l.mtu != DEFAULT_MTU {
                    return Ok(Err(format!("{name} has MTU {}", l.mtu)));
                }
                if !l.up {
                    return Ok(Err(format!("{name} is down")));
                }
                own.mac = l.mac.clone();
                veth_index = Some(l.index);
            }
            (name, _) => return Ok(Err(format!("it has interface {name}"))),
        }
    }
    if veth.is_some() && veth_index.is_none() {
        return Ok(Err("the veth end is gone".into()));
    }
    let wanted = veth.and_then(|v| v.address.as_deref()).map(canonical);
    for (index, addr) in addresses(&fd)? {
        let ok = if Some(index) == veth_index {
            Some(&addr) == wanted.as_ref() || is_link_local_v6(&addr)
        } else {
            addr == "127.0.0.1/8" || addr == "::1/128"
        };
        if !ok {
            return Ok(Err(format!("it has address {addr}")));
        }
    }
    for r in dump(&fd, netlink::RTM_GETROUTE, &[0u8; 12])? {
        if r.get(5) != Some(&RTPROT_KERNEL) {
            return Ok(Err("it has routes of its own".into()));
        }
    }
    // The kernel's rules: local, main and default (IPv4), local and main
    // (IPv6).
    let rules = dump(&fd, netlink::RTM_GETRULE, &[0u8; 12])?;
    let count = |family: i32| rules.iter().filter(|r| r[0] as i32 == family).count();
    if count(libc::AF_INET) > 3 || count(libc::AF_INET6) > 2 {
        return Ok(Err("it has routing rules of its own".into()));
    }
    if let Some(why) = firewall(pid)? {
        return Ok(Err(why));
    }
    Ok(Ok(own))
}

/// A firewall in the namespace: nftables tables (iptables-nft's too) or
/// legacy iptables tables.
fn firewall(pid: i32) -> std::io::Result<Option<Changed>> {
    for name in ["ip_tables_names", "ip6_tables_names", "arp_tables_names"] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{name}")) {
            Ok(t) if !t.trim().is_empty() => {
                return Ok(Some(format!("it has iptables tables ({name})")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let fd = match netlink::socket_in(pid, libc::NETLINK_NETFILTER) {
        Ok(fd) => fd,
        // No netfilter netlink: no nftables either.
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match dump(&fd, netlink::NFT_GETTABLE, &[0u8; 4]) {
        Ok(t) if !t.is_empty() => Ok(Some("it has nftables tables".into())),
        Ok(_) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOENT)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_as_the_kernel_prints_them() {
        assert_eq!(canonical("fd00::02/64"), "fd00::2/64");
        assert_eq!(canonical("10.0.3.2/30"), "10.0.3.2/30");
        assert!(is_link_local_v6("fe80::42:aff:fe4d:102/64"));
        assert!(!is_link_local_v6("fe80::1/10"));
    }
}
