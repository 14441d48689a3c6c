//! The setup `create` and `restore` share: a bundle checked before anything
//! changes on the host ([`Plan`]), then the container's state directory
//! claimed and locked ([`Claim`]) with a guard that undoes, if the setup
//! fails, whatever was made so far ([`Rollback`]).
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::Flock;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Spec};

use super::fsutil::write_pid_file;
use super::{io, Container, Error, Result};
use crate::cgroups::{self, Cgroup, CgroupDescriptor, Driver};
use crate::network::{self, LockMethod, VethConfig};
use crate::state::{State, StateDir};

/// How long the processes of a failed restore get to leave its cgroup.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cgroup path when config.json has none: below the caller's cgroup.
pub fn default_cgroup_path(id: &str) -> String {
    format!("ferry/{id}")
}

/// A bundle that is to become the container `id`.
pub(crate) struct Plan {
    pub id: String,
    /// Canonical.
    pub bundle: PathBuf,
    /// Validated.
    pub spec: Spec,
    /// Canonical.
    pub rootfs: PathBuf,
    /// config.json asks for a terminal.
    pub terminal: bool,
}

/// The rootfs config.json names, a directory, by its canonical path.
fn find_rootfs(spec: &oci_spec::runtime::Spec, bundle: &Path) -> Result<PathBuf> {
    let rootfs = crate::spec::rootfs(spec, bundle)?;
    std::fs::canonicalize(&rootfs).map_err(io(format!("rootfs {}", rootfs.display())))
}

impl Plan {
    /// Validates `id`, loads and validates the bundle's config.json and
    /// finds its rootfs.
    pub fn load(id: &str, bundle: &Path) -> Result<Plan> {
        Plan::load_with(id, bundle, true)
    }

    /// Like [`Plan::load`], for a rootfs that is not in place yet (a
    /// migration's shipped rootfs, whose last pass follows the dump): its
    /// path is where config.json says; [`Plan::find_rootfs`] checks it
    /// once it is there.
    pub fn load_before_rootfs(id: &str, bundle: &Path) -> Result<Plan> {
        Plan::load_with(id, bundle, false)
    }

    fn load_with(id: &str, bundle: &Path, rootfs_now: bool) -> Result<Plan> {
        crate::id::validate(id).map_err(|source| Error::InvalidId {
            id: id.to_string(),
            source,
        })?;
        let bundle = std::fs::canonicalize(bundle)
            .map_err(|_| crate::spec::Error::NoBundle(bundle.to_path_buf()))?;
        let spec = crate::spec::load(&bundle)?;
        let rootfs = if rootfs_now {
            crate::spec::validate(&spec, &bundle)?;
            find_rootfs(&spec, &bundle)?
        } else {
            crate::spec::validate_config(&spec)?;
            crate::spec::rootfs_path(&spec, &bundle)?
        };
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        Ok(Plan {
            id: id.to_string(),
            bundle,
            spec,
            rootfs,
            terminal,
        })
    }

    /// Checks the rootfs now that it is in place (see
    /// [`Plan::load_before_rootfs`]); returns its canonical path.
    pub fn find_rootfs(&mut self) -> Result<&Path> {
        self.rootfs = find_rootfs(&self.spec, &self.bundle)?;
        Ok(&self.rootfs)
    }

    /// A terminal needs a console socket, and a console socket a terminal.
    pub fn check_console(&self, socket: Option<&Path>) -> Result<()> {
        Ok(crate::console::check(
            self.terminal,
            socket,
            "config.json (process.terminal)",
        )?)
    }

    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    /// The veth pair the bundle's annotations ask for.
    pub fn veth(&self) -> Result<Option<VethConfig>> {
        Ok(VethConfig::from_annotations(&self.annotations())?)
    }

    pub fn resources(&self) -> Option<&LinuxResources> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
    }

    /// The container's cgroup made by `driver`: at `path` if given, else at
    /// config.json's `linux.cgroupsPath`, else at the driver's default.
    pub fn cgroup(&self, path: Option<&str>, driver: Driver) -> Result<CgroupDescriptor> {
        let path = path.map(str::to_string).unwrap_or_else(|| {
            self.spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| match driver {
                    Driver::Cgroupfs => default_cgroup_path(&self.id),
                    Driver::Systemd => cgroups::systemd::default_path(&self.id),
                })
        });
        Ok(CgroupDescriptor::resolve_for(driver, &path)?)
    }

    /// Claims the container's ID under `root` and records its first state
    /// (made by [`State::creating`], then `adjust`ed) before anything
    /// exists that would need undoing, so that `delete --force` can remove
    /// what a killed ferry left.
    pub fn claim(
        &self,
        root: &Path,
        cgroup: CgroupDescriptor,
        adjust: impl FnOnce(State) -> State,
    ) -> Result<Claim> {
        let dir = StateDir::claim(root, &self.id).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(self.id.clone())
            } else {
                io(format!("creating {}", root.join(&self.id).display()))(e)
            }
        })?;
        let rollback = Rollback::new(dir.clone());
        let lock = dir.lock()?;
        cgroup.check_reusable()?;
        let state = adjust(State::creating(
            &self.id,
            &self.bundle,
            &self.rootfs,
            self.annotations(),
            &cgroup,
            &self.spec,
        ));
        dir.save(&state)?;
        Ok(Claim {
            dir,
            state,
            cgroup,
            rollback,
            lock,
        })
    }
}

/// A container being set up: its state directory (locked) and state, and
/// what a failure must undo. Dropped before [`Claim::finish`], it rolls
/// the setup back.
pub(crate) struct Claim {
    pub dir: StateDir,
    pub state: State,
    pub cgroup: CgroupDescriptor,
    /// Declared before the lock: the rollback runs while it is held.
    pub rollback: Rollback,
    pub lock: Flock<File>,
}

impl Claim {
    /// Makes the container's cgroup with `resources`.
    pub fn create_cgroup(&mut self, resources: Option<&LinuxResources>) -> Result<()> {
        let cgroup = Cgroup::create_from(self.cgroup.clone(), resources)?;
        self.rollback.cgroup = Some(cgroup);
        Ok(())
    }

    /// The cgroup made by [`Claim::create_cgroup`].
    pub fn made_cgroup(&self) -> &Cgroup {
        self.rollback.cgroup.as_ref().expect("cgroup created")
    }

    pub fn save(&self) -> Result<()> {
        Ok(self.dir.save(&self.state)?)
    }

    /// The container is set up: records its stdio, clears `creating` and
    /// writes the pid file; nothing is undone any more. The lock is
    /// returned to be let go when the caller is done.
    pub fn finish(
        mut self,
        root: &Path,
        pid_file: Option<&Path>,
    ) -> Result<(Container, Flock<File>)> {
        self.state.finish_creating();
        self.save()?;
        if let Some(pf) = pid_file {
            write_pid_file(pf, self.state.pid)?;
        }
        self.rollback.disarm();
        let Claim {
            dir,
            state,
            rollback,
            lock,
            ..
        } = self;
        drop(rollback);
        let container = Container {
            root: root.to_path_buf(),
            dir,
            state,
        };
        Ok((container, lock))
    }
}

/// What a failed create or restore must undo, undone on drop while armed:
/// the init and every process in the cgroup, the veth (and its lock), the
/// cgroup, the state directory. The rootfs bind of a restore is unmounted
/// on drop in any case. Every cleanup that fails is logged.
pub(crate) struct Rollback {
    dir: StateDir,
    pub cgroup: Option<Cgroup>,
    pub veth: Option<VethConfig>,
    /// How the veth's host end may have been locked (by a restore).
    pub veth_lock: Option<LockMethod>,
    pub root_mount: Option<PathBuf>,
    pub pid: Option<i32>,
    armed: bool,
}

impl Rollback {
    fn new(dir: StateDir) -> Rollback {
        Rollback {
            dir,
            cgroup: None,
            veth: None,
            veth_lock: None,
            root_mount: None,
            pid: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    pub fn unmount_root(&mut self) {
        if let Some(p) = self.root_mount.take() {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!(error = %e, path = %p.display(), "rollback: cannot unmount the rootfs bind");
            }
            if let Err(e) = std::fs::remove_dir(&p) {
                tracing::warn!(error = %e, path = %p.display(), "rollback: cannot remove the rootfs bind's mount point");
            }
        }
    }

    fn kill_processes(&self) {
        if let Some(pid) = self.pid {
            let pid = Pid::from_raw(pid);
            kill_traced(pid);
            match nix::sys::wait::waitpid(pid, None) {
                Ok(_) | Err(Errno::ECHILD) => {}
                Err(e) => tracing::warn!(error = %e, %pid, "rollback: cannot reap the init"),
            }
        }
        if let Some(cg) = &self.cgroup {
            // A frozen cgroup cannot die; thaw it after queueing SIGKILL.
            for p in cg.pids().unwrap_or_default() {
                kill_traced(Pid::from_raw(p));
            }
            if let Err(e) = cg.thaw() {
                tracing::warn!(error = %e, "rollback: cannot thaw the cgroup");
            }
        }
    }

    fn remove_veth(&self) {
        let Some(v) = &self.veth else { return };
        if let Some(method) = self.veth_lock {
            if let Err(e) = network::unlock(v, method) {
                tracing::warn!(error = %e, veth = %v.host_if, "rollback: cannot unlock the veth");
            }
        }
        if let Err(e) = network::remove(v) {
            tracing::warn!(error = %e, veth = %v.host_if, "rollback: cannot remove the veth");
        }
    }

    fn remove_cgroup(&self) {
        let Some(cg) = &self.cgroup else { return };
        let deadline = Instant::now() + EMPTY_TIMEOUT;
        while cg.pids().is_ok_and(|p| !p.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(error = %e, "rollback: cannot remove the cgroup");
        }
    }
}

fn kill_traced(pid: Pid) {
    match kill(pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(error = %e, %pid, "rollback: cannot kill"),
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        self.unmount_root();
        if !self.armed {
            return;
        }
        tracing::debug!(dir = %self.dir.path.display(), "rolling the setup back");
        self.kill_processes();
        self.remove_veth();
        self.remove_cgroup();
        if let Err(e) = self.dir.remove() {
            tracing::warn!(error = %e, dir = %self.dir.path.display(), "rollback: cannot remove the state directory");
        }
    }
}
