//! A directory of CRIU images: marked incomplete while a dump writes it,
//! checked before a restore sets anything up.
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{io, Error, ImagesError, Result};
use crate::criu::{self, image};
use crate::freeze_guard::INCOMPLETE_MARKER;
use crate::rootfs::RootDir;

/// Checks that `path` holds a CRIU checkpoint before anything is set up.
pub fn check_images(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|source| ImagesError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ImagesError::NotADirectory(path.to_path_buf()).into());
    }
    let marker = path.join(INCOMPLETE_MARKER);
    if marker.exists() {
        return Err(ImagesError::Incomplete {
            path: path.to_path_buf(),
            marker,
        }
        .into());
    }
    let inventory = path.join("inventory.img");
    if !inventory.exists() {
        return Err(ImagesError::NoInventory(path.to_path_buf()).into());
    }
    image::read_single::<protobuf::well_known_types::empty::Empty>(
        &inventory,
        image::INVENTORY_MAGIC,
    )
    .map_err(|e| Error::Criu(e.into()))?;
    // Every process's pages must be there: CRIU can hang on a short pages image.
    let dir = crate::images::ImageDir::open(path).map_err(ImagesError::Damaged)?;
    for p in dir.process_tree().map_err(ImagesError::Damaged)? {
        dir.memory(p.pid).map_err(ImagesError::Damaged)?;
    }
    std::fs::canonicalize(path).map_err(io(format!("image path {}", path.display())))
}

/// Refuses a rootfs where a mount point CRIU will restore directly in the
/// rootfs directory is, or passes through, a symlink: CRIU resolves mount
/// points itself, outside the container's root, so such a link could point
/// it at the host.
pub(crate) fn check_mountpoints(root: &RootDir, images: &Path) -> Result<()> {
    let mounts = crate::images::ImageDir::open(images)
        .and_then(|d| d.mounts())
        .map_err(ImagesError::Damaged)?;
    let ids: Vec<u32> = mounts.iter().map(|m| m.id).collect();
    let Some(top) = mounts.iter().find(|m| {
        crate::rootfs::resolve::lexical(Path::new(&m.mountpoint)) == Path::new("/")
            && (m.parent_id == m.id || !ids.contains(&m.parent_id))
    }) else {
        return Ok(());
    };
    for m in mounts
        .iter()
        .filter(|m| m.parent_id == top.id && m.id != top.id)
    {
        let path = crate::rootfs::resolve::lexical(Path::new(&m.mountpoint));
        match root.resolve_no_symlinks(&path) {
            Ok(_) => {}
            Err(e) if e.errno == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(Error::MountPointLink {
                    rootfs: root.host_path().to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Marks `images` incomplete (see [`INCOMPLETE_MARKER`]) and removes the
/// statistics of an earlier dump, whose presence would mean "completed".
///
/// The marker guards against a ferry or CRIU that dies mid-dump, which
/// the page cache survives: it is not fsynced (nor removed with one), as
/// CRIU does not sync the images it marks, which a machine crash can
/// leave partly written either way.
pub(crate) fn mark_incomplete(images: &Path, work: &Path) -> Result<()> {
    for dir in [images, work] {
        let stats = dir.join(criu::stats::DUMP_STATS_FILE);
        match std::fs::remove_file(&stats) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", stats.display()))(e))
            }
            _ => {}
        }
    }
    let marker = images.join(INCOMPLETE_MARKER);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&marker)?;
        std::io::Write::write_all(
            &mut f,
            b"ferry writes this file before a dump and removes it once the dump completed; \
              `ferry restore` refuses a directory that holds it.\n",
        )
    };
    write().map_err(io(format!("writing {}", marker.display())))
}

pub(crate) fn remove_marker(images: &Path) -> Result<()> {
    let marker = images.join(INCOMPLETE_MARKER);
    std::fs::remove_file(&marker).map_err(io(format!("removing {}", marker.display())))
}
