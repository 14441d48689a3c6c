//! A container's directory under the state root: `state.json` written
//! atomically, a per-container lock, and the fifos `start` talks through.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupDescriptor;
use crate::network::VethConfig;

pub const STATE_FILE: &str = "state.json";
/// Present from create until start: `start` writes a byte into it.
pub const EXEC_FIFO: &str = "exec.fifo";
/// Read by `start` to learn whether the user process was exec'ed.
pub const EXEC_DONE: &str = "exec.done";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file ({source}); `ferry delete --force` removes the container")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot lock: {source}")]
    Lock {
        path: PathBuf,
        source: nix::errno::Errno,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What ferry remembers about a container; status itself is always
/// re-derived from the kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Start time of `pid` in clock ticks, to detect PID reuse.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub cgroup: Option<CgroupDescriptor>,
    #[serde(default)]
    pub veth: Option<VethConfig>,
    /// What fds 0-2 of the init pointed at when it started ("pipe:[123]"),
    /// so a checkpoint can map them back on restore.
    #[serde(default)]
    pub stdio: Vec<String>,
    /// The configuration the container was created with.
    pub config: Spec,
    /// Set once `start` signalled the init (or for restored containers).
    #[serde(default)]
    pub started: bool,
    /// Kept after the init exits so `state` can report it.
    #[serde(default)]
    pub exit_status: Option<i32>,
}

/// The directory of one container.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> StateDir {
        StateDir {
            path: root.join(id),
        }
    }

    /// Creates the directory; fails with `AlreadyExists` if the ID is taken,
    /// which makes creation race-free between concurrent `create`s.
    pub fn create(&self) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir(&self.path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Exclusive per-container lock, held until the guard is dropped.
    pub fn lock(&self) -> Result<Flock<File>> {
        let path = self.file(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| Error::Lock { path, source })
    }

    pub fn load(&self) -> Result<Option<State>> {
        let path = self.file(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Corrupt { path, source })
    }

    /// Writes state.json atomically: temp file, fsync, rename, fsync dir.
    pub fn save(&self, state: &State) -> Result<()> {
        let path = self.file(STATE_FILE);
        let tmp = self.file(".state.json.tmp");
        let data = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.path))?;
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_duplicate_create() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path(), "c1");
        dir.create().unwrap();
        assert_eq!(
            dir.create().unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        let _lock = dir.lock().unwrap();
        assert!(dir.load().unwrap().is_none());
        let state = State {
            id: "c1".into(),
            pid: 42,
            pid_start_time: 7,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "now".into(),
            annotations: HashMap::new(),
            cgroup: None,
            veth: None,
            stdio: vec!["pipe:[1]".into()],
            config: Spec::default(),
            started: false,
            exit_status: None,
        };
        dir.save(&state).unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(back.stdio, state.stdio);
        assert!(!dir.file(".state.json.tmp").exists());
        std::fs::write(dir.file(STATE_FILE), "{").unwrap();
        assert!(matches!(dir.load(), Err(Error::Corrupt { .. })));
    }
}
