//! `checkpoint` and `restore`: runc's flags, plus `--stats`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry::archive::Compression;
use ferry::cgroups::Driver;
use ferry::container::{CheckpointOptions, RestoreOptions};
use ferry::criu::CgMode;
use ferry::imports::{ImportOptions, ImportSource, ImportedRestore};
use ferry::network::LockMethod;
use ferry::Container;
use nix::unistd::Pid;

use super::export::{Export, ExportOptions, Target};
use super::output::warn_all;
use super::{wait, LogFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupsMode {
    Soft,
    Full,
    Strict,
    Ignore,
}

impl CgroupsMode {
    fn criu(self) -> CgMode {
        match self {
            CgroupsMode::Soft => CgMode::SOFT,
            CgroupsMode::Full => CgMode::FULL,
            CgroupsMode::Strict => CgMode::STRICT,
            CgroupsMode::Ignore => CgMode::IGNORE,
        }
    }
}

/// How `--export` compresses the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveCompression {
    Zstd,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetLock {
    Iptables,
    Nftables,
    Skip,
}

impl From<NetLock> for LockMethod {
    fn from(n: NetLock) -> LockMethod {
        match n {
            NetLock::Iptables => LockMethod::Iptables,
            NetLock::Nftables => LockMethod::Nftables,
            NetLock::Skip => LockMethod::Skip,
        }
    }
}

/// How a pre-dump collects memory (CRIU's `--pre-dump-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreDumpModeArg {
    /// vmsplice pages into pipes while the tree is frozen (CRIU's default).
    Splice,
    /// Read pages with process_vm_readv after the tree runs again: a
    /// shorter freeze.
    Read,
}

impl PreDumpModeArg {
    pub fn criu(self) -> ferry::criu::PreDumpMode {
        match self {
            PreDumpModeArg::Splice => ferry::criu::PreDumpMode::SPLICE,
            PreDumpModeArg::Read => ferry::criu::PreDumpMode::VM_READ,
        }
    }
}

/// Namespaces `--empty-ns` accepts (runc accepts only the network one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmptyNs {
    Network,
}

/// CRIU flags `checkpoint` and `restore` share (runc's names).
#[derive(Debug, Args)]
pub struct CriuFlags {
    /// Checkpoint (restore) open TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Allow a shell job (a process attached to a terminal session).
    #[arg(long)]
    pub shell_job: bool,
    /// Checkpoint (restore) file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// How CRIU handles cgroups.
    #[arg(long, value_enum)]
    pub manage_cgroups_mode: Option<CgroupsMode>,
    /// A namespace whose contents are not dumped; on restore ferry sets it
    /// up instead.
    #[arg(long, value_enum)]
    pub empty_ns: Vec<EmptyNs>,
    /// Deduplicate memory images against the parent as they are written
    /// (on restore: as they are read).
    #[arg(long)]
    pub auto_dedup: bool,
    /// How the network is held while the container is frozen or restored.
    /// A network namespace ferry rebuilds on restore is held by keeping
    /// its veth's host end down until CRIU unlocks (any method but skip;
    /// with prestart/createRuntime hooks, by this lock on the host end).
    #[arg(long, value_enum, default_value = "nftables")]
    pub network_lock: NetLock,
}

/// Sets the fields `CheckpointOptions` and `RestoreOptions` share from
/// [`CriuFlags`].
macro_rules! set_criu_flags {
    ($o:expr, $f:expr) => {{
        let f = $f;
        $o.tcp_established = f.tcp_established;
        $o.ext_unix_sk = f.ext_unix_sk;
        $o.shell_job = f.shell_job;
        $o.file_locks = f.file_locks;
        $o.manage_cgroups_mode = f.manage_cgroups_mode.map(CgroupsMode::criu);
        $o.empty_ns_network = f.empty_ns.contains(&EmptyNs::Network);
        $o.auto_dedup = f.auto_dedup;
        $o.network_lock = f.network_lock.into();
    }};
}

#[derive(Debug, Args)]
// podman repeats --leave-running; a repeated flag means the same as once.
#[command(args_override_self = true)]
pub struct CheckpointArgs {
    pub id: String,
    /// Directory for the CRIU images (default: ./checkpoint; with --export
    /// and no image path, a temporary directory removed afterwards).
    #[arg(long)]
    pub image_path: Option<PathBuf>,
    /// Directory for CRIU's log and work files (default: the image path).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Also write the checkpoint as a portable archive to FILE
    /// (written to a temporary file beside it, then renamed).
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// Also write the checkpoint as an OCI image (one layer holding the
    /// --export archive, podman's and CRI-O's checkpoint annotations):
    /// oci:DIR[:TAG] (an image layout) or oci-archive:FILE[:TAG].
    #[arg(long, value_name = "REF", conflicts_with = "export")]
    pub export_image: Option<String>,
    /// Compression of the --export archive [default: zstd].
    #[arg(long, value_enum, requires = "export")]
    pub compress: Option<ArchiveCompression>,
    /// Leave the root filesystem out of the --export archive or image.
    #[arg(long)]
    pub ignore_rootfs: bool,
    /// The container image this container's rootfs comes from (as podman
    /// names it): recorded in the archive's config.dump and the image's
    /// annotations, where `podman container restore` looks for it.
    #[arg(long, value_name = "IMAGE")]
    pub rootfs_image: Option<String>,
    /// A previous pre-dump, relative to the image path.
    #[arg(long)]
    pub parent_path: Option<PathBuf>,
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    pub leave_running: bool,
    /// Keep the container frozen after the checkpoint.
    #[arg(long)]
    pub leave_stopped: bool,
    /// Skip in-flight TCP connections.
    #[arg(long)]
    pub tcp_skip_in_flight: bool,
    /// Allow linked-remapped files (open but unlinked).
    #[arg(long)]
    pub link_remap: bool,
    /// Leave memory for a lazy-pages restore (post-copy).
    #[arg(long)]
    pub lazy_pages: bool,
    /// File descriptor CRIU writes to when lazy pages are ready.
    #[arg(long)]
    pub status_fd: Option<i32>,
    /// Send memory pages to a CRIU page server at ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub page_server: Option<String>,
    /// Dump memory only, leaving the container running (needs soft-dirty).
    #[arg(long)]
    pub pre_dump: bool,
    /// How the pre-dump collects memory: splice (frozen while copying) or
    /// read (copied after the container runs again).
    #[arg(long, value_enum, requires = "pre_dump")]
    pub pre_dump_mode: Option<PreDumpModeArg>,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Print CRIU's dump statistics.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct RestoreArgs {
    pub id: String,
    /// Bundle directory holding config.json (its mounts and network apply)
    /// [default: ., or with --import the archive's config and rootfs].
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
    /// Directory of CRIU images written by `ferry checkpoint` [default: checkpoint].
    #[arg(long, conflicts_with_all = ["import", "image"])]
    pub image_path: Option<PathBuf>,
    /// Restore from a checkpoint archive: ferry's (`checkpoint --export`),
    /// podman's (`container checkpoint --export`) or the kubelet's (CRI-O).
    #[arg(long, value_name = "FILE")]
    pub import: Option<PathBuf>,
    /// Restore from a checkpoint image: oci:DIR[:TAG] or
    /// oci-archive:FILE[:TAG] (`checkpoint --export-image`, or podman's
    /// `--create-image` saved with `podman save --format oci-archive`).
    #[arg(long, value_name = "REF", conflicts_with = "import")]
    pub image: Option<String>,
    /// Directory for CRIU's log and work files (default: the image path).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the restored init's host pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Do not become the subreaper of the restored processes (foreground).
    #[arg(long)]
    pub no_subreaper: bool,
    /// Not supported: CRIU restores the mount namespace with pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Unix socket that receives the terminal master of a terminal container.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Restore memory lazily from a page server (post-copy).
    #[arg(long)]
    pub lazy_pages: bool,
    /// LSM profile for the restored processes (e.g. apparmor:NAME).
    #[arg(long)]
    pub lsm_profile: Option<String>,
    /// SELinux context for the restored mounts that carry a `context=`
    /// option (CRI-O's restore into a pod).
    #[arg(long, value_name = "CONTEXT")]
    pub lsm_mount_context: Option<String>,
    /// Restore TCP connections dumped with --tcp-established closed.
    #[arg(long, conflicts_with = "tcp_established")]
    pub tcp_close: bool,
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Print CRIU's restore statistics.
    #[arg(long)]
    pub stats: bool,
}

fn page_server(s: &str) -> anyhow::Result<(String, u16)> {
    let (addr, port) = s
        .rsplit_once(':')
        .with_context(|| format!("--page-server {s:?}: expected ADDR:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("--page-server {s:?}: {port:?} is not a port number"))?;
    if addr.is_empty() {
        bail!("--page-server {s:?}: expected ADDR:PORT");
    }
    Ok((addr.trim_matches(['[', ']']).to_string(), port))
}

fn export_options<'a>(a: &CheckpointArgs, target: &'a Target) -> ExportOptions<'a> {
    let partial = [
        (a.pre_dump, "--pre-dump"),
        (a.page_server.is_some(), "--page-server"),
        (a.lazy_pages, "--lazy-pages"),
    ];
    ExportOptions {
        target,
        compression: match a.compress {
            Some(ArchiveCompression::None) => Compression::None,
            _ => Compression::Zstd,
        },
        ignore_rootfs: a.ignore_rootfs,
        rootfs_image: a.rootfs_image.clone(),
        temporary_images: a.image_path.is_none(),
        partial_dump_flags: partial.iter().filter(|p| p.0).map(|p| p.1).collect(),
    }
}

pub fn checkpoint(root: &Path, a: &CheckpointArgs, format: LogFormat) -> anyhow::Result<()> {
    if let Some(fd) = a.status_fd {
        // SAFETY: only probed with F_GETFD.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if fd < 3 || nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            bail!("--status-fd {fd} is not an open descriptor above 2");
        }
    }
    let target = match (&a.export, &a.export_image) {
        (Some(file), _) => Some(Target::File(file.clone())),
        (None, Some(r)) => Some(Target::Image(
            r.parse()
                .map_err(|e| anyhow::anyhow!("--export-image: {e}"))?,
        )),
        (None, None) => None,
    };
    for (given, flag) in [
        (a.ignore_rootfs, "--ignore-rootfs"),
        (a.rootfs_image.is_some(), "--rootfs-image"),
    ] {
        if given && target.is_none() {
            bail!("{flag} applies to --export or --export-image: give one of them");
        }
    }
    let mut export = match &target {
        Some(t) => Some(Export::prepare(&export_options(a, t))?),
        None => None,
    };
    let image_path = match (&a.image_path, &export) {
        (Some(p), _) => p.clone(),
        (None, Some(e)) => e.images_dir(),
        (None, None) => PathBuf::from("checkpoint"),
    };
    let mut o = CheckpointOptions::new(&image_path);
    o.work_path = a.work_path.clone();
    o.parent_path = a.parent_path.clone();
    o.leave_running = a.leave_running;
    o.leave_stopped = a.leave_stopped;
    o.tcp_skip_in_flight = a.tcp_skip_in_flight;
    o.link_remap = a.link_remap;
    o.lazy_pages = a.lazy_pages;
    o.status_fd = a.status_fd;
    o.page_server = a.page_server.as_deref().map(page_server).transpose()?;
    o.pre_dump = a.pre_dump;
    o.pre_dump_mode = a.pre_dump_mode.map(PreDumpModeArg::criu);
    set_criu_flags!(o, &a.criu);
    let c = Container::load(root, &a.id)?;
    if let Some(e) = export.as_mut() {
        e.remember(&c);
    }
    let done = c.checkpoint(&o)?;
    warn_all(&done.hook_warnings);
    if let Some(e) = export {
        let skipped = e.finish(&done, a.work_path.as_deref())?;
        if !skipped.is_empty() {
            warn_all(&[format!(
                "{} socket(s) in the rootfs are not in the archive (a program recreates them when it binds again): {}",
                skipped.len(),
                skipped
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )]);
        }
    }
    if a.stats {
        let stats = done.stats.with_context(|| {
            format!(
                "the dump succeeded but CRIU wrote no statistics in {}",
                done.images.display()
            )
        })?;
        match format {
            LogFormat::Json => println!("{}", serde_json::to_string(&stats)?),
            LogFormat::Text => {
                println!("freezing time: {} us", stats.freezing_time_us);
                println!("frozen time:   {} us", stats.frozen_time_us);
                println!("memdump time:  {} us", stats.memdump_time_us);
                println!("memwrite time: {} us", stats.memwrite_time_us);
                println!("pages scanned: {}", stats.pages_scanned);
                println!("pages written: {}", stats.pages_written);
            }
        }
    }
    Ok(())
}

pub fn restore(
    root: &Path,
    a: &RestoreArgs,
    format: LogFormat,
    driver: Driver,
) -> anyhow::Result<i32> {
    if a.no_pivot {
        bail!("--no-pivot is not supported by restore: CRIU rebuilds the container's mount namespace with pivot_root (drop the flag)");
    }
    let source = match (&a.import, &a.image) {
        (Some(file), _) => Some(ImportSource::Archive(file.clone())),
        (None, Some(r)) => Some(ImportSource::Image(
            r.parse().map_err(|e| anyhow::anyhow!("--image: {e}"))?,
        )),
        (None, None) => None,
    };
    let imported = match &source {
        Some(source) => Some(ImportedRestore::prepare(
            root,
            &ImportOptions {
                id: &a.id,
                source,
                bundle: a.bundle.as_deref(),
            },
        )?),
        None => None,
    };
    let (bundle, images) = match &imported {
        Some(i) => (i.bundle.clone(), i.images.clone()),
        None => (
            a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
            a.image_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("checkpoint")),
        ),
    };
    let mut o = RestoreOptions::new(&a.id, &bundle, &images);
    o.cgroup_driver = driver;
    o.work_path = a.work_path.clone();
    o.pid_file = a.pid_file.clone();
    o.console_socket = a.console_socket.clone();
    o.lazy_pages = a.lazy_pages;
    o.lsm_profile = a.lsm_profile.clone();
    o.lsm_mount_context = a.lsm_mount_context.clone();
    o.tcp_close = a.tcp_close;
    set_criu_flags!(o, &a.criu);
    if !a.detach {
        wait::block_signals();
        if !a.no_subreaper {
            // Orphans of the restored tree come back to us, not to init.
            // SAFETY: plain prctl on this process.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
    }
    let restored = match Container::restore(root, &o) {
        Ok(r) => r,
        Err(e) => {
            if let Some(i) = imported {
                i.discard();
            }
            return Err(e.into());
        }
    };
    if let Some(i) = &imported {
        i.restored();
    }
    warn_all(&restored.hook_warnings);
    if a.stats {
        if let Some(s) = &restored.stats {
            match format {
                LogFormat::Json => println!("{}", serde_json::to_string(s)?),
                LogFormat::Text => {
                    println!("forking time:  {} us", s.forking_time_us);
                    println!("restore time:  {} us", s.restore_time_us);
                    println!("pages compared: {}", s.pages_compared);
                    println!("pages skipped (COW): {}", s.pages_skipped_cow);
                }
            }
        } else {
            warn_all(&["CRIU wrote no restore statistics"]);
        }
    }
    if a.detach {
        return Ok(0);
    }
    let pid = Pid::from_raw(restored.container.state.pid);
    let code = wait::wait_forwarding(pid, pid);
    let c = Container::load(root, restored.container.id())?;
    // Removes the bundle an import built too.
    warn_all(&c.delete(true)?);
    Ok(code)
}
