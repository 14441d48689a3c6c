//! The cgroup v2 backend: one unified hierarchy, one directory for the
//! container, used on pure v2 hosts.
pub mod devices_bpf;
mod freezer;
mod notify;
pub(super) mod resources;
mod stats;

use std::path::PathBuf;

use cgroups_rs::fs::cgroup::Cgroup as RsCgroup;
use cgroups_rs::fs::hierarchies::V2 as V2Hierarchy;
use cgroups_rs::fs::Hierarchy;

use super::common::{CgroupManager, Handle};
use super::descriptor::Mount;
use super::layout::CgroupLayout;
use super::{CgroupDescriptor, Error, Notifier, Result, Stats, UNIFIED_KEY};

pub(super) use freezer::frozen;

/// The unified hierarchy.
pub(super) fn mounts() -> Vec<Mount> {
    vec![Mount {
        key: String::new(),
        name: UNIFIED_KEY.into(),
        mount_point: V2Hierarchy::new().root(),
        mount_root: PathBuf::from("/"),
    }]
}

/// The file that counts the OOM killer's kills.
pub(super) fn oom_events(desc: &CgroupDescriptor) -> Option<PathBuf> {
    Some(desc.dirs.get(UNIFIED_KEY)?.join("memory.events"))
}

pub(super) struct V2 {
    h: Handle,
}

impl V2 {
    /// Opens the cgroup whose directory is `desc.dirs["unified"]`.
    pub fn load(desc: &CgroupDescriptor) -> Result<V2> {
        let bad = |message: String| Error::Cgroup {
            path: desc.path.clone(),
            message,
        };
        let hier = V2Hierarchy::new();
        let dir = desc
            .dirs
            .get(UNIFIED_KEY)
            .ok_or_else(|| bad("descriptor has no \"unified\" directory".into()))?;
        let rel = dir
            .strip_prefix(hier.root())
            .map_err(|_| {
                bad(format!(
                    "{} is not below {}",
                    dir.display(),
                    hier.root().display()
                ))
            })?
            .to_path_buf();
        if rel.as_os_str().is_empty() {
            return Err(bad("refusing to use the v2 root cgroup".into()));
        }
        if !CgroupLayout::host().is_v2() {
            return Err(bad(
                "it was made on a cgroup v2 host but this host is not pure v2".into(),
            ));
        }
        let missing = "here (not listed in cgroup.controllers of the v2 root)";
        let cg = RsCgroup::load(Box::new(hier), rel);
        Ok(V2 {
            h: Handle::new(desc.clone(), cg, missing),
        })
    }

    fn dir(&self) -> PathBuf {
        self.h.main_dir().to_path_buf()
    }
}

impl CgroupManager for V2 {
    fn handle(&self) -> &Handle {
        &self.h
    }

    /// OOM kills only: v2 has no `memory.pressure_level` (runc reports none
    /// either).
    fn notifier(&self) -> Result<Notifier> {
        let dir = self.dir();
        if !dir.join("memory.events").exists() {
            return Ok(Notifier::none());
        }
        Ok(Notifier::new(Box::new(notify::V2Notify::new(&dir)?)))
    }

    fn stats(&self) -> Result<Stats> {
        stats::read(&self.dir())
    }
}
