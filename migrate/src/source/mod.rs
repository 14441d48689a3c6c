//! The source agent (`ferry migrate`): drives a migration and owns the
//! rollback.
//!
//! The container is frozen only after the destination has authenticated,
//! passed its preflight and started its page server. From the dump on,
//! the container stays frozen until the destination answers `Running`;
//! every failure before that resumes it. A connection lost after `Commit`
//! was sent is resolved by asking the destination over a fresh connection
//! whether it runs the container: if it does, the source is destroyed; if
//! it aborted, the source resumes; if it cannot be asked, the source stays
//! frozen (never two running copies) and the failure says so.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::files::{self, Manifest, SendOptions};
use crate::host::SourceHost;
pub use crate::info::CommitInfo;
use crate::info::{DestInfo, SourceInfo};
use crate::mode::{
    self, DumpPlan, Iteration, Mode, ModeRequest, PageServerTarget, PreCopyPolicy, Route, PAGE_SIZE,
};
use crate::proto::{self, Msg};
use crate::report::{Meter, Phase, Progress, Report, Timings};
use crate::tls::Security;
use crate::transport::{self, Channel};
use crate::wire::Compression;
use crate::{CancelToken, Error, RootfsMode, Timeouts};
pub use switchover::ask_outcome;

mod postcopy;
mod switchover;

/// The destination's certificate in a migration's work directory.
const PINNED_CERT: &str = "destination.pem";

/// What `ferry migrate` asks for.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The destination agent.
    pub to: SocketAddr,
    /// The name the destination's certificate must carry; default: the
    /// IP address in `to`.
    pub server_name: Option<String>,
    pub security: Security,
    pub mode: ModeRequest,
    pub rootfs: RootfsMode,
    pub compression: Compression,
    /// Downtime target for pre-copy (`--max-downtime`).
    pub max_downtime: Option<Duration>,
    /// Keep the source's images directory after the migration.
    pub keep_images: bool,
    /// Where the source's images directory is created.
    pub work_dir: PathBuf,
    pub timeouts: Timeouts,
    pub precopy: PreCopyPolicy,
    /// How long to keep asking about a migration whose commit was sent
    /// but not confirmed.
    pub status_deadline: Duration,
    /// The operator accepts post-copy's risk (`--accept-postcopy-risk`):
    /// post-copy is refused without it.
    pub accept_postcopy_risk: bool,
    /// Post-copy: either side that hears nothing from the other for this
    /// long gives up (the destination stops its copy, the source resumes).
    pub postcopy_link_timeout: Duration,
}

impl SourceConfig {
    pub fn new(to: SocketAddr, security: Security, work_dir: impl Into<PathBuf>) -> SourceConfig {
        SourceConfig {
            to,
            server_name: None,
            security,
            mode: ModeRequest::Auto,
            rootfs: RootfsMode::Shared,
            compression: Compression::None,
            max_downtime: None,
            keep_images: false,
            work_dir: work_dir.into(),
            timeouts: Timeouts::default(),
            precopy: PreCopyPolicy::default(),
            status_deadline: Duration::from_secs(30),
            accept_postcopy_risk: false,
            postcopy_link_timeout: Duration::from_secs(10),
        }
    }
}

/// The source container after a failed migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// It was never frozen for the dump (it kept running).
    Untouched,
    /// It was frozen and runs again.
    Resumed,
    /// It was frozen and could not be resumed.
    ResumeFailed(String),
    /// The commit was sent and its outcome is unknown: the container is
    /// left frozen on the source so that it never runs twice.
    InDoubt,
}

/// A failed migration: what went wrong, where, and what became of the
/// source container.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub phase: Phase,
    pub source: SourceState,
    /// Times and bytes up to the failure.
    pub report: Box<Report>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "migration failed during {}: {}", self.phase, self.error)?;
        match &self.source {
            SourceState::Untouched => write!(f, "; the container kept running on this host"),
            SourceState::Resumed => write!(f, "; the container was resumed on this host"),
            SourceState::ResumeFailed(e) => {
                write!(f, "; resuming the container on this host FAILED: {e}")
            }
            SourceState::InDoubt => write!(
                f,
                "; the destination may be running the container: it is left frozen here \
                 (check the destination, then resume or delete it)"
            ),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Migrates the container behind `host` to `cfg.to`. `progress` is called
/// with phase changes and byte counts; `cancel` stops it (with rollback).
pub fn migrate(
    host: &mut dyn SourceHost,
    cfg: &SourceConfig,
    progress: &mut dyn FnMut(&Progress),
    cancel: &CancelToken,
) -> Result<Report, Box<Failure>> {
    let mut run = Run {
        host,
        cfg,
        progress,
        cancel,
        ch: None,
        phase: Phase::Connect,
        start: Instant::now(),
        migration_id: crate::random_id(),
        report: Report {
            id: String::new(),
            migration_id: String::new(),
            destination: cfg.to.to_string(),
            mode: None,
            mode_reason: String::new(),
            not_used: Vec::new(),
            rootfs: cfg.rootfs,
            compression: cfg.compression,
            tls: !cfg.security.is_insecure(),
            timings: Timings::default(),
            bytes: Default::default(),
            pages: Default::default(),
            pre_copy: Vec::new(),
            pre_copy_stop: None,
            predicted_downtime: None,
            dest_pid: None,
            restore_prepared: false,
            warnings: Vec::new(),
        },
        work: None,
        peer_cert: None,
        dump_called: false,
        frozen_at: None,
        commit_sent: false,
        memory_estimate: 0,
        serving: None,
        early: None,
    };
    run.report.migration_id = run.migration_id.clone();
    let result = run.steps();
    let outcome = match result {
        Ok(()) => Ok(()),
        Err(e) => run.rollback(e),
    };
    run.report.timings.total = run.start.elapsed();
    if let Some(ch) = &run.ch {
        run.report.bytes.channel = ch.bytes().0 + ch.bytes().1;
    }
    run.cleanup();
    match outcome {
        Ok(()) => {
            (run.progress)(&Progress {
                phase: Phase::Done,
                bytes: 0,
                total: None,
                rate: None,
                eta: None,
            });
            Ok(run.report)
        }
        Err((error, source)) => Err(Box::new(Failure {
            error,
            phase: run.phase,
            source,
            report: Box::new(run.report),
        })),
    }
}

struct Run<'a> {
    host: &'a mut dyn SourceHost,
    cfg: &'a SourceConfig,
    progress: &'a mut dyn FnMut(&Progress),
    cancel: &'a CancelToken,
    ch: Option<Channel>,
    phase: Phase,
    start: Instant,
    migration_id: String,
    report: Report,
    /// This migration's directory under `cfg.work_dir`.
    work: Option<PathBuf>,
    /// The destination's certificate in `work`, with TLS (see
    /// [`mode::DumpPlan::peer_cert`]).
    peer_cert: Option<PathBuf>,
    dump_called: bool,
    frozen_at: Option<Instant>,
    commit_sent: bool,
    /// Resident memory the source reported (the dump's expected size).
    memory_estimate: u64,
    /// Post-copy, once the destination may run a copy.
    serving: Option<postcopy::Serving>,
    /// What the early images pass sent: the images pass after the dump
    /// sends what changed since.
    early: Option<Manifest>,
}

impl Run<'_> {
    fn phase(&mut self, p: Phase) {
        self.phase = p;
        (self.progress)(&Progress {
            phase: p,
            bytes: 0,
            total: None,
            rate: None,
            eta: None,
        });
    }

    fn check(&self) -> Result<(), Error> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    fn ch(&mut self) -> &mut Channel {
        self.ch.as_mut().expect("connected")
    }

    fn send(&mut self, m: &Msg) -> Result<(), Error> {
        self.check()?;
        self.ch().send(m)?;
        Ok(())
    }

    /// Waits up to `timeout` for the next message; the destination's
    /// `Error`/`Abort` become errors.
    fn recv(&mut self, timeout: Duration) -> Result<Msg, Error> {
        self.check()?;
        let ch = self.ch();
        ch.set_timeout(Some(timeout));
        let m: Msg = match ch.recv() {
            Ok(m) => m,
            Err(e) => {
                self.check()?;
                return Err(e.into());
            }
        };
        match m {
            Msg::Error { reason } => Err(Error::Refused(reason)),
            Msg::Abort { reason } => Err(Error::Aborted(reason)),
            m => Ok(m),
        }
    }

    fn steps(&mut self) -> Result<(), Error> {
        if self.cfg.mode == ModeRequest::PostCopy && !self.cfg.accept_postcopy_risk {
            return Err(Error::ModeUnavailable(mode::POSTCOPY_RISK.into()));
        }
        self.connect()?;
        let (info, dest) = self.preflight()?;
        let manifest = match self.cfg.rootfs {
            RootfsMode::Ship => Some(self.ship_rootfs(&info.rootfs, None)?),
            RootfsMode::Shared => None,
        };
        let work = self.cfg.work_dir.join(format!(
            "migrate-{}-{}",
            sanitize(&info.id),
            self.migration_id
        ));
        std::fs::create_dir_all(&work).map_err(Error::io("create", &work))?;
        self.work = Some(work.clone());
        self.pin_destination(&work)?;
        if self.report.mode == Some(Mode::PostCopy) {
            return self.post_copy(&work, &dest, &info.rootfs, manifest);
        }
        let iterations = if self.report.mode == Some(Mode::PreCopy) {
            self.pre_copy(&work, &dest)?
        } else {
            0
        };
        self.dump(iterations, &work, &dest)?;
        if let Some(m) = manifest {
            self.ship_rootfs(&info.rootfs, Some(&m))?;
        }
        self.ship_images(&work.join(mode::FINAL_DIR))?;
        self.restore()?;
        self.switchover()
    }

    fn connect(&mut self) -> Result<(), Error> {
        self.phase(Phase::Connect);
        self.check()?;
        let name = self
            .cfg
            .server_name
            .clone()
            .unwrap_or_else(|| self.cfg.to.ip().to_string());
        let ch = transport::connect(self.cfg.to, &name, &self.cfg.security)?;
        if let Some(c) = ch.closer() {
            self.cancel.watch(c);
        }
        self.ch = Some(ch);
        // Authenticate (the peer's TLS refusal arrives with the first
        // read) before even looking at the container.
        let id = self.host.id();
        self.report.id = id.clone();
        let hello = Msg::Hello {
            protocol: proto::PROTOCOL,
            software: proto::software(),
            migration_id: self.migration_id.clone(),
            container_id: id.clone(),
        };
        self.send(&hello)?;
        match self.recv(self.cfg.timeouts.reply)? {
            Msg::Welcome { .. } => {}
            m => return Err(unexpected("welcome", &m)),
        }
        Ok(())
    }

    fn preflight(&mut self) -> Result<(SourceInfo, DestInfo), Error> {
        self.phase(Phase::Preflight);
        let t = Instant::now();
        let id = self.report.id.clone();
        let info = self.host.preflight().map_err(Error::host("preflight"))?;
        if info.id != id {
            return Err(Error::Host {
                op: "preflight",
                source: format!("preflight describes container {:?}, not {id:?}", info.id).into(),
            });
        }
        self.send(&Msg::Preflight {
            info: Box::new(info.clone()),
            rootfs: self.cfg.rootfs,
        })?;
        let dest = match self.recv(self.cfg.timeouts.work)? {
            Msg::PreflightOk { info } => *info,
            m => return Err(unexpected("preflight-ok", &m)),
        };
        if dest.arch != info.arch {
            return Err(Error::Incompatible(format!(
                "source is {}, destination is {}",
                info.arch, dest.arch
            )));
        }
        self.memory_estimate = info.memory_bytes;
        let implemented = self.host.modes();
        let choice = mode::choose_mode(self.cfg.mode, &info.features, &dest.features, implemented)
            .map_err(Error::ModeUnavailable)?;
        self.report.mode = Some(choice.mode);
        self.report.mode_reason = choice.reason;
        self.report.not_used = choice.not_used;
        self.report.timings.preflight = t.elapsed();
        Ok((info, dest))
    }

    fn ship_rootfs(
        &mut self,
        rootfs: &Path,
        previous: Option<&Manifest>,
    ) -> Result<Manifest, Error> {
        let delta = previous.is_some();
        self.phase(if delta {
            Phase::RootfsDelta
        } else {
            Phase::RootfsPrecopy
        });
        let t = Instant::now();
        let pass = if delta { 2 } else { 1 };
        self.send(&Msg::Rootfs { pass })?;
        let opts = SendOptions {
            compression: self.cfg.compression,
            one_file_system: true,
            exclude: Vec::new(),
            pass,
        };
        let ch = self.ch.as_mut().expect("connected");
        let mut meter = Meter::new(
            if delta {
                Phase::RootfsDelta
            } else {
                Phase::RootfsPrecopy
            },
            None,
            self.progress,
        );
        let sent = files::send_tree(ch, rootfs, previous, &opts, &mut |n| meter.add(n));
        meter.finish();
        let (manifest, stats) = sent?;
        match self.recv(self.cfg.timeouts.work)? {
            Msg::TreeOk { .. } => {}
            m => return Err(unexpected("tree-ok", &m)),
        }
        if delta {
            self.report.bytes.rootfs_delta = stats.bytes;
            self.report.timings.rootfs_delta = t.elapsed();
        } else {
            self.report.bytes.rootfs_precopy = stats.bytes;
            self.report.timings.rootfs_precopy = t.elapsed();
        }
        Ok(manifest)
    }

    fn page_server(&mut self, iteration: Option<u32>) -> Result<PageServerTarget, Error> {
        self.send(&Msg::PageServer { iteration })?;
        match self.recv(self.cfg.timeouts.work)? {
            Msg::PageServerReady { port } => Ok(PageServerTarget {
                address: self.cfg.to.ip().to_string(),
                port,
            }),
            m => Err(unexpected("page-server-ready", &m)),
        }
    }

    fn dump_done(&mut self, pages: u64) -> Result<(), Error> {
        self.send(&Msg::DumpDone { pages })?;
        match self.recv(self.cfg.timeouts.work)? {
            Msg::DumpOk => Ok(()),
            m => Err(unexpected("dump-ok", &m)),
        }
    }

    fn pre_copy(&mut self, work: &Path, dest: &DestInfo) -> Result<u32, Error> {
        self.phase(Phase::PreDump);
        let t = Instant::now();
        let mut policy = self.cfg.precopy;
        if let Some(d) = self.cfg.max_downtime {
            policy.max_downtime = d;
        }
        let mut history: Vec<Iteration> = Vec::new();
        let stop = loop {
            if let Err(why) = mode::precopy_next(&mut history, &policy) {
                break why;
            }
            let i = history.len() as u32 + 1;
            let target = self.page_server(Some(i))?;
            let (plan, _) = mode::predump_plans(i, self.route(work, dest, target));
            std::fs::create_dir_all(&plan.images_dir)
                .map_err(Error::io("create", &plan.images_dir))?;
            let started = Instant::now();
            let out = self.host.pre_dump(&plan).map_err(Error::host("pre-dump"))?;
            let it = Iteration::measured(
                out.pages_written,
                started.duration_since(t),
                started.elapsed(),
                out.memory_transfer,
                out.freeze + out.dump,
            );
            self.dump_done(out.pages_written)?;
            self.report.pages.pre_dumped += out.pages_written;
            self.report.pages.skipped += out.pages_skipped;
            self.report.bytes.memory += out.pages_written * PAGE_SIZE;
            history.push(it);
            self.report.pre_copy = history.clone();
            self.check()?;
        };
        self.report.predicted_downtime = history.last().and_then(|i| i.predicted_downtime);
        self.report.pre_copy = history.clone();
        self.report.pre_copy_stop = Some(stop);
        self.report.timings.pre_dump = t.elapsed();
        Ok(history.len() as u32)
    }

    /// Writes the certificate the control channel verified into `work`,
    /// for a dump whose CRIU reaches the page server through a relay. An
    /// absolute path: CRIU runs in its own working directory.
    fn pin_destination(&mut self, work: &Path) -> Result<(), Error> {
        let Some(der) = self.ch.as_ref().and_then(Channel::peer_certificate) else {
            return Ok(());
        };
        let path = std::path::absolute(work.join(PINNED_CERT))
            .map_err(Error::io("resolve", &work.join(PINNED_CERT)))?;
        crate::tls::write_pinned(der, &path).map_err(Error::io("write", &path))?;
        self.peer_cert = Some(path);
        Ok(())
    }

    /// Where a dump's memory goes: from `work` here to the destination's
    /// page server at `target`, writing its images directory.
    fn route<'a>(
        &'a self,
        work: &'a Path,
        dest: &'a DestInfo,
        target: PageServerTarget,
    ) -> Route<'a> {
        Route {
            src_root: work,
            dst_root: &dest.images_dir,
            target,
            listen: "",
            tls: self.cfg.security.paths(),
            peer_cert: self.peer_cert.as_deref(),
        }
    }

    fn dump(&mut self, iterations: u32, work: &Path, dest: &DestInfo) -> Result<(), Error> {
        self.phase = Phase::Dump;
        (self.progress)(&Progress {
            phase: Phase::Dump,
            bytes: 0,
            total: Some(self.memory_estimate),
            rate: None,
            eta: None,
        });
        let target = self.page_server(None)?;
        let (plan, _) = mode::final_dump_plans(iterations, self.route(work, dest, target));
        std::fs::create_dir_all(&plan.images_dir).map_err(Error::io("create", &plan.images_dir))?;
        if dest.early_images {
            self.ship_early_images(&plan)?;
        }
        self.check()?;
        let called = Instant::now();
        self.dump_called = true;
        let out = self.host.dump(&plan).map_err(Error::host("dump"))?;
        self.frozen_at = Some(out.frozen_at.unwrap_or(called));
        let t = &mut self.report.timings;
        t.freeze = out.freeze;
        t.dump = out.dump;
        t.memory_transfer = out.memory_transfer.unwrap_or(out.dump);
        self.report.pages.written = out.pages_written;
        self.report.pages.skipped += out.pages_skipped;
        self.report.bytes.memory += out.pages_written * PAGE_SIZE;
        self.dump_done(out.pages_written)
    }

    /// Image files the host makes before the freeze, as the first pass of
    /// the images (the container still runs). The pass goes even when
    /// empty: the destination readies its restore when it arrives.
    fn ship_early_images(&mut self, plan: &DumpPlan) -> Result<(), Error> {
        let t = Instant::now();
        self.host
            .early_images(plan)
            .map_err(Error::host("early images"))?;
        let (manifest, bytes) = self.images_pass(Msg::EarlyImages, &plan.images_dir)?;
        self.early = Some(manifest);
        self.report.bytes.early_images = bytes;
        self.report.timings.early_images = t.elapsed();
        Ok(())
    }

    fn ship_images(&mut self, dir: &Path) -> Result<(), Error> {
        self.phase(Phase::Images);
        let t = Instant::now();
        let (_, bytes) = self.images_pass(Msg::Images, dir)?;
        self.report.bytes.images = bytes;
        self.report.timings.image_transfer = t.elapsed();
        Ok(())
    }

    /// One pass of the images in `dir` (what changed since the early pass,
    /// if there was one), announced by `start`; its manifest and bytes.
    fn images_pass(&mut self, start: Msg, dir: &Path) -> Result<(Manifest, u64), Error> {
        self.send(&start)?;
        let opts = SendOptions {
            compression: self.cfg.compression,
            exclude: vec![PathBuf::from(mode::DUMP_LOG)],
            ..SendOptions::default()
        };
        let ch = self.ch.as_mut().expect("connected");
        // Progress is the images phase's; the early pass runs within the dump's.
        let mut meter =
            matches!(start, Msg::Images).then(|| Meter::new(Phase::Images, None, self.progress));
        let sent = files::send_tree(ch, dir, self.early.as_ref(), &opts, &mut |n| {
            if let Some(m) = meter.as_mut() {
                m.add(n)
            }
        });
        if let Some(m) = meter {
            m.finish();
        }
        let (manifest, stats) = sent?;
        match self.recv(self.cfg.timeouts.work)? {
            Msg::TreeOk { .. } => {}
            m => return Err(unexpected("tree-ok", &m)),
        }
        Ok((manifest, stats.bytes))
    }

    fn restore(&mut self) -> Result<(), Error> {
        self.phase(Phase::Restore);
        let t = Instant::now();
        self.send(&Msg::Restore)?;
        match self.recv(self.cfg.timeouts.restore)? {
            Msg::Restored { pid, prepared } => {
                self.report.dest_pid = Some(pid);
                self.report.restore_prepared = prepared;
            }
            m => return Err(unexpected("restored", &m)),
        }
        self.report.timings.restore = t.elapsed();
        Ok(())
    }

    fn cleanup(&mut self) {
        if let Some(w) = self.work.take() {
            if self.cfg.keep_images {
                self.report
                    .warnings
                    .push(format!("images kept in {}", w.display()));
            } else if let Err(e) = crate::remove::remove_tree(&w) {
                self.report
                    .warnings
                    .push(format!("cannot remove {}: {e}", w.display()));
            }
        }
    }
}

fn unexpected(expected: &'static str, got: &Msg) -> Error {
    Error::Unexpected {
        expected,
        got: got.name().to_string(),
    }
}

/// A container ID made safe for a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
