//! Post-copy on the source: switch over first, pages after.
//!
//! The source dumps everything but memory (held frozen), ships the images,
//! lets its CRIU serve the pages, and the destination restores and runs
//! the container at once while its lazy-pages daemon fetches pages on
//! demand and in the background. Until the last page has arrived the
//! container lives on both hosts, so the source keeps its frozen image:
//!
//! * Every page arrived (the destination says so): the source is
//!   destroyed; the report says when the destination stopped depending
//!   on it.
//! * Anything fails before that (the link, the destination, CRIU on
//!   either side, a cancel): the source stops serving pages, makes sure
//!   the destination's copy is stopped, and resumes from its image. What
//!   the container did on the destination since the switchover is lost.
//!   The destination stops its copy on any error, on a silent link after
//!   `link_timeout`, and when `ferry serve` dies; the source resumes only
//!   once the destination is seen gone (its end of the connection closed)
//!   or twice the link timeout after it last heard from it, so the two
//!   copies never run at once.
//! * The link went silent after the source's CRIU saw its page client
//!   hang up (CRIU counts that as a finished transfer, whether or not
//!   every page went): the destination may run the container, so this is
//!   a lost commit: the source asks, and stays frozen if it cannot learn.
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{unexpected, Run, SourceState};
use crate::files::Manifest;
use crate::host::PagesState;
use crate::info::DestInfo;
use crate::mode;
use crate::proto::{Msg, Outcome};
use crate::report::Phase;
use crate::transport::TransportError;
use crate::Error;

/// How often the source asks whether all pages arrived.
const POLL: Duration = Duration::from_millis(250);

/// How long after the destination closed its end the source still waits
/// (the destination stops its copy before it closes).
const GONE_MARGIN: Duration = Duration::from_secs(2);

/// Post-copy's state on the source once the destination may run the
/// container.
pub(super) struct Serving {
    /// When the destination was last heard from.
    last_contact: Instant,
    /// The lazy restore was asked for: the destination may run a copy.
    restore_sent: bool,
}

/// A free TCP port on `ip` for CRIU to serve pages on.
fn free_port(ip: IpAddr) -> Result<u16, Error> {
    let l = TcpListener::bind((ip, 0)).map_err(Error::io("bind", Path::new(&ip.to_string())))?;
    let port = l
        .local_addr()
        .map_err(Error::io("bind", Path::new(&ip.to_string())))?
        .port();
    Ok(port)
}

impl Run<'_> {
    /// The whole of a post-copy migration after the preflight (and the
    /// first rootfs pass).
    pub(super) fn post_copy(
        &mut self,
        work: &Path,
        dest: &DestInfo,
        rootfs: &Path,
        manifest: Option<Manifest>,
    ) -> Result<(), Error> {
        let ip = self
            .ch()
            .local_addr()
            .map(|a| a.ip())
            .ok_or_else(|| Error::Refused("the connection has no local address".into()))?;
        let port = free_port(ip)?;
        let (plan, _) = mode::postcopy_plans(
            work,
            &dest.images_dir,
            &ip.to_string(),
            port,
            self.cfg.security.paths(),
        );
        std::fs::create_dir_all(&plan.images_dir).map_err(Error::io("create", &plan.images_dir))?;
        if dest.early_images {
            self.ship_early_images(&plan)?;
        }
        self.phase(Phase::Dump);
        self.check()?;
        let called = Instant::now();
        self.dump_called = true;
        let out = self.host.dump(&plan).map_err(Error::host("dump"))?;
        self.frozen_at = Some(out.frozen_at.unwrap_or(called));
        self.report.timings.freeze = out.freeze;
        self.report.timings.dump = out.dump;
        if let Some(m) = manifest {
            self.ship_rootfs(rootfs, Some(&m))?;
        }
        self.ship_images(&plan.images_dir)?;

        self.phase(Phase::Restore);
        let t = Instant::now();
        self.host
            .serve_pages()
            .map_err(Error::host("serving pages"))?;
        let link_timeout = self.cfg.postcopy_link_timeout;
        self.serving = Some(Serving {
            last_contact: Instant::now(),
            restore_sent: false,
        });
        self.send(&Msg::LazyRestore {
            port,
            link_timeout_ms: link_timeout.as_millis() as u64,
        })?;
        self.contact(true);
        match self.recv(self.cfg.timeouts.restore)? {
            Msg::Restored { pid, .. } => self.report.dest_pid = Some(pid),
            m => return Err(unexpected("restored", &m)),
        }
        self.contact(false);
        self.report.timings.restore = t.elapsed();

        self.phase(Phase::Switchover);
        self.check()?;
        self.send(&Msg::Commit)?;
        self.contact(false);
        match self.recv(link_timeout)? {
            Msg::Running => {}
            m => return Err(unexpected("running", &m)),
        }
        self.contact(false);
        if let Some(f) = self.frozen_at {
            self.report.timings.downtime = f.elapsed();
        }

        self.phase(Phase::Pages);
        let t = Instant::now();
        loop {
            std::thread::sleep(POLL);
            if let PagesState::Failed(e) = self.host.pages_state() {
                return Err(Error::Host {
                    op: "serving pages",
                    source: e.into(),
                });
            }
            self.send(&Msg::PagesQuery)?;
            match self.recv(link_timeout)? {
                Msg::PagesStatus { done } => {
                    self.contact(false);
                    if done {
                        break;
                    }
                }
                m => return Err(unexpected("pages-status", &m)),
            }
        }
        self.report.timings.post_copy = t.elapsed();
        // The destination has every page: from here on the container is
        // its own, whatever this side's CRIU says as it winds down.
        self.serving = None;
        self.finish_serving();
        Ok(())
    }

    /// Notes that the destination was heard from (or, with `restore`,
    /// that it may run a copy from now on).
    fn contact(&mut self, restore: bool) {
        if let Some(s) = self.serving.as_mut() {
            s.last_contact = Instant::now();
            s.restore_sent |= restore;
        }
    }

    /// Every page arrived: waits for CRIU's lazy dump to end and destroys
    /// the source.
    fn finish_serving(&mut self) {
        let deadline = Instant::now() + self.cfg.timeouts.work;
        let state = loop {
            match self.host.pages_state() {
                PagesState::Serving if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                s => break s,
            }
        };
        match state {
            PagesState::Served => {}
            PagesState::Serving => self.report.warnings.push(
                "CRIU still served pages after the destination had them all; it was stopped".into(),
            ),
            PagesState::Failed(e) => self.report.warnings.push(format!(
                "the destination has every page, but this host's CRIU ended with: {e}"
            )),
        }
        if let Err(e) = self.host.destroy() {
            self.report.warnings.push(format!(
                "the container runs on the destination, but removing it here failed: {e}"
            ));
        }
    }

    /// Rolls a post-copy migration back once the destination may have run
    /// a copy (see the module documentation).
    pub(super) fn postcopy_rollback(
        &mut self,
        error: Error,
        s: Serving,
    ) -> Result<(), (Error, SourceState)> {
        // The destination stopped its copy when it says so or closes its
        // end; it keeps the container only after telling us every page
        // arrived, which comes before its end closes.
        let dest_stopped = matches!(
            error,
            Error::Refused(_)
                | Error::Aborted(_)
                | Error::Transport(TransportError::Wire(_) | TransportError::Tls(_))
        );
        let ended = self.host.pages_state() == PagesState::Served;
        self.host.stop_serving();
        if ended && !dest_stopped {
            // Its page client hung up: maybe with every page.
            return self.settle_served(error);
        }
        if s.restore_sent {
            self.wait_dest_gone(s.last_contact + 2 * self.cfg.postcopy_link_timeout);
        }
        match self.host.resume() {
            Ok(()) => Err((error, SourceState::Resumed)),
            Err(e) => Err((error, SourceState::ResumeFailed(e.to_string()))),
        }
    }

    /// CRIU served every page, but the destination's confirmation did not
    /// arrive: ask it, as after a lost commit.
    fn settle_served(&mut self, error: Error) -> Result<(), (Error, SourceState)> {
        match self.ask_outcome() {
            Some(Outcome::Running) => {
                self.report.warnings.push(format!(
                    "the confirmation was lost ({error}); the destination reports the \
                     container running"
                ));
                self.finish_serving();
                Ok(())
            }
            Some(Outcome::Aborted) => match self.host.resume() {
                Ok(()) => Err((error, SourceState::Resumed)),
                Err(e) => Err((error, SourceState::ResumeFailed(e.to_string()))),
            },
            _ => {
                self.host.in_doubt();
                Err((error, SourceState::InDoubt))
            }
        }
    }

    /// Tells the destination to stop (best effort) and waits until it is
    /// seen gone (its end closed: it stops its copy first) or `deadline`
    /// passes (by then it stopped its copy on its own link timeout).
    fn wait_dest_gone(&mut self, deadline: Instant) {
        let Some(ch) = self.ch.as_mut() else {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return;
        };
        ch.set_timeout(Some(Duration::from_secs(2)));
        let _ = ch.send(&Msg::Abort {
            reason: "post-copy rolled back: the source resumes".into(),
        });
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            ch.set_timeout(Some(left));
            if ch.recv::<Msg>().is_err() {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(GONE_MARGIN));
    }
}
