//! ferry's built-in container network: one veth pair per container, declared
//! with the `org.ferry.net.veth` annotation.
//!
//! INTERFACE STUB: bodies are filled in by the network work.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub const VETH_ANNOTATION: &str = "org.ferry.net.veth";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("annotation {VETH_ANNOTATION}: {0}")]
    Annotation(String),
    #[error("veth {interface}: {message}")]
    Link { interface: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethConfig {
    pub host_if: String,
    pub container_if: String,
    pub address: Option<String>,
    pub host_address: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

impl VethConfig {
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<VethConfig>> {
        let _ = annotations;
        Ok(None)
    }
}

/// Creates the pair, moves the container end into the network namespace of
/// `pid`, sets addresses/MAC and brings both ends up. Nothing is left behind
/// on failure.
pub fn create(cfg: &VethConfig, pid: i32) -> Result<()> {
    let _ = (cfg, pid);
    todo!()
}

/// Deletes the host end (and with it the pair) if it still exists.
pub fn remove(cfg: &VethConfig) -> Result<()> {
    let _ = cfg;
    todo!()
}

/// Counters of the host end of the pair.
pub fn host_stats(cfg: &VethConfig) -> Result<InterfaceStats> {
    let _ = cfg;
    todo!()
}
