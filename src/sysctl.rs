//! `linux.sysctl`: which keys a container may set, and setting them.
//!
//! The rules are runc's (libcontainer/configs/validate): a key is accepted
//! only when it belongs to a kernel namespace the container owns, so a
//! container can never change a setting of the host. `net.*` needs a network
//! namespace that is not ferry's own; the IPC keys (`kernel.shm*`,
//! `kernel.msg*`, `kernel.sem*`, `fs.mqueue.*`) an IPC namespace;
//! `kernel.hostname`/`kernel.domainname` a UTS namespace. Everything else
//! (`vm.*`, `kernel.printk_ratelimit`, ...) is global to the host and refused.
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The namespace a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ipc,
    Net,
    Uts,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ipc => "IPC",
            Kind::Net => "network",
            Kind::Uts => "UTS",
        }
    }

    fn ns_type(self) -> LinuxNamespaceType {
        match self {
            Kind::Ipc => LinuxNamespaceType::Ipc,
            Kind::Net => LinuxNamespaceType::Network,
            Kind::Uts => LinuxNamespaceType::Uts,
        }
    }

    /// The `type` in linux.namespaces.
    fn oci_type(self) -> &'static str {
        match self {
            Kind::Ipc => "ipc",
            Kind::Net => "network",
            Kind::Uts => "uts",
        }
    }

    /// The entry under /proc/self/ns.
    fn proc_name(self) -> &'static str {
        match self {
            Kind::Ipc => "ipc",
            Kind::Net => "net",
            Kind::Uts => "uts",
        }
    }
}

/// IPC namespace keys (the kernel's ipc/ipc_sysctl.c), besides `fs.mqueue.*`.
const IPC_KEYS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.msg_next_id",
    "kernel.sem",
    "kernel.sem_next_id",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_next_id",
    "kernel.shm_rmid_forced",
];

/// Checks the shape of a key: dotted, non-empty components, nothing that
/// could name a path outside /proc/sys.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty key".into());
    }
    if key.contains('/') {
        return Err(format!(
            "key {key:?} contains '/': give the dotted name, e.g. net.ipv4.ip_forward"
        ));
    }
    if key.contains('\0') {
        return Err(format!("key {key:?} contains a NUL byte"));
    }
    if key.split('.').any(str::is_empty) {
        return Err(format!(
            "key {key:?} has an empty component (leading, trailing or doubled '.')"
        ));
    }
    Ok(())
}

/// The namespace `key` belongs to, or `None` when it is global to the host.
pub fn kind_of(key: &str) -> Option<Kind> {
    if key.starts_with("net.") {
        Some(Kind::Net)
    } else if key.starts_with("fs.mqueue.") || IPC_KEYS.contains(&key) {
        Some(Kind::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(Kind::Uts)
    } else {
        None
    }
}

/// `net.ipv4.ip_forward` → `net/ipv4/ip_forward` (relative to /proc/sys).
pub fn relative_path(key: &str) -> PathBuf {
    key.split('.').collect()
}

/// Is the namespace at `path` the one ferry itself runs in?
fn is_own_ns(path: &Path, kind: Kind) -> Result<bool, String> {
    let ours = Path::new("/proc/self/ns").join(kind.proc_name());
    let id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    Ok(id(path)? == id(&ours)?)
}

/// Refuses every key the container may not set (see the module doc), before
/// anything is created.
pub fn validate(spec: &Spec) -> Result<(), String> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let Some(sysctls) = linux.sysctl() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        check_key(key)?;
        let Some(kind) = kind_of(key) else {
            return Err(format!(
                "{key} is not in a kernel namespace the container can own: setting it would change the host (only net.*, IPC keys such as kernel.shmmax and fs.mqueue.*, and kernel.hostname/kernel.domainname are allowed)"
            ));
        };
        let need = || {
            format!(
                "{key} needs the container to have its own {} namespace (add {{\"type\": \"{}\"}} to linux.namespaces), or it would change the host",
                kind.name(),
                kind.oci_type()
            )
        };
        let Some(ns) = namespaces.iter().find(|n| n.typ() == kind.ns_type()) else {
            return Err(need());
        };
        if let Some(path) = ns.path() {
            if is_own_ns(path, kind)? {
                return Err(format!(
                    "{key}: the {} namespace {} is the host's own, so setting it would change the host",
                    kind.name(),
                    path.display()
                ));
            }
        }
        let field = match key.as_str() {
            "kernel.hostname" => spec.hostname().as_ref().map(|_| "hostname"),
            "kernel.domainname" => spec.domainname().as_ref().map(|_| "domainname"),
            _ => None,
        };
        if let Some(field) = field {
            return Err(format!(
                "{key} conflicts with the {field} field: set only one of them"
            ));
        }
    }
    Ok(())
}

/// Writes the container's sysctls through one descriptor of the container's
/// /proc/sys (checked to be procfs), each key opened beneath it without
/// following links. Runs in the init after pivot_root, before /proc/sys is
/// made read-only. Keys were validated at create time.
pub fn apply(spec: &Spec) -> Result<(), String> {
    let Some(sysctls) = spec.linux().as_ref().and_then(|l| l.sysctl().clone()) else {
        return Ok(());
    };
    if sysctls.is_empty() {
        return Ok(());
    }
    let dir: OwnedFd = nix::fcntl::open(
        "/proc/sys",
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| {
        format!("linux.sysctl: open /proc/sys in the container: {e} (mount proc at /proc)")
    })?;
    let fs =
        nix::sys::statfs::fstatfs(&dir).map_err(|e| format!("linux.sysctl: /proc/sys: {e}"))?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(
            "linux.sysctl: /proc/sys in the container is not procfs (mount proc at /proc)".into(),
        );
    }
    let mut keys: Vec<_> = sysctls.into_iter().collect();
    keys.sort();
    for (key, value) in keys {
        check_key(&key).map_err(|e| format!("linux.sysctl: {e}"))?;
        crate::beneath::write(&dir, &relative_path(&key), &value).map_err(|e| {
            if e == nix::errno::Errno::ENOENT {
                format!("sysctl {key}: no such setting in the container's namespaces")
            } else {
                format!("sysctl {key} = {value:?}: {e}")
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: serde_json::Value, sysctl: serde_json::Value) -> Spec {
        let mut v = serde_json::to_value(crate::spec::default_spec()).unwrap();
        v["linux"]["namespaces"] = namespaces;
        v["linux"]["sysctl"] = sysctl;
        v.as_object_mut().unwrap().remove("hostname");
        serde_json::from_value(v).unwrap()
    }

    fn ns(types: &[&str]) -> serde_json::Value {
        json!(types
            .iter()
            .map(|t| json!({ "type": t }))
            .collect::<Vec<_>>())
    }

    #[test]
    fn key_shapes() {
        for bad in [
            "",
            "/etc/passwd",
            "net/ipv4/ip_forward",
            "../../etc/passwd",
            "net..ipv4",
            ".net.ipv4",
            "net.ipv4.",
            "net.\0",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        check_key("net.ipv4.ip_forward").unwrap();
        assert_eq!(
            relative_path("net.ipv4.ip_forward"),
            PathBuf::from("net/ipv4/ip_forward")
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("net.ipv4.ip_forward"), Some(Kind::Net));
        assert_eq!(kind_of("kernel.shmmax"), Some(Kind::Ipc));
        assert_eq!(kind_of("kernel.sem"), Some(Kind::Ipc));
        assert_eq!(kind_of("fs.mqueue.queues_max"), Some(Kind::Ipc));
        assert_eq!(kind_of("kernel.domainname"), Some(Kind::Uts));
        for host in [
            "vm.drop_caches",
            "kernel.printk_ratelimit",
            "kernel.shmmaxx",
            "fs.file-max",
            "kernel.pid_max",
            "netfoo.x",
        ] {
            assert_eq!(kind_of(host), None, "{host}");
        }
    }

    #[test]
    fn each_kind_needs_its_namespace() {
        let cases = [
            ("net.ipv4.ip_forward", "network"),
            ("kernel.shmmax", "ipc"),
            ("fs.mqueue.msg_max", "ipc"),
            ("kernel.domainname", "uts"),
        ];
        for (key, typ) in cases {
            let with = spec(ns(&["mount", "pid", typ]), json!({ key: "1" }));
            validate(&with).unwrap_or_else(|e| panic!("{key} with {typ}: {e}"));
            let without = spec(ns(&["mount", "pid"]), json!({ key: "1" }));
            let err = validate(&without).unwrap_err();
            assert!(err.contains(key) && err.contains("namespace"), "{err}");
        }
        // No namespaces at all.
        let err = validate(&spec(json!([]), json!({"kernel.shmmax": "1"}))).unwrap_err();
        assert!(err.contains("IPC namespace"), "{err}");
    }

    #[test]
    fn host_keys_and_bad_keys_are_refused() {
        let all = ns(&["mount", "pid", "network", "ipc", "uts"]);
        for key in [
            "vm.drop_caches",
            "kernel.printk_ratelimit",
            "/etc/passwd",
            "../../../etc/passwd",
            "net.ipv4/../../../etc/passwd",
            "net..ipv4",
        ] {
            let err = validate(&spec(all.clone(), json!({ key: "1" }))).unwrap_err();
            assert!(!err.is_empty(), "{key}");
        }
        let err = validate(&spec(all, json!({"vm.drop_caches": "3"}))).unwrap_err();
        assert!(err.contains("change the host"), "{err}");
    }

    #[test]
    fn joining_the_hosts_namespace_is_refused() {
        let joined = json!([
            {"type": "mount"},
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "ipc", "path": "/proc/self/ns/ipc"},
        ]);
        for key in ["net.ipv4.ip_forward", "kernel.shmmax"] {
            let err = validate(&spec(joined.clone(), json!({ key: "1" }))).unwrap_err();
            assert!(err.contains("host's own"), "{key}: {err}");
        }
    }

    #[test]
    fn hostname_conflicts_with_the_field() {
        let mut s = spec(ns(&["uts"]), json!({"kernel.hostname": "a"}));
        validate(&s).unwrap();
        s.set_hostname(Some("b".into()));
        let err = validate(&s).unwrap_err();
        assert!(err.contains("hostname field"), "{err}");
    }
}
