//! The veth pair: made, configured (addresses, MAC, up) and removed.
use super::netlink;
use super::run::{netns_path, Ns, Tool};
use super::{link_err, netlink_err, Error, Result, VethConfig};

/// `ip ARGS` in `ns`, failures naming the pair's host end.
fn ip(cfg: &VethConfig, ns: Ns, args: &[&str]) -> Result<()> {
    Tool {
        interface: &cfg.host_if,
        ns,
        program: "ip",
        args,
    }
    .run()
}

/// Creates the pair, moves the container end into the network namespace of
/// `pid`, sets addresses/MAC and brings both ends up. Nothing is left behind
/// on failure.
pub fn create(cfg: &VethConfig, pid: i32) -> Result<()> {
    create_in(cfg, pid, None)
}

/// Like [`create`], but the host end lives in the network namespace of
/// `host_netns_pid` instead of the caller's.
pub fn create_in(cfg: &VethConfig, pid: i32, host_netns_pid: Option<i32>) -> Result<()> {
    make(cfg, pid, host_netns_pid, true)
}

/// Like [`create`], with the host end left down: no traffic passes until
/// [`release_host_end`]. A restore holds the network this way while CRIU
/// restores the tree, instead of CRIU's firewall lock inside the namespace
/// (whose removal waits for an RCU grace period).
pub fn create_held(cfg: &VethConfig, pid: i32) -> Result<()> {
    make(cfg, pid, None, false)
}

/// Brings the host end of a pair made by [`create_held`] up.
pub fn release_host_end(cfg: &VethConfig) -> Result<()> {
    let hfd =
        netlink::socket_here(libc::NETLINK_ROUTE).map_err(netlink_err(cfg, "opening netlink"))?;
    netlink::index_of(&hfd, &cfg.host_if)
        .and_then(|i| netlink::link_up(&hfd, i))
        .map_err(netlink_err(cfg, "bringing the host end up"))
}

fn make(cfg: &VethConfig, pid: i32, host_netns_pid: Option<i32>, host_up: bool) -> Result<()> {
    cfg.validate()?;
    if pid <= 0 {
        return Err(link_err(
            cfg,
            format!("container pid {pid} is not a process id"),
        ));
    }
    let ct_ns = netns_path(pid);
    if !ct_ns.exists() {
        return Err(link_err(
            cfg,
            format!(
                "no network namespace at {} (is process {pid} running?)",
                ct_ns.display()
            ),
        ));
    }
    let host = Ns(host_netns_pid);
    // Over netlink: no process is started (this runs while a restore
    // holds the tree).
    let hfd = match host_netns_pid {
        Some(p) => netlink::socket_in(p, libc::NETLINK_ROUTE),
        None => netlink::socket_here(libc::NETLINK_ROUTE),
    }
    .map_err(netlink_err(cfg, "opening netlink"))?;
    if netlink::index_of(&hfd, &cfg.host_if).is_ok() {
        return Err(link_err(
            cfg,
            "an interface with this name already exists on the host side; pick another host name or remove it".into(),
        ));
    }
    let peer_ns =
        std::fs::File::open(&ct_ns).map_err(netlink_err(cfg, "opening its network namespace"))?;
    let mac = cfg.mac.as_deref().map(parse_mac).transpose()?;
    // The peer is created directly inside the container's namespace, so its
    // name never clashes with host interfaces.
    netlink::add_veth(&hfd, &cfg.host_if, &cfg.container_if, &peer_ns, mac)
        .map_err(netlink_err(cfg, "creating the veth pair"))?;
    if let Err(e) = configure(cfg, pid, &hfd, host_up) {
        let _ = ip(cfg, host, &["link", "del", "dev", &cfg.host_if]);
        return Err(e);
    }
    Ok(())
}

fn parse_mac(mac: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return Err(Error::Annotation(format!("bad MAC address {mac}")));
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)
            .map_err(|_| Error::Annotation(format!("bad MAC address {mac}")))?;
    }
    Ok(out)
}

fn parse_cidr(a: &str) -> Result<(std::net::IpAddr, u8)> {
    let bad = || Error::Annotation(format!("bad address {a}"));
    let (ip, prefix) = a.split_once('/').ok_or_else(bad)?;
    Ok((
        ip.parse().map_err(|_| bad())?,
        prefix.parse().map_err(|_| bad())?,
    ))
}

/// Addresses and links up: the container end and `lo` in the namespace of
/// `pid`, the host end through `hfd` (its address only unless `host_up`).
fn configure(cfg: &VethConfig, pid: i32, hfd: &std::os::fd::OwnedFd, host_up: bool) -> Result<()> {
    let ct = netlink::socket_in(pid, libc::NETLINK_ROUTE).map_err(netlink_err(
        cfg,
        format!("opening netlink in process {pid}'s namespace"),
    ))?;
    let addr = cfg.address.as_deref().map(parse_cidr).transpose()?;
    netlink::address_and_up(&ct, &cfg.container_if, addr).map_err(netlink_err(
        cfg,
        format!(
            "setting address {} on {} and bringing it up",
            cfg.address.as_deref().unwrap_or("(none)"),
            cfg.container_if
        ),
    ))?;
    netlink::address_and_up(&ct, "lo", None).map_err(netlink_err(cfg, "bringing lo up"))?;
    let host_addr = cfg.host_address.as_deref().map(parse_cidr).transpose()?;
    let what = format!(
        "setting address {} on {}",
        cfg.host_address.as_deref().unwrap_or("(none)"),
        cfg.host_if
    );
    let index = netlink::address(hfd, &cfg.host_if, host_addr).map_err(netlink_err(cfg, what))?;
    if host_up {
        netlink::link_up(hfd, index).map_err(netlink_err(cfg, "bringing the host end up"))?;
    }
    Ok(())
}

/// Configures the host end of a pair someone else created (CRIU recreates
/// the pair on restore): its address, then up. Over netlink, as this runs
/// while the restored tree waits.
pub fn configure_host(cfg: &VethConfig) -> Result<()> {
    cfg.check_host_if()?;
    let hfd =
        netlink::socket_here(libc::NETLINK_ROUTE).map_err(netlink_err(cfg, "opening netlink"))?;
    let addr = cfg.host_address.as_deref().map(parse_cidr).transpose()?;
    netlink::address_and_up(&hfd, &cfg.host_if, addr).map_err(netlink_err(
        cfg,
        "setting the host end's address and bringing it up",
    ))
}

/// Whether an interface `name` exists in the caller's network namespace.
pub fn link_exists_on_host(name: &str) -> bool {
    link_in_current_netns(name)
}

/// Asks the kernel in this process's network namespace (/sys/class/net
/// shows the namespace sysfs was mounted in, which `nsenter --net` keeps).
fn link_in_current_netns(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn link_exists(name: &str, ns: Ns) -> Result<bool> {
    if ns.0.is_none() {
        return Ok(link_in_current_netns(name));
    }
    Tool {
        interface: name,
        ns,
        program: "ip",
        args: &["link", "show", "dev", name],
    }
    .succeeds()
}

/// Deletes the host end (and with it the pair) if it still exists.
pub fn remove(cfg: &VethConfig) -> Result<()> {
    remove_in(cfg, None)
}

/// Like [`remove`] for a host end living in the namespace of `host_netns_pid`.
pub fn remove_in(cfg: &VethConfig, host_netns_pid: Option<i32>) -> Result<()> {
    cfg.check_host_if()?;
    let host = Ns(host_netns_pid);
    match ip(cfg, host, &["link", "del", "dev", &cfg.host_if]) {
        Ok(()) => Ok(()),
        Err(e) => {
            if link_exists(&cfg.host_if, host)? {
                Err(e)
            } else {
                Ok(())
            }
        }
    }
}
