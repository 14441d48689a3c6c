//! `list`: every container under a state root.
use std::path::Path;

use super::{Container, Result};

/// Containers sorted by ID; entries without a readable state are skipped.
pub fn list(root: &Path) -> Result<Vec<Container>> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids
        .iter()
        .filter_map(|id| Container::load(root, id).ok())
        .filter(|c| c.state.id == *c.dir.path.file_name().unwrap_or_default().to_string_lossy())
        .collect())
}
