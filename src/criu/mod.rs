//! Client for CRIU's swrk RPC (`criu swrk <fd>` over SOCK_SEQPACKET).
//!
//! [`Criu`] spawns one `criu swrk` per request (or a [`Session`] for
//! several), answers CRIU's notifications through a [`NotifyHandler`], and
//! turns failures into errors that carry CRIU's own message, errno and the
//! log lines around each error. [`stats`] and [`image`] read what CRIU
//! leaves on disk.
use std::os::fd::RawFd;
use std::path::PathBuf;

mod client;
mod errors;
mod find;
pub mod image;
pub mod kdat_cache;
pub mod log;
pub mod netlock;
mod notify;
pub mod page_relay;
pub mod page_socket;
pub mod perf_hooks;
mod request;
pub mod stats;
mod swrk;
mod version;

pub use crate::proto::rpc::{
    Criu_cg_mode as CgMode, Criu_network_lock_method as NetworkLock, Criu_opts as Opts,
    Criu_pre_dump_mode as PreDumpMode, Criu_req_type as ReqType, Criu_resp as Response,
};
pub use client::{check_version, Started};
pub use errors::{Error, Failure, Result};
pub use find::find_binary;
pub use notify::{AckAll, HandlerError, Notify, NotifyDecodeError, NotifyHandler, SCRIPT_NAMES};
pub use request::op_name;
pub use stats::{read_dump_stats, read_restore_stats, DumpStats, RestoreStats};
pub use swrk::Session;
pub use version::{ParseVersionError, Version, MIN_VERSION};

/// Environment variable naming the criu binary to use instead of PATH.
pub const CRIU_ENV: &str = "FERRY_CRIU";

/// What the kernel and CRIU build support, from FEATURE_CHECK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Features {
    /// Soft-dirty memory tracking (needed by pre-dump and `track_mem`).
    pub mem_track: bool,
    /// userfaultfd-based lazy pages.
    pub lazy_pages: bool,
    /// pidfd_open + pidfd_getfd (needed by `pidfd_store_sk`).
    pub pidfd_store: bool,
}

/// Makes CRIU's page-server connection TLS with these files.
pub fn set_tls(o: &mut Opts, tls: &migrate::TlsPaths) {
    o.set_tls(true);
    o.set_tls_cacert(tls.ca.display().to_string());
    o.set_tls_cert(tls.cert.display().to_string());
    o.set_tls_key(tls.key.display().to_string());
}

/// A page server CRIU started in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageServer {
    pub pid: i32,
    pub port: i32,
}

/// A CRIU installation.
#[derive(Debug, Clone)]
pub struct Criu {
    pub binary: PathBuf,
    /// The network namespace criu runs in (default: the caller's). A tree
    /// in criu's own namespace is dumped without it: CRIU records no
    /// namespace and walks no conntrack table, and restores the tree into
    /// the namespace it runs in.
    pub netns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// A cgroup v2 directory criu is forked into (`CLONE_INTO_CGROUP`)
    /// instead of being moved there once it runs, which waits for an RCU
    /// grace period; where the kernel refuses, it starts where the caller
    /// is (see [`Criu::start_checked`]).
    pub cgroup: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// File descriptors criu must inherit at the same numbers (besides the fds
/// named in `opts.inherit_fd`, which are always passed). Descriptors named
/// by number in the options that CRIU opens through `/proc/<pid>/fd`
/// (`images_dir_fd`, `work_dir_fd`, `status_fd`) need not be listed, but
/// must stay open until the call returns.
pub type InheritFds<'a> = &'a [RawFd];

/// One request, for [`Criu::call`] and [`Session::request`].
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: ReqType,
    pub opts: Option<Opts>,
    /// CRIU's work dir, where it writes `opts.log_file`. When `None`, it is
    /// found from `work_dir_fd`, then `images_dir_fd`, then `images_dir`.
    pub work_dir: Option<PathBuf>,
    /// Keep criu running for further requests (page server, cpuinfo,
    /// feature check and version only).
    pub keep_open: bool,
}

impl Request {
    pub fn new(kind: ReqType, opts: Option<Opts>) -> Request {
        Request {
            kind,
            opts,
            work_dir: None,
            keep_open: false,
        }
    }

    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Request {
        self.work_dir = Some(dir.into());
        self
    }

    pub fn keep_open(mut self, keep: bool) -> Request {
        self.keep_open = keep;
        self
    }
}
