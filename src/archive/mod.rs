//! Portable checkpoint archives: one tar file (zstd-compressed by default)
//! holding everything needed to restore a container elsewhere.
//!
//! Layout (podman's and CRI-O's names where the concepts match, so their
//! tools can read ferry's archives):
//!
//! ```text
//! ferry.json            ferry's metadata (always the first entry)
//! config.dump           container identity in podman's config.dump shape
//! spec.dump             the container's OCI config.json
//! checkpoint/           the CRIU images (and descriptors.json, as runc keeps it)
//! stats-dump            CRIU's dump statistics
//! rootfs-diff.tar       the container's root filesystem (absent with --ignore-rootfs)
//! ferry-manifest.json   size and CRC-32 of every entry above (always the last entry)
//! ```
//!
//! Root filesystem: ferry does not layer images, so there is no cheap base to
//! diff against; the archive carries either the whole rootfs
//! ([`RootfsMode::Full`], restored by unpacking `rootfs-diff.tar` onto an
//! empty directory) or nothing ([`RootfsMode::None`], the restoring side
//! provides the rootfs).
//!
//! Both directions stream: export reads each file once into the tar (the
//! rootfs twice, once to measure the nested tar), import writes each entry
//! as it arrives. Memory stays bounded whatever the archive size. Import
//! treats the archive as hostile: see [`import`].
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::criu::Version;

mod engine;
mod export;
mod import;
mod inspect;
pub mod oci_image;
mod space;
mod stream;
mod tar_guard;
mod validate;

pub use engine::{ExternalBindMount, Layout};
pub use export::{export, ExportSpec, ExportSummary};
pub use import::{import, import_any, import_for, unpack_rootfs, Imported};
pub use inspect::{describe_dir, unpack_for_inspect, ArchiveInfo, EngineContainer};

pub const METADATA_FILE: &str = "ferry.json";
pub const MANIFEST_FILE: &str = "ferry-manifest.json";
pub const IMAGES_DIR: &str = "checkpoint";
pub const SPEC_FILE: &str = "spec.dump";
pub const CONFIG_FILE: &str = "config.dump";
pub const STATS_FILE: &str = "stats-dump";
pub const ROOTFS_FILE: &str = "rootfs-diff.tar";
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
/// podman's and CRI-O's list of files removed from the image's rootfs.
pub const DELETED_FILES: &str = "deleted.files";
/// CRI-O's list of the container's bind mounts.
pub const BIND_MOUNTS: &str = "bind.mounts";

/// Version of the layout and of `ferry.json`.
pub const FORMAT_VERSION: u32 = 1;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    /// Read only (podman's `--export` default).
    Gzip,
    None,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "uncompressed",
        })
    }
}

/// What of the root filesystem the archive carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// The whole rootfs, as `rootfs-diff.tar`.
    Full,
    /// Nothing (`--ignore-rootfs`).
    None,
}

impl RootfsMode {
    pub fn name(self) -> &'static str {
        match self {
            RootfsMode::Full => "full",
            RootfsMode::None => "none",
        }
    }
}

/// ferry's own description of a checkpoint (`ferry.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub format_version: u32,
    pub container_id: String,
    /// RFC 3339, UTC.
    pub checkpoint_time: String,
    pub ferry_version: String,
    pub criu_version: String,
    /// Kernel release of the checkpointing host.
    pub kernel: String,
    /// `std::env::consts::ARCH` of the checkpointing host (e.g. `x86_64`).
    pub architecture: String,
    pub rootfs: RootfsMode,
}

impl Metadata {
    /// Metadata for a checkpoint of `container_id` taken now on this host.
    pub fn for_host(container_id: &str, criu_version: Version) -> Metadata {
        Metadata {
            format_version: FORMAT_VERSION,
            container_id: container_id.to_string(),
            checkpoint_time: crate::proc::now_rfc3339(),
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            criu_version: criu_version.to_string(),
            kernel: kernel_release(),
            architecture: std::env::consts::ARCH.to_string(),
            rootfs: RootfsMode::Full,
        }
    }
}

/// This host's kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What an archive must match to be restored here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub architecture: String,
    pub criu_version: Version,
}

impl Host {
    /// This machine: its architecture and the installed CRIU's version.
    pub fn detect() -> Result<Host> {
        let criu_version = crate::criu::Criu::new()
            .and_then(|c| c.version())
            .map_err(|e| Error::CriuUnknown(e.to_string()))?;
        Ok(Host {
            architecture: std::env::consts::ARCH.to_string(),
            criu_version,
        })
    }
}

/// Bounds on what an imported archive may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the archive (and, separately, in `rootfs-diff.tar`).
    pub max_entries: u64,
    /// Sum of all entry sizes.
    pub max_total_bytes: u64,
    /// Largest single entry.
    pub max_file_bytes: u64,
    /// Largest JSON file read into memory (metadata, manifest, configs).
    pub max_json_bytes: u64,
    /// Longest entry path, bytes.
    pub max_path_bytes: usize,
    /// Deepest entry path, components.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 1_000_000,
            max_total_bytes: 256 << 30,
            max_file_bytes: 128 << 30,
            max_json_bytes: 16 << 20,
            max_path_bytes: 4096,
            max_depth: 128,
        }
    }
}

/// Why an archive could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a checkpoint archive: the data starts with neither a tar header nor zstd or gzip magic")]
    NotAnArchive,
    #[error("not a checkpoint archive: the {0} stream does not hold a tar archive")]
    NotTar(Compression),
    #[error("archive is truncated: {0}")]
    Truncated(String),
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    #[error("archive entry {path:?} is rejected: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("archive entry {path:?} appears twice")]
    Duplicate { path: String },
    #[error("archive exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
    #[error(
        "not a ferry checkpoint archive: {METADATA_FILE} is missing (it must be the first entry)"
    )]
    MissingMetadata,
    #[error("{file} is invalid: {reason}")]
    BadJson { file: String, reason: String },
    #[error("archive format version {found} is not supported (this ferry reads version {FORMAT_VERSION})")]
    UnsupportedFormat { found: u32 },
    #[error("checkpoint was made on {archive}, this host is {host}: CRIU images cannot be restored on another architecture")]
    WrongArchitecture { archive: String, host: String },
    #[error("checkpoint was made with CRIU {archive}, this host has CRIU {host}: restoring needs CRIU >= {archive} (run scripts/install-deps.sh)")]
    CriuTooOld { archive: String, host: String },
    #[error("cannot check CRIU compatibility: {0}")]
    CriuUnknown(String),
    #[error("archive lacks {0}")]
    Missing(String),
    #[error("archive cannot be restored by ferry: {0}")]
    Unsupported(String),
    #[error("archive entry {path:?} does not match {MANIFEST_FILE}: {detail}")]
    ManifestMismatch { path: String, detail: String },
    #[error("not enough space to unpack the archive in {}: it needs {needed_what}, and {available} there (nothing was left behind)", path.display())]
    NoSpace {
        path: PathBuf,
        /// "at least N bytes": what was charged when the limit was hit.
        needed_what: String,
        /// "N bytes are free", or "no inodes are free".
        available: String,
    },
    #[error("cannot import into {}: it exists and is not an empty directory", .0.display())]
    DestExists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One entry of `ferry-manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub crc32: u32,
}

/// `ferry-manifest.json`: every entry written before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
