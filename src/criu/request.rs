//! One request on a swrk session: completing the options, sending it,
//! and turning CRIU's answer into a response or an error.
use std::path::{Path, PathBuf};

use tracing::debug;

use super::errors::{Error, Failure, Result};
use super::log::excerpt_file;
use super::notify::NotifyHandler;
use super::swrk::{describe_exit, Session};
use super::{Opts, ReqType, Request, Response};
use crate::proto::rpc::{Criu_features, Criu_req};

/// CRIU's log file name when `log_file` is not set.
const DEFAULT_LOG_FILE: &str = "criu.log";

/// Human name of a request type, as used in messages.
pub fn op_name(kind: ReqType) -> &'static str {
    match kind {
        ReqType::EMPTY => "empty request",
        ReqType::DUMP => "dump",
        ReqType::RESTORE => "restore",
        ReqType::CHECK => "check",
        ReqType::PRE_DUMP => "pre-dump",
        ReqType::PAGE_SERVER => "page-server",
        ReqType::NOTIFY => "notify",
        ReqType::CPUINFO_DUMP => "cpuinfo dump",
        ReqType::CPUINFO_CHECK => "cpuinfo check",
        ReqType::FEATURE_CHECK => "feature check",
        ReqType::VERSION => "version",
        ReqType::WAIT_PID => "wait-pid",
        ReqType::PAGE_SERVER_CHLD => "page-server (child)",
        ReqType::SINGLE_PRE_DUMP => "single pre-dump",
    }
}

fn fd_path(fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// Where CRIU will write its log for this request, if anywhere.
fn log_path(kind: ReqType, opts: Option<&Opts>, work_dir: Option<&Path>) -> Option<PathBuf> {
    let opts = opts?;
    if opts.log_file.is_none() && (opts.log_to_stderr() || kind == ReqType::CHECK) {
        return None;
    }
    let name = opts.log_file.as_deref().unwrap_or(DEFAULT_LOG_FILE);
    let dir = work_dir
        .map(Path::to_path_buf)
        .or_else(|| opts.work_dir_fd.and_then(fd_path))
        .or_else(|| opts.images_dir_fd.filter(|fd| *fd >= 0).and_then(fd_path))
        .or_else(|| opts.images_dir.as_ref().map(PathBuf::from))?;
    Some(dir.join(name))
}

/// Fills in what CRIU requires and rejects what it cannot use.
fn prepare_opts(opts: &mut Opts) -> Result<()> {
    if opts.images_dir_fd.is_none() {
        if opts.images_dir.is_none() {
            return Err(Error::InvalidOpts(
                "neither images_dir_fd nor images_dir is set".into(),
            ));
        }
        opts.set_images_dir_fd(-1);
    }
    if let Some(name) = &opts.log_file {
        if name.contains('/') {
            return Err(Error::InvalidOpts(format!(
                "log_file {name:?} must be a plain file name (it is created in the work dir)"
            )));
        }
    }
    Ok(())
}

fn build_failure(
    session: &mut Session,
    op: &'static str,
    resp: Option<&Response>,
    log: Option<&PathBuf>,
) -> Box<Failure> {
    let status = session.wait();
    let mut f = Failure {
        op,
        answered: resp.is_some(),
        errmsg: resp.and_then(|r| r.cr_errmsg.clone()),
        errno: resp.and_then(|r| r.cr_errno),
        log_path: log.cloned(),
        exit_status: Some(describe_exit(status)),
        stderr: session.stderr_tail(),
        ..Failure::default()
    };
    if let Some(p) = log {
        match excerpt_file(p) {
            Ok(lines) => f.log_excerpt = lines,
            Err(e) => f.log_unreadable = Some(e.to_string()),
        }
    }
    Box::new(f)
}

impl Session {
    /// Runs one request on this session, answering notifications through
    /// `handler`. Unless `req.keep_open` is set, criu is finished with the
    /// session afterwards (except after PRE_DUMP, which waits for the next
    /// PRE_DUMP or DUMP).
    pub fn request(&mut self, req: Request, handler: &mut dyn NotifyHandler) -> Result<Response> {
        let op = op_name(req.kind);
        let mut msg = Criu_req::new();
        msg.set_type(req.kind);
        let mut log = None;
        if let Some(mut opts) = req.opts {
            prepare_opts(&mut opts)?;
            log = log_path(req.kind, Some(&opts), req.work_dir.as_deref());
            msg.opts = Some(opts).into();
        }
        if req.keep_open {
            msg.set_keep_open(true);
        }
        if req.kind == ReqType::FEATURE_CHECK {
            let mut f = Criu_features::new();
            f.set_mem_track(true);
            f.set_lazy_pages(true);
            f.set_pidfd_store(true);
            msg.features = Some(f).into();
        }
        debug!(op, log = ?log, "sending criu request");
        let exchange = self.exchange(&msg, handler)?;
        let (resp, refused) = match exchange {
            Some(x) => (Some(x.resp), x.refused),
            None => (None, None),
        };
        if let Some((script, source)) = refused {
            let failed = !resp.as_ref().is_some_and(|r| r.success());
            let failure = failed.then(|| build_failure(self, op, resp.as_ref(), log.as_ref()));
            return Err(Error::Notify {
                op,
                script,
                source,
                failure,
            });
        }
        let resp = match resp {
            Some(r) if r.success() => r,
            other => {
                return Err(Error::Failed(build_failure(
                    self,
                    op,
                    other.as_ref(),
                    log.as_ref(),
                )))
            }
        };
        // CRIU answers PAGE_SERVER_CHLD with a PAGE_SERVER response.
        let expected = match req.kind {
            ReqType::PAGE_SERVER_CHLD => ReqType::PAGE_SERVER,
            k => k,
        };
        if resp.type_() != expected {
            return Err(Error::Protocol(format!(
                "asked for {op}, got a {} response",
                op_name(resp.type_())
            )));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_follows_work_dir_then_images_dir() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut o = Opts::new();
        o.set_images_dir_fd(fd);
        o.set_log_file("dump.log".into());
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            log_path(ReqType::DUMP, Some(&o), None),
            Some(real.join("dump.log"))
        );
        assert_eq!(
            log_path(ReqType::DUMP, Some(&o), Some(Path::new("/w"))),
            Some(PathBuf::from("/w/dump.log"))
        );
        let mut o = Opts::new();
        o.set_images_dir_fd(-1);
        o.set_images_dir("/imgs".into());
        assert_eq!(
            log_path(ReqType::RESTORE, Some(&o), None),
            Some(PathBuf::from("/imgs/criu.log"))
        );
        assert_eq!(log_path(ReqType::CHECK, Some(&o), None), None);
        o.set_log_to_stderr(true);
        assert_eq!(log_path(ReqType::RESTORE, Some(&o), None), None);
    }

    #[test]
    fn opts_are_validated() {
        let mut o = Opts::new();
        assert!(matches!(prepare_opts(&mut o), Err(Error::InvalidOpts(_))));
        o.set_images_dir("/x".into());
        prepare_opts(&mut o).unwrap();
        assert_eq!(o.images_dir_fd, Some(-1));
        o.set_log_file("a/b.log".into());
        assert!(matches!(prepare_opts(&mut o), Err(Error::InvalidOpts(_))));
    }
}
