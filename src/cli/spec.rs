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
    let text = serde_json::to_string_pretty(&ferry::spec::default_spec())?;
    std::fs::write(&path, text + "\n").with_context(|| format!("{}", path.display()))?;
    Ok(())
}
