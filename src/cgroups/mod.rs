//! Container cgroups on v1, hybrid and v2 hosts, through cgroups-rs.
//!
//! INTERFACE STUB: bodies are filled in by the cgroups work.
use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {message}")]
    Cgroup { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    pub memory_limit: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
}

pub struct Cgroup {
    desc: CgroupDescriptor,
}

impl Cgroup {
    /// Creates (or reuses) the cgroup for `path` (absolute = from each hierarchy
    /// root; relative = below the caller's own cgroup, per controller) and
    /// applies `resources`.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        let _ = (path, resources);
        todo!()
    }
    /// Opens an existing cgroup from its descriptor (state.json).
    pub fn load(desc: &CgroupDescriptor) -> Result<Cgroup> {
        Ok(Cgroup { desc: desc.clone() })
    }
    pub fn descriptor(&self) -> &CgroupDescriptor {
        &self.desc
    }
    pub fn add_task(&self, pid: i32) -> Result<()> {
        let _ = pid;
        todo!()
    }
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        let _ = resources;
        todo!()
    }
    /// Returns once the kernel reports FROZEN.
    pub fn freeze(&self) -> Result<()> {
        todo!()
    }
    pub fn thaw(&self) -> Result<()> {
        todo!()
    }
    pub fn freezer_state(&self) -> Result<FreezerState> {
        todo!()
    }
    pub fn pids(&self) -> Result<Vec<i32>> {
        todo!()
    }
    pub fn stats(&self) -> Result<Stats> {
        todo!()
    }
    /// Removes every directory of the cgroup; the cgroup must be empty.
    pub fn remove(&self) -> Result<()> {
        todo!()
    }
}
