//! Containers on disk and their lifecycle. One file per operation; each
//! operation checks the status it needs first and changes nothing otherwise.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroups::{self, Cgroup};
use crate::id::{self, IdError, Lookup};
use crate::state::{self, State, StateDir};

mod append_stdio;
mod checkpoint;
mod create;
mod criu_opts;
mod delete;
mod events;
mod exec;
mod externals;
mod fsutil;
mod image_dir;
mod kill;
mod list;
pub mod netns_image;
mod notify;
mod oom;
mod pause;
mod pid_ns;
mod plan;
mod ps;
mod restore;
mod start;
mod tmpfs_image;
mod update;

pub use checkpoint::{CheckpointOptions, Checkpointed, PostDump};
pub use create::{CreateOptions, Created};
pub use delete::remove_incomplete;
pub use events::StatsSnapshot;
pub use exec::{ExecHandle, ExecOptions};
pub use externals::{read_descriptors, read_stdio_files, DESCRIPTORS_FILE};
pub use image_dir::check_images;
pub use kill::{parse_signal, KillSignal};
pub use list::list;
pub use ps::filter_ps_output;
pub use restore::{PreparedRestore, RestoreHold, RestoreOptions, Restored};

pub const DEFAULT_ROOT: &str = "/run/ferry";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container ID {id:?}: {source}")]
    InvalidId { id: String, source: IdError },
    #[error("container {0} does not exist")]
    NotFound(String),
    /// No container has this ID, but some IDs start with it: IDs are
    /// never abbreviated, so a command cannot reach the wrong container.
    #[error("container {id} does not exist (IDs are exact, never abbreviated; IDs that start with it: {})", .longer.join(", "))]
    NotFoundLonger { id: String, longer: Vec<String> },
    #[error("container {0} already exists")]
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
    PageRelay(#[from] crate::criu::page_relay::RelayError),
    /// A dump failed after its page stream to the page server did.
    #[error("{cause}: {source}")]
    PageStream {
        cause: String,
        #[source]
        source: Box<Error>,
    },
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
    /// What the container's init (or an exec'd process) reported when its
    /// setup failed, in its own words.
    #[error("container init: {0}")]
    Init(String),
    /// The init ended before it reported success or failure.
    #[error("container init: exited during setup")]
    InitExited,
    #[error("container init: exec: the process sent no terminal")]
    ExecNoTerminal,
    #[error("container init: exec: the process reported no pid")]
    ExecNoPid,
    /// The thread running a held restore ended without sending its result
    /// (it panicked).
    #[error("the restore thread ended without a result")]
    RestoreThreadLost,
    /// The process being set up gave up: its step and errno are kept.
    #[error("container init: {0}")]
    Setup(#[from] crate::sync::Failure),
    #[error("container init: {0}")]
    Sync(#[from] crate::sync::Error),
    #[error("container init: unexpected message {0}")]
    InitUnexpected(String),
    #[error("container init: the init sent no console")]
    NoConsole,
    #[error("container init: the init is not waiting for start any more")]
    NotWaiting,
    #[error("container init: the init did not exec the user program within {} s (is its cgroup frozen?)", .waited.as_secs())]
    ExecTimeout { waited: std::time::Duration },
    #[error("container init: criu answered the restore without a pid")]
    RestoreWithoutPid,
    #[error("container init: the restored init exited at once")]
    RestoredInitExited,
    /// The images' record of the network namespace ferry rebuilds is not
    /// the one the restore was prepared for.
    #[error("the images in {} record another network namespace than the restore was prepared for; restore them afresh", .images.display())]
    PreparedForOtherNetwork { images: std::path::PathBuf },
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error(
        "annotation {} needs a new network namespace in linux.namespaces",
        crate::network::VETH_ANNOTATION
    )]
    VethNeedsNetns,
    #[error("{0}")]
    PreserveFds(String),
    #[error("veth {name}: an interface with this name already exists on the host; change the {} annotation in {config}", crate::network::VETH_ANNOTATION)]
    VethExists { name: String, config: PathBuf },
    #[error("rootfs {rootfs}: mount point {source}; CRIU would follow it outside the rootfs: make it the directory or file the checkpoint had")]
    MountPointLink {
        rootfs: PathBuf,
        source: crate::rootfs::resolve::Error,
    },
    /// CRIU writes the dumped freezer state (FROZEN: the container is frozen
    /// for its dump) into the cgroup it restores into, where it runs itself.
    #[error("restore --manage-cgroups-mode strict: strict restores every cgroup of the checkpoint and aborts if one exists, and the new container's cgroup always exists (CRIU restores into it); use full to restore the checkpoint's cgroup settings too, or soft (the default)")]
    CgroupModeStrict,
    #[error("restore --manage-cgroups-mode {mode}: the checkpoint recorded a frozen cgroup (the container was paused when it was checkpointed), which CRIU would write into the new cgroup it runs in and freeze itself; restore with --manage-cgroups-mode soft (the default) or ignore, then resume")]
    CgroupModeFreezes { mode: &'static str },
    #[error("a checkpoint cannot both leave the container running and leave it stopped")]
    LeaveRunningAndStopped,
    #[error("a pre-dump mode applies to pre-dumps only: add --pre-dump or drop --pre-dump-mode")]
    PreDumpModeWithoutPreDump,
    #[error("{what} {path} is not a directory: pass a directory path")]
    NotADirectory { what: &'static str, path: PathBuf },
    #[error("cannot create {what} {path}: {source}")]
    CreateDir {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is not writable ({source}): pick a writable directory")]
    NotWritable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parent path {0} is not a directory of a previous dump")]
    NoParentDump(PathBuf),
    #[error("container {id}: process(es) {pids:?} still alive {} s after SIGKILL (stuck in the kernel?); nothing was removed", .waited.as_secs())]
    StillAlive {
        id: String,
        pids: Vec<i32>,
        waited: std::time::Duration,
    },
    #[error("CRIU's cgroup yard {path}: {source}")]
    CgroupYard {
        path: PathBuf,
        source: crate::fs_remove::RemoveError,
    },
    #[error("container {0} finished creating meanwhile; run the command again")]
    CreatedMeanwhile(String),
    /// The kernel's OOM killer took the init during setup.
    #[error("{}", oom::describe(*.limit, .file, *.kills))]
    OomAtSetup {
        /// The container's own memory limit, if it has one.
        limit: Option<i64>,
        file: PathBuf,
        kills: u64,
    },
    #[error("memory limit {limit} is too small for container {id}: it uses {usage} bytes now and the kernel cannot reclaim enough to fit under the limit; give at least {usage}")]
    MemoryBelowUsage { id: String, limit: i64, usage: u64 },
    #[error(
        "exec: {field} {value:?} contains a NUL byte, which no argument, variable or path can hold"
    )]
    NulInProcess { field: String, value: String },
    #[error("exec: the process has no args (name the program to run)")]
    NoArgs,
}

/// Why a hold point (see [`PostDump`], [`RestoreHold`]) stopped a dump or
/// a restore, which is then rolled back.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Whoever holds the operation decided against going on.
    #[error("{0}")]
    Declined(String),
}

/// A directory of CRIU images that cannot be restored from.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("image path {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image path {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path} holds an incomplete checkpoint (the dump failed or was interrupted; {marker} says so): checkpoint the container again")]
    Incomplete { path: PathBuf, marker: PathBuf },
    #[error("{0} holds no CRIU checkpoint (inventory.img is missing)")]
    NoInventory(PathBuf),
    #[error("{0}: the checkpoint is damaged")]
    Damaged(#[source] crate::images::ImageError),
    #[error("{path}: damaged ({source}); the image dir is not usable")]
    DamagedFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The images hold no network namespace (CRIU ran inside it), so the
    /// restore must make one, and the configuration has none of its own.
    #[error("{0}: the checkpoint's network namespace was kept by ferry and needs a configuration with a network namespace of its own and no user namespace; restore with the configuration the container was checkpointed with")]
    NeedsOwnNetns(PathBuf),
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
            hint: "it is still being created (or its creation was interrupted)".into(),
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

    /// The container's cgroup, for operations that cannot do without one.
    pub(crate) fn cgroup_or_err(&self) -> Result<Cgroup> {
        self.cgroup()?
            .ok_or_else(|| self.wrong_state(self.status(), "it has no cgroup"))
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
            oci_version: state::OCI_VERSION.into(),
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
