//! What an unpacked archive must satisfy before it is imported: a format
//! and host it was made for, a manifest that lists exactly what arrived,
//! and the files a restore needs.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::*;
use crate::criu::MIN_VERSION;

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// The architecture and CRIU checks of an import.
pub(super) fn check_host(meta: &Metadata, host: &Host) -> Result<()> {
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

pub(super) fn read_json_file<T: serde::de::DeserializeOwned>(
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

/// Every file entry unpacked into `staging` (`files`: size and CRC-32 by
/// path; `order`: their paths in archive order, the manifest's left out) is
/// listed in the manifest with its size and CRC-32, and the manifest lists
/// nothing else.
pub(super) fn check_manifest(
    files: &HashMap<String, (u64, u32)>,
    order: &[String],
    staging: &Path,
    limits: &Limits,
) -> Result<()> {
    // The manifest is the last entry: without it the archive was cut short.
    let Some(_) = files.get(MANIFEST_FILE) else {
        return Err(Error::Truncated(format!(
            "{MANIFEST_FILE} (the last entry) is missing"
        )));
    };
    let manifest: Manifest = read_json_file(&staging.join(MANIFEST_FILE), MANIFEST_FILE, limits)?;
    let listed: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    for e in &manifest.entries {
        match files.get(&e.path) {
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
    if let Some(extra) = order.iter().find(|p| !listed.contains(p.as_str())) {
        return Err(Error::ManifestMismatch {
            path: extra.clone(),
            detail: "not listed".into(),
        });
    }
    Ok(())
}

/// The CRIU images, `spec.dump` and (as `meta` says) the rootfs are there;
/// returns the rootfs tar, whose entries the caller checks.
pub(super) fn check_contents(
    staging: &Path,
    meta: &Metadata,
    limits: &Limits,
) -> Result<Option<PathBuf>> {
    let images = staging.join(IMAGES_DIR);
    if !images.join("inventory.img").is_file() {
        return Err(Error::Missing(format!("{IMAGES_DIR}/inventory.img")));
    }
    let spec = staging.join(SPEC_FILE);
    if !spec.is_file() {
        return Err(Error::Missing(SPEC_FILE.into()));
    }
    let _: serde_json::Value = read_json_file(&spec, SPEC_FILE, limits)?;
    let rootfs = staging.join(ROOTFS_FILE);
    match meta.rootfs {
        RootfsMode::Full => {
            if !rootfs.is_file() {
                return Err(Error::Missing(format!(
                    "{ROOTFS_FILE} (the metadata says the rootfs is included)"
                )));
            }
            Ok(Some(rootfs))
        }
        RootfsMode::None => {
            if rootfs.exists() {
                return Err(Error::ManifestMismatch {
                    path: ROOTFS_FILE.into(),
                    detail: "present although the metadata says the rootfs is not included".into(),
                });
            }
            Ok(None)
        }
    }
}
