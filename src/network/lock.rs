//! Holding a container's traffic while it is frozen: every packet through
//! the host end is dropped (so TCP peers retransmit once it is released).
use serde::{Deserialize, Serialize};

use super::run::{Ns, Tool};
use super::{netlink, netlink_err, nft};
use super::{Result, VethConfig};

/// How traffic through the host end is held while a container is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMethod {
    Iptables,
    Nftables,
    Skip,
}

const IPTABLES_RULES: [(&str, &str); 4] = [
    ("INPUT", "-i"),
    ("FORWARD", "-i"),
    ("FORWARD", "-o"),
    ("OUTPUT", "-o"),
];

/// nft table names allow letters, digits and `_`.
fn nft_table(cfg: &VethConfig) -> String {
    let name: String = cfg
        .host_if
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("ferry_lock_{name}")
}

/// An nfnetlink socket in the host end's namespace.
fn nft_socket(cfg: &VethConfig, ns: Option<i32>) -> Result<std::os::fd::OwnedFd> {
    match ns {
        Some(p) => netlink::socket_in(p, libc::NETLINK_NETFILTER),
        None => netlink::socket_here(libc::NETLINK_NETFILTER),
    }
    .map_err(netlink_err(cfg, "opening nfnetlink"))
}

/// `program args` in the host end's namespace.
fn tool<'a>(
    cfg: &'a VethConfig,
    ns: Option<i32>,
    program: &'static str,
    args: &'a [&'a str],
) -> Tool<'a> {
    Tool {
        interface: &cfg.host_if,
        ns: Ns(ns),
        program,
        args,
    }
}

/// The lock's rules with `op` (`-I`, `-D`) for `iptables-restore
/// --noflush`, which applies them all or none.
fn iptables_batch(cfg: &VethConfig, op: &str) -> String {
    let mut text = String::from("*filter\n");
    for (chain, dir) in IPTABLES_RULES {
        text.push_str(&format!("{op} {chain} {dir} {} -j DROP\n", cfg.host_if));
    }
    text.push_str("COMMIT\n");
    text
}

/// `iptables-restore -w --noflush` of [`iptables_batch`]: one process
/// for the four rules (each `iptables` run is one, 5-10 ms).
fn iptables_restore(cfg: &VethConfig, ns: Option<i32>) -> Tool<'_> {
    tool(cfg, ns, "iptables-restore", &["-w", "--noflush"])
}

/// `iptables -w OP CHAIN DIR <host end> -j DROP` for each rule of the lock.
fn iptables(
    cfg: &VethConfig,
    ns: Option<i32>,
    op: &str,
    mut each: impl FnMut(Tool) -> Result<()>,
) -> Result<()> {
    for (chain, dir) in IPTABLES_RULES {
        let args = ["-w", op, chain, dir, &cfg.host_if, "-j", "DROP"];
        each(tool(cfg, ns, "iptables", &args))?;
    }
    Ok(())
}

/// Holds every packet through the host end.
pub fn lock(cfg: &VethConfig, method: LockMethod) -> Result<()> {
    lock_in(cfg, method, None)
}

/// Like [`lock`] for a host end in the network namespace of `host_netns_pid`.
pub fn lock_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> Result<()> {
    cfg.check_host_if()?;
    match method {
        LockMethod::Skip => Ok(()),
        LockMethod::Nftables => {
            let fd = nft_socket(cfg, host_netns_pid)?;
            nft::add_lock(&fd, &nft_table(cfg), &cfg.host_if)
                .map_err(netlink_err(cfg, "adding the traffic lock's nftables table"))
        }
        LockMethod::Iptables => {
            iptables_restore(cfg, host_netns_pid).run_with_input(Some(&iptables_batch(cfg, "-I")))
        }
    }
}

/// Releases [`lock`]; releasing a lock that is not there is not an error.
pub fn unlock(cfg: &VethConfig, method: LockMethod) -> Result<()> {
    unlock_in(cfg, method, None)
}

/// Like [`unlock`] for a host end in the network namespace of `host_netns_pid`.
pub fn unlock_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> Result<()> {
    match method {
        LockMethod::Skip => Ok(()),
        LockMethod::Nftables => {
            let fd = nft_socket(cfg, host_netns_pid)?;
            let t = nft_table(cfg);
            match nft::delete_table(&fd, &t) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                r => r.map_err(netlink_err(
                    cfg,
                    "removing the traffic lock's nftables table",
                )),
            }
        }
        LockMethod::Iptables => {
            cfg.check_host_if()?;
            let batch = iptables_batch(cfg, "-D");
            let remove = || {
                iptables_restore(cfg, host_netns_pid)
                    .run_with_input(Some(&batch))
                    .is_ok()
            };
            // The lock was there once, and is gone: two processes.
            if remove() && !remove() {
                return Ok(());
            }
            // Not there, there in part, or more than once: rule by rule.
            iptables(cfg, host_netns_pid, "-C", |check| {
                // A rule inserted twice is removed twice.
                while check.succeeds().unwrap_or(false) {
                    let mut args = check.args.to_vec();
                    args[1] = "-D";
                    tool(cfg, host_netns_pid, "iptables", &args).run()?;
                }
                Ok(())
            })
        }
    }
}

/// Whether [`lock`] is in place for this pair.
pub fn is_locked(cfg: &VethConfig, method: LockMethod) -> bool {
    is_locked_in(cfg, method, None)
}

/// Like [`is_locked`] for a host end in the network namespace of `host_netns_pid`.
pub fn is_locked_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> bool {
    match method {
        LockMethod::Skip => false,
        LockMethod::Nftables => nft_socket(cfg, host_netns_pid)
            .ok()
            .and_then(|fd| nft::has_table(&fd, &nft_table(cfg)).ok())
            .unwrap_or(false),
        LockMethod::Iptables => {
            let mut all = true;
            let _ = iptables(cfg, host_netns_pid, "-C", |check| {
                all &= check.succeeds().unwrap_or(false);
                Ok(())
            });
            all
        }
    }
}
