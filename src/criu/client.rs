//! What a [`Criu`] can be asked: each request type as a method, on a fresh
//! criu per call.
use std::os::fd::RawFd;
use std::path::PathBuf;

use tracing::debug;

use super::errors::{Error, Result};
use super::find::find_binary;
use super::notify::{AckAll, HandlerError, NotifyHandler};
use super::swrk::{describe_exit, Session};
use super::version::Version;
use super::{Criu, Features, InheritFds, Opts, PageServer, ReqType, Request, Response};

/// Called with criu's pid and the request's options before the request is sent.
pub type OnStart<'a> =
    dyn FnMut(u32, &mut Option<Opts>) -> std::result::Result<(), HandlerError> + 'a;

/// The descriptors criu must inherit for `req`: `fds` and those the
/// options name in `inherit_fd`.
fn inherited(fds: InheritFds, req: &Request) -> Vec<RawFd> {
    let mut keep: Vec<RawFd> = fds.to_vec();
    if let Some(o) = &req.opts {
        keep.extend(o.inherit_fd.iter().map(|i| i.fd()));
    }
    keep.sort_unstable();
    keep.dedup();
    keep
}

/// A criu started and checked by [`Criu::start_checked`], waiting for its
/// request. Dropped unused, it is told to exit (its socket closes).
pub struct Started {
    session: Session,
    pid: u32,
}

impl Started {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `req`, whose descriptors must be among those criu inherited.
    pub fn call(mut self, mut req: Request, handler: &mut dyn NotifyHandler) -> Result<Response> {
        if let Some(o) = req.opts.as_mut() {
            default_notify_scripts(o);
        }
        let result = self.session.request(req, handler);
        // Reaped in the background: criu only cleans up after answering.
        std::thread::spawn(move || drop(self));
        result
    }
}

/// Sets `notify_scripts` unless the caller set it, so the handler sees the
/// notifications.
fn default_notify_scripts(opts: &mut Opts) {
    if opts.notify_scripts.is_none() {
        opts.set_notify_scripts(true);
    }
}

impl Criu {
    /// Finds criu (see [`find_binary`]). Does not run it.
    pub fn new() -> Result<Criu> {
        Ok(Criu {
            binary: find_binary()?,
            netns: None,
            cgroup: None,
        })
    }

    pub fn with_binary(binary: impl Into<PathBuf>) -> Criu {
        Criu {
            binary: binary.into(),
            netns: None,
            cgroup: None,
        }
    }

    /// The same installation, run in the network namespace `netns` (see
    /// [`Criu::netns`]).
    pub fn in_netns(self, netns: std::os::fd::OwnedFd) -> Criu {
        Criu {
            netns: Some(std::sync::Arc::new(netns)),
            ..self
        }
    }

    /// The same installation, forked into the cgroup v2 directory `dir`
    /// where the kernel allows (see [`Criu::cgroup`]).
    pub fn in_cgroup(self, dir: std::os::fd::OwnedFd) -> Criu {
        Criu {
            cgroup: Some(std::sync::Arc::new(dir)),
            ..self
        }
    }

    /// Starts a swrk session for several requests; `fds` are inherited.
    pub fn session(&self, fds: InheritFds) -> Result<Session> {
        use std::os::fd::{AsFd, AsRawFd};
        let netns = self.netns.as_ref().map(|n| n.as_raw_fd());
        match &self.cgroup {
            Some(dir) => Session::spawn_into(&self.binary, fds, netns, dir.as_fd()),
            None => Session::spawn(&self.binary, fds, netns),
        }
    }

    /// Runs one request in a fresh criu and reaps it.
    pub fn call(
        &self,
        req: Request,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<Response> {
        let mut session = self.session(&inherited(fds, &req))?;
        let kind = req.kind;
        let result = session.request(req, handler);
        let status = session.wait();
        if result.is_ok() && kind != ReqType::PRE_DUMP && !status.is_some_and(|s| s.success()) {
            debug!(status = %describe_exit(status), "criu answered but did not exit cleanly");
        }
        result
    }

    /// Runs a request that needs no notifications and no descriptors.
    fn call_plain(&self, kind: ReqType, opts: Option<Opts>) -> Result<Response> {
        self.call(Request::new(kind, opts), &mut AckAll, &[])
    }

    /// The installed CRIU's version, asked over RPC.
    pub fn version(&self) -> Result<Version> {
        version_of(&self.call_plain(ReqType::VERSION, None)?)
    }

    /// The installed version, or [`Error::TooOld`] when it is below `min`.
    pub fn require(&self, min: Version) -> Result<Version> {
        let found = self.version()?;
        check_version(found, min)?;
        Ok(found)
    }

    /// Checks the version and runs `req` in one criu process: one spawn
    /// fewer than [`Criu::require`] followed by [`Criu::call`]. `on_start`
    /// gets criu's pid as soon as it runs, before anything is asked of it
    /// (to place it in a cgroup and name that cgroup in the options).
    pub fn call_checked(
        &self,
        min: Version,
        mut req: Request,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
        on_start: &mut OnStart,
    ) -> Result<Response> {
        let mut opts = req.opts.take();
        let started = self.start_checked(min, &inherited(fds, &req), |pid, _| {
            on_start(pid, &mut opts)
        })?;
        req.opts = opts;
        started.call(req, handler)
    }

    /// Starts criu with `fds` inherited, runs `on_start` with its pid, and
    /// whether it was forked into [`Criu::cgroup`], as soon as it runs (a
    /// cgroup move, which waits for an RCU grace period, then overlaps
    /// criu's own start), and checks its version: a criu ready for one
    /// request, which may come much later.
    pub fn start_checked(
        &self,
        min: Version,
        fds: InheritFds,
        on_start: impl FnOnce(u32, bool) -> std::result::Result<(), HandlerError>,
    ) -> Result<Started> {
        let mut session = self.session(fds)?;
        let pid = session
            .pid()
            .ok_or_else(|| Error::Protocol("criu exited as it started".into()))?;
        on_start(pid, session.in_cgroup()).map_err(|source| Error::Prepare { source })?;
        let resp = session.request(
            Request::new(ReqType::VERSION, None).keep_open(true),
            &mut AckAll,
        )?;
        check_version(version_of(&resp)?, min)?;
        Ok(Started { session, pid })
    }

    /// What this kernel and CRIU build support.
    pub fn features(&self) -> Result<Features> {
        let resp = self.call_plain(ReqType::FEATURE_CHECK, None)?;
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
        self.call_plain(ReqType::CHECK, None).map(drop)
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

    /// Runs a dump, pre-dump or restore: refuses first what this host
    /// cannot do, and lets `handler` see the notifications unless the
    /// caller set `notify_scripts`.
    fn call_on_tree(
        &self,
        kind: ReqType,
        mut opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<Response> {
        let pre_dump = kind == ReqType::PRE_DUMP;
        self.require_modes(pre_dump, opts.track_mem(), opts.lazy_pages())?;
        default_notify_scripts(&mut opts);
        self.call(Request::new(kind, Some(opts)), handler, fds)
    }

    /// Dumps the tree rooted at `opts.pid`. Sets `notify_scripts` unless the
    /// caller set it, so `handler` sees the notifications.
    pub fn dump(&self, opts: Opts, handler: &mut dyn NotifyHandler, fds: InheritFds) -> Result<()> {
        self.call_on_tree(ReqType::DUMP, opts, handler, fds)
            .map(drop)
    }

    /// Dumps memory only, leaving the tree running (needs soft-dirty).
    pub fn pre_dump(
        &self,
        opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<()> {
        self.call_on_tree(ReqType::PRE_DUMP, opts, handler, fds)
            .map(drop)
    }

    /// Restores a tree; returns the restored root's pid.
    pub fn restore(
        &self,
        opts: Opts,
        handler: &mut dyn NotifyHandler,
        fds: InheritFds,
    ) -> Result<i32> {
        let resp = self.call_on_tree(ReqType::RESTORE, opts, handler, fds)?;
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
        page_server_info(&self.call_plain(ReqType::PAGE_SERVER_CHLD, Some(opts))?)
    }

    /// Writes the CPU description (`cpuinfo.img`) into the images dir.
    pub fn cpuinfo_dump(&self, opts: Opts) -> Result<()> {
        self.call_plain(ReqType::CPUINFO_DUMP, Some(opts)).map(drop)
    }

    /// Checks this CPU against the `cpuinfo.img` in the images dir.
    pub fn cpuinfo_check(&self, opts: Opts) -> Result<()> {
        self.call_plain(ReqType::CPUINFO_CHECK, Some(opts))
            .map(drop)
    }
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

/// `Ok` when `found` is at least `min`, else [`Error::TooOld`].
pub fn check_version(found: Version, min: Version) -> Result<()> {
    if found < min {
        return Err(Error::TooOld { found, min });
    }
    Ok(())
}

/// The version in a VERSION response.
fn version_of(resp: &Response) -> Result<Version> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::MIN_VERSION;

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
