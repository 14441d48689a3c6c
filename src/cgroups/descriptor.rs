//! Where a container's cgroup lives: `linux.cgroupsPath` resolved once, at
//! create time, into one directory per hierarchy, so that later commands
//! (run from any cgroup) reopen exactly the same directories.
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{self, CgroupLayout};
use super::{systemd, v1, v2, Driver, Error, Result, UNIFIED_KEY};

/// Where a container's cgroup lives, resolved once at create time so later
/// commands (run from any cgroup) find the same directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDescriptor {
    /// The path as configured (`linux.cgroupsPath`) or defaulted.
    pub path: String,
    /// true on a pure cgroup v2 host.
    pub unified: bool,
    /// Controller name (or "unified") → absolute directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// The transient systemd scope the directory belongs to (systemd
    /// driver); absent for cgroups ferry makes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<systemd::Scope>,
}

/// One mounted hierarchy as seen by the caller.
#[derive(Debug, Clone)]
pub(super) struct Mount {
    /// Controller name as in `/proc/self/cgroup` ("" for v2).
    pub key: String,
    /// Key stored in the descriptor.
    pub name: String,
    pub mount_point: PathBuf,
    pub mount_root: PathBuf,
}

impl CgroupDescriptor {
    /// Resolves `path` (see [`super::Cgroup::create`]) for every hierarchy
    /// the caller sees, creating nothing.
    pub fn resolve(path: &str) -> Result<CgroupDescriptor> {
        let unified = CgroupLayout::host().is_v2();
        let mounts = if unified { v2::mounts() } else { v1::mounts() };
        let own = layout::by_controller(&layout::memberships(None)?);
        let dirs = resolve_dirs(path, &mounts, &own)?;
        Ok(CgroupDescriptor {
            path: path.to_string(),
            unified,
            dirs,
            systemd: None,
        })
    }

    /// Resolves `path` for `driver`: with systemd, a `slice:prefix:name`
    /// path naming a scope whose directory systemd will make (pure v2 hosts
    /// with a system bus only). Creates nothing.
    pub fn resolve_for(driver: Driver, path: &str) -> Result<CgroupDescriptor> {
        if driver == Driver::Cgroupfs {
            return CgroupDescriptor::resolve(path);
        }
        let scope = systemd::Scope::parse(path)?;
        systemd::check_bus()?;
        if !CgroupLayout::host().is_v2() {
            return Err(systemd::Error::NotV2.into());
        }
        let root = v2::mounts()[0].mount_point.clone();
        let dir = systemd::scope_dir(&root, &scope);
        Ok(CgroupDescriptor {
            path: path.to_string(),
            unified: true,
            dirs: BTreeMap::from([(UNIFIED_KEY.to_string(), dir)]),
            systemd: Some(scope),
        })
    }

    /// Whether the directories are in the v2 (unified) hierarchy.
    pub fn is_v2(&self) -> bool {
        self.unified
    }

    /// The directory whose freezer stops the container: the v1 freezer
    /// hierarchy's, or the v2 one.
    pub fn freezer_dir(&self) -> Option<&Path> {
        let key = if self.unified { UNIFIED_KEY } else { "freezer" };
        self.dirs.get(key).map(PathBuf::as_path)
    }

    /// The OOM killer's kill count in the memory cgroup (v1
    /// `memory.oom_control`, v2 `memory.events`) and the file it is from,
    /// if the kernel reports one.
    pub fn oom_kills(&self) -> Option<(u64, PathBuf)> {
        let file = if self.unified {
            v2::oom_events(self)?
        } else {
            v1::oom_events(self)?
        };
        let n = parse_oom_kill(&std::fs::read_to_string(&file).ok()?)?;
        Some((n, file))
    }
}

/// Where a hierarchy's directory (keyed as in [`CgroupDescriptor::dirs`])
/// appears inside a container's `cgroup` mount: below a subdirectory named
/// for its controllers on v1 (`name=systemd` → `systemd`), or as the mount
/// itself (`None`) on v2.
pub fn mount_subdir(key: &str) -> Option<&str> {
    (key != UNIFIED_KEY).then(|| key.trim_start_matches("name="))
}

fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Checks a configured cgroup path and returns its components.
fn path_components(path: &str) -> Result<Vec<String>> {
    let bad = |message: String| Error::Cgroup {
        path: path.to_string(),
        message,
    };
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {
                return Err(bad(
                    "\".\" and \"..\" are not allowed in a cgroup path; give a plain path like /ferry/<id>".into(),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(bad(
            "the path names no cgroup (empty or the hierarchy root); give a path like /ferry/<id>"
                .into(),
        ));
    }
    Ok(out)
}

/// Resolves `path` for every hierarchy: absolute from the mount point,
/// relative below the caller's own cgroup (`own`, from /proc/self/cgroup).
pub(super) fn resolve_dirs(
    path: &str,
    mounts: &[Mount],
    own: &HashMap<String, String>,
) -> Result<BTreeMap<String, PathBuf>> {
    let comps = path_components(path)?;
    if mounts.is_empty() {
        return Err(Error::Cgroup {
            path: path.to_string(),
            message: "no cgroup hierarchy is mounted; mount cgroup2 on /sys/fs/cgroup".into(),
        });
    }
    let absolute = path.starts_with('/');
    let mut dirs = BTreeMap::new();
    for m in mounts {
        let mut dir = m.mount_point.clone();
        if !absolute {
            let mine = own.get(&m.key).ok_or_else(|| Error::Cgroup {
                path: path.to_string(),
                message: format!(
                    "the caller's cgroup for controller {:?} is not in /proc/self/cgroup; use an absolute cgroup path",
                    m.name
                ),
            })?;
            let mine = Path::new(mine);
            let below_root = mine.strip_prefix(&m.mount_root).unwrap_or(mine);
            for c in below_root.components() {
                if let Component::Normal(s) = c {
                    dir.push(s);
                }
            }
        }
        for c in &comps {
            dir.push(c);
        }
        dirs.insert(m.name.clone(), dir);
    }
    Ok(dirs)
}

#[cfg(test)]
impl Mount {
    /// A v1 hierarchy for `controller` mounted at `point`, from `root`.
    fn fake(controller: &str, point: &str, root: &str) -> Mount {
        Mount {
            key: controller.into(),
            name: controller.into(),
            mount_point: PathBuf::from(point),
            mount_root: PathBuf::from(root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::parse_by_controller;
    use super::*;

    fn v1_mounts() -> Vec<Mount> {
        ["memory", "cpu", "name=systemd"]
            .iter()
            .map(|c| {
                let point = format!("/fake/cg/{}", c.trim_start_matches("name="));
                Mount::fake(c, &point, "/")
            })
            .collect()
    }

    fn v2_mounts(root: &str) -> Vec<Mount> {
        vec![Mount {
            key: String::new(),
            name: UNIFIED_KEY.into(),
            mount_point: PathBuf::from(root),
            mount_root: PathBuf::from("/"),
        }]
    }

    #[test]
    fn v1_absolute_and_relative_per_controller() {
        let own = parse_by_controller("4:memory:/api/123\n1:cpu:/\n9:name=systemd:/sys\n");
        let abs = resolve_dirs("/ferry/c1", &v1_mounts(), &own).unwrap();
        assert_eq!(abs["memory"], PathBuf::from("/fake/cg/memory/ferry/c1"));
        assert_eq!(abs["cpu"], PathBuf::from("/fake/cg/cpu/ferry/c1"));
        let rel = resolve_dirs("ferry/c1", &v1_mounts(), &own).unwrap();
        assert_eq!(
            rel["memory"],
            PathBuf::from("/fake/cg/memory/api/123/ferry/c1")
        );
        assert_eq!(rel["cpu"], PathBuf::from("/fake/cg/cpu/ferry/c1"));
        assert_eq!(
            rel["name=systemd"],
            PathBuf::from("/fake/cg/systemd/sys/ferry/c1")
        );
    }

    #[test]
    fn v1_mount_root_is_stripped() {
        let mounts = vec![Mount::fake("memory", "/fake/cg/memory", "/outer")];
        let own = parse_by_controller("4:memory:/outer/inner\n");
        let rel = resolve_dirs("c", &mounts, &own).unwrap();
        assert_eq!(rel["memory"], PathBuf::from("/fake/cg/memory/inner/c"));
    }

    #[test]
    fn v2_with_fake_root() {
        let own = parse_by_controller("0::/user.slice/session-1.scope\n");
        let abs = resolve_dirs("/ferry/x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(abs.len(), 1);
        assert_eq!(abs[UNIFIED_KEY], PathBuf::from("/tmp/fakecg/ferry/x"));
        let rel = resolve_dirs("x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(
            rel[UNIFIED_KEY],
            PathBuf::from("/tmp/fakecg/user.slice/session-1.scope/x")
        );
        // Caller at the v2 root.
        let own = parse_by_controller("0::/\n");
        let rel = resolve_dirs("x", &v2_mounts("/tmp/fakecg"), &own).unwrap();
        assert_eq!(rel[UNIFIED_KEY], PathBuf::from("/tmp/fakecg/x"));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let own = parse_by_controller("0::/\n");
        for p in ["", "/", "../x", "/a/../b", "./a"] {
            let err = resolve_dirs(p, &v2_mounts("/r"), &own).unwrap_err();
            assert!(matches!(err, Error::Cgroup { .. }), "{p}: {err}");
        }
        let err = resolve_dirs("x", &v1_mounts(), &parse_by_controller("4:memory:/\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"cpu\""), "{err}");
        assert!(resolve_dirs("/x", &[], &own).is_err());
    }

    #[test]
    fn reads_the_kill_count_of_both_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v1), Some(1));
        assert_eq!(parse_oom_kill(v2), Some(2));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn container_mount_subdirs() {
        assert_eq!(mount_subdir("memory"), Some("memory"));
        assert_eq!(mount_subdir("name=systemd"), Some("systemd"));
        assert_eq!(mount_subdir(UNIFIED_KEY), None);
    }
}

#[cfg(test)]
mod path_prop_tests {
    use super::super::layout::parse_by_controller;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// linux.cgroupsPath comes from config.json: whatever it says, the
        /// directories it resolves to lie strictly below each hierarchy's
        /// mount point (never the root, never outside).
        #[test]
        fn cgroup_dirs_stay_below_the_mount(
            segs in proptest::collection::vec(prop_oneof![
                Just(".."), Just("."), Just(""), Just("/"), Just("a\0b"),
                Just("ferry"), Just("x"), Just("//"),
            ], 0..6),
            abs in any::<bool>(),
        ) {
            let path = format!("{}{}", if abs { "/" } else { "" }, segs.join("/"));
            let mounts = vec![Mount::fake("memory", "/fake/cg/memory", "/")];
            let own = parse_by_controller("4:memory:/user/me\n");
            if let Ok(dirs) = resolve_dirs(&path, &mounts, &own) {
                for dir in dirs.values() {
                    let below = dir.strip_prefix("/fake/cg/memory").unwrap();
                    prop_assert!(below.components().count() > 0, "{path:?} -> {}", dir.display());
                    prop_assert!(
                        below.components().all(|c| matches!(c, Component::Normal(_))),
                        "{path:?} -> {}", dir.display()
                    );
                }
            }
        }
    }

    #[test]
    fn the_driver_is_recorded_and_older_states_read_as_cgroupfs() {
        let old =
            r#"{"path":"ferry/c1","unified":true,"dirs":{"unified":"/sys/fs/cgroup/ferry/c1"}}"#;
        let d: CgroupDescriptor = serde_json::from_str(old).unwrap();
        assert_eq!(d.systemd, None);
        assert!(!serde_json::to_string(&d).unwrap().contains("systemd"));
        let scope = systemd::Scope::parse("machine.slice:libpod:ab").unwrap();
        let d = CgroupDescriptor {
            systemd: Some(scope.clone()),
            ..d
        };
        let back: CgroupDescriptor =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back.systemd, Some(scope));
    }
}
