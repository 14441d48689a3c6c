//! ferry's built-in container network: one veth pair per container, declared
//! with the `org.ferry.net.veth` annotation.
//!
//! # Annotation
//!
//! ```text
//! org.ferry.net.veth = "host=<host-if>,container=<ct-if>,address=<ip/prefix>[,host-address=<ip/prefix>][,mac=<aa:bb:cc:dd:ee:ff>]"
//! ```
//!
//! * `host`: name of the end that stays in the runtime's network namespace.
//! * `container`: name of the end inside the container's network namespace.
//! * `address`: address with prefix length given to the container end
//!   (IPv4 or IPv6, e.g. `10.0.3.2/30` or `fd00::2/64`).
//! * `host-address` (optional): address with prefix for the host end.
//! * `mac` (optional): MAC address of the container end (unicast, six
//!   two-digit hex octets separated by `:`).
//!
//! Interface names are 1–15 bytes without `/`, `:` or whitespace. Unknown
//! keys, repeated keys, empty items and missing `host`, `container` or
//! `address` are errors. Nothing is routed: the pair is a point-to-point link
//! between the host end and the container.
//!
//! The work is done with iproute2 (`ip`), entering network namespaces with
//! `nsenter --net=/proc/<pid>/ns/net`.
use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub const VETH_ANNOTATION: &str = "org.ferry.net.veth";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("annotation {VETH_ANNOTATION}: {0}")]
    Annotation(String),
    #[error("veth {interface}: {message}")]
    Link { interface: String, message: String },
    /// A command (`ip`, `nsenter`) could not be started or failed.
    #[error("veth {interface}: `{command}` failed: {detail}")]
    Command {
        interface: String,
        command: String,
        detail: String,
    },
    /// Reading interface counters failed.
    #[error("veth {interface}: read {}: {source}", path.display())]
    Stats {
        interface: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethConfig {
    pub host_if: String,
    pub container_if: String,
    pub address: Option<String>,
    pub host_address: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

impl VethConfig {
    /// Reads the `org.ferry.net.veth` annotation; `None` when it is absent.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<VethConfig>> {
        match annotations.get(VETH_ANNOTATION) {
            None => Ok(None),
            Some(v) => VethConfig::parse(v).map(Some),
        }
    }

    /// Parses the annotation value (see the module documentation).
    pub fn parse(value: &str) -> Result<VethConfig> {
        let err = |m: String| Error::Annotation(m);
        let mut host = None;
        let mut container = None;
        let mut address = None;
        let mut host_address = None;
        let mut mac = None;
        for item in value.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(err(
                    "empty item (stray comma?); write key=value pairs separated by single commas"
                        .into(),
                ));
            }
            let Some((key, val)) = item.split_once('=') else {
                return Err(err(format!(
                    "item {item:?} has no '='; write key=value, e.g. host=veth-c1"
                )));
            };
            let slot = match key.trim() {
                "host" => &mut host,
                "container" => &mut container,
                "address" => &mut address,
                "host-address" => &mut host_address,
                "mac" => &mut mac,
                other => {
                    return Err(err(format!(
                        "unknown key {other:?}; allowed keys are host, container, address, host-address, mac"
                    )))
                }
            };
            if slot.is_some() {
                return Err(err(format!(
                    "key {:?} given twice; give it once",
                    key.trim()
                )));
            }
            *slot = Some(val.trim().to_string());
        }
        let host_if = host.ok_or_else(|| {
            err("missing host=<interface>; name the host end, e.g. host=veth-c1".into())
        })?;
        let container_if = container.ok_or_else(|| {
            err("missing container=<interface>; name the container end, e.g. container=eth0".into())
        })?;
        if address.is_none() {
            return Err(err(
                "missing address=<ip/prefix>; give the container end an address, e.g. address=10.0.3.2/30"
                    .into(),
            ));
        }
        let cfg = VethConfig {
            host_if,
            container_if,
            address,
            host_address,
            mac,
        };
        cfg.validate().map_err(|e| match e {
            Error::Link { message, .. } => Error::Annotation(message),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks names, addresses and MAC.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Error::Link {
            interface: self.host_if.clone(),
            message: m,
        };
        check_ifname("host", &self.host_if).map_err(bad)?;
        check_ifname("container", &self.container_if).map_err(bad)?;
        let mut families = Vec::new();
        if let Some(a) = &self.address {
            families.push(check_cidr("address", a).map_err(bad)?);
        }
        if let Some(a) = &self.host_address {
            families.push(check_cidr("host-address", a).map_err(bad)?);
        }
        if families.len() == 2 && families[0] != families[1] {
            return Err(bad(
                "address and host-address are of different IP families; use two IPv4 or two IPv6 addresses".into(),
            ));
        }
        if let Some(m) = &self.mac {
            check_mac(m).map_err(bad)?;
        }
        Ok(())
    }
}

fn check_ifname(what: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!(
            "{what} interface name {name:?} must be 1 to {IFNAME_MAX} bytes long; pick a shorter name"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "{what} interface name {name:?} is reserved; pick another name"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} interface name {name:?} contains {c:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Returns true for IPv4.
fn check_cidr(what: &str, cidr: &str) -> std::result::Result<bool, String> {
    let Some((ip, prefix)) = cidr.split_once('/') else {
        return Err(format!(
            "{what} {cidr:?} has no prefix length; write it as ip/prefix, e.g. 10.0.3.2/30"
        ));
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        format!("{what} {cidr:?}: {ip:?} is not an IPv4 or IPv6 address; write e.g. 10.0.3.2/30")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p: &u8| *p <= max && !prefix.starts_with('+'))
        .ok_or_else(|| {
            format!("{what} {cidr:?}: prefix length {prefix:?} must be a number from 0 to {max}")
        })?;
    let _ = prefix;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{what} {cidr:?} is not a host address; use a unicast address"
        ));
    }
    Ok(ip.is_ipv4())
}

fn check_mac(mac: &str) -> std::result::Result<(), String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let fix = "write six two-digit hex octets like 02:42:ac:11:00:02";
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || !o.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!("mac {mac:?} is malformed; {fix}"));
    }
    let first = u8::from_str_radix(octets[0], 16).unwrap_or(0);
    if first & 1 == 1 {
        return Err(format!(
            "mac {mac:?} is a multicast address; clear the lowest bit of the first octet (e.g. 02:...)"
        ));
    }
    if octets.iter().all(|o| *o == "00") {
        return Err(format!("mac {mac:?} is all zeros; {fix}"));
    }
    Ok(())
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

/// How traffic through the host end is held while a container is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMethod {
    Iptables,
    Nftables,
    Skip,
}

/// Holds every packet through the host end (dropped, so TCP peers
/// retransmit once the lock is released).
pub fn lock(cfg: &VethConfig, method: LockMethod) -> Result<()> {
    lock_in(cfg, method, None)
}

/// Like [`lock`] for a host end in the network namespace of `host_netns_pid`.
pub fn lock_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> Result<()> {
    let tool = |p: &str, a: &[&str], i: Option<&str>| tool(cfg, host_netns_pid, p, a, i);
    check_ifname("host", &cfg.host_if).map_err(|m| link_err(cfg, m))?;
    match method {
        LockMethod::Skip => Ok(()),
        LockMethod::Nftables => {
            let t = nft_table(cfg);
            let script = format!(
                "table inet {t} {{\n chain lock_in {{ type filter hook input priority -300; iifname \"{i}\" drop; }}\n chain lock_fwd {{ type filter hook forward priority -300; iifname \"{i}\" drop; oifname \"{i}\" drop; }}\n chain lock_out {{ type filter hook output priority -300; oifname \"{i}\" drop; }}\n}}\n",
                i = cfg.host_if
            );
            tool("nft", &["-f", "-"], Some(script.as_str()))
        }
        LockMethod::Iptables => {
            for (chain, dir) in IPTABLES_RULES {
                tool(
                    "iptables",
                    &["-w", "-I", chain, dir, &cfg.host_if, "-j", "DROP"],
                    None,
                )?;
            }
            Ok(())
        }
    }
}

/// Releases [`lock`]; releasing a lock that is not there is not an error.
pub fn unlock(cfg: &VethConfig, method: LockMethod) -> Result<()> {
    unlock_in(cfg, method, None)
}

/// Like [`unlock`] for a host end in the network namespace of `host_netns_pid`.
pub fn unlock_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> Result<()> {
    let tool = |p: &str, a: &[&str], i: Option<&str>| tool(cfg, host_netns_pid, p, a, i);
    match method {
        LockMethod::Skip => Ok(()),
        LockMethod::Nftables => {
            if is_locked_in(cfg, method, host_netns_pid) {
                tool("nft", &["delete", "table", "inet", &nft_table(cfg)], None)?;
            }
            Ok(())
        }
        LockMethod::Iptables => {
            for (chain, dir) in IPTABLES_RULES {
                while tool(
                    "iptables",
                    &["-w", "-C", chain, dir, &cfg.host_if, "-j", "DROP"],
                    None,
                )
                .is_ok()
                {
                    tool(
                        "iptables",
                        &["-w", "-D", chain, dir, &cfg.host_if, "-j", "DROP"],
                        None,
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// Whether [`lock`] is in place for this pair.
pub fn is_locked(cfg: &VethConfig, method: LockMethod) -> bool {
    is_locked_in(cfg, method, None)
}

/// Like [`is_locked`] for a host end in the network namespace of `host_netns_pid`.
pub fn is_locked_in(cfg: &VethConfig, method: LockMethod, host_netns_pid: Option<i32>) -> bool {
    let tool = |p: &str, a: &[&str], i: Option<&str>| tool(cfg, host_netns_pid, p, a, i);
    match method {
        LockMethod::Skip => false,
        LockMethod::Nftables => {
            tool("nft", &["list", "table", "inet", &nft_table(cfg)], None).is_ok()
        }
        LockMethod::Iptables => IPTABLES_RULES.iter().all(|(chain, dir)| {
            tool(
                "iptables",
                &["-w", "-C", chain, dir, &cfg.host_if, "-j", "DROP"],
                None,
            )
            .is_ok()
        }),
    }
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

fn tool(
    cfg: &VethConfig,
    netns_pid: Option<i32>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<()> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let err = |detail: String| Error::Command {
        interface: cfg.host_if.clone(),
        command: command.clone(),
        detail,
    };
    let mut cmd = match netns_pid {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns_path(pid).display()))
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    let mut child = cmd
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("{e}; install nftables and iptables")))?;
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    drop(input);
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let detail = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
        Err(err(if detail.is_empty() {
            out.status.to_string()
        } else {
            detail
        }))
    }
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

/// Deletes the host end (and with it the pair) if it still exists.
pub fn remove(cfg: &VethConfig) -> Result<()> {
    remove_in(cfg, None)
}

/// Like [`remove`] for a host end living in the namespace of `host_netns_pid`.
pub fn remove_in(cfg: &VethConfig, host_netns_pid: Option<i32>) -> Result<()> {
    check_ifname("host", &cfg.host_if).map_err(|m| link_err(cfg, m))?;
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

/// Counters of the host end of the pair.
pub fn host_stats(cfg: &VethConfig) -> Result<InterfaceStats> {
    let dir = Path::new("/sys/class/net")
        .join(&cfg.host_if)
        .join("statistics");
    check_ifname("host", &cfg.host_if).map_err(|m| link_err(cfg, m))?;
    let read = |f: &str| -> Result<u64> {
        let path = dir.join(f);
        let text = fs::read_to_string(&path).map_err(|source| Error::Stats {
            interface: cfg.host_if.clone(),
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| Error::Link {
            interface: cfg.host_if.clone(),
            message: format!("{}: not a number: {:?}", path.display(), text.trim()),
        })
    };
    Ok(InterfaceStats {
        name: cfg.host_if.clone(),
        rx_bytes: read("rx_bytes")?,
        rx_packets: read("rx_packets")?,
        rx_errors: read("rx_errors")?,
        rx_dropped: read("rx_dropped")?,
        tx_bytes: read("tx_bytes")?,
        tx_packets: read("tx_packets")?,
        tx_errors: read("tx_errors")?,
        tx_dropped: read("tx_dropped")?,
    })
}

/// Counters of the host end living in the namespace of `host_netns_pid`
/// (read from `/proc/<pid>/net/dev`, which shows that namespace).
pub fn host_stats_in(cfg: &VethConfig, host_netns_pid: Option<i32>) -> Result<InterfaceStats> {
    let Some(hpid) = host_netns_pid else {
        return host_stats(cfg);
    };
    let path = PathBuf::from(format!("/proc/{hpid}/net/dev"));
    let text = fs::read_to_string(&path).map_err(|source| Error::Stats {
        interface: cfg.host_if.clone(),
        path: path.clone(),
        source,
    })?;
    parse_net_dev(&text, &cfg.host_if).ok_or_else(|| Error::Link {
        interface: cfg.host_if.clone(),
        message: format!("not listed in {}", path.display()),
    })
}

/// Parses one interface's line of `/proc/net/dev`.
fn parse_net_dev(text: &str, name: &str) -> Option<InterfaceStats> {
    for line in text.lines().skip(2) {
        let (ifname, rest) = line.split_once(':')?;
        if ifname.trim() != name {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 16 {
            return None;
        }
        return Some(InterfaceStats {
            name: name.to_string(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_dropped: v[11],
        });
    }
    None
}

/// A network namespace: the caller's (`None`) or that of a process.
#[derive(Clone, Copy)]
struct Ns(Option<i32>);

fn netns_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

fn link_err(cfg: &VethConfig, message: String) -> Error {
    Error::Link {
        interface: cfg.host_if.clone(),
        message,
    }
}

fn ip_command(ns: Ns, args: &[&str]) -> Command {
    let mut c = match ns.0 {
        None => {
            let mut c = Command::new("ip");
            c.args(args);
            c
        }
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns_path(pid).display()))
                .arg("ip")
                .args(args);
            c
        }
    };
    // An `ip` that outlives a killed ferry could make a link after
    // `delete --force` looked for it: it dies with the thread that runs it
    // (which waits for it).
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe and touch only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // ferry died before the request was made.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    c
}

fn render(ns: Ns, args: &[&str]) -> String {
    let prefix = match ns.0 {
        None => String::new(),
        Some(pid) => format!("nsenter --net={} ", netns_path(pid).display()),
    };
    format!("{prefix}ip {}", args.join(" "))
}

fn ip(cfg: &VethConfig, ns: Ns, args: &[&str]) -> Result<()> {
    let out = ip_command(ns, args).output().map_err(|e| Error::Command {
        interface: cfg.host_if.clone(),
        command: render(ns, args),
        detail: format!("{e}; install iproute2 (ip) and util-linux (nsenter)"),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let detail = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Command {
        interface: cfg.host_if.clone(),
        command: render(ns, args),
        detail: if detail.is_empty() {
            out.status.to_string()
        } else {
            detail
        },
    })
}

fn link_exists(name: &str, ns: Ns) -> Result<bool> {
    if ns.0.is_none() {
        return Ok(link_in_current_netns(name));
    }
    let args = ["link", "show", "dev", name];
    let out = ip_command(ns, &args).output().map_err(|e| Error::Command {
        interface: name.to_string(),
        command: render(ns, &args),
        detail: e.to_string(),
    })?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(v: &str) -> HashMap<String, String> {
        HashMap::from([(VETH_ANNOTATION.to_string(), v.to_string())])
    }

    fn parse_err(v: &str) -> String {
        match VethConfig::from_annotations(&ann(v)) {
            Ok(c) => panic!("{v:?} parsed as {c:?}"),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "one line: {s}");
                assert!(s.starts_with("annotation org.ferry.net.veth: "), "{s}");
                s
            }
        }
    }

    #[test]
    fn absent_annotation_is_none() {
        assert_eq!(VethConfig::from_annotations(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn full_and_minimal_forms() {
        let c = VethConfig::from_annotations(&ann(
            "host=veth-c1,container=eth0,address=10.0.3.2/30,host-address=10.0.3.1/30,mac=02:42:ac:11:00:02",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            VethConfig {
                host_if: "veth-c1".into(),
                container_if: "eth0".into(),
                address: Some("10.0.3.2/30".into()),
                host_address: Some("10.0.3.1/30".into()),
                mac: Some("02:42:ac:11:00:02".into()),
            }
        );
        let c = VethConfig::from_annotations(&ann(" host=h , container=c , address=fd00::2/64 "))
            .unwrap()
            .unwrap();
        assert_eq!(c.host_if, "h");
        assert_eq!(c.address.as_deref(), Some("fd00::2/64"));
        assert_eq!(c.host_address, None);
        assert_eq!(c.mac, None);
        // Upper-case hex and a 15-byte name are fine.
        VethConfig::parse(
            "host=abcdefghijklmno,container=c,address=10.1.1.1/32,mac=0A:BB:CC:DD:EE:FF",
        )
        .unwrap();
    }

    #[test]
    fn each_bad_case_names_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("container=c,address=10.0.0.2/30", "missing host="),
            ("host=h,address=10.0.0.2/30", "missing container="),
            ("host=h,container=c", "missing address="),
            (
                "host=h,container=c,address=10.0.0.2/30,colour=red",
                "\"colour\"",
            ),
            (
                "host=h,host=i,container=c,address=10.0.0.2/30",
                "given twice",
            ),
            ("host=h,,container=c,address=10.0.0.2/30", "empty item"),
            ("host=h,container=c,address=10.0.0.2/30,", "empty item"),
            ("host=h,container,address=10.0.0.2/30", "no '='"),
            ("host=,container=c,address=10.0.0.2/30", "1 to 15"),
            (
                "host=abcdefghijklmnop,container=c,address=10.0.0.2/30",
                "1 to 15",
            ),
            ("host=a/b,container=c,address=10.0.0.2/30", "'/'"),
            ("host=h,container=a:b,address=10.0.0.2/30", "':'"),
            ("host=h,container=a b,address=10.0.0.2/30", "' '"),
            ("host=..,container=c,address=10.0.0.2/30", "reserved"),
            ("host=h,container=c,address=10.0.0.2", "no prefix length"),
            (
                "host=h,container=c,address=10.0.0.256/24",
                "not an IPv4 or IPv6",
            ),
            ("host=h,container=c,address=10.0.0.2/33", "0 to 32"),
            ("host=h,container=c,address=fd00::2/129", "0 to 128"),
            ("host=h,container=c,address=10.0.0.2/x", "prefix length"),
            ("host=h,container=c,address=0.0.0.0/0", "not a host address"),
            (
                "host=h,container=c,address=10.0.0.2/30,host-address=fd00::1/64",
                "families",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=02:42:ac:11:00",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=02:42:ac:11:00:zz",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=0242.ac11.0002",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=01:00:5e:00:00:01",
                "multicast",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=00:00:00:00:00:00",
                "all zeros",
            ),
        ];
        for (value, needle) in cases {
            let e = parse_err(value);
            assert!(e.contains(needle), "{value:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn net_dev_parsing() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  vh1:   1234      10    1    2    0     0          0         0     5678      20    3    4    0     0       0          0\n";
        let s = parse_net_dev(text, "vh1").unwrap();
        assert_eq!(
            (s.rx_bytes, s.rx_packets, s.rx_errors, s.rx_dropped),
            (1234, 10, 1, 2)
        );
        assert_eq!(
            (s.tx_bytes, s.tx_packets, s.tx_errors, s.tx_dropped),
            (5678, 20, 3, 4)
        );
        assert!(parse_net_dev(text, "nope").is_none());
    }
}
