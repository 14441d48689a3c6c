//! The veth pair: made, configured (addresses, MAC, up) and removed.
use super::run::{netns_path, Ns, Tool};
use super::{link_err, Result, VethConfig};

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
    if link_exists(&cfg.host_if, host)? {
        return Err(link_err(
            cfg,
            "an interface with this name already exists on the host side; pick another host name or remove it".into(),
        ));
    }
    let pid_s = pid.to_string();
    // The peer is created directly inside the container's namespace, so its
    // name never clashes with host interfaces.
    ip(
        cfg,
        host,
        &[
            "link",
            "add",
            &cfg.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &cfg.container_if,
            "netns",
            &pid_s,
        ],
    )?;
    if let Err(e) = configure(cfg, pid, host) {
        let _ = ip(cfg, host, &["link", "del", "dev", &cfg.host_if]);
        return Err(e);
    }
    Ok(())
}

fn configure(cfg: &VethConfig, pid: i32, host: Ns) -> Result<()> {
    let ct = Ns(Some(pid));
    let c = cfg.container_if.as_str();
    if let Some(mac) = &cfg.mac {
        ip(cfg, ct, &["link", "set", "dev", c, "address", mac])?;
    }
    if let Some(a) = &cfg.address {
        ip(cfg, ct, &["addr", "add", a, "dev", c])?;
    }
    ip(cfg, ct, &["link", "set", "dev", c, "up"])?;
    ip(cfg, ct, &["link", "set", "dev", "lo", "up"])?;
    if let Some(a) = &cfg.host_address {
        ip(cfg, host, &["addr", "add", a, "dev", &cfg.host_if])?;
    }
    ip(cfg, host, &["link", "set", "dev", &cfg.host_if, "up"])?;
    Ok(())
}

/// Configures the host end of a pair someone else created (CRIU recreates
/// the pair on restore): its address, then up.
pub fn configure_host(cfg: &VethConfig) -> Result<()> {
    let host = Ns(None);
    if let Some(a) = &cfg.host_address {
        ip(cfg, host, &["addr", "replace", a, "dev", &cfg.host_if])?;
    }
    ip(cfg, host, &["link", "set", "dev", &cfg.host_if, "up"])
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
