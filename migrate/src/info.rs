//! What the two hosts tell each other about themselves before a migration
//! starts: the container and CRIU on the source, where things go on the
//! destination. Both the host traits (`host`) and the choice of
//! mode (`mode`) read these.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::serde_fmt::hex;
use crate::tls::Security;

/// CRIU/kernel features that decide which migration modes are possible
/// (from CRIU's FEATURE_CHECK).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// Soft-dirty memory tracking: pre-dump and `track_mem`.
    pub mem_track: bool,
    /// userfaultfd lazy pages: post-copy.
    pub lazy_pages: bool,
}

/// What the source tells the destination before anything is frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Container ID (the same ID is used on the destination).
    pub id: String,
    /// CRIU version, e.g. "4.2.1".
    pub criu_version: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Machine architecture (`uname -m`).
    pub arch: String,
    pub features: Features,
    /// CRIU's CPU description (`cpuinfo.img` from CPUINFO_DUMP), which the
    /// destination checks with CPUINFO_CHECK.
    #[serde(with = "hex", default)]
    pub cpuinfo: Option<Vec<u8>>,
    /// The bundle directory on the source.
    pub bundle: PathBuf,
    /// The container's `config.json`, verbatim.
    pub config_json: String,
    /// The root filesystem on the source (absolute).
    pub rootfs: PathBuf,
    /// Resident memory of the container's processes (an estimate, for
    /// progress and disk space checks).
    pub memory_bytes: u64,
    /// Anything else the runtime wants to carry to its peer (network
    /// setup, annotations...). Not interpreted here.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// What the destination answers to the preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestInfo {
    pub criu_version: String,
    pub kernel: String,
    pub arch: String,
    pub features: Features,
    /// Where this migration's images go. Must not exist yet: the
    /// migration creates it and removes it when done or aborted.
    pub images_dir: PathBuf,
    /// The container's bundle directory on the destination. With a
    /// shipped rootfs, it must not exist or be empty; the migration writes
    /// `config.json` and `rootfs/` into it.
    pub bundle_dir: PathBuf,
    /// Free bytes where images and the rootfs will be written, if known.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// Takes `EarlyImages` (a destination of an older version does not).
    #[serde(default)]
    pub early_images: bool,
}

/// What it takes to ask the destination about a migration's commit, for
/// a runtime that must learn the outcome after this process is gone.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub to: SocketAddr,
    /// The name the destination's certificate must carry.
    pub server_name: String,
    pub security: Security,
    pub migration_id: String,
    /// The container's ID on the destination.
    pub container_id: String,
}
