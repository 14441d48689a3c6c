//! The store of archives unpacked for `restore --import` (see
//! [`crate::archive`] for the layout and the checks on import).
//!
//! An import is unpacked into `<root>/@imports/<id>/` (`@` cannot appear in
//! a container ID, so this never collides with a container's state dir).
//! Without a bundle of the caller's, the archive's config and rootfs become
//! the bundle `<root>/@imports/<id>/bundle/`, which lives as long as the
//! container: [`Container::delete`](crate::Container::delete) removes it.
//! The CRIU images are removed once the restore is done; a failed restore
//! removes everything it unpacked.
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::archive::oci_image::{self, ImageRef};
use crate::archive::{self, Layout, Limits, RootfsMode};
use crate::fs_remove::RemoveError;

/// Directory under the state root holding imported archives.
pub const IMPORTS_DIR: &str = "@imports";

/// Where an import for container `id` is unpacked.
pub fn import_dir(root: &Path, id: &str) -> PathBuf {
    root.join(IMPORTS_DIR).join(id)
}

/// Directory of the store holding oci-archives being read (`@` keeps it
/// apart from every import, named by container ID).
const IMAGE_SCRATCH_DIR: &str = "@oci-image";

/// Where an oci-archive is unpacked while an import for `id` reads it: a
/// name of the ID alone, which fits wherever the ID does.
fn image_scratch(root: &Path, id: &str) -> PathBuf {
    root.join(IMPORTS_DIR).join(IMAGE_SCRATCH_DIR).join(id)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Container(#[from] crate::Error),
    #[error("bundle {}: no config.json there", .0.display())]
    NoConfig(PathBuf),
    #[error("cannot read archive {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot import {}: {source}", path.display())]
    Import {
        path: PathBuf,
        source: archive::Error,
    },
    #[error("cannot restore from {image}: {source}")]
    Image {
        image: String,
        source: oci_image::Error,
    },
    #[error("{} holds no root filesystem", .0.display())]
    NoRootfs(PathBuf),
    #[error("{} is another engine's checkpoint (podman or CRI-O): its rootfs-diff.tar holds only the changes to the container image's root filesystem; pass --bundle DIR with a config.json and that image's root filesystem (the changes are applied to it)", .0.display())]
    EngineNeedsBundle(PathBuf),
    #[error("{} needs the bind mount {destination} (from {source_path}), which the bundle's config.json does not have: add a bind mount with that destination", archive.display())]
    MissingBindMount {
        archive: PathBuf,
        destination: String,
        source_path: String,
    },
    #[error("cannot apply the checkpoint's root filesystem changes to {}: {reason}", rootfs.display())]
    ApplyDiff { rootfs: PathBuf, reason: String },
    #[error("{}: {source}", archive::SPEC_FILE)]
    SpecJson { source: serde_json::Error },
    #[error("{} in {} has no root object", archive::SPEC_FILE, .0.display())]
    NoRootObject(PathBuf),
    #[error("cannot unpack the rootfs of {}: {source}", path.display())]
    Rootfs {
        path: PathBuf,
        source: archive::Error,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: RemoveError },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Where a checkpoint is imported from.
#[derive(Debug, Clone)]
pub enum ImportSource {
    /// A checkpoint archive (ferry's, podman's or CRI-O's).
    Archive(PathBuf),
    /// A checkpoint image (`oci:` or `oci-archive:`).
    Image(ImageRef),
}

impl ImportSource {
    /// The file or directory named.
    pub fn path(&self) -> &Path {
        match self {
            ImportSource::Archive(p) => p,
            ImportSource::Image(r) => &r.path,
        }
    }
}

/// What to import for which container.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// The container to restore (its exact ID).
    pub id: &'a str,
    /// The archive or image.
    pub source: &'a ImportSource,
    /// A bundle of the caller's; without it the archive's config and
    /// rootfs become the bundle.
    pub bundle: Option<&'a Path>,
}

/// An archive unpacked for a restore.
#[derive(Debug)]
pub struct ImportedRestore {
    dir: PathBuf,
    pub bundle: PathBuf,
    pub images: PathBuf,
    /// The bundle was built from the archive (and lives in `dir`).
    own_bundle: bool,
    /// Directories this import created (state root, imports dir), removed
    /// again if the restore fails and they are empty.
    made: Vec<PathBuf>,
}

impl ImportedRestore {
    /// Validates and unpacks the archive; nothing is left behind on error.
    pub fn prepare(root: &Path, o: &ImportOptions) -> Result<ImportedRestore> {
        crate::id::validate(o.id).map_err(|source| crate::Error::InvalidId {
            id: o.id.to_string(),
            source,
        })?;
        if root.join(o.id).exists() {
            return Err(crate::Error::Exists(o.id.to_string()).into());
        }
        if let Some(b) = o.bundle {
            if !b.join("config.json").is_file() {
                return Err(Error::NoConfig(b.to_path_buf()));
            }
        }
        let archive_path = o.source.path().to_path_buf();
        if let ImportSource::Archive(p) = o.source {
            // Named before anything is created.
            File::open(p).map_err(|source| Error::Read {
                path: p.clone(),
                source,
            })?;
        }
        let mut made = Vec::new();
        for d in [
            root.to_path_buf(),
            root.join(IMPORTS_DIR),
            root.join(IMPORTS_DIR).join(IMAGE_SCRATCH_DIR),
        ] {
            if !d.exists() {
                std::fs::create_dir_all(&d).map_err(io("create", &d))?;
                made.push(d);
            }
        }
        let dest = import_dir(root, o.id);
        let scratch = image_scratch(root, o.id);
        // What a killed restore of this ID left: the ID is free (checked
        // above), so nothing else uses it.
        let _ = crate::fs_remove::remove_tree(&scratch);
        let read = import_source(o.source, &dest, &scratch);
        // The image's copy is gone; its directory too unless another
        // import is reading one.
        if let Some(d) = scratch.parent() {
            let _ = std::fs::remove_dir(d);
        }
        let imported = match read {
            Ok(i) => i,
            Err(e) => {
                remove_empty(&made);
                return Err(e);
            }
        };
        let mut me = ImportedRestore {
            dir: dest,
            bundle: PathBuf::new(),
            images: imported.images_dir.clone(),
            own_bundle: o.bundle.is_none(),
            made,
        };
        let engine = imported.layout == Layout::Engine;
        let ready = match (o.bundle, engine) {
            (None, true) => Err(Error::EngineNeedsBundle(archive_path.clone())),
            (Some(b), true) => apply_engine_changes(&imported, b, &archive_path),
            _ => Ok(()),
        };
        if let Err(e) = ready {
            me.discard();
            return Err(e);
        }
        match o.bundle {
            Some(b) => me.bundle = b.to_path_buf(),
            None => match build_bundle(&imported, &archive_path) {
                Ok(b) => me.bundle = b,
                Err(e) => {
                    me.discard();
                    return Err(e);
                }
            },
        }
        Ok(me)
    }

    /// The restore succeeded: the images are no longer needed (nor is
    /// anything else when the bundle was the caller's).
    pub fn restored(&self) {
        if self.own_bundle {
            let _ = crate::fs_remove::remove_tree(&self.images);
        } else {
            let _ = crate::fs_remove::remove_tree(&self.dir);
            remove_empty(&self.made);
        }
    }

    /// The restore failed: remove everything the import wrote (and CRIU's
    /// cgroup yard, if a failed restore left it mounted there).
    pub fn discard(self) {
        let _ = crate::fs_remove::unmount_and_remove(&self.dir);
        remove_empty(&self.made);
    }
}

/// Validates and unpacks `source` into `dest`.
fn import_source(source: &ImportSource, dest: &Path, scratch: &Path) -> Result<archive::Imported> {
    let limits = Limits::default();
    let host = archive::Host::detect().map_err(|e| Error::Import {
        path: source.path().to_path_buf(),
        source: e,
    })?;
    match source {
        ImportSource::Archive(p) => {
            let f = File::open(p).map_err(|source| Error::Read {
                path: p.clone(),
                source,
            })?;
            let reader = BufReader::with_capacity(1 << 20, f);
            archive::import_any(reader, dest, &limits, &host).map_err(|source| Error::Import {
                path: p.clone(),
                source,
            })
        }
        ImportSource::Image(r) => {
            let image = |source| Error::Image {
                image: r.to_string(),
                source,
            };
            let verified = oci_image::open_image(r, scratch).map_err(image)?;
            oci_image::import_layer(&verified, dest, &limits, &host).map_err(image)
        }
    }
}

/// Another engine's checkpoint restored into the caller's bundle: every
/// bind mount CRI-O listed must be in its config, then the rootfs changes
/// are applied to its rootfs as the engine applies them to a new
/// container's (`rootfs-diff.tar` unpacked, `deleted.files` removed, both
/// resolved inside the rootfs by the kernel).
fn apply_engine_changes(imported: &archive::Imported, bundle: &Path, file: &Path) -> Result<()> {
    let config = bundle.join("config.json");
    let text = std::fs::read(&config).map_err(io("read", &config))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| Error::SpecJson { source })?;
    let mounts: Vec<&str> = spec
        .get("mounts")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("destination").and_then(|d| d.as_str()))
                .collect()
        })
        .unwrap_or_default();
    for m in &imported.bind_mounts {
        if !mounts.contains(&m.destination.as_str()) {
            return Err(Error::MissingBindMount {
                archive: file.to_path_buf(),
                destination: m.destination.clone(),
                source_path: m.source.clone(),
            });
        }
    }
    let root = spec
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(|p| p.as_str())
        .ok_or_else(|| Error::NoRootObject(config.clone()))?;
    let rootfs = bundle.join(root);
    let fail = |reason: String| Error::ApplyDiff {
        rootfs: rootfs.clone(),
        reason,
    };
    if let Some(tar) = &imported.rootfs_tar {
        archive::unpack_rootfs(tar, &rootfs, &Limits::default())
            .map_err(|e| fail(e.to_string()))?;
    }
    if !imported.deleted_files.is_empty() {
        let dir = crate::rootfs::RootDir::open(&rootfs).map_err(|e| fail(e.to_string()))?;
        for p in &imported.deleted_files {
            dir.remove_all(p).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(())
}

/// Removes the directories (deepest first) that are empty.
fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// `<import>/bundle`: the archive's config (root path set to `rootfs`) and
/// its rootfs unpacked.
fn build_bundle(imported: &archive::Imported, file: &Path) -> Result<PathBuf> {
    let Some(tar) = imported
        .rootfs_tar
        .as_ref()
        .filter(|_| imported.metadata.rootfs == RootfsMode::Full)
    else {
        return Err(Error::NoRootfs(file.to_path_buf()));
    };
    let bundle = imported.dir.join("bundle");
    std::fs::create_dir(&bundle).map_err(io("create", &bundle))?;
    let text = std::fs::read(&imported.spec).map_err(io("read", &imported.spec))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| Error::SpecJson { source })?;
    match spec.get_mut("root").and_then(|r| r.as_object_mut()) {
        Some(r) => {
            r.insert("path".into(), "rootfs".into());
        }
        None => return Err(Error::NoRootObject(file.to_path_buf())),
    }
    let config = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).expect("a JSON value serializes");
    std::fs::write(&config, json).map_err(io("write", &config))?;
    archive::unpack_rootfs(tar, &bundle.join("rootfs"), &Limits::default()).map_err(|source| {
        Error::Rootfs {
            path: file.to_path_buf(),
            source,
        }
    })?;
    let _ = std::fs::remove_file(tar);
    Ok(bundle)
}

/// Removes what an import left for container `id`, if anything. The
/// directory is ferry's own, so what is mounted below it goes first: a
/// restore killed while CRIU held its cgroup yard (a tmpfs CRIU mounts in
/// its work directory, here the import's images) leaves that mount.
pub fn remove(root: &Path, id: &str) -> Result<()> {
    // The ID names a directory to remove: never one outside the store.
    crate::id::validate(id).map_err(|source| crate::Error::InvalidId {
        id: id.to_string(),
        source,
    })?;
    let dir = import_dir(root, id);
    crate::fs_remove::unmount_and_remove(&dir).map_err(|source| Error::Remove {
        path: dir.clone(),
        source,
    })?;
    let scratch = image_scratch(root, id);
    crate::fs_remove::remove_tree(&scratch).map_err(|source| Error::Remove {
        path: scratch.clone(),
        source,
    })?;
    let _ = std::fs::remove_dir(root.join(IMPORTS_DIR).join(IMAGE_SCRATCH_DIR));
    let _ = std::fs::remove_dir(root.join(IMPORTS_DIR));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_takes_only_that_import_and_refuses_ids_that_leave_the_store() {
        let root = tempfile::tempdir().unwrap();
        for id in ["a", "b"] {
            std::fs::create_dir_all(import_dir(root.path(), id).join("bundle/rootfs")).unwrap();
        }
        std::fs::create_dir(root.path().join("keep")).unwrap();
        std::fs::create_dir_all(image_scratch(root.path(), "a").join("blobs")).unwrap();
        remove(root.path(), "a").unwrap();
        assert!(!import_dir(root.path(), "a").exists());
        assert!(
            !image_scratch(root.path(), "a").exists(),
            "a killed image read's copy goes too"
        );
        assert!(
            import_dir(root.path(), "b").is_dir(),
            "another import stays"
        );
        for bad in ["..", "../keep", ""] {
            let e = remove(root.path(), bad).unwrap_err();
            assert!(matches!(e, Error::Container(_)), "{bad:?}: {e}");
        }
        assert!(root.path().join("keep").is_dir());
        remove(root.path(), "b").unwrap();
        assert!(
            !root.path().join(IMPORTS_DIR).exists(),
            "the empty store goes too"
        );
        remove(root.path(), "gone").unwrap();
    }
}
