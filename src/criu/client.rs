//! Requests: building them, running them on a swrk session, and turning
//! CRIU's answers into results or errors.
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::errors::{Error, Failure, Result};
use super::log::excerpt_file;
use super::notify::{AckAll, HandlerError, NotifyHandler};
use super::swrk::{describe_exit, Session};
use super::version::{Version, MIN_VERSION};
use super::{Criu, Features, InheritFds, Opts, PageServer, ReqType, Request, Response, CRIU_ENV};
use crate::proto::rpc::{Criu_features, Criu_req};

/// CRIU's log file name when `log_file` is not set.
const DEFAULT_LOG_FILE: &str = "criu.log";
/// Searched after PATH: where CRIU installs, and where ferry's script puts it.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

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

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds criu: `$FERRY_CRIU` if set, else PATH, then /usr/local/sbin,
/// /usr/sbin, /sbin.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(CRIU_ENV) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(Error::NotFound {
            looked_in: format!("{CRIU_ENV}={} is not an executable file", p.display()),
            min: MIN_VERSION,
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    for d in &dirs {
        let candidate = d.join("criu");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound {
        looked_in: format!(
            "searched PATH and {}; set {CRIU_ENV} to override",
            EXTRA_DIRS.join(", ")
        ),
        min: MIN_VERSION,
    })
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

impl Criu {
    /// Finds criu (see [`find_binary`]). Does not run it.
    pub fn new() -> Result<Criu> {
        Ok(Criu {
            binary: find_binary()?,
        })
    }

    pub fn with_binary(binary: impl Into<PathBuf>) -> Criu {
        Criu {
            binary: binary.into(),
        }
    }

    /// Starts a swrk session for several requests; `fds` are inherited.
    pub fn session(&self, fds: InheritFds) -> Result<Session> {
        Session::spawn(&self.binary, fds)
    }

    /// Runs one request in a fresh criu and reaps it.
    pub fn call(
        &self,
        req: Request,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<Response> {
        let mut keep: Vec<RawFd> = fds.to_vec();
        if let Some(o) = &req.opts {
            keep.extend(o.inherit_fd.iter().map(|i| i.fd()));
        }
        keep.sort_unstable();
        keep.dedup();
        let mut session = self.session(&keep)?;
        let kind = req.kind;
        let result = session.request(req, handler);
        let status = session.wait();
        if result.is_ok() && kind != ReqType::PRE_DUMP && !status.is_some_and(|s| s.success()) {
            debug!(status = %describe_exit(status), "criu answered but did not exit cleanly");
        }
        result
    }

    /// The installed CRIU's version, asked over RPC.
    pub fn version(&self) -> Result<Version> {
        let resp = self.call(Request::new(ReqType::VERSION, None), &mut AckAll, &[])?;
        version_of(&resp)
    }

    /// The installed version, or [`Error::TooOld`] when it is below `min`.
    pub fn require(&self, min: Version) -> Result<Version> {
        let found = self.version()?;
        check_version(found, min)?;
        Ok(found)
    }

    /// Checks the version and runs `req` in one criu process: one spawn
    /// fewer than [`Criu::require`] followed by [`Criu::call`]. `on_start`
    /// gets criu's pid before the request is sent (to place it in a cgroup
    /// and name that cgroup in the options).
    pub fn call_checked(
        &self,
        min: Version,
        mut req: Request,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
        on_start: &mut OnStart,
    ) -> Result<Response> {
        let mut keep: Vec<RawFd> = fds.to_vec();
        if let Some(o) = &req.opts {
            keep.extend(o.inherit_fd.iter().map(|i| i.fd()));
        }
        keep.sort_unstable();
        keep.dedup();
        let mut session = self.session(&keep)?;
        let resp = session.request(
            Request::new(ReqType::VERSION, None).keep_open(true),
            &mut AckAll,
        )?;
        check_version(version_of(&resp)?, min)?;
        if req
            .opts
            .as_ref()
            .is_some_and(|o| o.notify_scripts.is_none())
        {
            if let Some(o) = req.opts.as_mut() {
                o.set_notify_scripts(true);
            }
        }
        let pid = session
            .pid()
            .ok_or_else(|| Error::Protocol("criu exited after answering VERSION".into()))?;
        on_start(pid, &mut req.opts).map_err(|source| Error::Prepare { source })?;
        let result = session.request(req, handler);
        // Reaped in the background: criu only cleans up after answering.
        std::thread::spawn(move || drop(session));
        result
    }
}

/// `Ok` when `found` is at least `min`, else [`Error::TooOld`].
pub fn check_version(found: Version, min: Version) -> Result<()> {
    if found < min {
        return Err(Error::TooOld { found, min });
    }
    Ok(())
}

/// Called with criu's pid and the request's options before the request is sent.
pub type OnStart<'a> =
    dyn FnMut(u32, &mut Option<Opts>) -> std::result::Result<(), HandlerError> + 'a;

/// The version in a VERSION response.
fn version_of(resp: &Response) -> Result<Version> {
    {
        let v = resp
            .version
            .as_ref()
            .ok_or_else(|| Error::Protocol("version response without a version".into()))?;
        let num = |n: i32, what: &str| {
            u32::try_from(n).map_err(|_| Error::Protocol(format!("negative {what} version {n}")))
        };
        Ok(Version::new(
            num(v.major_number(), "major")?,
            num(v.minor_number(), "minor")?,
            num(v.sublevel(), "sublevel")?,
        ))
    }
}

impl Criu {
    /// What this kernel and CRIU build support.
    pub fn features(&self) -> Result<Features> {
        let resp = self.call(Request::new(ReqType::FEATURE_CHECK, None), &mut AckAll, &[])?;
        let f = resp
            .features
            .as_ref()
            .ok_or_else(|| Error::Protocol("feature check response without features".into()))?;
        Ok(Features {
            mem_track: f.mem_track(),
            lazy_pages: f.lazy_pages(),
            pidfd_store: f.pidfd_store(),
        })
    }

    /// `criu check`: the kernel has what basic checkpoint/restore needs.
    pub fn check(&self) -> Result<()> {
        self.call(Request::new(ReqType::CHECK, None), &mut AckAll, &[])
            .map(drop)
    }

    fn require_features(&self, opts: &Opts, pre_dump: bool) -> Result<()> {
        self.require_modes(pre_dump, opts.track_mem(), opts.lazy_pages())
    }

    /// Fails with [`Error::Unsupported`] when this host cannot pre-dump,
    /// track memory or serve lazy pages as asked; asks CRIU only when one
    /// of them is wanted. Callers use it to refuse before freezing anything.
    pub fn require_modes(&self, pre_dump: bool, track_mem: bool, lazy_pages: bool) -> Result<()> {
        let wants_track = pre_dump || track_mem;
        if !wants_track && !lazy_pages {
            return Ok(());
        }
        let features = self.features()?;
        if wants_track && !features.mem_track {
            return Err(Error::Unsupported {
                what: if pre_dump {
                    "pre-dump"
                } else {
                    "memory tracking (track_mem)"
                }
                .into(),
                reason: "the kernel has no soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY); dump without it".into(),
            });
        }
        if lazy_pages && !features.lazy_pages {
            return Err(Error::Unsupported {
                what: "lazy pages".into(),
                reason: "the kernel lacks non-cooperative userfaultfd; run without lazy pages"
                    .into(),
            });
        }
        Ok(())
    }

    /// Dumps the tree rooted at `opts.pid`. Sets `notify_scripts` unless the
    /// caller set it, so `handler` sees the notifications.
    pub fn dump(
        &self,
        mut opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<()> {
        self.require_features(&opts, false)?;
        if opts.notify_scripts.is_none() {
            opts.set_notify_scripts(true);
        }
        self.call(Request::new(ReqType::DUMP, Some(opts)), handler, fds)
            .map(drop)
    }

    /// Dumps memory only, leaving the tree running (needs soft-dirty).
    pub fn pre_dump(
        &self,
        mut opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<()> {
        self.require_features(&opts, true)?;
        if opts.notify_scripts.is_none() {
            opts.set_notify_scripts(true);
        }
        self.call(Request::new(ReqType::PRE_DUMP, Some(opts)), handler, fds)
            .map(drop)
    }

    /// Restores a tree; returns the restored root's pid.
    pub fn restore(
        &self,
        mut opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<i32> {
        self.require_features(&opts, false)?;
        if opts.notify_scripts.is_none() {
            opts.set_notify_scripts(true);
        }
        let resp = self.call(Request::new(ReqType::RESTORE, Some(opts)), handler, fds)?;
        resp.restore
            .as_ref()
            .map(|r| r.pid())
            .ok_or_else(|| Error::Protocol("restore response without a pid".into()))
    }

    /// Starts a page server in the background (`opts.ps` sets address and
    /// port; port 0 picks a free one) and returns its pid and port.
    ///
    /// Uses PAGE_SERVER_CHLD: with PAGE_SERVER (daemon mode) CRIU 4.x
    /// answers pid 0, which would leave the caller unable to stop it.
    pub fn page_server(&self, opts: Opts) -> Result<PageServer> {
        let resp = self.call(
            Request::new(ReqType::PAGE_SERVER_CHLD, Some(opts)),
            &mut AckAll,
            &[],
        )?;
        page_server_info(&resp)
    }

    /// Writes the CPU description (`cpuinfo.img`) into the images dir.
    pub fn cpuinfo_dump(&self, opts: Opts) -> Result<()> {
        self.call(
            Request::new(ReqType::CPUINFO_DUMP, Some(opts)),
            &mut AckAll,
            &[],
        )
        .map(drop)
    }

    /// Checks this CPU against the `cpuinfo.img` in the images dir.
    pub fn cpuinfo_check(&self, opts: Opts) -> Result<()> {
        self.call(
            Request::new(ReqType::CPUINFO_CHECK, Some(opts)),
            &mut AckAll,
            &[],
        )
        .map(drop)
    }
}

/// The page server's pid and port from a PAGE_SERVER response.
pub(crate) fn page_server_info(resp: &Response) -> Result<PageServer> {
    let ps = resp
        .ps
        .as_ref()
        .ok_or_else(|| Error::Protocol("page-server response without server info".into()))?;
    if ps.pid() <= 1 || ps.port() <= 0 {
        return Err(Error::Protocol(format!(
            "page server reported pid {} port {}",
            ps.pid(),
            ps.port()
        )));
    }
    Ok(PageServer {
        pid: ps.pid(),
        port: ps.port(),
    })
}

impl Session {
    /// Starts a page server (see [`Criu::page_server`]) and keeps this
    /// session open for more requests.
    pub fn page_server(&mut self, opts: Opts) -> Result<PageServer> {
        let resp = self.request(
            Request::new(ReqType::PAGE_SERVER_CHLD, Some(opts)).keep_open(true),
            &mut AckAll,
        )?;
        page_server_info(&resp)
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

    #[test]
    fn failure_message_is_one_line_with_errno_and_log() {
        let f = Failure {
            op: "restore",
            answered: true,
            errmsg: Some("Can't open pstree image".into()),
            errno: Some(2),
            log_path: Some(PathBuf::from("/tmp/x/restore.log")),
            log_excerpt: vec!["(0.1) Error (criu/x.c:1): boom".into()],
            ..Failure::default()
        };
        let msg = Error::Failed(Box::new(f)).to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("Can't open pstree image"), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
        assert!(msg.contains("/tmp/x/restore.log"), "{msg}");
    }

    #[test]
    fn harmless_errmsg_gives_way_to_the_real_error() {
        let f = Failure {
            op: "restore",
            answered: true,
            errmsg: Some("Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n".into()),
            log_excerpt: vec![
                "(00.01) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: x".into(),
                "(00.03) Error (criu/cr-restore.c:1237): Can't fork for 20081: File exists".into(),
            ],
            ..Failure::default()
        };
        assert_eq!(
            f.summary(),
            "Error (criu/cr-restore.c:1237): Can't fork for 20081: File exists"
        );
        let bare = Failure {
            errmsg: Some(
                "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self".into(),
            ),
            ..Failure::default()
        };
        assert!(bare.summary().contains("RLIMIT_NOFILE"));
        let died = Failure {
            op: "dump",
            stderr: "first\nlast words\n\n".into(),
            ..Failure::default()
        };
        assert_eq!(died.summary(), "last words");
        assert!(died
            .to_string()
            .starts_with("criu dump ended without answering: last words"));
    }

    #[test]
    fn missing_binary_names_the_fix() {
        let err = Error::NotFound {
            looked_in: "x".into(),
            min: MIN_VERSION,
        };
        assert!(err.to_string().contains("scripts/install-deps.sh"));
    }

    #[test]
    fn too_old_names_both_versions_and_the_fix() {
        assert!(check_version(Version::new(4, 2, 1), MIN_VERSION).is_ok());
        assert!(check_version(MIN_VERSION, MIN_VERSION).is_ok());
        let err = check_version(Version::new(3, 17, 1), MIN_VERSION).unwrap_err();
        assert!(matches!(err, Error::TooOld { .. }));
        let msg = err.to_string();
        assert!(msg.contains("3.17.1"), "{msg}");
        assert!(msg.contains("4.1.0"), "{msg}");
        assert!(msg.contains("scripts/install-deps.sh"), "{msg}");
    }
}
