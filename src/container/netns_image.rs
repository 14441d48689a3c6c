//! A network namespace ferry rebuilds instead of CRIU: when a container's
//! namespace holds only what ferry made (see [`network::OwnNetns`]), the
//! dump leaves it out (CRIU's empty-ns mode: no `ip route save`,
//! `iptables-save`, `nft` runs) and records here what the restore needs to
//! make it again: `lo`'s state and the veth's MAC address. Any change the
//! container made (an interface, address, route, rule, firewall table)
//! makes CRIU dump the namespace as before.
//!
//! Where it can ([`criu_can_run_inside`]), CRIU runs inside the namespace
//! instead of leaving it empty in the images: the images then hold no
//! namespace, and the restore makes it, fills it and starts CRIU in it.
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{io, Error, ImagesError, Result};
use crate::network::{self, OwnNetns, VethConfig};
use crate::spec::{has_namespace, has_own_namespace};

/// Written into the image dir when ferry, not CRIU, keeps the namespace.
pub const OWN_NETNS_FILE: &str = "ferry-netns.json";

/// What [`OWN_NETNS_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    #[serde(flatten)]
    pub netns: OwnNetns,
    /// CRIU ran inside the namespace: the images hold no namespace at all
    /// (not even an empty one), and the restore must start CRIU inside the
    /// namespace it made, or the tree would land in CRIU's. Absent in
    /// images of CRIU's empty-namespace mode.
    #[serde(default)]
    pub criu_inside: bool,
}

/// Whether CRIU can run inside the kept namespace of a container made
/// from `spec`: then CRIU leaves the namespace out of the dump entirely,
/// and with it the kernel's walk of the global conntrack table (twice,
/// ~10 ms each with 262144 buckets) that it makes for every namespace it
/// dumps, even an empty one. CRIU's start-up probes need `lo` up there (a
/// TCP connection to itself), and the restore makes the namespace before
/// CRIU, outside the container's user namespace: so not with a user
/// namespace of its own.
pub fn criu_can_run_inside(spec: &Spec, kept: &OwnNetns) -> bool {
    kept.lo_up && !has_namespace(spec, LinuxNamespaceType::User)
}

/// Why the configuration alone rules the shortcut out, if it does: the
/// namespace is not one ferry made, or its sysctls (which CRIU keeps and
/// ferry cannot see changed) may differ from the kernel's defaults.
fn ruled_out(spec: &Spec) -> Option<&'static str> {
    let linux = spec.linux().as_ref()?;
    if !has_own_namespace(spec, LinuxNamespaceType::Network) {
        return Some("the container has no network namespace of its own");
    }
    if linux
        .sysctl()
        .as_ref()
        .is_some_and(|s| s.keys().any(|k| k.starts_with("net.")))
    {
        return Some("the configuration sets net.* sysctls");
    }
    let sys_ro = linux
        .readonly_paths()
        .as_ref()
        .is_some_and(|p| p.iter().any(|p| p == "/proc/sys"));
    if !sys_ro {
        return Some("/proc/sys is writable in the container");
    }
    None
}

/// Refuses to restore images whose CRIU ran inside the namespace with a
/// configuration that has no namespace of its own (or a user namespace):
/// CRIU would restore the tree into the namespace it runs in.
pub fn check_restorable(spec: &Spec, kept: &Kept, images: &Path) -> Result<()> {
    if kept.criu_inside
        && (!has_own_namespace(spec, LinuxNamespaceType::Network)
            || has_namespace(spec, LinuxNamespaceType::User))
    {
        return Err(ImagesError::NeedsOwnNetns(images.to_path_buf()).into());
    }
    Ok(())
}

/// What to record for the container `pid` made from `spec`: `None` when
/// CRIU is to dump the namespace (the reason is traced).
pub fn own_netns(spec: &Spec, pid: i32, veth: Option<&VethConfig>) -> Result<Option<OwnNetns>> {
    if let Some(why) = ruled_out(spec) {
        tracing::debug!(why, "CRIU dumps the network namespace");
        return Ok(None);
    }
    match network::inspect_own_netns(pid, veth)? {
        // ferry brings lo up with a veth: down means the container changed it.
        Ok(own) if veth.is_some() && !own.lo_up => {
            tracing::info!("lo is down: CRIU dumps the network namespace");
            Ok(None)
        }
        Ok(own) => Ok(Some(own)),
        Err(why) => {
            tracing::info!(
                why,
                "the container changed its network namespace: CRIU dumps it"
            );
            Ok(None)
        }
    }
}

/// Checks, with the tree frozen, that the namespace is still as recorded.
pub fn still_own(pid: i32, veth: Option<&VethConfig>, recorded: &OwnNetns) -> Result<bool> {
    Ok(network::inspect_own_netns(pid, veth)?.as_ref() == Ok(recorded))
}

/// An identical record written ahead (a migration's early images) is
/// left as it is, so that it need not cross the link again.
pub fn write(images: &Path, kept: &Kept) -> Result<()> {
    let path = images.join(OWN_NETNS_FILE);
    let text = serde_json::to_string(kept).expect("plain fields serialize");
    if read(images).ok().flatten().as_ref() == Some(kept) {
        return Ok(());
    }
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
}

/// Removes a record written ahead for a dump that keeps no namespace of
/// ferry's after all.
pub fn remove(images: &Path) -> Result<()> {
    let path = images.join(OWN_NETNS_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Largest [`OWN_NETNS_FILE`] read (it holds two short fields; an imported
/// image dir may hold a hostile one).
const MAX_BYTES: u64 = 4096;

/// The recorded namespace, `None` in images where CRIU kept it.
pub fn read(images: &Path) -> Result<Option<Kept>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = images.join(OWN_NETNS_FILE);
    // Images may come from a peer: a symlink is not followed.
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let mut text = String::new();
    f.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io(format!("reading {}", path.display())))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(io(format!("reading {}", path.display()))(
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_BYTES} bytes"),
            ),
        ));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::from(ImagesError::DamagedFile { path, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_qualifies_and_changes_rule_it_out() {
        let spec = crate::spec::default_spec();
        assert_eq!(ruled_out(&spec), None);
        let mut s = spec.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_readonly_paths(Some(vec![]));
        s.set_linux(Some(linux));
        assert!(ruled_out(&s).unwrap().contains("/proc/sys"));
        let mut s = spec.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_sysctl(Some(
            [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        ));
        s.set_linux(Some(linux));
        assert!(ruled_out(&s).unwrap().contains("net.*"));
    }

    #[test]
    fn recorded_namespace_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let own = Kept {
            netns: OwnNetns {
                lo_up: true,
                mac: Some("02:42:0a:4d:01:02".into()),
            },
            criu_inside: true,
        };
        write(dir.path(), &own).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(own));
        // Images of CRIU's empty-namespace mode, written before the field.
        std::fs::write(
            dir.path().join(OWN_NETNS_FILE),
            r#"{"lo_up":false,"mac":null}"#,
        )
        .unwrap();
        assert!(!read(dir.path()).unwrap().unwrap().criu_inside);
        std::fs::write(dir.path().join(OWN_NETNS_FILE), "{").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains(OWN_NETNS_FILE), "{err}");
    }
}
