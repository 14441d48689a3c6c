//! `checkpoint --export FILE` and `--export-image REF`: a portable archive
//! of the checkpoint, or an OCI image whose one layer is that archive (see
//! `ferry::archive` for the layout; `restore --import` and `--image` are
//! `ferry::imports`).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use ferry::archive::oci_image::{self, ImageRef, ImageSpec};
use ferry::archive::{self, Compression, ExportSpec, Metadata};
use ferry::container::Checkpointed;
use ferry::Container;

/// Where the checkpoint goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--export FILE`.
    File(PathBuf),
    /// `--export-image REF`.
    Image(ImageRef),
}

impl Target {
    fn path(&self) -> &Path {
        match self {
            Target::File(f) => f,
            Target::Image(r) => &r.path,
        }
    }
    fn flag(&self) -> &'static str {
        match self {
            Target::File(_) => "--export",
            Target::Image(_) => "--export-image",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(p) => write!(f, "{}", p.display()),
            Target::Image(r) => write!(f, "{r}"),
        }
    }
}

/// What `--export` or `--export-image` was asked for.
#[derive(Debug, Clone)]
pub struct ExportOptions<'a> {
    pub target: &'a Target,
    pub compression: Compression,
    pub ignore_rootfs: bool,
    /// `--rootfs-image`.
    pub rootfs_image: Option<String>,
    /// No image directory was given: the images go to a temporary one.
    pub temporary_images: bool,
    /// Flags given that keep memory pages out of the image directory
    /// (an archive needs them all there).
    pub partial_dump_flags: Vec<&'static str>,
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
    target: Target,
    /// The archive's temporary file (`--export` only).
    tmp: Option<tempfile::NamedTempFile>,
    /// The images, when no `--image-path` was given.
    images: Option<tempfile::TempDir>,
    compression: Compression,
    ignore_rootfs: bool,
    rootfs_image: Option<String>,
    /// Container ID, OCI config and rootfs, taken before the dump.
    source: Option<(String, oci_spec::runtime::Spec, PathBuf)>,
}

impl Export {
    pub fn prepare(o: &ExportOptions) -> anyhow::Result<Export> {
        let flag = o.target.flag();
        if let Some(partial) = o.partial_dump_flags.first() {
            bail!("{flag} needs a complete dump with every memory page in the image directory: it cannot be combined with {partial}");
        }
        let file = o.target.path();
        let parent = parent_of(file);
        let tmp = match o.target {
            Target::File(file) => {
                if file.is_dir() {
                    bail!(
                        "--export {}: is a directory, give a file name",
                        file.display()
                    );
                }
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "archive".into());
                Some(
                    tempfile::Builder::new()
                        .prefix(&format!(".{}.", name.chars().take(64).collect::<String>()))
                        .suffix(".tmp")
                        .tempfile_in(&parent)
                        .map_err(|e| {
                            anyhow!(
                                "--export {}: cannot write in {}: {e}",
                                file.display(),
                                parent.display()
                            )
                        })?,
                )
            }
            Target::Image(r) => {
                oci_image::check_target(r).map_err(|e| anyhow!("--export-image {r}: {e}"))?;
                None
            }
        };
        let images = if o.temporary_images {
            Some(
                tempfile::Builder::new()
                    .prefix(".ferry-images-")
                    .tempdir_in(&parent)
                    .map_err(|e| {
                        anyhow!(
                            "{flag}: cannot create a temporary image dir in {}: {e}",
                            parent.display()
                        )
                    })?,
            )
        } else {
            None
        };
        Ok(Export {
            target: o.target.clone(),
            tmp,
            images,
            compression: o.compression,
            ignore_rootfs: o.ignore_rootfs,
            rootfs_image: o.rootfs_image.clone(),
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
        let parent = parent_of(self.target.path());
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
        let mut spec = ExportSpec {
            images_dir: done.images.clone(),
            descriptors: None,
            config: cfg.path().to_path_buf(),
            metadata,
            dump_stats,
            rootfs: (!self.ignore_rootfs).then_some(rootfs),
            compression: self.compression,
            rootfs_image: self.rootfs_image.clone(),
        };
        match (&self.target, &self.tmp) {
            (Target::File(_), Some(tmp)) => {
                let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
                let summary = archive::export(&spec, &mut w)?;
                w.flush()?;
                drop(w);
                tmp.as_file().sync_all()?;
                Ok(summary.skipped_sockets)
            }
            (Target::Image(r), _) => {
                // The layer is the plain tar; the image compresses it.
                spec.compression = Compression::None;
                let image = ImageSpec {
                    annotations: oci_image::checkpoint_annotations(
                        &spec.metadata,
                        &id,
                        self.rootfs_image.as_deref(),
                    ),
                    created: Some(spec.metadata.checkpoint_time.clone()),
                };
                let mut skipped = Vec::new();
                oci_image::write_image(r, &image, |w| {
                    skipped = archive::export(&spec, w)?.skipped_sockets;
                    Ok(())
                })?;
                Ok(skipped)
            }
            (Target::File(_), None) => Err(anyhow!("no temporary file for the archive")),
        }
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
            target,
            tmp,
            images,
            ..
        } = self;
        let fail = |e: anyhow::Error, images: Option<tempfile::TempDir>| -> anyhow::Error {
            match images {
                Some(dir) if removed => {
                    let kept = dir.keep();
                    anyhow!(
                        "the checkpoint succeeded but {target} could not be written: {e}; the container was removed and its images are kept in {} (`ferry restore --image-path` takes them)",
                        kept.display()
                    )
                }
                _ => anyhow!("the checkpoint succeeded but {target} could not be written: {e}"),
            }
        };
        let skipped = match result {
            Ok(s) => s,
            Err(e) => return Err(fail(e, images)),
        };
        if let (Some(tmp), Target::File(file)) = (tmp, &target) {
            if let Err(e) = tmp.persist(file) {
                return Err(fail(e.error.into(), images));
            }
            if let Ok(d) = File::open(parent_of(file)) {
                let _ = d.sync_all();
            }
        }
        Ok(skipped)
    }
}
