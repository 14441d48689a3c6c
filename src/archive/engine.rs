//! Other engines' checkpoint archives: podman's (`--export`, the layer of
//! `--create-image`) and CRI-O's (the kubelet's checkpoint archive, as
//! CRI-O's `internal/lib/checkpoint.go` `exportCheckpoint` writes it:
//! `config.dump`, `spec.dump`, `checkpoint/`, `stats-dump`, `dump.log`,
//! `bind.mounts`, `rootfs-diff.tar`, `deleted.files`, uncompressed).
//! Neither carries ferry's metadata or manifest: what ferry needs is read
//! from `config.dump` and checked here.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::validate::read_json_file;
use super::*;

/// Whose layout an imported archive has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Ferry,
    /// podman's or CRI-O's: `config.dump` instead of `ferry.json`.
    Engine,
}

/// One entry of CRI-O's `bind.mounts` (checkpointctl's
/// `metadata.ExternalBindMount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalBindMount {
    pub source: String,
    pub destination: String,
    #[serde(rename = "fileType", default)]
    pub file_type: String,
    #[serde(default)]
    pub permissions: u32,
}

/// The fields of `config.dump` ferry reads: podman's and CRI-O's
/// (checkpointctl's `metadata.ContainerConfig`) share them.
#[derive(Debug, Deserialize)]
struct EngineConfig {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "checkpointedTime", default)]
    checkpointed_time: Option<String>,
    /// podman: the container belonged to a pod.
    #[serde(default)]
    pod: Option<String>,
}

/// What an engine archive adds to the import.
#[derive(Debug, Default)]
pub(super) struct EngineExtras {
    pub(super) deleted: Vec<PathBuf>,
    pub(super) bind_mounts: Vec<ExternalBindMount>,
}

/// Checks an unpacked engine archive in `dir` and describes it.
pub(super) fn check_engine_contents(
    dir: &Path,
    host: &Host,
    limits: &Limits,
) -> Result<(Metadata, EngineExtras)> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::Missing(format!(
            "{CONFIG_FILE} (neither ferry's {METADATA_FILE} nor another engine's {CONFIG_FILE} is there)"
        )));
    }
    let config: EngineConfig = read_json_file(&dir.join(CONFIG_FILE), CONFIG_FILE, limits)?;
    if config.id.is_empty() {
        return Err(Error::BadJson {
            file: CONFIG_FILE.into(),
            reason: "the container's id is empty".into(),
        });
    }
    if config.pod.as_deref().is_some_and(|p| !p.is_empty()) {
        return Err(Error::Unsupported(format!(
            "the container belonged to a pod ({CONFIG_FILE} names pod {:?}); ferry restores single containers",
            config.pod.unwrap_or_default()
        )));
    }
    if !dir.join(IMAGES_DIR).join("inventory.img").is_file() {
        return Err(Error::Missing(format!("{IMAGES_DIR}/inventory.img")));
    }
    let spec = dir.join(SPEC_FILE);
    if !spec.is_file() {
        return Err(Error::Missing(SPEC_FILE.into()));
    }
    let _: serde_json::Value = read_json_file(&spec, SPEC_FILE, limits)?;
    let mut extras = EngineExtras::default();
    if dir.join(DELETED_FILES).is_file() {
        let list: Vec<String> = read_json_file(&dir.join(DELETED_FILES), DELETED_FILES, limits)?;
        for p in list {
            // Written as absolute paths in the container (podman diff).
            let rel = super::import::safe_path(p.trim_start_matches('/').as_bytes(), limits)
                .map_err(|e| match e {
                    Error::UnsafeEntry { reason, .. } => Error::UnsafeEntry {
                        path: format!("{DELETED_FILES}:{p}"),
                        reason,
                    },
                    other => other,
                })?;
            extras.deleted.push(rel);
        }
    }
    if dir.join(BIND_MOUNTS).is_file() {
        extras.bind_mounts = read_json_file(&dir.join(BIND_MOUNTS), BIND_MOUNTS, limits)?;
    }
    let mut meta = Metadata::for_host(&config.id, host.criu_version);
    meta.ferry_version = String::new();
    meta.kernel = String::new();
    meta.checkpoint_time = config.checkpointed_time.unwrap_or_default();
    meta.rootfs = RootfsMode::None;
    if !config.name.is_empty() {
        tracing::debug!(name = %config.name, "engine checkpoint archive");
    }
    Ok((meta, extras))
}
