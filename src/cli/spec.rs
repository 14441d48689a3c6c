//! `spec`: write a default config.json into a bundle.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
}

pub fn spec(a: &SpecArgs) -> anyhow::Result<()> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists: remove it first", path.display());
    }
    std::fs::write(&path, ferry::spec::DEFAULT_CONFIG)
        .with_context(|| format!("{}", path.display()))?;
    Ok(())
}
