//! The cgroup v1 backend: one hierarchy per mounted controller (and
//! `name=systemd`), each with its own directory for the container, used on
//! v1 and hybrid hosts.
mod freezer;
mod notify;
mod resources;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::cgroup::Cgroup as RsCgroup;
use cgroups_rs::fs::hierarchies::V1 as V1Hierarchy;
use cgroups_rs::fs::Hierarchy;

use super::common::{CgroupManager, Handle};
use super::descriptor::Mount;
use super::layout::CgroupLayout;
use super::{CgroupDescriptor, Error, Notifier, Result, Stats};

pub(super) use freezer::frozen;

/// The hierarchies the caller sees, one per mounted v1 controller.
pub(super) fn mounts() -> Vec<Mount> {
    V1Hierarchy::new()
        .subsystems()
        .into_iter()
        .map(|s| {
            let c = s.to_controller();
            Mount {
                key: s.controller_name(),
                name: s.controller_name(),
                mount_point: c.path().to_path_buf(),
                mount_root: c.base().to_path_buf(),
            }
        })
        .collect()
}

/// The file that counts the OOM killer's kills.
pub(super) fn oom_events(desc: &CgroupDescriptor) -> Option<PathBuf> {
    Some(desc.dirs.get("memory")?.join("memory.oom_control"))
}

pub(super) struct V1 {
    h: Handle,
}

impl V1 {
    /// Opens the cgroup whose per-controller directories are `desc.dirs`.
    pub fn load(desc: &CgroupDescriptor) -> Result<V1> {
        let bad = |message: String| Error::Cgroup {
            path: desc.path.clone(),
            message,
        };
        if CgroupLayout::host().is_v2() {
            return Err(bad(
                "it was made for cgroup v1 hierarchies but this host is pure v2".into(),
            ));
        }
        let hier = V1Hierarchy::new();
        // cgroups-rs names one leaf and, per controller, the path to its
        // parent below the mount point.
        let leaf = desc
            .dirs
            .values()
            .next()
            .and_then(|d| d.file_name())
            .ok_or_else(|| bad("descriptor lists no directories".into()))?
            .to_owned();
        let parents = parent_paths(&hier, desc, Path::new(&leaf)).map_err(bad)?;
        let cg = RsCgroup::load_with_relative_paths(Box::new(hier), Path::new(&leaf), parents);
        for sub in cg.subsystems() {
            let name = sub.controller_name();
            let got = sub.to_controller().path();
            if desc.dirs.get(&name).map(PathBuf::as_path) != Some(got) {
                return Err(bad(format!(
                    "controller {name} resolved to {} instead of the recorded directory",
                    got.display()
                )));
            }
        }
        let missing = "here (no v1 hierarchy is mounted for it)";
        Ok(V1 {
            h: Handle::new(desc.clone(), cg, missing),
        })
    }
}

/// Controller → the path of the recorded directory's parent below the
/// controller's mount point. Every mounted controller must have a directory,
/// and every directory must end in `leaf`.
fn parent_paths(
    hier: &V1Hierarchy,
    desc: &CgroupDescriptor,
    leaf: &Path,
) -> std::result::Result<HashMap<String, String>, String> {
    let mut parents = HashMap::new();
    for sub in hier.subsystems() {
        let name = sub.controller_name();
        let mount_point = sub.to_controller().path().to_path_buf();
        let dir = desc.dirs.get(&name).ok_or_else(|| {
            format!(
                "descriptor has no directory for mounted controller {name:?}; the host's hierarchies changed since create"
            )
        })?;
        if dir.file_name() != Some(leaf.as_os_str()) {
            return Err(format!(
                "directory {} does not end in {:?} like the others",
                dir.display(),
                leaf.as_os_str()
            ));
        }
        let rel = dir
            .strip_prefix(&mount_point)
            .map_err(|_| format!("{} is not below {}", dir.display(), mount_point.display()))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        parents.insert(name, parent.to_string_lossy().into_owned());
    }
    Ok(parents)
}

impl CgroupManager for V1 {
    fn handle(&self) -> &Handle {
        &self.h
    }

    fn notifier(&self) -> Result<Notifier> {
        match self.h.desc.dirs.get("memory") {
            Some(dir) => Ok(Notifier::new(Box::new(notify::V1Notify::new(dir)?))),
            None => Ok(Notifier::none()),
        }
    }

    fn stats(&self) -> Result<Stats> {
        stats::read(&self.h.desc.dirs)
    }
}
