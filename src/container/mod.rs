//! Containers on disk and their lifecycle. One file per operation; each
//! operation checks the status it needs first and changes nothing otherwise.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroups::{self, Cgroup};
use crate::id::{self, IdError, Lookup};
use crate::state::{self, State, StateDir};

mod checkpoint;
mod create;
mod delete;
mod events;
mod exec;
mod externals;
mod kill;
mod list;
mod oom;
mod pause;
mod pid_ns;
mod ps;
mod restore;
mod start;
mod update;

pub use checkpoint::{CheckpointOptions, Checkpointed, PostDump};
pub use create::{CreateOptions, Created};
pub use delete::remove_incomplete;
pub use events::StatsSnapshot;
pub use exec::{ExecHandle, ExecOptions};
pub use externals::DESCRIPTORS_FILE;
pub use kill::parse_signal;
pub use list::list;
pub use ps::ProcessInfo;
pub use restore::{check_images, RestoreHold, RestoreOptions, Restored};

pub const DEFAULT_ROOT: &str = "/run/ferry";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container ID {id:?}: {source}")]
    InvalidId { id: String, source: IdError },
    #[error("container {0} does not exist (`ferry list` shows the containers)")]
    NotFound(String),
    /// No container has this ID, but some IDs start with it: IDs are
    /// never abbreviated, so a command cannot reach the wrong container.
    #[error("container {id} does not exist (IDs are exact, never abbreviated; IDs that start with it: {})", .longer.join(", "))]
    NotFoundLonger { id: String, longer: Vec<String> },
    #[error("container {0} already exists: pick another ID or `ferry delete {0}` first")]
    Exists(String),
    #[error("container {id} is {status}: {hint}")]
    WrongState {
        id: String,
        status: Status,
        hint: String,
    },
    #[error(transparent)]
    Spec(#[from] crate::spec::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroups::Error),
    #[error(transparent)]
    Network(#[from] crate::network::Error),
    #[error(transparent)]
    Hook(#[from] crate::hooks::Error),
    #[error(transparent)]
    Console(#[from] crate::console::Error),
    #[error(transparent)]
    Criu(#[from] crate::criu::Error),
    #[error(transparent)]
    FreezeGuard(#[from] crate::freeze_guard::Error),
    #[error("{context}: {source}")]
    Sys {
        context: String,
        source: nix::errno::Errno,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("rootfs {rootfs}: {source}")]
    Rootfs {
        rootfs: PathBuf,
        source: crate::rootfs::resolve::Error,
    },
    #[error("container init: {0}")]
    Init(String),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let context = context.into();
    move |source| Error::Sys { context, source }
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: table output relies on width and alignment.
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A container known under a state root.
#[derive(Debug)]
pub struct Container {
    pub root: PathBuf,
    pub dir: StateDir,
    pub state: State,
}

/// The OCI state document (`ferry state`), with runc's extra fields.
#[derive(Debug, Serialize)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
}

impl Error {
    /// The container does not exist (either not-found variant).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::NotFoundLonger { .. })
    }
}

/// Validates `id` and checks that exactly this container exists under
/// `root`. IDs are never abbreviated (as with runc): a prefix reaching
/// another container is how `delete -f web` once removed `web-2`.
pub fn resolve_id(root: &Path, id: &str) -> Result<String> {
    id::validate(id).map_err(|source| Error::InvalidId {
        id: id.to_string(),
        source,
    })?;
    match id::lookup(root, id) {
        Lookup::Found => Ok(id.to_string()),
        Lookup::Missing { longer } if longer.is_empty() => Err(Error::NotFound(id.to_string())),
        Lookup::Missing { longer } => Err(Error::NotFoundLonger {
            id: id.to_string(),
            longer,
        }),
    }
}

impl Container {
    /// Loads the container with exactly this `id` from `root`.
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        let id = resolve_id(root, id)?;
        let dir = StateDir::new(root, &id);
        let state = dir.load()?.ok_or_else(|| Error::WrongState {
            id: id.clone(),
            status: Status::Creating,
            hint: "it is still being created (or its creation was interrupted: `ferry delete --force` removes it)".into(),
        })?;
        Ok(Container {
            root: root.to_path_buf(),
            dir,
            state,
        })
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn cgroup(&self) -> Result<Option<Cgroup>> {
        match &self.state.cgroup {
            Some(d) => Ok(Some(Cgroup::load(d)?)),
            None => Ok(None),
        }
    }

    /// Status derived from the kernel: is the init (same pid, same start time)
    /// alive, has it been started, is its cgroup frozen.
    pub fn status(&self) -> Status {
        if self.state.creating {
            return Status::Creating;
        }
        if !crate::proc::is_alive(self.state.pid, self.state.pid_start_time) {
            return Status::Stopped;
        }
        if !self.state.started && self.dir.file(state::EXEC_FIFO).exists() {
            return Status::Created;
        }
        if let Ok(Some(cg)) = self.cgroup() {
            if cg.freezer_state().ok() == Some(cgroups::FreezerState::Frozen) {
                return Status::Paused;
            }
        }
        Status::Running
    }

    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        OciState {
            oci_version: "1.0.2".into(),
            id: self.state.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.state.pid
            },
            bundle: self.state.bundle.clone(),
            rootfs: self.state.rootfs.clone(),
            created: self.state.created.clone(),
            owner: String::new(),
            annotations: self.state.annotations.clone(),
        }
    }

    pub fn oci_state_json(&self) -> String {
        serde_json::to_string(&self.oci_state()).expect("state serializes")
    }

    pub(crate) fn wrong_state(&self, status: Status, hint: impl Into<String>) -> Error {
        Error::WrongState {
            id: self.state.id.clone(),
            status,
            hint: hint.into(),
        }
    }

    /// Fails unless the container is in one of `allowed`.
    pub(crate) fn require(&self, allowed: &[Status], hint: &str) -> Result<Status> {
        let status = self.status();
        if allowed.contains(&status) {
            Ok(status)
        } else {
            Err(self.wrong_state(status, hint))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn status_honours_width_for_tables() {
        assert_eq!(format!("{:<10}|", Status::Running), "running   |");
        assert_eq!(format!("{}", Status::Paused), "paused");
    }
}
