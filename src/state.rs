//! A container's directory under the state root: `state.json` written
//! atomically, a per-container lock, and the fifos `start` talks through.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupDescriptor;
use crate::network::{LockMethod, VethConfig};

pub const STATE_FILE: &str = "state.json";
/// The version of the OCI runtime spec the state documents follow.
pub const OCI_VERSION: &str = "1.0.2";
/// Present from create until start: `start` writes a byte into it.
pub const EXEC_FIFO: &str = "exec.fifo";
/// Read by `start` to learn whether the user process was exec'ed.
pub const EXEC_DONE: &str = "exec.done";
const LOCK_FILE: &str = "lock";
/// What a CRIU run that may leave a network lock behind is (see [`CriuLock`]).
const CRIU_LOCK_FILE: &str = "criu-lock.json";
/// How long a command waits for another one on the same container.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file ({source})")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot lock: {source}")]
    Lock {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("{path}: another ferry command{} has held the container's lock for {} s; wait for it to finish, or stop it", .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), .waited.as_secs())]
    Busy {
        path: PathBuf,
        holder: Option<i32>,
        waited: Duration,
    },
    #[error(transparent)]
    Remove(#[from] crate::fs_remove::RemoveError),
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
    /// Written first, before anything that would need undoing, and
    /// cleared when create or restore finished: a state that still says
    /// so once the lock is free belongs to a ferry that was killed, and
    /// tells `delete --force` what to remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// Created with `--no-new-keyring`: exec'd processes keep the
    /// caller's session keyring too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_keyring: bool,
}

impl State {
    /// The state create and restore record first, before anything exists
    /// that would need undoing (`creating` set, no pid yet), so that
    /// `delete --force` can remove what a killed ferry left.
    pub fn creating(
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        annotations: HashMap<String, String>,
        cgroup: &CgroupDescriptor,
        config: &Spec,
    ) -> State {
        State {
            id: id.to_string(),
            pid: 0,
            pid_start_time: 0,
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            created: crate::proc::now_rfc3339(),
            annotations,
            cgroup: Some(cgroup.clone()),
            veth: None,
            stdio: Vec::new(),
            config: config.clone(),
            started: false,
            creating: true,
            no_new_keyring: false,
        }
    }

    /// A restored container's state: its process runs at once (no
    /// `start`), and its veth is recorded up front because CRIU may make
    /// the pair before ferry hears of it.
    pub fn restoring(self, veth: Option<VethConfig>) -> State {
        State {
            veth,
            started: true,
            ..self
        }
    }

    /// Records the container's init and its start time (0 if it is gone
    /// already), to tell it from a later process with the same pid.
    pub fn set_init(&mut self, pid: i32) {
        self.pid = pid;
        self.pid_start_time = crate::proc::start_time(pid).unwrap_or(0);
    }

    /// Creation is complete: records what fds 0-2 of the init point at
    /// and clears `creating`.
    pub fn finish_creating(&mut self) {
        self.stdio = (0..3)
            .map(|fd| crate::proc::fd_target(self.pid, fd).unwrap_or_default())
            .collect();
        self.creating = false;
    }

    /// The OCI state hooks see while the container is being created, with
    /// the init `pid`.
    pub fn creating_json(&self, pid: i32) -> String {
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": "creating",
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
        .to_string()
    }
}

/// A CRIU run that can leave its network lock behind: CRIU names its nft
/// table `CRIU-<run id>` (cut to 21 characters of the id by CRIU's buffer)
/// in the network namespace it locked, and adds a `CRIU` iptables chain
/// with `--network-lock iptables`. Recorded before CRIU locks anything,
/// removed once the lock is known to be gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuLock {
    pub run_id: String,
    pub method: LockMethod,
    /// The network namespace (inode) the lock is in: the container's own,
    /// or ferry's when the container shares it.
    pub netns: u64,
    /// A process in that namespace when it is the container's (its init).
    pub netns_pid: Option<i32>,
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

    /// Creates `root` if needed and claims `id` below it (see
    /// [`StateDir::create`]).
    pub fn claim(root: &Path, id: &str) -> std::io::Result<StateDir> {
        let dir = StateDir::new(root, id);
        dir.create()?;
        Ok(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Exclusive per-container lock, held until the guard is dropped.
    /// Waits at most a minute for another command to let go, then names
    /// the process holding it.
    pub fn lock(&self) -> Result<Flock<File>> {
        self.lock_within(LOCK_TIMEOUT)
    }

    pub fn lock_within(&self, timeout: Duration) -> Result<Flock<File>> {
        let path = self.file(LOCK_FILE);
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let start = Instant::now();
        let mut step = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(l),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
                Err((_, source)) => return Err(Error::Lock { path, source }),
            }
            if start.elapsed() >= timeout {
                return Err(Error::Busy {
                    holder: lock_holder(&file),
                    path,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(20));
        }
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

    /// Writes state.json atomically (see [`write_atomic`]).
    pub fn save(&self, state: &State) -> Result<()> {
        let data = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&self.path, STATE_FILE, &data)
    }

    /// Unmounts whatever is mounted below the directory (the rootfs bind
    /// a restore makes), then removes it without ever crossing a mount.
    pub fn remove(&self) -> Result<()> {
        Ok(crate::fs_remove::unmount_and_remove(&self.path)?)
    }

    /// Records a CRIU run whose network lock may need removing.
    pub fn record_criu_lock(&self, lock: &CriuLock) -> Result<()> {
        let data = serde_json::to_vec(lock).expect("record serializes");
        write_atomic(&self.path, CRIU_LOCK_FILE, &data)
    }

    pub fn criu_lock(&self) -> Option<CriuLock> {
        let text = std::fs::read(self.file(CRIU_LOCK_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn clear_criu_lock(&self) {
        let _ = std::fs::remove_file(self.file(CRIU_LOCK_FILE));
    }
}

/// Writes `dir/name` atomically: temp file, rename. A reader (or a ferry
/// killed halfway) sees the old file or the new one, never a torn one.
/// Not fsynced, as runc and crun do not: state describes processes, which
/// a machine crash ends anyway (and the state root is a tmpfs on most
/// hosts), while an fsync on a busy disk costs milliseconds to tens of
/// milliseconds on every step of a restore or a start.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(())
}

/// The pid holding an flock on `file`, from /proc/locks.
fn lock_holder(file: &File) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().ok()?;
    let dev = md.dev();
    let key = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        md.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[1] == "FLOCK" && f[5] == key)
        .and_then(|f| f[4].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_waited_for_with_a_bound_and_its_holder_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path(), "c1");
        dir.create().unwrap();
        let held = dir.lock().unwrap();
        let started = Instant::now();
        match dir.lock_within(Duration::from_millis(50)) {
            Err(Error::Busy { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id() as i32))
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(held);
        dir.lock_within(Duration::from_millis(50)).unwrap();
    }

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
            creating: true,
            no_new_keyring: false,
        };
        dir.save(&state).unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(back.stdio, state.stdio);
        assert!(back.creating);
        assert!(!dir.file(".state.json.tmp").exists());
        std::fs::write(dir.file(STATE_FILE), "{").unwrap();
        assert!(matches!(dir.load(), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn state_of_an_older_ferry_with_exit_status_still_loads() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path(), "old");
        dir.create().unwrap();
        let old = serde_json::json!({
            "id": "old", "pid": 7, "pid_start_time": 1, "bundle": "/b",
            "rootfs": "/b/rootfs", "created": "then", "cgroup": null,
            "config": Spec::default(), "started": true, "exit_status": 3,
        });
        std::fs::write(dir.file(STATE_FILE), old.to_string()).unwrap();
        let back = dir.load().unwrap().unwrap();
        assert_eq!(back.pid, 7);
        assert!(back.started && !back.creating);
    }
}
