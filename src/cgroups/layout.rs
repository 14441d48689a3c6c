//! What the host offers: how its cgroup hierarchies are mounted (probed
//! once per process) and which cgroups a process is in (`/proc/<pid>/cgroup`,
//! read here and nowhere else).
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the cgroup hierarchies are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// cgroup v1 controllers only.
    V1,
    /// The unified (v2) hierarchy only.
    V2,
    /// v1 controllers plus cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    Unknown,
}

impl CgroupLayout {
    /// The layout under `root` (normally [`CGROUP_ROOT`]), from the
    /// filesystem types mounted there.
    pub fn probe(root: &Path) -> CgroupLayout {
        use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
        let Ok(top) = statfs(root) else {
            return CgroupLayout::Unknown;
        };
        if top.filesystem_type() == CGROUP2_SUPER_MAGIC {
            return CgroupLayout::V2;
        }
        if top.filesystem_type() != TMPFS_MAGIC {
            return CgroupLayout::Unknown;
        }
        match statfs(&root.join("unified")) {
            Ok(u) if u.filesystem_type() == CGROUP2_SUPER_MAGIC => CgroupLayout::Hybrid,
            _ => CgroupLayout::V1,
        }
    }

    /// This host's layout, probed on first use.
    pub fn host() -> CgroupLayout {
        static HOST: OnceLock<CgroupLayout> = OnceLock::new();
        *HOST.get_or_init(|| CgroupLayout::probe(Path::new(CGROUP_ROOT)))
    }

    /// Whether containers get v2 cgroups here: only on a pure v2 host (a
    /// hybrid host's unified hierarchy has no controllers, so its v1
    /// hierarchies are used).
    pub fn is_v2(self) -> bool {
        self == CgroupLayout::V2
    }
}

/// One line of `/proc/<pid>/cgroup`: a hierarchy and the process's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The hierarchy's controllers as the kernel lists them (`cpu,cpuacct`,
    /// `name=systemd`); empty for the v2 hierarchy.
    pub controllers: String,
    /// The process's cgroup, relative to the hierarchy's root.
    pub path: String,
}

/// The cgroups process `pid` is in (`None`: the caller).
pub fn memberships(pid: Option<u32>) -> Result<Vec<Membership>> {
    let (file, op) = match pid {
        None => (
            PathBuf::from("/proc/self/cgroup"),
            "read the caller's cgroups",
        ),
        Some(pid) => (
            PathBuf::from(format!("/proc/{pid}/cgroup")),
            "read the process's cgroups",
        ),
    };
    let text = fs::read_to_string(&file).map_err(|source| Error::Io {
        path: file,
        op: op.into(),
        source,
    })?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(Membership {
                controllers: controllers.to_string(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Controller (`""` for v2) → the path in its hierarchy.
pub(super) fn by_controller(list: &[Membership]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for entry in list {
        if entry.controllers.is_empty() {
            m.insert(String::new(), entry.path.clone());
        } else {
            for c in entry.controllers.split(',') {
                m.insert(c.to_string(), entry.path.clone());
            }
        }
    }
    m
}

/// Parses `/proc/<pid>/cgroup` text straight into [`by_controller`]'s map.
#[cfg(test)]
pub(super) fn parse_by_controller(text: &str) -> HashMap<String, String> {
    by_controller(&parse(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_parsing() {
        let text =
            "4:memory:/a/b\n2:cpu,cpuacct:/x:with:colons\n1:name=systemd:/\n0::/user.slice/s\n";
        let m = parse_by_controller(text);
        assert_eq!(m["memory"], "/a/b");
        assert_eq!(m["cpu"], "/x:with:colons");
        assert_eq!(m["cpuacct"], "/x:with:colons");
        assert_eq!(m["name=systemd"], "/");
        assert_eq!(m[""], "/user.slice/s");
        let lines = parse(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].controllers, "cpu,cpuacct");
        assert_eq!(lines[3].controllers, "");
    }

    #[test]
    fn host_layout_is_probed_once_and_consistent() {
        let probed = CgroupLayout::probe(Path::new(CGROUP_ROOT));
        assert_eq!(CgroupLayout::host(), probed);
        assert_eq!(CgroupLayout::host(), probed);
        assert_eq!(
            CgroupLayout::probe(Path::new("/nonexistent-ferry-root")),
            CgroupLayout::Unknown
        );
    }
}
