//! `checkpoint --export FILE` and `restore --import FILE`: portable archives
//! (see `ferry::archive` for the layout and the checks on import).
//!
//! An import is unpacked into `<root>/@imports/<id>/` (`@` cannot appear in
//! a container ID, so this never collides with a container's state dir).
//! Without `--bundle`, the archive's config and rootfs become the bundle
//! `<root>/@imports/<id>/bundle/`, which lives as long as the container and
//! is removed by `ferry delete`. The CRIU images are removed once the
//! restore is done; a failed restore removes everything it unpacked.
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use ferry::archive::{self, Compression, ExportSpec, Limits, Metadata, RootfsMode};
use ferry::container::Checkpointed;
use ferry::Container;

use super::checkpoint::{ArchiveCompression, CheckpointArgs, RestoreArgs};

/// Directory under the state root holding imported archives.
pub const IMPORTS_DIR: &str = "@imports";

/// Where an import for container `id` is unpacked.
pub fn import_dir(root: &Path, id: &str) -> PathBuf {
    root.join(IMPORTS_DIR).join(id)
}

fn parent_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An `--export` in progress: the temporary archive beside FILE exists
/// before anything is dumped, so an unwritable destination fails first.
pub struct Export {
    file: PathBuf,
    tmp: tempfile::NamedTempFile,
    /// The images, when no `--image-path` was given.
    images: Option<tempfile::TempDir>,
    compression: Compression,
    ignore_rootfs: bool,
    /// Container ID, OCI config and rootfs, taken before the dump.
    source: Option<(String, oci_spec::runtime::Spec, PathBuf)>,
}

impl Export {
    pub fn prepare(a: &CheckpointArgs, file: &Path) -> anyhow::Result<Export> {
        for (set, flag) in [
            (a.pre_dump, "--pre-dump"),
            (a.page_server.is_some(), "--page-server"),
            (a.lazy_pages, "--lazy-pages"),
        ] {
            if set {
                bail!("--export needs a complete dump with every memory page in the image directory: it cannot be combined with {flag}");
            }
        }
        if file.is_dir() {
            bail!(
                "--export {}: is a directory, give a file name",
                file.display()
            );
        }
        let parent = parent_of(file);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "archive".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.chars().take(64).collect::<String>()))
            .suffix(".tmp")
            .tempfile_in(&parent)
            .map_err(|e| {
                anyhow!(
                    "--export {}: cannot write in {}: {e}",
                    file.display(),
                    parent.display()
                )
            })?;
        let images = if a.image_path.is_none() {
            Some(
                tempfile::Builder::new()
                    .prefix(".ferry-images-")
                    .tempdir_in(&parent)
                    .map_err(|e| {
                        anyhow!(
                            "--export: cannot create a temporary image dir in {}: {e}",
                            parent.display()
                        )
                    })?,
            )
        } else {
            None
        };
        Ok(Export {
            file: file.to_path_buf(),
            tmp,
            images,
            compression: match a.compress {
                Some(ArchiveCompression::None) => Compression::None,
                _ => Compression::Zstd,
            },
            ignore_rootfs: a.ignore_rootfs,
            source: None,
        })
    }

    /// The temporary image directory (only when no `--image-path` was given).
    pub fn images_dir(&self) -> PathBuf {
        self.images
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .expect("a temporary image dir exists without --image-path")
    }

    /// Records what the archive needs of the container before the dump
    /// (a dump that kills the container removes its state).
    pub fn remember(&mut self, c: &Container) {
        self.source = Some((
            c.id().to_string(),
            c.state.config.clone(),
            c.state.rootfs.clone(),
        ));
    }

    fn build(&self, done: &Checkpointed, work: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
        let (id, config, rootfs) = self
            .source
            .clone()
            .ok_or_else(|| anyhow!("no container recorded for the export"))?;
        let version = ferry::criu::Criu::new()
            .and_then(|c| c.version())
            .map_err(|e| anyhow!("{e}"))?;
        let metadata = Metadata::for_host(&id, version);
        let parent = parent_of(&self.file);
        let mut cfg = tempfile::Builder::new()
            .prefix(".ferry-config-")
            .tempfile_in(&parent)?;
        cfg.write_all(&serde_json::to_vec_pretty(&config)?)?;
        cfg.flush()?;
        let stats_name = ferry::criu::stats::DUMP_STATS_FILE;
        let dump_stats = [Some(done.images.as_path()), work]
            .into_iter()
            .flatten()
            .map(|d| d.join(stats_name))
            .find(|p| p.is_file());
        let spec = ExportSpec {
            images_dir: done.images.clone(),
            descriptors: None,
            config: cfg.path().to_path_buf(),
            metadata,
            dump_stats,
            rootfs: (!self.ignore_rootfs).then_some(rootfs),
            compression: self.compression,
        };
        let mut w = BufWriter::with_capacity(1 << 20, self.tmp.as_file());
        let summary = archive::export(&spec, &mut w)?;
        w.flush()?;
        drop(w);
        self.tmp.as_file().sync_all()?;
        Ok(summary.skipped_sockets)
    }
}

impl Export {
    /// Writes the archive and renames it into place; returns the sockets
    /// left out of the rootfs. If the container is gone and its images were
    /// in the temporary dir, a failure keeps them and says where.
    pub fn finish(self, done: &Checkpointed, work: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
        let removed = done.removed;
        let result = self.build(done, work);
        let Export {
            file, tmp, images, ..
        } = self;
        let fail = |e: anyhow::Error, images: Option<tempfile::TempDir>| -> anyhow::Error {
            match images {
                Some(dir) if removed => {
                    let kept = dir.keep();
                    anyhow!(
                        "the checkpoint succeeded but the archive {} could not be written: {e}; the container was removed and its images are kept in {} (`ferry restore --image-path` takes them)",
                        file.display(),
                        kept.display()
                    )
                }
                _ => anyhow!(
                    "the checkpoint succeeded but the archive {} could not be written: {e}",
                    file.display()
                ),
            }
        };
        let skipped = match result {
            Ok(s) => s,
            Err(e) => return Err(fail(e, images)),
        };
        if let Err(e) = tmp.persist(&file) {
            return Err(fail(e.error.into(), images));
        }
        if let Ok(d) = File::open(parent_of(&file)) {
            let _ = d.sync_all();
        }
        Ok(skipped)
    }
}

/// An archive unpacked for `restore --import`.
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
    /// Validates and unpacks `file`; nothing is left behind on error.
    pub fn prepare(root: &Path, a: &RestoreArgs, file: &Path) -> anyhow::Result<ImportedRestore> {
        ferry::id::validate(&a.id).map_err(|source| ferry::Error::InvalidId {
            id: a.id.clone(),
            source,
        })?;
        if root.join(&a.id).exists() {
            return Err(ferry::Error::Exists(a.id.clone()).into());
        }
        if let Some(b) = &a.bundle {
            if !b.join("config.json").is_file() {
                bail!("bundle {}: no config.json there", b.display());
            }
        }
        let f =
            File::open(file).map_err(|e| anyhow!("cannot read archive {}: {e}", file.display()))?;
        let mut made = Vec::new();
        for d in [root.to_path_buf(), root.join(IMPORTS_DIR)] {
            if !d.exists() {
                std::fs::create_dir_all(&d)
                    .map_err(|e| anyhow!("cannot create {}: {e}", d.display()))?;
                made.push(d);
            }
        }
        let dest = import_dir(root, &a.id);
        let imported = match archive::import(
            BufReader::with_capacity(1 << 20, f),
            &dest,
            &Limits::default(),
        ) {
            Ok(i) => i,
            Err(e) => {
                remove_empty(&made);
                bail!("cannot import {}: {e}", file.display());
            }
        };
        let mut me = ImportedRestore {
            dir: dest.clone(),
            bundle: PathBuf::new(),
            images: imported.images_dir.clone(),
            own_bundle: a.bundle.is_none(),
            made,
        };
        match &a.bundle {
            Some(b) => me.bundle = b.clone(),
            None => match build_bundle(&imported, file) {
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
    /// anything else when the bundle came from `--bundle`).
    pub fn restored(&self) {
        if self.own_bundle {
            let _ = ferry::fs_remove::remove_tree(&self.images);
        } else {
            let _ = ferry::fs_remove::remove_tree(&self.dir);
            remove_empty(&self.made);
        }
    }

    /// The restore failed: remove everything the import wrote (and CRIU's
    /// cgroup yard, if a failed restore left it mounted there).
    pub fn discard(self) {
        let _ = ferry::fs_remove::unmount_and_remove(&self.dir);
        remove_empty(&self.made);
    }
}

/// Removes the directories (deepest first) that are empty.
fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// `<import>/bundle`: the archive's config (root path set to `rootfs`) and
/// its rootfs unpacked.
fn build_bundle(imported: &archive::Imported, file: &Path) -> anyhow::Result<PathBuf> {
    let Some(tar) = imported
        .rootfs_tar
        .as_ref()
        .filter(|_| imported.metadata.rootfs == RootfsMode::Full)
    else {
        bail!(
            "{} holds no root filesystem (it was exported with --ignore-rootfs): pass --bundle DIR with the container's config.json and rootfs",
            file.display()
        );
    };
    let bundle = imported.dir.join("bundle");
    std::fs::create_dir(&bundle)?;
    let text = std::fs::read(&imported.spec)?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| anyhow!("{}: {e}", archive::SPEC_FILE))?;
    match spec.get_mut("root").and_then(|r| r.as_object_mut()) {
        Some(r) => {
            r.insert("path".into(), "rootfs".into());
        }
        None => bail!(
            "{} in {} has no root object",
            archive::SPEC_FILE,
            file.display()
        ),
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    archive::unpack_rootfs(tar, &bundle.join("rootfs"), &Limits::default())
        .map_err(|e| anyhow!("cannot unpack the rootfs of {}: {e}", file.display()))?;
    let _ = std::fs::remove_file(tar);
    Ok(bundle)
}

/// Removes the bundle an import built for container `id`, if any. The
/// directory is ferry's own, so what is mounted below it goes first: a
/// restore killed while CRIU held its cgroup yard (a tmpfs CRIU mounts in
/// its work directory, here the import's images) leaves that mount.
pub fn remove_imported(root: &Path, id: &str) -> anyhow::Result<()> {
    let dir = import_dir(root, id);
    if let Err(e) = ferry::fs_remove::unmount_and_remove(&dir) {
        bail!("cannot remove {}: {e}", dir.display())
    }
    let _ = std::fs::remove_dir(root.join(IMPORTS_DIR));
    Ok(())
}
