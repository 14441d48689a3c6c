//! Removing directories ferry made without ever deleting through a mount.
//!
//! [`remove_tree`] (shared with the migration agents) refuses to descend
//! into another mount; [`unmount_below`] first takes away the mounts ferry
//! itself put below a directory (the rootfs bind that CRIU restores
//! into), found in `/proc/self/mountinfo`.
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

pub use migrate::remove::{remove_tree, RemoveError};

/// The mount points at or below `dir` in this mount namespace, deepest
/// first.
pub fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out: Vec<PathBuf> = migrate::remove::parse_mount_points(&text)
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// Detaches every mount at or below `dir` (deepest first). Mounts that
/// are already gone are fine.
pub fn unmount_below(dir: &Path) -> std::result::Result<(), RemoveError> {
    let mounts = mounts_below(dir).map_err(|e| RemoveError::Io {
        path: "/proc/self/mountinfo".into(),
        op: "read",
        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    for m in mounts {
        tracing::debug!(mount = %m.display(), "unmounting");
        // A stacked mount point shows once per mount: repeat until gone.
        for _ in 0..16 {
            match umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => continue,
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
                Err(source) => {
                    return Err(RemoveError::Io {
                        path: m,
                        op: "unmount",
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Unmounts what is below `dir`, then removes it without crossing into
/// any mount that is left.
pub fn unmount_and_remove(dir: &Path) -> std::result::Result<(), RemoveError> {
    unmount_below(dir)?;
    remove_tree(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_and_remove_keeps_what_was_bind_mounted() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("bind mounts need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("rootfs");
        std::fs::create_dir_all(data.join("etc")).unwrap();
        std::fs::write(data.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        let state = tmp.path().join("state");
        let mnt = state.join("criu-root");
        std::fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some(&data),
            &mnt,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        assert_eq!(mounts_below(&state).unwrap(), vec![mnt.clone()]);
        unmount_and_remove(&state).unwrap();
        assert!(!state.exists());
        assert!(data.join("etc/passwd").exists());
    }
}
