//! The freezer state a dump recorded in `cgroup.img`, and whether the
//! restored tree must be moved into its cgroups.
//!
//! With a freeze cgroup, CRIU records the freezer state it found before
//! the dump (v1 `freezer.state`; v2 has no such property) and, in the
//! `full` and `strict` cgroup modes, writes it back at the end of the
//! restore. ferry freezes a running container itself before CRIU looks,
//! so CRIU finds it FROZEN: left as is, a restore would freeze the new
//! container's cgroup, which CRIU itself runs in.
use std::io::Write;
use std::path::Path;

use super::{ImageDir, Result};
use crate::criu::image::{encode, read_one, ErrorKind, ImageError, CGROUP_MAGIC, INVENTORY_MAGIC};
use crate::proto::cgroup::{Cgroup_dir_entry, Cgroup_entry};
use crate::proto::inventory::Inventory_entry;

const FREEZER_STATE: &str = "freezer.state";
const FROZEN: &str = "FROZEN";
const THAWED: &str = "THAWED";

fn props_mut<'a>(dirs: &'a mut [Cgroup_dir_entry], out: &mut Vec<&'a mut String>) {
    for d in dirs {
        for p in d.properties.iter_mut() {
            if p.name() == FREEZER_STATE {
                if let Some(v) = p.value.as_mut() {
                    out.push(v);
                }
            }
        }
        props_mut(&mut d.children, out);
    }
}

fn freezer_states(entry: &mut Cgroup_entry) -> Vec<&mut String> {
    let mut out = Vec::new();
    for c in entry.controllers.iter_mut() {
        props_mut(&mut c.dirs, &mut out);
    }
    out
}

/// [`ImageDir::recorded_frozen`] of the images in `dir` (which may not
/// hold an inventory yet: CRIU writes it last).
pub fn recorded_frozen(dir: &Path) -> Result<bool> {
    ImageDir {
        path: dir.to_path_buf(),
    }
    .recorded_frozen()
}

/// [`ImageDir::record_running`] of the images in `dir`.
pub fn record_running(dir: &Path) -> Result<bool> {
    ImageDir {
        path: dir.to_path_buf(),
    }
    .record_running()
}

/// See [`ImageDir::record_inherited_cgroups`].
pub fn record_inherited_cgroups(dir: &Path) -> Result<bool> {
    ImageDir {
        path: dir.to_path_buf(),
    }
    .record_inherited_cgroups()
}

/// Writes `bytes` over `path` through a temporary file renamed into place
/// (never half written). Not fsynced: this runs in the frozen time, and
/// CRIU does not sync the images around it either.
fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)
        .and_then(|()| std::fs::rename(tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(tmp);
        })
}

impl ImageDir {
    /// Records the root task's cgroup set as the one CRIU ran in, so
    /// that CRIU's restore leaves the tree in the cgroups it is forked
    /// in instead of moving it there: ferry starts the restoring CRIU in
    /// the container's cgroup of every hierarchy the dump recorded, which
    /// is where CRIU's move (through the cgroup roots ferry gives it)
    /// would put it too. The move costs an RCU grace period (~10 ms
    /// here: a v1 `cgroup.procs` write synchronizes
    /// `cgroup_threadgroup_rwsem`). CRIU also skips the cgroup namespace
    /// then, so only for a container without one of its own. Whether it
    /// changed anything.
    pub fn record_inherited_cgroups(&self) -> Result<bool> {
        let inv_path = self.file("inventory.img");
        let mut inv: Inventory_entry = read_one(&inv_path, INVENTORY_MAGIC, "inventory entry")?;
        let root = self.pstree()?[0].pid();
        // Per thread since CRIU 3.x; the task's field is the older home.
        let core = self.core(root)?;
        let Some(set) = core
            .thread_core
            .as_ref()
            .and_then(|t| t.cg_set)
            .or_else(|| core.tc.as_ref().and_then(|tc| tc.cg_set))
        else {
            return Ok(false);
        };
        if inv.root_cg_set == Some(set) {
            return Ok(false);
        }
        inv.root_cg_set = Some(set);
        replace(
            &inv_path,
            &self.file(".inventory.img.ferry-new"),
            &encode(INVENTORY_MAGIC, &[&inv]),
        )
        .map_err(|e| ImageError::new(&inv_path, 0, ErrorKind::Io(e)))?;
        Ok(true)
    }

    fn cgroup_entry(&self) -> Result<Option<Cgroup_entry>> {
        let path = self.file("cgroup.img");
        if !path.exists() {
            return Ok(None);
        }
        read_one(&path, CGROUP_MAGIC, "cgroup entry").map(Some)
    }

    /// Whether the dump recorded a frozen cgroup (a container that was
    /// paused when it was checkpointed, or a checkpoint older than
    /// [`ImageDir::record_running`]).
    pub fn recorded_frozen(&self) -> Result<bool> {
        Ok(self
            .cgroup_entry()?
            .as_mut()
            .is_some_and(|e| freezer_states(e).iter().any(|v| v.as_str() == FROZEN)))
    }

    /// Records the cgroups as running (THAWED) where the dump recorded
    /// the freeze ferry put on them for the dump; the file is replaced
    /// whole (a new file renamed over it). Returns whether it changed.
    pub fn record_running(&self) -> Result<bool> {
        let Some(mut entry) = self.cgroup_entry()? else {
            return Ok(false);
        };
        let mut changed = false;
        for v in freezer_states(&mut entry) {
            if v.as_str() == FROZEN {
                *v = THAWED.to_string();
                changed = true;
            }
        }
        if changed {
            let path = self.file("cgroup.img");
            let tmp = self.file(".cgroup.img.ferry-new");
            let io = |e| ImageError::new(&path, 0, ErrorKind::Io(e));
            replace(&path, &tmp, &encode(CGROUP_MAGIC, &[&entry])).map_err(io)?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cgroup::{Cg_controller_entry, Cgroup_prop_entry};

    fn prop(name: &str, value: &str) -> Cgroup_prop_entry {
        let mut p = Cgroup_prop_entry::new();
        p.set_name(name.into());
        p.set_value(value.into());
        p
    }

    fn image(state: &str) -> Cgroup_entry {
        let mut child = Cgroup_dir_entry::new();
        child.set_dir_name("c".into());
        child.properties.push(prop(FREEZER_STATE, state));
        let mut top = Cgroup_dir_entry::new();
        top.set_dir_name("ferry".into());
        top.properties.push(prop("memory.limit_in_bytes", "FROZEN"));
        top.children.push(child);
        let mut c = Cg_controller_entry::new();
        c.cnames.push("freezer".into());
        c.dirs.push(top);
        let mut e = Cgroup_entry::new();
        e.controllers.push(c);
        e
    }

    #[test]
    fn a_recorded_freeze_is_rewritten_as_running_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"").unwrap();
        let path = dir.path().join("cgroup.img");
        std::fs::write(&path, encode(CGROUP_MAGIC, &[&image(FROZEN)])).unwrap();
        let images = ImageDir::open(dir.path()).unwrap();
        assert!(images.recorded_frozen().unwrap());
        assert!(images.record_running().unwrap());
        assert!(!images.recorded_frozen().unwrap());
        let want = encode(CGROUP_MAGIC, &[&image(THAWED)]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Already running: left alone.
        assert!(!images.record_running().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn no_cgroup_image_is_not_frozen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"").unwrap();
        let images = ImageDir::open(dir.path()).unwrap();
        assert!(!images.recorded_frozen().unwrap());
        assert!(!images.record_running().unwrap());
    }
}
