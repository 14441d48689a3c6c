//! Creating a process inside an existing pid namespace without leaving the
//! caller changed: `setns(CLONE_NEWPID)` only moves the caller's *future
//! children*, and that must not outlive the one clone it is meant for (a
//! library inside `ferry serve` creates other processes afterwards).
use std::fs::File;
use std::path::Path;

use nix::sched::CloneFlags;

use super::{io, sys, Result};

/// While alive, children of the calling thread start in another pid
/// namespace; dropping it puts back the thread's own.
pub struct PidNsForChildren {
    own: File,
}

impl PidNsForChildren {
    pub fn join(path: &Path) -> Result<PidNsForChildren> {
        // Our own pid namespace (not pid_for_children, which a previous
        // setns may have changed).
        let own = File::open("/proc/thread-self/ns/pid").map_err(io("open our pid namespace"))?;
        let target = File::open(path).map_err(io(format!("pid namespace {}", path.display())))?;
        nix::sched::setns(&target, CloneFlags::CLONE_NEWPID)
            .map_err(sys(format!("join pid namespace {}", path.display())))?;
        Ok(PidNsForChildren { own })
    }
}

impl Drop for PidNsForChildren {
    fn drop(&mut self) {
        // Returning to one's own pid namespace is always permitted.
        if let Err(e) = nix::sched::setns(&self.own, CloneFlags::CLONE_NEWPID) {
            tracing::error!(error = %e, "cannot return to our own pid namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(p: &str) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn children_namespace_is_restored() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("needs root (setns)");
            return;
        }
        // A pid namespace kept alive by a sleeping child of `unshare`.
        let mut child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "30"])
            .spawn()
            .unwrap();
        let fork_pid = (0..200)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                std::fs::read_to_string(format!(
                    "/proc/{}/task/{}/children",
                    child.id(),
                    child.id()
                ))
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_string))
            })
            .expect("unshare forked");
        let target = format!("/proc/{fork_pid}/ns/pid");
        let before = ino("/proc/thread-self/ns/pid_for_children");
        {
            let _g = PidNsForChildren::join(Path::new(&target)).unwrap();
            assert_eq!(ino("/proc/thread-self/ns/pid_for_children"), ino(&target));
        }
        assert_eq!(ino("/proc/thread-self/ns/pid_for_children"), before);
        let _ = child.kill();
        let _ = child.wait();
    }
}
