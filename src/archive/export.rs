//! Writing an archive.
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::*;

/// What to put in an archive.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// CRIU's images (the directory given to the dump).
    pub images_dir: PathBuf,
    /// runc-style `descriptors.json` (stored as `checkpoint/descriptors.json`
    /// unless the images dir already holds one).
    pub descriptors: Option<PathBuf>,
    /// The container's OCI `config.json`.
    pub config: PathBuf,
    /// `metadata.rootfs` is set from `rootfs`.
    pub metadata: Metadata,
    /// CRIU's `stats-dump`; found in `images_dir` when `None`.
    pub dump_stats: Option<PathBuf>,
    /// The container's root filesystem; `None` leaves it out (`--ignore-rootfs`).
    pub rootfs: Option<PathBuf>,
    /// [`Compression::Gzip`] is refused: ferry writes zstd or plain tar.
    pub compression: Compression,
    /// The container image the rootfs came from, when the caller knows it:
    /// written into `config.dump` where podman looks for it to restore.
    pub rootfs_image: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub entries: usize,
    /// Uncompressed bytes of file contents.
    pub bytes: u64,
    /// Sockets in the rootfs (they cannot be archived; a restored program
    /// recreates them when it binds again).
    pub skipped_sockets: Vec<PathBuf>,
}

/// Counts and checksums what passes through.
struct Crc<T> {
    inner: T,
    hasher: crc32fast::Hasher,
    count: u64,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Crc<T> {
        Crc {
            inner,
            hasher: crc32fast::Hasher::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Refuses to write more than `left` bytes.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(
                "the root filesystem changed during export",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(now_secs());
    h.set_uid(0);
    h.set_gid(0);
    h
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    manifest: Manifest,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    fn data(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = file_header(data.len() as u64);
        let mut r = Crc::new(data);
        self.tar
            .append_data(&mut h, name, &mut r)
            .map_err(Error::io(format!("cannot write {name}")))?;
        self.record(name, r.count, r.hasher.finalize());
        Ok(())
    }

    fn record(&mut self, name: &str, size: u64, crc32: u32) {
        self.bytes += size;
        self.manifest.entries.push(ManifestEntry {
            path: name.to_string(),
            size,
            crc32,
        });
    }

    fn file(&mut self, name: &str, path: &Path) -> Result<()> {
        let ctx = || format!("cannot archive {}", path.display());
        let f = File::open(path).map_err(Error::io(ctx()))?;
        let size = f.metadata().map_err(Error::io(ctx()))?.len();
        let mut h = file_header(size);
        let mut r = Crc::new(f.take(size));
        self.tar
            .append_data(&mut h, name, &mut r)
            .map_err(Error::io(ctx()))?;
        if r.count != size {
            return Err(Error::Io {
                context: ctx(),
                source: io::Error::other(format!(
                    "file shrank from {size} to {} bytes while being archived",
                    r.count
                )),
            });
        }
        self.record(name, size, r.hasher.finalize());
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(now_secs());
        self.tar
            .append_data(&mut h, name, io::empty())
            .map_err(Error::io(format!("cannot write {name}")))
    }

    /// The images dir: regular files only, flat (as CRIU writes it).
    fn images(&mut self, dir: &Path, descriptors: Option<&Path>) -> Result<()> {
        let ctx = || format!("cannot read images dir {}", dir.display());
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(Error::io(ctx()))? {
            let e = e.map_err(Error::io(ctx()))?;
            let ft = e.file_type().map_err(Error::io(ctx()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_file() {
                names.push((name, e.path()));
            } else {
                return Err(Error::Io {
                    context: ctx(),
                    source: io::Error::other(format!(
                        "{name} is not a regular file (images with a parent pre-dump link cannot be exported)"
                    )),
                });
            }
        }
        names.sort();
        if !names.iter().any(|(n, _)| n == "inventory.img") {
            return Err(Error::Missing(format!(
                "{}/inventory.img (no CRIU dump in {})",
                IMAGES_DIR,
                dir.display()
            )));
        }
        self.dir(IMAGES_DIR)?;
        let has_descriptors = names.iter().any(|(n, _)| n == DESCRIPTORS_FILE);
        for (name, path) in &names {
            self.file(&format!("{IMAGES_DIR}/{name}"), path)?;
        }
        if let Some(d) = descriptors.filter(|_| !has_descriptors) {
            self.file(&format!("{IMAGES_DIR}/{DESCRIPTORS_FILE}"), d)?;
        }
        Ok(())
    }

    /// The rootfs as a nested tar, measured first so its header can carry
    /// the size without buffering it.
    fn rootfs(&mut self, rootfs: &Path, skipped: &mut Vec<PathBuf>) -> Result<()> {
        let ctx = || format!("cannot archive root filesystem {}", rootfs.display());
        let mut counter = Crc::new(io::sink());
        write_rootfs_tar(rootfs, &mut counter, &mut Vec::new()).map_err(Error::io(ctx()))?;
        let size = counter.count;
        let mut h = file_header(size);
        h.set_path(ROOTFS_FILE).map_err(Error::io(ctx()))?;
        h.set_cksum();
        let out = self.tar.get_mut();
        out.write_all(h.as_bytes()).map_err(Error::io(ctx()))?;
        let mut w = Crc::new(Bounded {
            inner: &mut *out,
            left: size,
        });
        write_rootfs_tar(rootfs, &mut w, skipped).map_err(Error::io(ctx()))?;
        if w.count != size {
            return Err(Error::Io {
                context: ctx(),
                source: io::Error::other("the root filesystem changed during export"),
            });
        }
        let crc = w.hasher.finalize();
        let pad = (512 - size % 512) % 512;
        out.write_all(&vec![0u8; pad as usize])
            .map_err(Error::io(ctx()))?;
        self.record(ROOTFS_FILE, size, crc);
        Ok(())
    }
}

/// Writes `rootfs` as a tar (sorted walk, symlinks kept as links, sockets
/// skipped and listed in `skipped`).
fn write_rootfs_tar<W: Write>(rootfs: &Path, w: W, skipped: &mut Vec<PathBuf>) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = rootfs.join(&rel);
        let mut children: Vec<(std::ffi::OsString, std::fs::FileType)> = Vec::new();
        for e in std::fs::read_dir(&full)? {
            let e = e?;
            children.push((e.file_name(), e.file_type()?));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, ft) in children {
            let rel_child = rel.join(&name);
            let src = rootfs.join(&rel_child);
            if ft.is_socket() {
                skipped.push(rel_child);
                continue;
            }
            if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                // Built here: the tar crate names special files by their
                // on-disk path.
                use std::os::unix::fs::MetadataExt;
                let stat = std::fs::symlink_metadata(&src)?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&stat, tar::HeaderMode::Complete);
                h.set_path(&rel_child)?;
                h.set_entry_type(if ft.is_fifo() {
                    tar::EntryType::Fifo
                } else if ft.is_char_device() {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_size(0);
                h.set_device_major(libc::major(stat.rdev()))?;
                h.set_device_minor(libc::minor(stat.rdev()))?;
                h.set_cksum();
                b.append(&h, io::empty())?;
                continue;
            }
            b.append_path_with_name(&src, &rel_child)?;
            if ft.is_dir() {
                subdirs.push(rel_child);
            }
        }
        // Depth-first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    b.into_inner()?;
    Ok(())
}

/// podman's `config.dump` fields that checkpointctl reads, and those
/// podman's restore of a checkpoint image needs (the image its rootfs
/// comes from).
#[derive(Serialize)]
struct EngineConfig<'a> {
    id: &'a str,
    name: &'a str,
    runtime: &'a str,
    #[serde(rename = "checkpointedTime")]
    checkpointed_time: &'a str,
    #[serde(rename = "rootfsImageName", skip_serializing_if = "Option::is_none")]
    rootfs_image_name: Option<&'a str>,
    #[serde(rename = "rawImageName", skip_serializing_if = "Option::is_none")]
    raw_image_name: Option<&'a str>,
    #[serde(rename = "rootfsImageID", skip_serializing_if = "Option::is_none")]
    rootfs_image_id: Option<&'a str>,
}

/// Writes the archive described by `spec` to `out` (see the module docs
/// for the layout). On error, what was written to `out` is not a valid
/// archive; callers writing a file should write a temporary and rename.
pub fn export(spec: &ExportSpec, out: impl Write) -> Result<ExportSummary> {
    match spec.compression {
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(out, 3)
                .map_err(Error::io("cannot start zstd compression"))?;
            enc.include_checksum(true)
                .map_err(Error::io("cannot start zstd compression"))?;
            let (summary, enc) = write_all(spec, enc)?;
            enc.finish()
                .map_err(Error::io("cannot finish zstd compression"))?
                .flush()
                .map_err(Error::io("cannot write archive"))?;
            Ok(summary)
        }
        Compression::None => {
            let (summary, mut w) = write_all(spec, out)?;
            w.flush().map_err(Error::io("cannot write archive"))?;
            Ok(summary)
        }
        Compression::Gzip => Err(Error::Io {
            context: "cannot export".into(),
            source: io::Error::other("ferry writes zstd or uncompressed archives, not gzip"),
        }),
    }
}

fn write_all<W: Write>(spec: &ExportSpec, out: W) -> Result<(ExportSummary, W)> {
    let mut w = Writer {
        tar: tar::Builder::new(out),
        manifest: Manifest::default(),
        bytes: 0,
    };
    let mut meta = spec.metadata.clone();
    meta.format_version = FORMAT_VERSION;
    meta.rootfs = if spec.rootfs.is_some() {
        RootfsMode::Full
    } else {
        RootfsMode::None
    };
    let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
    w.data(METADATA_FILE, &json)?;
    let engine = EngineConfig {
        id: &meta.container_id,
        name: &meta.container_id,
        runtime: "ferry",
        checkpointed_time: &meta.checkpoint_time,
        rootfs_image_name: spec.rootfs_image.as_deref(),
        raw_image_name: spec.rootfs_image.as_deref(),
        rootfs_image_id: spec.rootfs_image.as_deref(),
    };
    let json = serde_json::to_vec_pretty(&engine).expect("config serializes");
    w.data(CONFIG_FILE, &json)?;
    w.file(SPEC_FILE, &spec.config)?;
    w.images(&spec.images_dir, spec.descriptors.as_deref())?;
    let stats = spec
        .dump_stats
        .clone()
        .unwrap_or_else(|| spec.images_dir.join(crate::criu::stats::DUMP_STATS_FILE));
    if spec.dump_stats.is_some() || stats.exists() {
        w.file(STATS_FILE, &stats)?;
    }
    let mut skipped = Vec::new();
    if let Some(rootfs) = &spec.rootfs {
        w.rootfs(rootfs, &mut skipped)?;
    }
    let entries = w.manifest.entries.len();
    let json = serde_json::to_vec_pretty(&w.manifest).expect("manifest serializes");
    let mut h = file_header(json.len() as u64);
    w.tar
        .append_data(&mut h, MANIFEST_FILE, json.as_slice())
        .map_err(Error::io("cannot write the manifest"))?;
    let out = w
        .tar
        .into_inner()
        .map_err(Error::io("cannot finish the archive"))?;
    Ok((
        ExportSummary {
            entries,
            bytes: w.bytes,
            skipped_sockets: skipped,
        },
        out,
    ))
}
