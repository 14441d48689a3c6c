//! Importing an archive: safe unpacking into a staging directory, then
//! validation, then one rename into place; and unpacking its rootfs tar.
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::engine::{check_engine_contents, EngineExtras};
use super::space::SpaceBudget;
use super::stream::{check_trailer, open_stream, stream_err};
use super::tar_guard::TarGuard;
use super::validate::{check_contents, check_host, check_manifest, parse_json, read_json_file};
use super::*;

/// An archive imported into its destination directory.
#[derive(Debug, Clone)]
pub struct Imported {
    pub dir: PathBuf,
    /// Whose layout the archive has.
    pub layout: Layout,
    /// ferry's metadata; for another engine's archive, what ferry knows of
    /// it (container ID and checkpoint time from `config.dump`, the rootfs
    /// as [`RootfsMode::None`]: its `rootfs-diff.tar` holds only changes).
    pub metadata: Metadata,
    pub compression: Compression,
    /// `DIR/checkpoint`.
    pub images_dir: PathBuf,
    /// The OCI config.json (`DIR/spec.dump`).
    pub spec: PathBuf,
    pub descriptors: Option<PathBuf>,
    pub dump_stats: Option<PathBuf>,
    /// The root filesystem as a tar, for [`unpack_rootfs`] (another
    /// engine's: the changes to its image's root filesystem).
    pub rootfs_tar: Option<PathBuf>,
    /// Another engine's `deleted.files`: paths removed from the image's
    /// root filesystem, checked by the untrusted-path rules.
    pub deleted_files: Vec<PathBuf>,
    /// CRI-O's `bind.mounts`: the bind mounts the container needs.
    pub bind_mounts: Vec<ExternalBindMount>,
    pub entries: u64,
    pub bytes: u64,
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

/// What [`unpack`] found.
pub(super) struct Unpacked {
    pub(super) compression: Compression,
    /// Every file entry: size and CRC-32, by normalized path.
    pub(super) files: HashMap<String, (u64, u32)>,
    /// Order of file entries.
    pub(super) order: Vec<String>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

pub(super) enum Mode<'a> {
    /// Everything is written; `ferry.json` must come first and pass `check`.
    Import(&'a dyn Fn(&Metadata) -> Result<()>),
    /// Everything is written; a `ferry.json` (first or not) must pass
    /// `check`; without one the archive is another engine's.
    ImportAny(&'a dyn Fn(&Metadata) -> Result<()>),
    /// Only what inspect reads is written; the rest is drained and counted.
    Inspect,
}

fn inspect_wants(path: &str) -> bool {
    path.starts_with(&format!("{IMAGES_DIR}/"))
        || [METADATA_FILE, CONFIG_FILE, SPEC_FILE, STATS_FILE].contains(&path)
}

/// Streams the archive into `dest` (an existing empty directory), enforcing
/// the path rules and limits.
pub(super) fn unpack(
    input: impl Read,
    dest: &Path,
    limits: &Limits,
    mode: Mode,
) -> Result<Unpacked> {
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
        within(out.entries, limits.max_entries, "entries")?;
        let raw = entry.path_bytes().into_owned();
        let rel = safe_path(&raw, limits)?;
        let name = rel.to_string_lossy().into_owned();
        // Names are kept for the manifest check; bound them together, with
        // what is kept beside each.
        name_bytes += name.len() as u64 + ENTRY_OVERHEAD_BYTES;
        within(name_bytes, MAX_NAME_BYTES, "bytes of entry names")?;
        if out.entries == 1 {
            if let Mode::Import(_) = mode {
                if name != METADATA_FILE {
                    return Err(Error::MissingMetadata);
                }
            }
        }
        let kind = classify(entry.header().entry_type(), &name)?;
        if kind == Kind::Skip {
            continue;
        }
        if !seen.insert(rel.clone()) {
            return Err(Error::Duplicate { path: name });
        }
        if kind == Kind::Dir {
            budget.charge(0)?;
            let target = dest.join(&rel);
            std::fs::create_dir_all(&target)
                .map_err(Error::io(format!("cannot create {}", target.display())))?;
            continue;
        }
        let file = FileEntry {
            name,
            size: entry.size(),
            target: dest.join(&rel),
        };
        unpack_file(&mut entry, file, limits, &mode, &mut budget, &mut out)?;
    }
    check_trailer(archive.into_inner())?;
    Ok(out)
}

/// How an archive entry is unpacked.
#[derive(PartialEq)]
enum Kind {
    Dir,
    File,
    /// Metadata of the tar format itself.
    Skip,
}

/// Only directories and regular files are unpacked; anything else refuses
/// the archive.
fn classify(kind: tar::EntryType, name: &str) -> Result<Kind> {
    let reject = |reason: &str| Error::UnsafeEntry {
        path: name.to_string(),
        reason: reason.to_string(),
    };
    match kind {
        tar::EntryType::Directory => Ok(Kind::Dir),
        tar::EntryType::Regular | tar::EntryType::Continuous => Ok(Kind::File),
        tar::EntryType::Symlink | tar::EntryType::Link => Err(reject(
            "links are not allowed outside rootfs-diff.tar (they could point outside the archive)",
        )),
        tar::EntryType::XGlobalHeader => Ok(Kind::Skip),
        other => Err(reject(&format!("{other:?} entries are not allowed"))),
    }
}

/// A regular file entry: its name in the archive, size, and where it goes.
struct FileEntry {
    name: String,
    size: u64,
    target: PathBuf,
}

/// Copies one regular file out (inspect drains what it does not want),
/// checks the metadata as it arrives, and records size and checksum.
fn unpack_file(
    entry: &mut impl Read,
    file: FileEntry,
    limits: &Limits,
    mode: &Mode,
    budget: &mut SpaceBudget,
    out: &mut Unpacked,
) -> Result<()> {
    let FileEntry { name, size, target } = file;
    let is_json = charge_sizes(out, &name, size, limits)?;
    let write = match mode {
        Mode::Import(_) | Mode::ImportAny(_) => true,
        Mode::Inspect => inspect_wants(&name),
    };
    let file = if write {
        budget.charge(size)?;
        Some(create_file(&target)?)
    } else {
        None
    };
    let mut keep = is_json.then(Vec::new);
    let crc = copy_entry(entry, &name, size, file.as_ref(), keep.as_mut())?;
    if let (Mode::Import(_) | Mode::ImportAny(_), Some(f)) = (mode, file.as_ref()) {
        f.sync_all()
            .map_err(Error::io(format!("cannot write {name}")))?;
    }
    if let (METADATA_FILE, Mode::Import(check) | Mode::ImportAny(check)) = (name.as_str(), mode) {
        let meta: Metadata = parse_json(METADATA_FILE, &keep.unwrap_or_default())?;
        check(&meta)?;
    }
    if name != MANIFEST_FILE {
        out.order.push(name.clone());
    }
    out.files.insert(name, (size, crc));
    Ok(())
}

/// [`Error::Limit`] when `n` exceeds `limit`.
fn within(n: u64, limit: u64, what: &'static str) -> Result<()> {
    if n > limit {
        return Err(Error::Limit { what, limit });
    }
    Ok(())
}

/// Counts a file entry of `size` bytes against the limits; whether it is
/// one of the JSON files (kept in memory to be parsed).
fn charge_sizes(out: &mut Unpacked, name: &str, size: u64, limits: &Limits) -> Result<bool> {
    within(size, limits.max_file_bytes, "bytes in one entry")?;
    out.bytes = out.bytes.saturating_add(size);
    within(out.bytes, limits.max_total_bytes, "bytes in total")?;
    let is_json = [
        METADATA_FILE,
        MANIFEST_FILE,
        CONFIG_FILE,
        DELETED_FILES,
        BIND_MOUNTS,
    ]
    .contains(&name);
    if is_json {
        within(size, limits.max_json_bytes, "bytes in a JSON file")?;
    }
    Ok(is_json)
}

/// Creates `target` (and its parent directories) for an entry's data.
fn create_file(target: &Path) -> Result<File> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(Error::io(format!("cannot create {}", parent.display())))?;
    }
    // create_new: never follows or replaces anything already there.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(Error::io(format!("cannot create {}", target.display())))
}

/// Reads an entry's `size` bytes into `file` (and `keep`); returns their
/// CRC-32.
fn copy_entry(
    entry: &mut impl Read,
    name: &str,
    size: u64,
    mut file: Option<&File>,
    mut keep: Option<&mut Vec<u8>>,
) -> Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut count = 0u64;
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
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(&buf[..n]);
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
    Ok(crc.finalize())
}

/// Sum of the entry names of one archive (each kept in memory until the
/// manifest is checked), counting [`ENTRY_OVERHEAD_BYTES`] more for each:
/// thousands of CRIU images need a few MiB.
const MAX_NAME_BYTES: u64 = 64 << 20;
/// Memory kept per entry besides its name (set, map and list slots).
const ENTRY_OVERHEAD_BYTES: u64 = 128;

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
    import_checked(input, dest, limits, host, false)
}

/// Like [`import_for`], and also takes another engine's archive (podman's
/// `--export` or `--create-image` layer, the kubelet's CRI-O checkpoint):
/// no `ferry.json` and no manifest, so no host or CRC checks (an image's
/// digests cover its layer; CRIU checks its images); the same path rules,
/// limits and space checks, `config.dump` with the container's identity,
/// the CRIU images and `spec.dump`, and `rootfs-diff.tar`,
/// `deleted.files` and `bind.mounts` checked when present.
pub fn import_any(input: impl Read, dest: &Path, limits: &Limits, host: &Host) -> Result<Imported> {
    import_checked(input, dest, limits, host, true)
}

fn import_checked(
    input: impl Read,
    dest: &Path,
    limits: &Limits,
    host: &Host,
    engine_ok: bool,
) -> Result<Imported> {
    check_dest_empty(dest)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = staging_dir(dest, &parent)?;
    let check = |m: &Metadata| check_host(m, host);
    let mode = if engine_ok {
        Mode::ImportAny(&check)
    } else {
        Mode::Import(&check)
    };
    let un = unpack(input, staging.path(), limits, mode)?;
    let layout = match un.order.first().map(String::as_str) {
        Some(METADATA_FILE) => Layout::Ferry,
        _ if un.files.contains_key(METADATA_FILE) => return Err(Error::MissingMetadata),
        _ => Layout::Engine,
    };
    let (meta, engine) = match layout {
        Layout::Ferry => {
            let meta: Metadata =
                read_json_file(&staging.path().join(METADATA_FILE), METADATA_FILE, limits)?;
            check_manifest(&un.files, &un.order, staging.path(), limits)?;
            if let Some(rootfs) = check_contents(staging.path(), &meta, limits)? {
                check_rootfs_tar(&rootfs, limits, None)?;
            }
            (meta, EngineExtras::default())
        }
        Layout::Engine => {
            let (meta, extras) = check_engine_contents(staging.path(), host, limits)?;
            if staging.path().join(ROOTFS_FILE).is_file() {
                check_rootfs_tar(&staging.path().join(ROOTFS_FILE), limits, None)?;
            }
            (meta, extras)
        }
    };
    publish(staging, dest, &parent)?;
    let at = |p: &str| {
        let path = dest.join(p);
        path.exists().then_some(path)
    };
    Ok(Imported {
        dir: dest.to_path_buf(),
        layout,
        deleted_files: engine.deleted,
        bind_mounts: engine.bind_mounts,
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

/// [`Error::DestExists`] unless `dest` is missing or an empty directory.
fn check_dest_empty(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) => {
            let empty = m.is_dir()
                && std::fs::read_dir(dest)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if !empty {
                return Err(Error::DestExists(dest.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot use {}", dest.display()))(e)),
    }
}

/// A hidden directory beside `dest` (in `parent`) to unpack into.
fn staging_dir(dest: &Path, parent: &Path) -> Result<tempfile::TempDir> {
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    // The random suffix makes it unique: a long stem (an ID of up to 255
    // characters) is cut so the name stays within NAME_MAX.
    tempfile::Builder::new()
        .prefix(&format!(".{}.import-", short_stem(&stem)))
        .tempdir_in(parent)
        .map_err(Error::io(format!(
            "cannot create a staging dir in {}",
            parent.display()
        )))
}

/// Makes the staged import appear at `dest` in one rename.
fn publish(staging: tempfile::TempDir, dest: &Path, parent: &Path) -> Result<()> {
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = crate::fs_remove::remove_tree(&staged);
        return Err(Error::io(format!(
            "cannot move the import to {}",
            dest.display()
        ))(e));
    }
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
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
        let ok = entry.unpack_in(dest).map_err(|e| {
            // The tar crate's error hides its cause one level down.
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            Error::io(format!("cannot unpack {ROOTFS_FILE}:{name}"))(io::Error::new(e.kind(), why))
        })?;
        if !ok {
            return Err(Error::UnsafeEntry {
                path: format!("{ROOTFS_FILE}:{name}"),
                reason: "it would be written outside the root filesystem".into(),
            });
        }
    }
    Ok(n)
}
