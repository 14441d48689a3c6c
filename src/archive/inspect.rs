//! What `ferry inspect` learns from an archive besides the images: its
//! layout, metadata, engine identity and statistics.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::import::{unpack, Mode};
use super::validate::read_json_file;
use super::*;
use crate::criu::DumpStats;

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
    let (entries, bytes) = count_tree(dest)?;
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

/// Entries below `dir` and the sum of their file sizes.
fn count_tree(dir: &Path) -> Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
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
    Ok((entries, bytes))
}
