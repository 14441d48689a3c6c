//! The transactional end of a migration: the commit, and what the source
//! does when it fails or its outcome is unknown.
use std::time::{Duration, Instant};

use super::{unexpected, Run, SourceState};
use crate::info::CommitInfo;
use crate::proto::{Msg, Outcome};
use crate::report::Phase;
use crate::transport;
use crate::Error;

/// Asks the destination, on fresh connections, what became of the
/// migration in `info`, until it knows or `deadline` passes.
pub fn ask_outcome(info: &CommitInfo, reply: Duration, deadline: Duration) -> Option<Outcome> {
    let deadline = Instant::now() + deadline;
    while Instant::now() < deadline {
        let asked = (|| -> Result<Outcome, Error> {
            let mut ch = transport::connect(info.to, &info.server_name, &info.security)?;
            ch.set_timeout(Some(reply));
            ch.send(&Msg::Status {
                migration_id: info.migration_id.clone(),
                container_id: Some(info.container_id.clone()),
            })?;
            match ch.recv::<Msg>()? {
                Msg::StatusIs { outcome } => Ok(outcome),
                m => Err(unexpected("status-is", &m)),
            }
        })();
        match asked {
            Ok(Outcome::InProgress) | Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(o) => return Some(o),
        }
    }
    None
}

impl Run<'_> {
    pub(super) fn switchover(&mut self) -> Result<(), Error> {
        self.phase(Phase::Switchover);
        self.check()?;
        let info = self.commit_info();
        self.host
            .commit_pending(&info)
            .map_err(Error::host("commit-pending"))?;
        self.send(&Msg::Commit)?;
        self.commit_sent = true;
        match self.recv(self.cfg.timeouts.work)? {
            Msg::Running => {}
            m => return Err(unexpected("running", &m)),
        }
        self.finish_commit();
        Ok(())
    }

    /// The destination runs the container: destroy the source.
    pub(super) fn finish_commit(&mut self) {
        if let Some(f) = self.frozen_at {
            self.report.timings.downtime = f.elapsed();
        }
        if let Some(max) = self.cfg.max_downtime {
            let d = self.report.timings.downtime;
            if d > max {
                self.report.warnings.push(format!(
                    "downtime {:.0} ms exceeded the target of {} ms",
                    d.as_secs_f64() * 1e3,
                    max.as_millis()
                ));
            }
        }
        if let Err(e) = self.host.destroy() {
            self.report.warnings.push(format!(
                "the container runs on the destination, but removing it here failed: {e}"
            ));
        }
    }

    /// Undoes what can be undone after `error`. Returns `Ok` when the
    /// migration turned out to have succeeded (commit confirmed through a
    /// status query).
    pub(super) fn rollback(&mut self, error: Error) -> Result<(), (Error, SourceState)> {
        // Cancelling cuts the connection, which can make the step in
        // progress fail in other ways first.
        let error = if self.cancel.is_cancelled() {
            Error::Cancelled
        } else {
            error
        };
        tracing::warn!(phase = %self.phase, %error, "migration failed, rolling back");
        if let Some(s) = self.serving.take() {
            return self.postcopy_rollback(error, s);
        }
        if self.commit_sent {
            match self.ask_outcome() {
                Some(Outcome::Running) => {
                    self.report.warnings.push(format!(
                        "the confirmation was lost ({error}); the destination reports the \
                         container running"
                    ));
                    self.finish_commit();
                    return Ok(());
                }
                Some(Outcome::Aborted) => {}
                _ => {
                    self.host.in_doubt();
                    return Err((error, SourceState::InDoubt));
                }
            }
        } else if let Some(ch) = self.ch.as_mut() {
            // Best effort: the destination may be gone.
            ch.set_timeout(Some(Duration::from_secs(2)));
            let _ = ch.send(&Msg::Abort {
                reason: error.to_string(),
            });
        }
        if !self.dump_called {
            return Err((error, SourceState::Untouched));
        }
        match self.host.resume() {
            Ok(()) => Err((error, SourceState::Resumed)),
            Err(e) => Err((error, SourceState::ResumeFailed(e.to_string()))),
        }
    }

    fn commit_info(&self) -> CommitInfo {
        CommitInfo {
            to: self.cfg.to,
            server_name: self
                .cfg
                .server_name
                .clone()
                .unwrap_or_else(|| self.cfg.to.ip().to_string()),
            security: self.cfg.security.clone(),
            migration_id: self.migration_id.clone(),
            container_id: self.report.id.clone(),
        }
    }

    /// Asks the destination what became of this migration, until it
    /// knows or `status_deadline` passes.
    pub(super) fn ask_outcome(&mut self) -> Option<Outcome> {
        if let Some(c) = self.ch.as_ref().and_then(|c| c.closer()) {
            c.close();
        }
        ask_outcome(
            &self.commit_info(),
            self.cfg.timeouts.reply,
            self.cfg.status_deadline,
        )
    }
}
