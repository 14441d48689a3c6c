//! `migrate`: move a running container to a `ferry serve` on another host.
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry::migration::source::{ContainerSource, SourceOptions};
use ferry::Container;
use migrate::source::{self, SourceConfig};
use migrate::wire::Compression;
use migrate::{CancelToken, ModeRequest, RootfsMode, Security, TlsPaths};
use nix::sys::signal::{SigHandler, SigSet, Signal};

use super::checkpoint::{NetLock, PreDumpModeArg};

/// Credentials shared by `migrate` and `serve`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// The operator CA certificate (PEM) both hosts trust.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This host's certificate (PEM), signed by the CA.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This host's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// No TLS: no authentication and no encryption. Anyone who can reach
    /// the port can push a container or read its memory. Isolated test
    /// networks only.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    pub insecure: bool,
}

impl TlsArgs {
    pub fn security(&self) -> anyhow::Result<Security> {
        if self.insecure {
            return Ok(Security::Insecure);
        }
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Security::tls(&TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })?),
            _ => bail!(
                "pass --ca, --cert and --key (`ferry certs` makes them), or --insecure on an isolated test network"
            ),
        }
    }
}

/// `settle-commit`: what the freeze guard of a killed `migrate` runs.
#[derive(Debug, Args)]
pub struct SettleArgs {
    pub id: String,
    #[arg(long)]
    pub to: SocketAddr,
    #[arg(long)]
    pub server_name: String,
    #[arg(long)]
    pub migration_id: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How long `settle-commit` keeps asking the destination.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// Asks the destination what became of a migration whose `ferry migrate`
/// died after sending the commit, and settles the frozen source: removed
/// if the destination runs the container, resumed if it aborted, left
/// frozen (with a line saying so) if it cannot be asked.
pub fn settle_commit(root: &Path, a: &SettleArgs) -> anyhow::Result<()> {
    let info = source::CommitInfo {
        to: a.to,
        server_name: a.server_name.clone(),
        security: a.tls.security()?,
        migration_id: a.migration_id.clone(),
        container_id: a.id.clone(),
    };
    let outcome = source::ask_outcome(&info, Duration::from_secs(5), SETTLE_DEADLINE);
    let c = Container::load(root, &a.id)?;
    match outcome {
        Some(migrate::proto::Outcome::Running) => {
            c.delete(true)?;
            eprintln!(
                "ferry: the migration of container {} to {} was committed: the destination runs it; removed it here",
                a.id, a.to
            );
        }
        Some(migrate::proto::Outcome::Aborted) => {
            c.resume()?;
            eprintln!(
                "ferry: the migration of container {} to {} was aborted: resumed it here",
                a.id, a.to
            );
        }
        other => bail!(
            "the migration of container {} to {} was interrupted after its commit was sent and the destination {}: it stays frozen here so that it never runs twice; check the destination, then `ferry resume {0}` or `ferry delete -f {0}`",
            a.id,
            a.to,
            match other {
                None => "cannot be asked".to_string(),
                Some(o) => format!("answers {o:?}"),
            }
        ),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    pub id: String,
    /// The destination's `ferry serve` address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddr,
    /// Name the destination's certificate must carry (default: the address).
    #[arg(long)]
    pub server_name: Option<String>,
    /// auto, stop-copy, pre-copy or post-copy.
    #[arg(long, default_value = "auto")]
    pub mode: ModeRequest,
    /// Post-copy only, required with it: accept that until the last page
    /// arrives the container depends on both hosts, and that a failure
    /// then resumes it here and loses what it did on the destination.
    #[arg(long)]
    pub accept_postcopy_risk: bool,
    /// Post-copy: seconds without word from the other host after which
    /// the destination stops its copy and this host resumes the container
    /// (default 10).
    #[arg(long, value_name = "SECS")]
    pub postcopy_link_timeout: Option<u64>,
    /// ship (copy the bundle's rootfs) or shared (same path on both hosts).
    #[arg(long, default_value = "shared")]
    pub rootfs: RootfsMode,
    /// Downtime target in milliseconds (pre-copy stops iterating when the
    /// final dump is predicted to fit; a miss is reported as a warning).
    #[arg(long, value_name = "MS")]
    pub max_downtime: Option<u64>,
    /// Compression of shipped files and images: none or zstd.
    #[arg(long, default_value = "none")]
    pub compress: Compression,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep this host's images directory (under --work-dir).
    #[arg(long)]
    pub keep_images: bool,
    /// Where this host's images directory is made (default: the temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Migrate established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Migrate file locks (flock, POSIX, OFD) the container holds.
    #[arg(long)]
    pub file_locks: bool,
    /// How the network is held while the container is frozen.
    #[arg(long, value_enum, default_value = "nftables")]
    pub network_lock: NetLock,
    /// How pre-copy rounds collect memory: splice (CRIU's default, frozen
    /// while copying) or read (copied after the container runs again).
    /// Needs --mode pre-copy.
    #[arg(long, value_enum)]
    pub pre_dump_mode: Option<PreDumpModeArg>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Termination signals (SIGINT, SIGTERM) for [`on_termination`]: call
/// first, before any thread starts, so every thread inherits the mask.
///
/// Both are blocked in every thread (they stay pending for the waiting
/// thread). SIGINT is also set to "ignore", which CRIU inherits (the
/// standard library resets only the mask of children): Ctrl-C on a
/// terminal reaches the whole process group, and CRIU must not die in the
/// middle of a dump or restore; ferry rolls back instead. SIGTERM keeps its
/// default in children: CRIU stops its own helpers with it.
pub fn block_termination() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = set.thread_block();
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGINT, SigHandler::SigIgn);
    }
    set
}

/// Calls `stop` from a thread once a signal of `set` arrives.
pub fn on_termination(set: SigSet, stop: impl Fn() + Send + 'static) {
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            stop();
        }
    });
}

/// Post-copy's preconditions on this host, before anything is contacted.
fn check_postcopy(a: &MigrateArgs) -> anyhow::Result<()> {
    let post = a.mode == ModeRequest::PostCopy;
    if !post {
        if a.accept_postcopy_risk || a.postcopy_link_timeout.is_some() {
            bail!(
                "--accept-postcopy-risk and --postcopy-link-timeout only apply to --mode post-copy"
            );
        }
        return Ok(());
    }
    if !a.accept_postcopy_risk {
        bail!("{}", migrate::mode::POSTCOPY_RISK);
    }
    if !(1..=600).contains(&a.postcopy_link_timeout.unwrap_or(10)) {
        bail!("--postcopy-link-timeout must be 1 to 600 seconds");
    }
    let criu = ferry::criu::Criu::new()?;
    if let Err(why) = ferry::check::lazy_pages_work(&criu) {
        bail!("post-copy migration is not possible on this host: {why}; use --mode stop-copy");
    }
    Ok(())
}

pub fn migrate(root: &Path, a: &MigrateArgs) -> anyhow::Result<()> {
    if a.pre_dump_mode.is_some() && a.mode != ModeRequest::PreCopy {
        bail!(
            "--pre-dump-mode applies to pre-copy rounds only: add --mode pre-copy or drop \
             --pre-dump-mode"
        );
    }
    let signals = block_termination();
    check_postcopy(a)?;
    let security = a.tls.security()?;
    let mut host = ContainerSource::new(
        root,
        &a.id,
        SourceOptions {
            tcp_established: a.tcp_established,
            file_locks: a.file_locks,
            shared_rootfs: a.rootfs == RootfsMode::Shared,
            network_lock: a.network_lock.into(),
            settle_with: std::env::current_exe().ok(),
            pre_dump_mode: a.pre_dump_mode.map(PreDumpModeArg::criu),
        },
    )?;
    let work = a
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-migrate"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&work)
        .with_context(|| format!("creating {}", work.display()))?;
    check_private_dir(&work)?;
    let mut cfg = SourceConfig::new(a.to, security, &work);
    cfg.server_name = a.server_name.clone();
    cfg.mode = a.mode;
    cfg.rootfs = a.rootfs;
    cfg.compression = a.compress;
    cfg.max_downtime = a.max_downtime.map(Duration::from_millis);
    cfg.keep_images = a.keep_images;
    cfg.accept_postcopy_risk = a.accept_postcopy_risk;
    if let Some(t) = a.postcopy_link_timeout {
        cfg.postcopy_link_timeout = Duration::from_secs(t);
    }
    let cancel = CancelToken::new();
    let c = cancel.clone();
    on_termination(signals, move || c.cancel());
    let terminal = std::io::stderr().is_terminal();
    let mut shown = false;
    let mut progress = |p: &migrate::Progress| {
        if terminal {
            let mut e = std::io::stderr();
            let _ = write!(e, "\r\x1b[K{p}");
            let _ = e.flush();
            shown = true;
        }
    };
    let result = source::migrate(&mut host, &cfg, &mut progress, &cancel);
    if shown {
        eprint!("\r\x1b[K");
    }
    match result {
        Ok(mut report) => {
            host.complete_report(&mut report);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for line in report.summary() {
                    println!("{line}");
                }
            }
            for w in &report.warnings {
                eprintln!("ferry: warning: {w}");
            }
            Ok(())
        }
        Err(f) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&f.report)?);
            }
            Err(anyhow::anyhow!("{f}"))
        }
    }
}

/// Refuses a work directory another user could change: the images and
/// the pinned certificate of the destination are kept there (a shared
/// temp dir where someone made `ferry-migrate` first, say).
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if m.file_type().is_symlink() {
        Some("it is a symbolic link (name the directory itself)".to_string())
    } else if !m.is_dir() {
        Some("it is not a directory".to_string())
    } else if m.uid() != me {
        Some(format!("it belongs to uid {}", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "others can write to it (mode {:o})",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => bail!(
            "refusing the work directory {}: {why}; remove it or pass --work-dir with a directory only this user can write",
            dir.display()
        ),
        None => Ok(()),
    }
}
