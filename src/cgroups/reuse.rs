//! Whether a container may be put into the cgroup its config names.
//!
//! runc 1.1 refuses a frozen cgroup ("container's cgroup unexpectedly
//! frozen") and only warns about one that already holds processes; runc
//! 1.2 refuses both. ferry refuses both, as 1.2 does: a frozen cgroup
//! would stop the new init before it could report back, and a populated
//! one would make `delete --force` kill processes that are not the
//! container's.
use std::path::{Path, PathBuf};

use super::{v1, v2, CgroupDescriptor, Error, Result};

const FROZEN_FIX: &str = "thaw it or pick another linux.cgroupsPath";
const POPULATED_FIX: &str = "each container needs a cgroup of its own (`delete --force` kills every process in it): pick another linux.cgroupsPath";

impl CgroupDescriptor {
    /// Fails if the cgroup, where it exists already, is frozen (or would
    /// be, below a frozen parent) or holds processes.
    pub fn check_reusable(&self) -> Result<()> {
        if let Some(dir) = self.freezer_dir() {
            if let Some(frozen) = frozen_at(dir, self.is_v2()) {
                return Err(Error::InUse {
                    path: frozen.clone(),
                    why: if frozen == dir {
                        "is frozen".into()
                    } else {
                        format!("is frozen, so {} would be too", dir.display())
                    },
                    fix: FROZEN_FIX,
                });
            }
        }
        for dir in self.dirs.values() {
            let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            let pids: Vec<&str> = text.split_whitespace().collect();
            if !pids.is_empty() {
                return Err(Error::InUse {
                    path: dir.clone(),
                    why: format!(
                        "already holds {} process(es) (pid {})",
                        pids.len(),
                        pids.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                    ),
                    fix: POPULATED_FIX,
                });
            }
        }
        Ok(())
    }
}

/// The directory (`dir` or its nearest existing ancestor with a freezer)
/// whose state says frozen or freezing, if any.
fn frozen_at(dir: &Path, is_v2: bool) -> Option<PathBuf> {
    let frozen = if is_v2 { v2::frozen } else { v1::frozen };
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.is_dir() {
            return frozen(d)?.then(|| d.to_path_buf());
        }
        cur = d.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn desc(dirs: &[(&str, &Path)]) -> CgroupDescriptor {
        CgroupDescriptor {
            path: "/t".into(),
            systemd: None,
            unified: false,
            dirs: dirs
                .iter()
                .map(|(k, d)| (k.to_string(), d.to_path_buf()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn frozen_and_populated_fake_hierarchies_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let freezer = tmp.path().join("freezer/parent");
        let memory = tmp.path().join("memory/parent/c");
        std::fs::create_dir_all(&freezer).unwrap();
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(freezer.join("freezer.state"), "THAWED\n").unwrap();
        let d = desc(&[("freezer", &freezer.join("c")), ("memory", &memory)]);
        d.check_reusable().unwrap();

        std::fs::write(freezer.join("freezer.state"), "FROZEN\n").unwrap();
        let err = d.check_reusable().unwrap_err().to_string();
        assert!(
            err.contains("is frozen, so") && err.contains("thaw it"),
            "{err}"
        );

        std::fs::write(freezer.join("freezer.state"), "THAWED\n").unwrap();
        std::fs::write(memory.join("cgroup.procs"), "12\n34\n").unwrap();
        let err = d.check_reusable().unwrap_err().to_string();
        assert!(err.contains("2 process(es) (pid 12, 34)"), "{err}");
    }
}
