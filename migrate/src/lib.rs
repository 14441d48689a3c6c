//! Live migration of ferry containers between hosts.
//!
//! This crate owns everything about a migration except the container
//! itself: the transport ([`transport`], mutual TLS 1.3 in [`tls`],
//! certificates in [`certs`]), the framed protocol ([`wire`], messages in
//! [`proto`]), file shipping ([`files`]), the choice of mode and the CRIU
//! requests each mode makes ([`mode`]), the two agents ([`source`],
//! [`dest`]) with their transactional switchover, and what is reported
//! ([`report`]).
//!
//! # The split with the runtime
//!
//! The runtime (the `ferry` crate, whose binary depends on this one)
//! implements the traits in [`host`]:
//!
//! * [`SourceHost`] on the sending host: `preflight` (describe the
//!   container, CRIU version, features, CPU info), `dump` (freeze, CRIU
//!   dump with pages to the destination's page server, leave it frozen),
//!   `resume` (rollback), `destroy` (commit); `pre_dump` for pre-copy.
//! * [`DestHost`] on the receiving host, made per migration by a
//!   [`DestFactory`]: `preflight` (ID free, CPU check, disk space; chooses
//!   the images and bundle directories), `start_page_server`,
//!   `finish_page_server`, `restore` (restored but held), `start`, `abort`.
//!
//! Each CRIU call comes with a plan ([`DumpPlan`], [`PageServerPlan`],
//! [`RestorePlan`]) whose fields are named after the `criu_opts` fields
//! to set. The CLI calls [`source::migrate`] for `ferry migrate` and runs
//! a [`dest::Server`] for `ferry serve`; this crate never prints and never
//! parses arguments.
//!
//! # Implementing the hosts
//!
//! `tests/criu.rs` holds a reference implementation of both traits on top
//! of ferry's CRIU client, for a process tree in its own pid namespace; it
//! is how a runtime maps the plans onto `criu_opts`:
//!
//! | plan field | `criu_opts` |
//! | --- | --- |
//! | `images_dir` | `images_dir_fd` (opened by the host; log `mode::DUMP_LOG`) |
//! | `page_server` (dump) | `ps.address`, `ps.port` |
//! | `address`, `port` (page server) | `ps.address`, `ps.port` (0: CRIU picks), request `PAGE_SERVER_CHLD` |
//! | `tls` | `tls`, `tls_cacert`, `tls_cert`, `tls_key` |
//! | `tls_no_cn_verify` | `tls_no_cn_verify` |
//! | `parent_img`, `track_mem` | `parent_img`, `track_mem` |
//! | `leave_stopped` | `leave_stopped` |
//! | `lazy_pages` | `lazy_pages` |
//! | `RestorePlan::hold` | e.g. `leave_stopped` on restore, `SIGCONT` (or thaw) in `start` |
//!
//! The destination's `restore` must leave the container restored but not
//! running until `start`; `abort` must undo everything the host did.
//! `files::remove_stale_staging` sweeps what a killed destination left.
//!
//! # Memory pages
//!
//! Pages go from the source's CRIU straight into the destination's CRIU
//! page server on a separate TCP connection, during the dump: nothing is
//! written on the source's disk. With TLS, both CRIUs use their own
//! GnuTLS page-server TLS with the same PEM files as the control channel
//! (`tls`, `tls_cacert`, `tls_cert`, `tls_key`), so pages are encrypted
//! and both ends are authenticated against the operator CA. The page
//! server sets `tls_no_cn_verify` because CRIU would otherwise match the
//! client's certificate against the server's own listen address; the
//! source still checks the destination's name.
//!
//! # Guarantees
//!
//! * Peers are authenticated before anything is frozen or written.
//! * The source stays frozen until the destination reports the restored
//!   container running; any failure before that resumes the source and
//!   aborts the destination.
//! * The destination treats all input as hostile: bounded frames, checked
//!   paths, staging directories removed on failure.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod certs;
pub mod dest;
pub mod files;
pub mod host;
pub mod info;
pub mod mode;
pub mod proto;
pub mod remove;
pub mod report;
mod serde_fmt;

pub mod source;
#[cfg(test)]
#[path = "../../tests/common/skip.rs"]
mod test_skip;
pub mod tls;
pub mod transport;
pub mod untrusted_path;
pub mod wire;

pub use host::{
    DestFactory, DestHost, DumpOutcome, HostError, PageServer, PagesState, Restored, SourceHost,
};
pub use info::{DestInfo, Features, SourceInfo};
pub use mode::{DumpPlan, Mode, ModeRequest, PageServerPlan, RestorePlan};
pub use report::{Phase, Progress, Report};
pub use tls::{Security, TlsPaths};

/// How the root filesystem gets to the destination (`--rootfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootfsMode {
    /// Copied while the container runs, changes re-sent while frozen.
    Ship,
    /// Already at the same path on the destination (shared storage).
    #[default]
    Shared,
}

impl std::str::FromStr for RootfsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ship" => Ok(RootfsMode::Ship),
            "shared" => Ok(RootfsMode::Shared),
            _ => Err(format!("unknown rootfs mode {s:?} (ship or shared)")),
        }
    }
}

/// How long to wait for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Any answer that needs no long work on the other side.
    pub reply: Duration,
    /// Work on the other side: preflight, page server, tree commits.
    pub work: Duration,
    /// The destination's restore.
    pub restore: Duration,
    /// Between two messages of a transfer, and while a dump runs on the
    /// other side (the destination waiting for the source).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            reply: Duration::from_secs(30),
            work: Duration::from_secs(120),
            restore: Duration::from_secs(600),
            idle: Duration::from_secs(600),
        }
    }
}

/// Cancels a migration from another thread (Ctrl-C, SIGTERM): the agent
/// stops at its next step and rolls back; a blocked network read is cut.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    closers: Mutex<Vec<transport::Closer>>,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        // A poisoned list is still the list: cancelling must cut every
        // connection even after a thread panicked.
        let c = self
            .inner
            .closers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for closer in c.iter() {
            closer.close();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Cuts `closer`'s connection on cancellation.
    pub(crate) fn watch(&self, closer: transport::Closer) {
        if self.is_cancelled() {
            closer.close();
        }
        self.inner
            .closers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(closer);
    }
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error("{op} failed: {source}")]
    Host {
        op: &'static str,
        #[source]
        source: HostError,
    },
    #[error("the destination refused: {0}")]
    Refused(String),
    #[error("the peer aborted: {0}")]
    Aborted(String),
    #[error("protocol error: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("the hosts are not compatible: {0}")]
    Incompatible(String),
    #[error("{0}")]
    ModeUnavailable(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn host(op: &'static str) -> impl FnOnce(HostError) -> Error {
        move |source| Error::Host { op, source }
    }

    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.display().to_string();
        move |source| Error::Io { op, path, source }
    }
}

/// A random identifier (hex), for migrations and file names.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    // ring is already here for TLS.
    use rustls::crypto::ring::default_provider;
    if default_provider().secure_random.fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64 ^ std::process::id() as u64).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
