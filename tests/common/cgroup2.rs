//! Where the cgroup2 hierarchy is, for tests that make directories in it.
use std::path::PathBuf;

/// The cgroup2 hierarchy: /sys/fs/cgroup on a pure v2 host, its
/// `unified` mount on a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
}

/// A directory made in the cgroup2 hierarchy, removed on drop (after its
/// `child`, if one is recorded, is killed and reaped), also when the test
/// fails.
pub struct Cgroup2Dir {
    pub path: PathBuf,
    pub child: Option<nix::unistd::Pid>,
}

impl Cgroup2Dir {
    /// Makes `<root>/<name>`.
    pub fn make(root: &std::path::Path, name: &str) -> Cgroup2Dir {
        let path = root.join(name);
        std::fs::create_dir(&path).unwrap();
        Cgroup2Dir { path, child: None }
    }
}

impl Drop for Cgroup2Dir {
    fn drop(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
