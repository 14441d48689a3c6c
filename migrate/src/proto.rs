//! Control messages between the source and destination agents.
//!
//! ```text
//! source                                   destination
//!   Hello ───────────────────────────────▶  (one migration per container ID)
//!         ◀─────────────────────────────── Welcome
//!   Preflight{SourceInfo, rootfs} ───────▶  DestHost::preflight
//!         ◀─────────────────────────────── PreflightOk{DestInfo}
//!   [Rootfs{pass 1} + tree transfer] ────▶  staging dir
//!         ◀─────────────────────────────── TreeOk
//!   [pre-copy: PageServer{Some(i)} ... DumpDone ... per iteration]
//!   PageServer{None} ────────────────────▶  DestHost::start_page_server
//!         ◀─────────────────────────────── PageServerReady{port}
//!   [SourceHost::early_images, when DestInfo.early_images:
//!    EarlyImages + tree transfer ────────▶  staging dir (images, pass 1)
//!         ◀─────────────────────────────── TreeOk]
//!   SourceHost::dump (pages: CRIU ══TLS══▶ CRIU page server)
//!   DumpDone ────────────────────────────▶  DestHost::finish_page_server
//!         ◀─────────────────────────────── DumpOk
//!   [Rootfs{pass 2} + delta] ────────────▶
//!         ◀─────────────────────────────── TreeOk
//!   Images + tree transfer ──────────────▶  staging dir (what changed since pass 1)
//!         ◀─────────────────────────────── TreeOk
//!   Restore ─────────────────────────────▶  files into place, DestHost::restore (held)
//!         ◀─────────────────────────────── Restored{pid}
//!   Commit ──────────────────────────────▶  DestHost::start
//!         ◀─────────────────────────────── Running
//!   SourceHost::destroy
//! ```
//!
//! Post-copy replaces the page server and the commit with:
//!
//! ```text
//!   SourceHost::dump (lazy: images only, held frozen)
//!   [Rootfs{pass 2}] + Images ───────────▶  staging dir
//!   SourceHost::serve_pages (CRIU serves pages on the source)
//!   LazyRestore{port, link_timeout_ms} ──▶  DestHost::start_lazy_pages (from the
//!                                            control peer's address), restore (held)
//!         ◀─────────────────────────────── Restored{pid}
//!   Commit ──────────────────────────────▶  DestHost::start: runs, pages on demand
//!         ◀─────────────────────────────── Running
//!   PagesQuery ──────────────────────────▶  (every few hundred ms; also the heartbeat)
//!         ◀─────────────────────────────── PagesStatus{done: false}
//!   ...                                     lazy-pages daemon fetched every page
//!         ◀─────────────────────────────── PagesStatus{done: true}
//!   SourceHost::finish_pages, destroy
//! ```
//!
//! Either side may send `Abort`/`Error` instead of its next message; the
//! source then resumes its container and the destination aborts. A
//! source that lost the connection after sending `Commit` asks a fresh
//! connection for `Status` to learn whether the destination runs the
//! container.
use serde::{Deserialize, Serialize};

use crate::files::ReceiveStats;
use crate::info::{DestInfo, SourceInfo};
use crate::RootfsMode;

/// Version of the message set (the frame format has its own version).
pub const PROTOCOL: u32 = 1;

/// Where a migration stands on the destination, for `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Still going.
    InProgress,
    /// The destination runs the container.
    Running,
    /// The destination removed everything.
    Aborted,
    /// This destination has no record of it.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Msg {
    Hello {
        protocol: u32,
        software: String,
        migration_id: String,
        container_id: String,
    },
    Welcome {
        software: String,
    },
    Preflight {
        info: Box<SourceInfo>,
        rootfs: RootfsMode,
    },
    PreflightOk {
        info: Box<DestInfo>,
    },
    /// A rootfs tree transfer follows.
    Rootfs {
        pass: u32,
    },
    /// The non-memory images follow as a tree transfer.
    Images,
    /// Image files the source made before the freeze follow as a tree
    /// transfer (the first pass of the images; `Images` sends what changed
    /// since). Only to a destination whose preflight says `early_images`.
    EarlyImages,
    TreeOk {
        stats: ReceiveStats,
    },
    /// Start a page server for pre-copy iteration `i` or, with `None`, the
    /// final dump.
    PageServer {
        iteration: Option<u32>,
    },
    PageServerReady {
        port: u16,
    },
    DumpDone {
        pages: u64,
    },
    DumpOk,
    Restore,
    Restored {
        pid: i32,
        /// The destination had prepared the restore before the freeze.
        #[serde(default)]
        prepared: bool,
    },
    Commit,
    Running,
    /// The sender gives up; the peer rolls back.
    Abort {
        reason: String,
    },
    /// The destination could not do what was asked; the source rolls back.
    Error {
        reason: String,
    },
    /// Post-copy: restore lazily, the pages coming from the source's CRIU
    /// on `port` at the address this connection comes from. Either side
    /// that hears nothing from the other for `link_timeout_ms` gives up.
    LazyRestore {
        port: u16,
        link_timeout_ms: u64,
    },
    /// Post-copy: have all pages arrived? (Also the source's heartbeat.)
    PagesQuery,
    /// `done`: every page arrived; the destination no longer depends on
    /// the source.
    PagesStatus {
        done: bool,
    },
    /// On a fresh connection: what became of a migration.
    Status {
        migration_id: String,
        /// The container migrated: a server with no record of the
        /// migration (a restarted one) answers from what it holds of it.
        #[serde(default)]
        container_id: Option<String>,
    },
    StatusIs {
        outcome: Outcome,
    },
}

impl Msg {
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Preflight { .. } => "preflight",
            Msg::PreflightOk { .. } => "preflight-ok",
            Msg::Rootfs { .. } => "rootfs",
            Msg::Images => "images",
            Msg::EarlyImages => "early-images",
            Msg::TreeOk { .. } => "tree-ok",
            Msg::PageServer { .. } => "page-server",
            Msg::PageServerReady { .. } => "page-server-ready",
            Msg::DumpDone { .. } => "dump-done",
            Msg::DumpOk => "dump-ok",
            Msg::Restore => "restore",
            Msg::Restored { .. } => "restored",
            Msg::Commit => "commit",
            Msg::Running => "running",
            Msg::Abort { .. } => "abort",
            Msg::Error { .. } => "error",
            Msg::LazyRestore { .. } => "lazy-restore",
            Msg::PagesQuery => "pages-query",
            Msg::PagesStatus { .. } => "pages-status",
            Msg::Status { .. } => "status",
            Msg::StatusIs { .. } => "status-is",
        }
    }
}

/// Identifies this software in `Hello`/`Welcome`.
pub fn software() -> String {
    format!("ferry-migrate {}", env!("CARGO_PKG_VERSION"))
}
