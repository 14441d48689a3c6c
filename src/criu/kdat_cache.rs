//! CRIU's cache of kernel facts, `/run/criu.kdat`, kept for CRIU where it cannot keep it.
//!
//! At every request CRIU probes the kernel (page maps, sockets, namespaces, an `iptables -L`):
//! 25 ms on a quiet host of two cores, over 80 ms on a busy one, inside the freeze of every
//! dump and restore. It skips the probes when it finds their answers in `/run/criu.kdat`, but
//! writes that file only where `/run` is a tmpfs, so that a reboot (maybe into another kernel)
//! drops it. Where `/run` is not a tmpfs, ferry keeps the cache with the same guarantee:
//!
//! - the file lives in a root-only directory on a tmpfs ([`CACHE_DIR`]), and is written by
//!   CRIU itself: a feature check run in a mount namespace where that directory is `/run`;
//! - `/run/criu.kdat` is a symlink to it. After a reboot the link dangles: CRIU probes, cannot
//!   save on `/run`, and removes the link. A CRIU of another build finds the file's magic wrong
//!   and removes the link too. ferry makes the cache again at its next CRIU start.
//!
//! Nothing here can fail a request: without a cache CRIU probes, as it always did.
use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tracing::debug;

use super::swrk::Session;
use super::ReqType;

/// Where CRIU looks for its cache (its build's `RUNDIR`, `/run` in every distribution).
pub const LINK: &str = "/run/criu.kdat";
/// The root-only tmpfs directory holding the cache ferry keeps.
pub const CACHE_DIR: &str = "/dev/shm/ferry-criu";
/// How long a ferry waits for another making the cache.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Why the CRIU this process ran for the cache wrote none.
static FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The cache file ferry keeps, which [`LINK`] points to.
pub fn cache_file() -> PathBuf {
    Path::new(CACHE_DIR).join("criu.kdat")
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `/run/criu.kdat` resolves to a file: CRIU loads it.
    Present,
    /// `/run` is a tmpfs: CRIU keeps its cache itself.
    CriuKeepsIt,
    /// ferry had CRIU write the cache and linked it.
    Made,
    /// No cache, and why (CRIU probes at every request).
    Without(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Present | Outcome::Made => match std::fs::read_link(LINK) {
                Ok(to) if to == cache_file() => {
                    write!(f, "{LINK} -> {} (kept by ferry)", to.display())
                }
                Ok(to) => write!(f, "{LINK} -> {}", to.display()),
                Err(_) => write!(f, "{LINK}"),
            },
            Outcome::CriuKeepsIt => write!(f, "{LINK} (kept by CRIU: /run is a tmpfs)"),
            Outcome::Without(why) => {
                write!(f, "none, CRIU probes the kernel at every request: {why}")
            }
        }
    }
}

/// Makes sure CRIU (`binary`) finds its cache; called before every CRIU start. One `stat` when
/// the cache is there.
pub fn ensure(binary: &Path) -> Outcome {
    if std::fs::metadata(LINK).is_ok_and(|m| m.is_file()) {
        return Outcome::Present;
    }
    let outcome = match FAILED.get() {
        // CRIU is run for the cache once per process at most: one that cannot write it costs
        // no CRIU start per request.
        Some(why) => Outcome::Without(why.clone()),
        None => make(binary).unwrap_or_else(Outcome::Without),
    };
    // Debug only: the request that follows fails on its own if CRIU cannot run, and `ferry
    // check` reports a host without a cache.
    debug!(outcome = %outcome, "CRIU's kernel-facts cache");
    outcome
}

fn make(binary: &Path) -> Result<Outcome, String> {
    if on_tmpfs(Path::new("/run"))? {
        return Ok(Outcome::CriuKeepsIt);
    }
    let target = cache_file();
    match std::fs::symlink_metadata(LINK) {
        // A dangling link of ours (a reboot emptied the tmpfs): the file is made again.
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(LINK).ok().as_deref() != Some(target.as_path()) {
                return Err(format!("{LINK} is a link ferry did not make"));
            }
        }
        Ok(_) => return Err(format!("{LINK} is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{LINK}: {e}")),
    }
    let dir = cache_dir()?;
    // One ferry at a time has CRIU write the cache (a CRIU started after another wrote it loads
    // it, or replaces it if stale).
    let _lock = lock(&dir)?;
    // CRIU writes `criu.kdat.tmp` with O_EXCL and renames it: one left by a CRIU killed in
    // between would keep every later one from saving. Under the lock no CRIU of ours writes it.
    match std::fs::remove_file(dir.join("criu.kdat.tmp")) {
        Ok(()) => debug!("removed a cache file a killed CRIU left half written"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}/criu.kdat.tmp: {e}", dir.display())),
    }
    // CRIU keeps a file of its own build that is there, and replaces a stale one by rename, so
    // a ferry reading it at the same time never sees it missing.
    let written = write_with(binary, &dir).and_then(|()| {
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
            Ok(())
        } else {
            Err(format!("CRIU wrote no cache into {}", dir.display()))
        }
    });
    if let Err(why) = written {
        return Err(FAILED.get_or_init(|| why).clone());
    }
    link(&target)
}

/// The lock on making the cache in `dir`, waited for a few seconds at most: a request never
/// waits long for a cache it can do without.
fn lock(dir: &Path) -> Result<Flock<std::fs::File>, String> {
    let path = dir.join("lock");
    let mut file =
        std::fs::File::create(&path).map_err(|e| format!("making {}: {e}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, e)) => return Err(format!("locking {}: {e}", path.display())),
        }
    }
}

/// Links [`LINK`] to the cache file `target`.
fn link(target: &Path) -> Result<Outcome, String> {
    match std::os::unix::fs::symlink(target, LINK) {
        Ok(()) => Ok(Outcome::Made),
        // Another ferry linked it first, or the link was already ours.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Outcome::Made),
        Err(e) => Err(format!("linking {LINK}: {e}")),
    }
}

/// [`CACHE_DIR`], made if missing; refused unless it is a directory only root can reach, on a
/// tmpfs, so nobody else can put kernel facts in front of CRIU.
fn cache_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from(CACHE_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("making {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.is_dir() || m.uid() != 0 || m.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory only root can reach (uid {}, mode {:o})",
            dir.display(),
            m.uid(),
            m.permissions().mode() & 0o7777
        ));
    }
    if !on_tmpfs(&dir)? {
        return Err(format!("{} is not on a tmpfs", dir.display()));
    }
    Ok(dir)
}

/// Runs a feature check in a CRIU that sees `dir` as `/run`: its kernel probes save the cache
/// there.
fn write_with(binary: &Path, dir: &Path) -> Result<(), String> {
    let run_dir = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let mut session = Session::spawn_with_run_dir(binary, run_dir)
        .map_err(|e| format!("starting CRIU to probe the kernel: {e}"))?;
    let result = session.request(
        super::Request::new(ReqType::FEATURE_CHECK, None),
        &mut super::AckAll,
    );
    session.wait();
    result
        .map(drop)
        .map_err(|e| format!("CRIU's feature check: {e}"))
}

fn on_tmpfs(path: &Path) -> Result<bool, String> {
    let s =
        nix::sys::statfs::statfs(path).map_err(|e| format!("statfs {}: {e}", path.display()))?;
    Ok(s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}
