//! Client for CRIU's swrk RPC (`criu swrk <fd>` over SOCK_SEQPACKET).
//!
//! INTERFACE STUB: bodies are filled in by the CRIU client work.
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

pub use crate::proto::rpc::{
    Criu_cg_mode as CgMode, Criu_network_lock_method as NetworkLock, Criu_opts as Opts,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("criu not found in PATH: run scripts/install-deps.sh (ferry needs CRIU >= {min})")]
    NotFound { min: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Features {
    pub mem_track: bool,
    pub lazy_pages: bool,
    pub pidfd_store: bool,
}

/// A CRIU notification, delivered to the caller's handler before CRIU goes on.
#[derive(Debug)]
pub enum Notify {
    PreDump,
    PostDump,
    PreRestore,
    PostRestore { pid: i32 },
    NetworkLock,
    NetworkUnlock,
    SetupNamespaces { pid: i32 },
    PostSetupNamespaces,
    PreResume,
    PostResume,
    OrphanPtsMaster { master: OwnedFd },
    StatusReady,
    QueryExtFiles,
    PreStream,
}

/// Answers notifications; an `Err` makes CRIU abort the operation cleanly.
pub trait NotifyHandler {
    fn notify(&mut self, event: Notify) -> std::result::Result<(), String>;
}

/// A handler that acknowledges everything.
pub struct AckAll;
impl NotifyHandler for AckAll {
    fn notify(&mut self, _event: Notify) -> std::result::Result<(), String> {
        Ok(())
    }
}

pub struct Criu {
    pub binary: PathBuf,
}

/// File descriptors criu must inherit (inherit_fd, status_fd); they stay
/// open in the caller until the response arrives.
pub type InheritFds<'a> = &'a [RawFd];

impl Criu {
    pub fn new() -> Result<Criu> {
        todo!()
    }
    pub fn version(&self) -> Result<Version> {
        todo!()
    }
    pub fn features(&self) -> Result<Features> {
        todo!()
    }
    pub fn dump(&self, opts: Opts, handler: &mut dyn NotifyHandler, fds: InheritFds) -> Result<()> {
        let _ = (opts, handler, fds);
        todo!()
    }
    /// Returns the restored init's pid.
    pub fn restore(
        &self,
        opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<i32> {
        let _ = (opts, handler, fds);
        todo!()
    }
}
