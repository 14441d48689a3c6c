//! The CRIU options a dump and a restore of a container share, set in one
//! place so the two cannot drift apart.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::fsutil::{open_dir, writable_dir};
use super::Result;
use crate::criu::{self, CgMode, Opts};
use crate::network::LockMethod;
use crate::proto::rpc::Ext_mount_map;

/// CRIU's log level for dumps and restores: enough to explain failures.
pub(crate) const CRIU_LOG_LEVEL: i32 = 4;

/// The image and work directories of one CRIU run, open for CRIU, and the
/// name of its log in the work directory.
pub(crate) struct CriuDirs {
    pub images: PathBuf,
    pub work: PathBuf,
    pub log_name: &'static str,
    images_fd: File,
    work_fd: File,
}

impl CriuDirs {
    /// `images` is checked already; the work directory (default: the
    /// images) must be writable.
    pub fn open(
        images: PathBuf,
        work_path: Option<&Path>,
        log_name: &'static str,
    ) -> Result<CriuDirs> {
        let work = match work_path {
            Some(w) => writable_dir(w, "work path")?,
            None => images.clone(),
        };
        Ok(CriuDirs {
            images_fd: open_dir(&images)?,
            work_fd: open_dir(&work)?,
            images,
            work,
            log_name,
        })
    }

    pub fn log(&self) -> PathBuf {
        self.work.join(self.log_name)
    }
}

/// The [`CriuFlags`] of checkpoint or restore options, whose fields of
/// these names mean the same.
macro_rules! criu_flags_of {
    ($o:expr) => {
        $crate::container::criu_opts::CriuFlags {
            tcp_established: $o.tcp_established,
            ext_unix_sk: $o.ext_unix_sk,
            shell_job: $o.shell_job,
            file_locks: $o.file_locks,
            auto_dedup: $o.auto_dedup,
            lazy_pages: $o.lazy_pages,
            empty_ns_network: $o.empty_ns_network,
            network_lock: $o.network_lock,
            manage_cgroups_mode: $o.manage_cgroups_mode,
        }
    };
}
pub(crate) use criu_flags_of;

/// Options that mean the same to a dump and to the restore of its images.
pub(crate) struct CriuFlags {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub auto_dedup: bool,
    pub lazy_pages: bool,
    /// ferry, not CRIU, sets up the network namespace.
    pub empty_ns_network: bool,
    pub network_lock: LockMethod,
    pub manage_cgroups_mode: Option<CgMode>,
}

/// What every dump and restore of a container asks: directories and log,
/// the container's `root`, cgroups managed by CRIU, its external mounts,
/// a terminal's pty master left to ferry, and `flags`.
pub(crate) fn base(
    dirs: &CriuDirs,
    root: &Path,
    ext_mnt: Vec<Ext_mount_map>,
    terminal: bool,
    flags: &CriuFlags,
) -> Opts {
    let mut o = Opts::new();
    o.set_images_dir_fd(dirs.images_fd.as_raw_fd());
    o.set_work_dir_fd(dirs.work_fd.as_raw_fd());
    o.set_log_file(dirs.log_name.into());
    o.set_log_level(CRIU_LOG_LEVEL);
    o.set_root(root.to_string_lossy().into_owned());
    o.set_manage_cgroups(true);
    if let Some(m) = flags.manage_cgroups_mode {
        o.set_manage_cgroups_mode(m);
    }
    o.ext_mnt = ext_mnt;
    if terminal {
        o.set_orphan_pts_master(true);
    }
    o.set_tcp_established(flags.tcp_established);
    o.set_ext_unix_sk(flags.ext_unix_sk);
    o.set_shell_job(flags.shell_job);
    o.set_file_locks(flags.file_locks);
    o.set_auto_dedup(flags.auto_dedup);
    o.set_network_lock(lock_method(flags.network_lock));
    if flags.empty_ns_network {
        o.set_empty_ns(libc::CLONE_NEWNET as u32);
    }
    if flags.lazy_pages {
        o.set_lazy_pages(true);
    }
    o
}

pub(crate) fn lock_method(m: LockMethod) -> criu::NetworkLock {
    match m {
        LockMethod::Iptables => criu::NetworkLock::IPTABLES,
        LockMethod::Nftables => criu::NetworkLock::NFTABLES,
        LockMethod::Skip => criu::NetworkLock::SKIP,
    }
}

/// The hierarchies (as `/proc/<pid>/cgroup` names them) in which `pid`
/// sits in a cgroup of the container's own: the only ones CRIU is to dump.
/// Without this list CRIU dumps every hierarchy the tree is in, with all
/// the cgroups below the tree's: on a hybrid host the container sits in the
/// unified root, and that is every cgroup of the host's unified hierarchy.
pub(crate) fn own_cgroup_controllers(
    cgroup: &crate::cgroups::CgroupDescriptor,
    memberships: &[crate::cgroups::Membership],
) -> Vec<String> {
    let own = |name: &str| {
        let key = if name.is_empty() { "unified" } else { name };
        cgroup.dirs.contains_key(key)
    };
    memberships
        .iter()
        .filter(|m| m.controllers.split(',').any(own))
        .map(|m| m.controllers.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{CgroupDescriptor, Membership};

    fn member(controllers: &str, path: &str) -> Membership {
        Membership {
            controllers: controllers.into(),
            path: path.into(),
        }
    }

    #[test]
    fn only_the_containers_own_hierarchies_are_dumped() {
        let dirs = ["cpu", "cpuacct", "memory", "name=systemd"]
            .iter()
            .map(|c| (c.to_string(), format!("/sys/fs/cgroup/{c}/ferry/x").into()))
            .collect();
        let hybrid = CgroupDescriptor {
            path: "ferry/x".into(),
            systemd: None,
            unified: false,
            dirs,
        };
        let m = [
            member("cpu,cpuacct", "/ferry/x"),
            member("memory", "/ferry/x"),
            member("name=systemd", "/ferry/x"),
            member("", "/"),
        ];
        assert_eq!(
            own_cgroup_controllers(&hybrid, &m),
            ["cpu,cpuacct", "memory", "name=systemd"]
        );
        let v2 = CgroupDescriptor {
            path: "ferry/x".into(),
            systemd: None,
            unified: true,
            dirs: [("unified".to_string(), "/sys/fs/cgroup/ferry/x".into())]
                .into_iter()
                .collect(),
        };
        assert_eq!(own_cgroup_controllers(&v2, &[member("", "/ferry/x")]), [""]);
    }
}
