//! `serve`: receive migrating containers.
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry::migration::dest::{DestOptions, Incoming};
use migrate::dest::{DestConfig, Server};

use super::checkpoint::NetLock;
use super::migrate::{block_termination, on_termination, TlsArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Incoming containers' bundles go to DIR/<id>.
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: PathBuf,
    /// Images of migrations in progress (default: BUNDLE_DIR/.incoming).
    #[arg(long, value_name = "DIR")]
    pub images_dir: Option<PathBuf>,
    /// Incoming containers' cgroups go to PARENT/<id> (default: what each
    /// container's config.json says, or ferry's default).
    #[arg(long, value_name = "PARENT")]
    pub cgroup_parent: Option<String>,
    /// A directory under which `--rootfs shared` root filesystems may be
    /// (repeatable); none: shared root filesystems are refused.
    #[arg(long, value_name = "DIR")]
    pub allow_shared_rootfs: Vec<PathBuf>,
    /// How the network is held while a container is restored.
    #[arg(long, value_enum, default_value = "nftables")]
    pub network_lock: NetLock,
    #[command(flatten)]
    pub tls: TlsArgs,
}

pub fn serve(root: &Path, a: &ServeArgs) -> anyhow::Result<()> {
    let signals = block_termination();
    let security = a.tls.security()?;
    let mut cfg = DestConfig::new(security);
    cfg.shared_rootfs_under = a.allow_shared_rootfs.clone();
    let root = std::path::absolute(root)?;
    let bundle_dir = std::path::absolute(&a.bundle_dir)?;
    let mut opts = DestOptions::new(&root, &bundle_dir);
    if let Some(d) = &a.images_dir {
        opts.images_dir = std::path::absolute(d)?;
    }
    opts.cgroup_parent = a.cgroup_parent.clone();
    opts.network_lock = a.network_lock.into();
    let incoming = Incoming::new(opts)
        .map_err(|e| anyhow::anyhow!("preparing the destination directories: {e}"))?;
    let server = Server::bind(a.listen, cfg, Arc::new(incoming))
        .with_context(|| format!("listening on {}", a.listen))?;
    let addr = server.local_addr()?;
    let handle = server.handle();
    on_termination(signals, move || handle.shutdown());
    tracing::info!(%addr, "serving");
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    server.run()?;
    Ok(())
}
