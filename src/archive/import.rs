//! Reading an archive: format detection, safe unpacking, validation.
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tar_guard::{Refused, TarGuard, MAX_EXTENSION_BYTES};
use super::*;
use crate::criu::{DumpStats, MIN_VERSION};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An archive imported into its destination directory.
#[derive(Debug, Clone)]
pub struct Imported {
    pub dir: PathBuf,
    pub metadata: Metadata,
    pub compression: Compression,
    /// `DIR/checkpoint`.
    pub images_dir: PathBuf,
    /// The OCI config.json (`DIR/spec.dump`).
    pub spec: PathBuf,
    pub descriptors: Option<PathBuf>,
    pub dump_stats: Option<PathBuf>,
    /// The root filesystem as a tar, for [`unpack_rootfs`].
    pub rootfs_tar: Option<PathBuf>,
    pub entries: u64,
    pub bytes: u64,
}

/// podman's `config.dump` identity fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineContainer {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "runtime")]
    pub runtime: String,
    #[serde(default, rename = "checkpointedTime")]
    pub checkpointed_time: Option<String>,
}

/// What `ferry inspect` learns from an archive besides the images.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    /// `ferry`, or `podman` for an archive without ferry's metadata.
    pub layout: &'static str,
    pub compression: Compression,
    pub metadata: Option<Metadata>,
    pub container: Option<EngineContainer>,
    pub entries: u64,
    /// Sum of entry sizes (uncompressed).
    pub bytes: u64,
    pub rootfs_diff_bytes: Option<u64>,
    pub dump_stats: Option<DumpStats>,
    pub images_dir: PathBuf,
}

/// Reads until `buf` is full or the input ends.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn stream_err(e: io::Error) -> Error {
    if let Some(r) = Refused::from_io(&e) {
        return match r {
            Refused::ExtensionTooLarge { .. } => Error::Limit {
                what: "bytes in a tar long-name or PAX header",
                limit: MAX_EXTENSION_BYTES,
            },
            Refused::Sparse { path } => Error::UnsafeEntry {
                path,
                reason: format!(
                    "a GNU sparse file with more than {} extension blocks of holes",
                    super::tar_guard::MAX_SPARSE_BLOCKS
                ),
            },
        };
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated(e.to_string())
    } else {
        Error::Corrupt(e.to_string())
    }
}

fn is_tar_header(b: &[u8]) -> bool {
    b.len() >= 512 && &b[257..262] == b"ustar"
}

/// Peeks at one 512-byte block and gives it back in front of the stream.
fn peek_block<'a>(mut r: Box<dyn Read + 'a>) -> Result<(Vec<u8>, Box<dyn Read + 'a>)> {
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut r, &mut head).map_err(stream_err)?;
    head.truncate(n);
    let back: Box<dyn Read + 'a> = Box::new(Cursor::new(head.clone()).chain(r));
    Ok((head, back))
}

/// Detects the compression by magic and returns the tar stream.
fn open_stream<'a>(input: impl Read + 'a) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let (head, stream) = peek_block(Box::new(input))?;
    let (compression, tar): (Compression, Box<dyn Read + 'a>) = if head.starts_with(&ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::new(stream).map_err(stream_err)?;
        (Compression::Zstd, Box::new(d))
    } else if head.starts_with(&GZIP_MAGIC) {
        (
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(stream)),
        )
    } else if is_tar_header(&head) {
        return Ok((Compression::None, stream));
    } else {
        return Err(Error::NotAnArchive);
    };
    let (head, tar) = peek_block(tar)?;
    if !is_tar_header(&head) {
        return Err(if head.len() < 512 && !head.is_empty() {
            Error::Truncated(format!(
                "the {compression} stream ends inside the first tar header"
            ))
        } else {
            Error::NotTar(compression)
        });
    }
    Ok((compression, tar))
}

/// Checks an entry path with the one checker for untrusted paths and
/// returns it normalized (no `.` or empty components).
pub(super) fn safe_path(raw: &[u8], limits: &Limits) -> Result<PathBuf> {
    use migrate::untrusted_path::{check, Refusal, Rules};
    use std::os::unix::ffi::OsStrExt;
    let rules = Rules {
        max_path_len: limits.max_path_bytes,
        max_name_len: usize::MAX,
        max_depth: limits.max_depth,
        skip_dot_and_empty: true,
    };
    let parts = check(raw, &rules)
        .and_then(|p| {
            if p.is_empty() {
                Err(Refusal::Empty)
            } else {
                Ok(p)
            }
        })
        .map_err(|why| Error::UnsafeEntry {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason: why.to_string(),
        })?;
    Ok(parts
        .iter()
        .map(|p| std::ffi::OsStr::from_bytes(p))
        .collect())
}

/// How much an import may write into one filesystem: its free space (less
/// a reserve of 1% of its size, at most 256 MiB) and free inodes, measured
/// once before writing. Each entry is charged from its tar header *before*
/// its data is written, rounded up to whole blocks, so an archive larger
/// than the free space is refused before it can fill the filesystem.
pub(crate) struct SpaceBudget {
    path: PathBuf,
    block: u64,
    bytes_left: u64,
    inodes_left: u64,
    charged: u64,
    free_bytes: u64,
}

impl SpaceBudget {
    pub(crate) fn of(dir: &Path) -> Result<SpaceBudget> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
            Error::io(format!(
                "cannot measure the free space of {}",
                dir.display()
            ))(e.into())
        })?;
        let block = (st.fragment_size() as u64).max(512);
        let free_bytes = (st.blocks_available() as u64).saturating_mul(block);
        let size = (st.blocks() as u64).saturating_mul(block);
        let reserve = (size / 100).min(256 << 20);
        // Some filesystems report no inode limit at all (0 total).
        let inodes_left = if st.files() == 0 {
            u64::MAX
        } else {
            st.files_available() as u64
        };
        Ok(SpaceBudget {
            path: dir.to_path_buf(),
            block,
            bytes_left: free_bytes.saturating_sub(reserve),
            inodes_left,
            charged: 0,
            free_bytes,
        })
    }

    /// Charges one file or directory of `size` bytes.
    pub(crate) fn charge(&mut self, size: u64) -> Result<()> {
        let cost = size.div_ceil(self.block).max(1).saturating_mul(self.block);
        self.charged = self.charged.saturating_add(cost);
        if cost > self.bytes_left || self.inodes_left == 0 {
            return Err(self.refuse(self.inodes_left == 0));
        }
        self.bytes_left -= cost;
        self.inodes_left -= 1;
        Ok(())
    }

    fn refuse(&self, inodes: bool) -> Error {
        Error::NoSpace {
            path: self.path.clone(),
            needed_what: format!("at least {} bytes", self.charged),
            available: if inodes {
                "no inodes are free".to_string()
            } else {
                format!("{} bytes are free", self.free_bytes)
            },
        }
    }
}

/// What [`unpack`] found.
struct Unpacked {
    compression: Compression,
    /// Every file entry: size and CRC-32, by normalized path.
    files: HashMap<String, (u64, u32)>,
    /// Order of file entries.
    order: Vec<String>,
    entries: u64,
    bytes: u64,
}

enum Mode<'a> {
    /// Everything is written; `ferry.json` must come first and pass `check`.
    Import(&'a dyn Fn(&Metadata) -> Result<()>),
    /// Only what inspect reads is written; the rest is drained and counted.
    Inspect,
}

fn inspect_wants(path: &str) -> bool {
    path.starts_with(&format!("{IMAGES_DIR}/"))
        || [METADATA_FILE, CONFIG_FILE, SPEC_FILE, STATS_FILE].contains(&path)
}

fn parse_json<T: serde::de::DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Streams the archive into `dest` (an existing empty directory), enforcing
/// the path rules and limits.
fn unpack(input: impl Read, dest: &Path, limits: &Limits, mode: Mode) -> Result<Unpacked> {
    let (compression, stream) = open_stream(input)?;
    let mut archive = tar::Archive::new(TarGuard::new(stream));
    let mut out = Unpacked {
        compression,
        files: HashMap::new(),
        order: Vec::new(),
        entries: 0,
        bytes: 0,
    };
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut budget = SpaceBudget::of(dest)?;
    let mut name_bytes = 0u64;
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        out.entries += 1;
        if out.entries > limits.max_entries {
            return Err(Error::Limit {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let rel = safe_path(&raw, limits)?;
        let name = rel.to_string_lossy().into_owned();
        // Names are kept for the manifest check; bound them together, with
        // what is kept beside each.
        name_bytes += name.len() as u64 + ENTRY_OVERHEAD_BYTES;
        if name_bytes > MAX_NAME_BYTES {
            return Err(Error::Limit {
                what: "bytes of entry names",
                limit: MAX_NAME_BYTES,
            });
        }
        let kind = entry.header().entry_type();
        let reject = |reason: &str| Error::UnsafeEntry {
            path: name.clone(),
            reason: reason.to_string(),
        };
        if out.entries == 1 {
            if let Mode::Import(_) = mode {
                if name != METADATA_FILE {
                    return Err(Error::MissingMetadata);
                }
            }
        }
        match kind {
            tar::EntryType::Directory => {
                if !seen.insert(rel.clone()) {
                    return Err(Error::Duplicate { path: name });
                }
                budget.charge(0)?;
                let target = dest.join(&rel);
                std::fs::create_dir_all(&target)
                    .map_err(Error::io(format!("cannot create {}", target.display())))?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(reject(
                    "links are not allowed outside rootfs-diff.tar (they could point outside the archive)",
                ))
            }
            tar::EntryType::XGlobalHeader => continue,
            other => return Err(reject(&format!("{other:?} entries are not allowed"))),
        }
        if !seen.insert(rel.clone()) {
            return Err(Error::Duplicate { path: name });
        }
        let size = entry.size();
        if size > limits.max_file_bytes {
            return Err(Error::Limit {
                what: "bytes in one entry",
                limit: limits.max_file_bytes,
            });
        }
        out.bytes = out.bytes.saturating_add(size);
        if out.bytes > limits.max_total_bytes {
            return Err(Error::Limit {
                what: "bytes in total",
                limit: limits.max_total_bytes,
            });
        }
        let is_json = [METADATA_FILE, MANIFEST_FILE, CONFIG_FILE].contains(&name.as_str());
        if is_json && size > limits.max_json_bytes {
            return Err(Error::Limit {
                what: "bytes in a JSON file",
                limit: limits.max_json_bytes,
            });
        }
        let write = match mode {
            Mode::Import(_) => true,
            Mode::Inspect => inspect_wants(&name),
        };
        let mut crc = crc32fast::Hasher::new();
        let mut count = 0u64;
        let mut keep = Vec::new();
        let mut file = if write {
            budget.charge(size)?;
            let target = dest.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("cannot create {}", parent.display())))?;
            }
            // create_new: never follows or replaces anything already there.
            Some(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(Error::io(format!("cannot create {}", target.display())))?,
            )
        } else {
            None
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_err(e)),
            };
            crc.update(&buf[..n]);
            count += n as u64;
            if is_json {
                keep.extend_from_slice(&buf[..n]);
            }
            if let Some(f) = file.as_mut() {
                f.write_all(&buf[..n])
                    .map_err(Error::io(format!("cannot write {name}")))?;
            }
        }
        if count != size {
            return Err(Error::Truncated(format!(
                "{name} has {count} of its {size} bytes"
            )));
        }
        if let (Mode::Import(_), Some(f)) = (&mode, file.as_ref()) {
            f.sync_all()
                .map_err(Error::io(format!("cannot write {name}")))?;
        }

        if name == METADATA_FILE {
            if let Mode::Import(check) = mode {
                let meta: Metadata = parse_json(METADATA_FILE, &keep)?;
                check(&meta)?;
            }
        }
        if name != MANIFEST_FILE {
            out.order.push(name.clone());
        }
        out.files.insert(name, (size, crc.finalize()));
    }
    // Read to the end, so the decompressor checks the frame's end and
    // checksum: a compressed archive cut short after its last entry is
    // still truncated. Only end-of-archive padding may follow.
    let mut rest = archive.into_inner().take(MAX_TRAILER + 1);
    let mut trailer = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if buf[..n].iter().any(|b| *b != 0) {
                    return Err(Error::Corrupt(
                        "data after the end of the tar archive".into(),
                    ));
                }
                trailer += n as u64;
                if trailer > MAX_TRAILER {
                    return Err(Error::Corrupt(
                        "too much padding after the end of the tar archive".into(),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e)),
        }
    }
    Ok(out)
}

/// End-of-archive zero blocks and record padding allowed after the last entry.
const MAX_TRAILER: u64 = 1 << 20;

/// Sum of the entry names of one archive (each kept in memory until the
/// manifest is checked), counting [`ENTRY_OVERHEAD_BYTES`] more for each:
/// thousands of CRIU images need a few MiB.
const MAX_NAME_BYTES: u64 = 64 << 20;
/// Memory kept per entry besides its name (set, map and list slots).
const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// The architecture and CRIU checks of an import.
fn check_host(meta: &Metadata, host: &Host) -> Result<()> {
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found: meta.format_version,
        });
    }
    if meta.architecture != host.architecture {
        return Err(Error::WrongArchitecture {
            archive: meta.architecture.clone(),
            host: host.architecture.clone(),
        });
    }
    let archive: Version = meta.criu_version.parse().map_err(|e| Error::BadJson {
        file: METADATA_FILE.into(),
        reason: format!("{e}"),
    })?;
    // Images are read by the same or a newer CRIU release line; older ones
    // may not know what a newer one wrote.
    let h = host.criu_version;
    if h < MIN_VERSION || (h.major, h.minor) < (archive.major, archive.minor) {
        return Err(Error::CriuTooOld {
            archive: archive.to_string(),
            host: h.to_string(),
        });
    }
    Ok(())
}

fn read_json_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    limits: &Limits,
) -> Result<T> {
    let f = File::open(path).map_err(Error::io(format!("cannot read {name}")))?;
    let mut bytes = Vec::new();
    f.take(limits.max_json_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io(format!("cannot read {name}")))?;
    if bytes.len() as u64 > limits.max_json_bytes {
        return Err(Error::Limit {
            what: "bytes in a JSON file",
            limit: limits.max_json_bytes,
        });
    }
    parse_json(name, &bytes)
}

/// Imports an archive for this host (see [`import_for`]); the host's CRIU
/// version is asked from the installed criu.
pub fn import(input: impl Read, dest: &Path, limits: &Limits) -> Result<Imported> {
    import_for(input, dest, limits, &Host::detect()?)
}

/// Unpacks and validates an archive, then makes it appear at `dest` in one
/// rename. `dest` must not exist, or be an empty directory.
///
/// Validated before anything is visible at `dest`: the stream is a tar
/// (plain, zstd or gzip, by magic); every entry path is relative with no
/// `..`, within [`Limits`]; only regular files and directories (links and
/// devices are refused; the rootfs's own links live inside
/// `rootfs-diff.tar`, whose entries are checked by the same rules); no entry
/// twice; `ferry.json` first, parseable, of this format version, of this
/// host's architecture and of a CRIU no newer than the host's; every entry
/// listed in `ferry-manifest.json` with its size and CRC-32 and the manifest
/// present (a missing manifest means a truncated archive); the CRIU images,
/// `spec.dump` and (per the metadata) `rootfs-diff.tar` present. The work
/// happens in a hidden staging directory beside `dest`, removed on error.
pub fn import_for(input: impl Read, dest: &Path, limits: &Limits, host: &Host) -> Result<Imported> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) => {
            let empty = m.is_dir()
                && std::fs::read_dir(dest)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if !empty {
                return Err(Error::DestExists(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot use {}", dest.display()))(e)),
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    // The random suffix makes it unique: a long stem (an ID of up to 255
    // characters) is cut so the name stays within NAME_MAX.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.import-", short_stem(&stem)))
        .tempdir_in(&parent)
        .map_err(Error::io(format!(
            "cannot create a staging dir in {}",
            parent.display()
        )))?;
    let check = |m: &Metadata| check_host(m, host);
    let un = unpack(input, staging.path(), limits, Mode::Import(&check))?;
    let meta: Metadata =
        read_json_file(&staging.path().join(METADATA_FILE), METADATA_FILE, limits)?;

    // The manifest is the last entry: without it the archive was cut short.
    let Some(_) = un.files.get(MANIFEST_FILE) else {
        return Err(Error::Truncated(format!(
            "{MANIFEST_FILE} (the last entry) is missing"
        )));
    };
    let manifest: Manifest =
        read_json_file(&staging.path().join(MANIFEST_FILE), MANIFEST_FILE, limits)?;
    let listed: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    for e in &manifest.entries {
        match un.files.get(&e.path) {
            None => return Err(Error::Missing(e.path.clone())),
            Some(&(size, crc)) if size != e.size || crc != e.crc32 => {
                return Err(Error::ManifestMismatch {
                    path: e.path.clone(),
                    detail: format!(
                        "{size} bytes with CRC-32 {crc:08x}, the manifest says {} bytes with {:08x}",
                        e.size, e.crc32
                    ),
                })
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = un.order.iter().find(|p| !listed.contains(p.as_str())) {
        return Err(Error::ManifestMismatch {
            path: extra.clone(),
            detail: "not listed".into(),
        });
    }
    let images = staging.path().join(IMAGES_DIR);
    if !images.join("inventory.img").is_file() {
        return Err(Error::Missing(format!("{IMAGES_DIR}/inventory.img")));
    }
    let spec = staging.path().join(SPEC_FILE);
    if !spec.is_file() {
        return Err(Error::Missing(SPEC_FILE.into()));
    }
    let _: serde_json::Value = read_json_file(&spec, SPEC_FILE, limits)?;
    let rootfs = staging.path().join(ROOTFS_FILE);
    match meta.rootfs {
        RootfsMode::Full => {
            if !rootfs.is_file() {
                return Err(Error::Missing(format!(
                    "{ROOTFS_FILE} (the metadata says the rootfs is included)"
                )));
            }
            check_rootfs_tar(&rootfs, limits, None)?;
        }
        RootfsMode::None => {
            if rootfs.exists() {
                return Err(Error::ManifestMismatch {
                    path: ROOTFS_FILE.into(),
                    detail: "present although the metadata says the rootfs is not included".into(),
                });
            }
        }
    }

    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = crate::fs_remove::remove_tree(&staged);
        return Err(Error::io(format!(
            "cannot move the import to {}",
            dest.display()
        ))(e));
    }
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    let at = |p: &str| {
        let path = dest.join(p);
        path.exists().then_some(path)
    };
    Ok(Imported {
        dir: dest.to_path_buf(),
        compression: un.compression,
        images_dir: dest.join(IMAGES_DIR),
        spec: dest.join(SPEC_FILE),
        descriptors: at(&format!("{IMAGES_DIR}/{DESCRIPTORS_FILE}")),
        dump_stats: at(STATS_FILE),
        rootfs_tar: at(ROOTFS_FILE),
        metadata: meta,
        entries: un.entries,
        bytes: un.bytes,
    })
}

/// At most 64 bytes of `stem`, cut at a character boundary.
pub(crate) fn short_stem(stem: &str) -> &str {
    let mut n = stem.len().min(64);
    while !stem.is_char_boundary(n) {
        n -= 1;
    }
    &stem[..n]
}

/// Checks every entry of a rootfs tar without unpacking it: safe paths,
/// hard-link targets inside the tree, no devices, within `limits`; with a
/// `budget`, also that its unpacked entries fit there.
fn check_rootfs_tar(
    path: &Path,
    limits: &Limits,
    mut budget: Option<&mut SpaceBudget>,
) -> Result<u64> {
    let f = File::open(path).map_err(Error::io(format!("cannot read {ROOTFS_FILE}")))?;
    let mut a = tar::Archive::new(TarGuard::new(io::BufReader::new(f)));
    let mut n = 0u64;
    let mut total = 0u64;
    let inner = |e: Error| match e {
        Error::UnsafeEntry { path, reason } => Error::UnsafeEntry {
            path: format!("{ROOTFS_FILE}:{path}"),
            reason,
        },
        other => other,
    };
    for entry in a.entries().map_err(stream_err)? {
        let entry = entry.map_err(stream_err)?;
        n += 1;
        if n > limits.max_entries {
            return Err(Error::Limit {
                what: "entries in rootfs-diff.tar",
                limit: limits.max_entries,
            });
        }
        total = total.saturating_add(entry.size());
        if total > limits.max_total_bytes {
            return Err(Error::Limit {
                what: "bytes in rootfs-diff.tar",
                limit: limits.max_total_bytes,
            });
        }
        if let Some(b) = budget.as_deref_mut() {
            // Hard links take no data blocks; everything else its size.
            let link = entry.header().entry_type() == tar::EntryType::Link;
            b.charge(if link { 0 } else { entry.size() })?;
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if raw == b"./" || raw == b"." {
            continue;
        }
        safe_path(&raw, limits).map_err(inner)?;
        let reject = |reason: &str| Error::UnsafeEntry {
            path: format!("{ROOTFS_FILE}:{name}"),
            reason: reason.into(),
        };
        match entry.header().entry_type() {
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("hard link without a target"))?;
                safe_path(&target, limits)
                    .map_err(|_| reject("hard link target outside the root filesystem"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(reject("device nodes are not allowed"))
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Unpacks an imported `rootfs-diff.tar` into `dest` (created if missing).
/// Entries are checked first (see [`import_for`]); unpacking never writes
/// through a symlink out of `dest`.
pub fn unpack_rootfs(tar_path: &Path, dest: &Path, limits: &Limits) -> Result<u64> {
    // The space is measured where `dest` will be: its nearest existing
    // ancestor. Nothing is written unless everything fits.
    let mut at = dest;
    while !at.exists() {
        at = at
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    let mut budget = SpaceBudget::of(at)?;
    let n = check_rootfs_tar(tar_path, limits, Some(&mut budget))?;
    std::fs::create_dir_all(dest)
        .map_err(Error::io(format!("cannot create {}", dest.display())))?;
    let f = File::open(tar_path).map_err(Error::io(format!("cannot read {ROOTFS_FILE}")))?;
    let mut a = tar::Archive::new(TarGuard::new(io::BufReader::new(f)));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    let root = std::fs::canonicalize(dest)
        .map_err(Error::io(format!("cannot resolve {}", dest.display())))?;
    for entry in a.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.header().entry_type() == tar::EntryType::Fifo {
            // The tar crate skips fifos; made here, never through a link.
            let rel = safe_path(&entry.path_bytes(), limits)?;
            // Resolved by the kernel inside the rootfs: an earlier symlink
            // entry cannot send it out.
            let in_root = crate::rootfs::RootDir::open(&root).map_err(|e| {
                Error::io(format!("cannot open {}", root.display()))(io::Error::other(e))
            })?;
            let fail = |e: crate::rootfs::resolve::Error| Error::UnsafeEntry {
                path: format!("{ROOTFS_FILE}:{name}"),
                reason: format!("cannot create the fifo: {e}"),
            };
            in_root.remove_file(&rel).map_err(fail)?;
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            in_root
                .create(
                    &rel,
                    &pathrs::InodeType::Fifo(std::os::unix::fs::PermissionsExt::from_mode(mode)),
                )
                .map_err(fail)?;
            continue;
        }
        let ok = entry
            .unpack_in(dest)
            .map_err(Error::io(format!("cannot unpack {ROOTFS_FILE}:{name}")))?;
        if !ok {
            return Err(Error::UnsafeEntry {
                path: format!("{ROOTFS_FILE}:{name}"),
                reason: "it would be written outside the root filesystem".into(),
            });
        }
    }
    Ok(n)
}

/// Unpacks what `ferry inspect` needs from a ferry or podman archive into
/// `dest` (created; must not exist): the images, metadata, configs and
/// statistics. Same path rules and limits as [`import_for`], without the
/// host checks; the rootfs is measured, not written.
pub fn unpack_for_inspect(input: impl Read, dest: &Path, limits: &Limits) -> Result<ArchiveInfo> {
    std::fs::create_dir(dest).map_err(Error::io(format!("cannot create {}", dest.display())))?;
    let un = unpack(input, dest, limits, Mode::Inspect)?;
    let mut info = describe_dir(dest, limits)?;
    info.compression = un.compression;
    info.entries = un.entries;
    info.bytes = un.bytes;
    info.rootfs_diff_bytes = un.files.get(ROOTFS_FILE).map(|f| f.0);
    Ok(info)
}

/// Describes an unpacked archive (or an imported one): its metadata,
/// engine config and statistics. Entry counts and sizes are those of the
/// files present.
pub fn describe_dir(dir: &Path, limits: &Limits) -> Result<ArchiveInfo> {
    let dest = dir;
    let metadata = if dest.join(METADATA_FILE).is_file() {
        Some(read_json_file::<Metadata>(
            &dest.join(METADATA_FILE),
            METADATA_FILE,
            limits,
        )?)
    } else {
        None
    };
    let container = if dest.join(CONFIG_FILE).is_file() {
        read_json_file::<EngineContainer>(&dest.join(CONFIG_FILE), CONFIG_FILE, limits).ok()
    } else {
        None
    };
    let images_dir = dest.join(IMAGES_DIR);
    if !images_dir.join("inventory.img").is_file() {
        return Err(Error::Missing(format!("{IMAGES_DIR}/inventory.img")));
    }
    let dump_stats = if dest.join(STATS_FILE).is_file() {
        Some(crate::criu::read_dump_stats(dest).map_err(|e| Error::Corrupt(e.to_string()))?)
    } else {
        None
    };
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut stack = vec![dest.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(Error::io(format!("cannot read {}", d.display())))? {
            let e = e.map_err(Error::io(format!("cannot read {}", d.display())))?;
            let m = e
                .metadata()
                .map_err(Error::io(format!("cannot read {}", d.display())))?;
            entries += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    let rootfs_diff_bytes = std::fs::metadata(dest.join(ROOTFS_FILE))
        .ok()
        .map(|m| m.len());
    Ok(ArchiveInfo {
        layout: if metadata.is_some() {
            "ferry"
        } else {
            "podman"
        },
        compression: Compression::None,
        metadata,
        container,
        entries,
        bytes,
        rootfs_diff_bytes,
        dump_stats,
        images_dir,
    })
}

#[cfg(test)]
mod space_tests {
    use super::*;

    fn budget(bytes: u64, inodes: u64) -> SpaceBudget {
        SpaceBudget {
            path: PathBuf::from("/target"),
            block: 4096,
            bytes_left: bytes,
            inodes_left: inodes,
            charged: 0,
            free_bytes: bytes,
        }
    }

    #[test]
    fn entries_are_charged_in_whole_blocks_until_full() {
        let mut b = budget(3 * 4096, 10);
        b.charge(1).unwrap();
        b.charge(0).unwrap();
        b.charge(4096).unwrap();
        let err = b.charge(1).unwrap_err().to_string();
        assert!(err.contains("at least 16384 bytes"), "{err}");
        assert!(err.contains("12288 bytes are free"), "{err}");
        assert!(err.contains("/target"), "{err}");
    }

    #[test]
    fn inodes_run_out_too() {
        let mut b = budget(1 << 30, 1);
        b.charge(10).unwrap();
        let err = b.charge(10).unwrap_err().to_string();
        assert!(err.contains("no inodes are free"), "{err}");
    }

    #[test]
    fn measures_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        let b = SpaceBudget::of(d.path()).unwrap();
        assert!(b.free_bytes >= b.bytes_left);
        assert!(b.block >= 512);
    }
}
