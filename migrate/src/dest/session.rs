//! One incoming migration, step by step, and what it checks of the
//! peer's input (container ID, shared rootfs, config root).
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{Shared, State};
use crate::files::TreeReceiver;
use crate::host::{DestHost, PageServer, Restored};
use crate::info::{DestInfo, SourceInfo};
use crate::mode::{self, PageServerTarget, RestorePlan, Route};
use crate::proto::{self, Msg};
use crate::transport::Channel;
use crate::{Error, RootfsMode};

pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) mid: String,
    pub(super) id: String,
    pub(super) local: Option<SocketAddr>,
    pub(super) host: Option<Box<dyn DestHost>>,
    pub(super) dest: Option<DestInfo>,
    pub(super) source: Option<SourceInfo>,
    pub(super) rootfs_mode: RootfsMode,
    /// Paths this migration created, removed on abort (last first).
    pub(super) created: Vec<PathBuf>,
    pub(super) rootfs_rx: Option<TreeReceiver>,
    /// The images' first pass (sent before the freeze), until the rest
    /// arrives after the dump.
    pub(super) images_rx: Option<TreeReceiver>,
    pub(super) page_server: Option<PageServer>,
    pub(super) predumps: u32,
    pub(super) final_dumped: bool,
    pub(super) images_done: bool,
    pub(super) restored: bool,
    /// The source's address (post-copy fetches pages from it).
    pub(super) peer: Option<SocketAddr>,
    /// Post-copy: the link timeout the source asked for.
    pub(super) lazy: Option<std::time::Duration>,
    /// The bundle's config.json is written (by the restore, or by its
    /// preparation before the freeze).
    pub(super) config_written: bool,
}

pub(super) fn out_of_order(m: &Msg) -> Error {
    Error::Unexpected {
        expected: "the next step of the migration",
        got: m.name().to_string(),
    }
}

impl Session<'_> {
    pub(super) fn host(&mut self) -> &mut dyn DestHost {
        self.host.as_deref_mut().expect("host made at hello")
    }

    pub(super) fn dest(&self) -> &DestInfo {
        self.dest.as_ref().expect("after preflight")
    }

    pub(super) fn run(&mut self, ch: &mut Channel) -> Result<(), Error> {
        let t = self.shared.cfg.timeouts;
        self.host = Some(
            self.shared
                .factory
                .host(&self.id)
                .map_err(Error::host("setting up the destination"))?,
        );
        ch.send(&Msg::Welcome {
            software: proto::software(),
        })?;
        loop {
            // After the restore, the source answers at once.
            ch.set_timeout(Some(match (self.restored, self.lazy) {
                (true, Some(link)) => link,
                (true, None) => t.reply,
                _ => t.idle,
            }));
            let m: Msg = ch.recv()?;
            match m {
                Msg::Preflight { info, rootfs } if self.dest.is_none() => {
                    let dest = self.preflight(*info, rootfs)?;
                    ch.send(&Msg::PreflightOk {
                        info: Box::new(dest),
                    })?;
                }
                Msg::Rootfs { pass }
                    if self.dest.is_some()
                        && self.rootfs_mode == RootfsMode::Ship
                        && !self.restored =>
                {
                    let stats = self.receive_rootfs(ch, pass)?;
                    ch.send(&Msg::TreeOk { stats })?;
                }
                Msg::PageServer { iteration }
                    if self.dest.is_some() && self.page_server.is_none() && !self.final_dumped =>
                {
                    let port = self.start_page_server(iteration)?;
                    ch.send(&Msg::PageServerReady { port })?;
                }
                Msg::DumpDone { .. } if self.page_server.is_some() => {
                    let ps = self.page_server.take().expect("checked");
                    self.host()
                        .finish_page_server(&ps, t.work)
                        .map_err(Error::host("waiting for the page server"))?;
                    ch.send(&Msg::DumpOk)?;
                }
                // Before the final dump: while its page server waits for
                // the freeze, or (post-copy) before the lazy dump.
                Msg::EarlyImages
                    if self.dest.is_some()
                        && (self.final_dumped == self.page_server.is_some())
                        && (self.final_dumped || self.predumps == 0)
                        && self.images_rx.is_none()
                        && !self.images_done =>
                {
                    let stats = self.receive_early_images(ch)?;
                    self.prepare_restore()?;
                    ch.send(&Msg::TreeOk { stats })?;
                }
                // Post-copy's lazy dump sends no pages before its images.
                Msg::Images
                    if (self.final_dumped || self.predumps == 0)
                        && self.page_server.is_none()
                        && !self.images_done =>
                {
                    let stats = self.receive_images(ch)?;
                    ch.send(&Msg::TreeOk { stats })?;
                }
                Msg::Restore if self.images_done && self.final_dumped && !self.restored => {
                    let r = self.restore()?;
                    ch.send(&Msg::Restored {
                        pid: r.pid,
                        prepared: r.prepared,
                    })?;
                }
                Msg::LazyRestore {
                    port,
                    link_timeout_ms,
                } if self.images_done && !self.final_dumped && !self.restored => {
                    let r = self.lazy_restore(port, link_timeout_ms)?;
                    ch.send(&Msg::Restored {
                        pid: r.pid,
                        prepared: r.prepared,
                    })?;
                }
                Msg::Commit if self.restored && self.lazy.is_some() => {
                    let link = self.lazy.expect("checked");
                    return self.post_copy(ch, link);
                }
                Msg::Commit if self.restored => {
                    self.shared.set_state(&self.mid, State::Committing);
                    self.host()
                        .start()
                        .map_err(Error::host("starting the container"))?;
                    // From here on the container is this host's.
                    self.shared.set_state(&self.mid, State::Running);
                    let _ = ch.send(&Msg::Running);
                    self.remove_images();
                    return Ok(());
                }
                Msg::Abort { reason } => return Err(Error::Aborted(reason)),
                m => return Err(out_of_order(&m)),
            }
        }
    }

    fn preflight(&mut self, info: SourceInfo, rootfs: RootfsMode) -> Result<DestInfo, Error> {
        if info.id != self.id {
            return Err(Error::Refused(format!(
                "preflight is for container {:?}, hello was for {:?}",
                info.id, self.id
            )));
        }
        let shared_rootfs = rootfs == RootfsMode::Shared;
        if shared_rootfs {
            check_shared_rootfs(&info.rootfs, &self.shared.cfg.shared_rootfs_under)?;
        }
        let dest = self
            .host()
            .preflight(&info, shared_rootfs)
            .map_err(Error::host("preflight"))?;
        // The images root is ours alone.
        if let Some(parent) = dest.images_dir.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
        std::fs::create_dir(&dest.images_dir).map_err(Error::io("create", &dest.images_dir))?;
        self.created.push(dest.images_dir.clone());
        match std::fs::read_dir(&dest.bundle_dir) {
            Ok(mut it) => {
                if rootfs == RootfsMode::Ship && it.next().is_some() {
                    return Err(Error::Refused(format!(
                        "bundle directory {} is not empty",
                        dest.bundle_dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dest.bundle_dir)
                    .map_err(Error::io("create", &dest.bundle_dir))?;
                self.created.push(dest.bundle_dir.clone());
            }
            Err(e) => return Err(Error::io("read", &dest.bundle_dir)(e)),
        }
        self.rootfs_mode = rootfs;
        self.source = Some(info);
        let dest = DestInfo {
            early_images: true,
            ..dest
        };
        self.dest = Some(dest.clone());
        Ok(dest)
    }

    fn receive_rootfs(
        &mut self,
        ch: &mut Channel,
        pass: u32,
    ) -> Result<crate::files::ReceiveStats, Error> {
        if self.rootfs_rx.is_none() {
            if pass != 1 {
                return Err(Error::Refused(format!("rootfs pass {pass} before pass 1")));
            }
            let target = self.dest().bundle_dir.join("rootfs");
            self.rootfs_rx = Some(TreeReceiver::new(&target, self.shared.cfg.limits)?);
        }
        let rx = self.rootfs_rx.as_mut().expect("set");
        Ok(rx.receive(ch, &mut |_| {})?)
    }

    fn start_page_server(&mut self, iteration: Option<u32>) -> Result<u16, Error> {
        // Refused before the source freezes anything.
        self.shared.cfg.security.check_unchanged()?;
        let root = self.dest().images_dir.clone();
        let listen = self
            .local
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "0.0.0.0".into());
        let target = PageServerTarget {
            address: listen.clone(),
            port: 0,
        };
        let tls = self.shared.cfg.security.paths().cloned();
        let route = Route {
            src_root: Path::new(""),
            dst_root: &root,
            target,
            listen: &listen,
            tls: tls.as_ref(),
            peer_cert: None,
        };
        let plan = match iteration {
            Some(i) if i == self.predumps + 1 => mode::predump_plans(i, route).1,
            Some(i) => {
                return Err(Error::Refused(format!(
                    "pre-dump iteration {i} out of order (expected {})",
                    self.predumps + 1
                )))
            }
            None => mode::final_dump_plans(self.predumps, route).1,
        };
        std::fs::create_dir(&plan.images_dir).map_err(Error::io("create", &plan.images_dir))?;
        let ps = self
            .host()
            .start_page_server(&plan)
            .map_err(Error::host("starting the page server"))?;
        match iteration {
            Some(_) => self.predumps += 1,
            None => self.final_dumped = true,
        }
        self.page_server = Some(ps);
        Ok(ps.port)
    }

    /// The images' first pass, staged until the rest arrives.
    fn receive_early_images(
        &mut self,
        ch: &mut Channel,
    ) -> Result<crate::files::ReceiveStats, Error> {
        let dir = self.dest().images_dir.join(mode::FINAL_DIR);
        if !self.final_dumped {
            // Post-copy: no page server made it.
            std::fs::create_dir(&dir).map_err(Error::io("create", &dir))?;
        }
        let rx = self
            .images_rx
            .insert(TreeReceiver::new(&dir, self.shared.cfg.limits)?);
        Ok(rx.receive(ch, &mut |_| {})?)
    }

    fn receive_images(&mut self, ch: &mut Channel) -> Result<crate::files::ReceiveStats, Error> {
        let dir = self.dest().images_dir.join(mode::FINAL_DIR);
        if !self.final_dumped && self.images_rx.is_none() {
            // Post-copy: no page server made it (nor an early images pass).
            std::fs::create_dir(&dir).map_err(Error::io("create", &dir))?;
        }
        let mut rx = match self.images_rx.take() {
            Some(rx) => rx,
            None => TreeReceiver::new(&dir, self.shared.cfg.limits)?,
        };
        let t = std::time::Instant::now();
        let stats = rx.receive(ch, &mut |_| {})?;
        let received = t.elapsed();
        rx.commit_merge()?;
        tracing::debug!(
            entries = stats.entries,
            bytes = stats.bytes,
            ?received,
            committed = ?t.elapsed() - received,
            "images received"
        );
        self.images_done = true;
        Ok(stats)
    }

    pub(super) fn restore(&mut self) -> Result<Restored, Error> {
        let rootfs = match self.rootfs_mode {
            RootfsMode::Ship => {
                let rx = self.rootfs_rx.take().ok_or_else(|| {
                    Error::Refused("the rootfs was to be shipped, but none was sent".into())
                })?;
                let target = rx.commit()?;
                self.created.push(target.clone());
                target
            }
            RootfsMode::Shared => self.shared_rootfs(),
        };
        let plan = self.restore_plan(rootfs, false)?;
        let r = self.host().restore(&plan).map_err(Error::host("restore"))?;
        self.restored = true;
        Ok(r)
    }

    /// Readies the restore while the source still runs (see
    /// [`DestHost::prepare_restore`](crate::host::DestHost::prepare_restore)),
    /// once the early images of the final dump are in: not for post-copy.
    /// A shipped rootfs is not in place yet (its last pass follows the
    /// dump): the restore checks it once it is.
    fn prepare_restore(&mut self) -> Result<(), Error> {
        if !self.final_dumped || self.lazy.is_some() {
            return Ok(());
        }
        let early = match &self.images_rx {
            Some(rx) => rx.staging().to_path_buf(),
            None => return Ok(()),
        };
        let (rootfs, later) = match self.rootfs_mode {
            RootfsMode::Ship => (self.dest().bundle_dir.join("rootfs"), true),
            RootfsMode::Shared => (self.shared_rootfs(), false),
        };
        let plan = self.restore_plan(rootfs, later)?;
        let t = std::time::Instant::now();
        let prepared = self
            .host()
            .prepare_restore(&plan, &early)
            .map_err(Error::host("preparing the restore"))?;
        tracing::debug!(prepared, took = ?t.elapsed(), "restore prepared before the freeze");
        Ok(())
    }

    /// The source's rootfs path, which a shared rootfs has here too.
    fn shared_rootfs(&self) -> PathBuf {
        self.source
            .as_ref()
            .expect("after preflight")
            .rootfs
            .clone()
    }

    /// The restore's plan, into a bundle whose config.json (the source's,
    /// its root at `rootfs`, in place unless `rootfs_later`) is written the
    /// first time.
    fn restore_plan(&mut self, rootfs: PathBuf, rootfs_later: bool) -> Result<RestorePlan, Error> {
        let dest = self.dest().clone();
        let info = self.source.clone().expect("after preflight");
        if !self.config_written {
            let config = rewrite_root(&info.config_json, self.rootfs_mode, &rootfs)?;
            let cfg_path = dest.bundle_dir.join("config.json");
            write_new(&cfg_path, config.as_bytes())?;
            self.created.push(cfg_path);
            self.config_written = true;
        }
        Ok(RestorePlan {
            id: self.id.clone(),
            images_dir: dest.images_dir.join(mode::FINAL_DIR),
            bundle_dir: dest.bundle_dir.clone(),
            rootfs,
            rootfs_later,
            lazy_pages: self.lazy.is_some(),
            hold: true,
            source: info,
        })
    }

    pub(super) fn remove_images(&mut self) {
        if let Some(d) = &self.dest {
            if let Err(e) = crate::remove::remove_tree(&d.images_dir) {
                warn!(dir = %d.images_dir.display(), error = %e, "cannot remove images");
            }
        }
        self.created.clear();
    }

    pub(super) fn abort(&mut self) {
        self.rootfs_rx = None;
        self.images_rx = None;
        if let Some(h) = self.host.as_deref_mut() {
            if let Err(e) = h.abort() {
                warn!(container = %self.id, error = %e, "abort on the destination host failed");
            }
        }
        for p in self.created.drain(..).rev() {
            let r = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    crate::remove::remove_tree(&p).map_err(std::io::Error::other)
                }
                Ok(_) => std::fs::remove_file(&p),
                Err(_) => Ok(()),
            };
            if let Err(e) = r {
                warn!(path = %p.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// A shared rootfs must be a directory here, under an allowed directory.
pub(super) fn check_shared_rootfs(rootfs: &Path, allowed: &[PathBuf]) -> Result<(), Error> {
    let real = match std::fs::canonicalize(rootfs) {
        Ok(r) if r.is_dir() => r,
        _ => {
            return Err(Error::Incompatible(format!(
                "the shared rootfs {} is not a directory on this host",
                rootfs.display()
            )))
        }
    };
    let ok = allowed.iter().any(|a| {
        std::fs::canonicalize(a)
            .map(|a| real.starts_with(&a) && real != a)
            .unwrap_or(false)
    });
    if !ok {
        return Err(Error::Refused(format!(
            "the shared rootfs {} is not under a directory this destination allows for shared \
             root filesystems{}",
            rootfs.display(),
            if allowed.is_empty() {
                " (none configured)".to_string()
            } else {
                format!(
                    " ({})",
                    allowed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )));
    }
    Ok(())
}

/// Whether a container ID from a peer is safe to use (as a file name): the
/// runtime's own ID rule (at most 255 of `A-Za-z0-9_+.-`), and no hidden
/// names on this side.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

/// The source's config.json with `root.path` pointing at this host's
/// rootfs: `rootfs` inside the bundle when shipped, the shared absolute
/// path otherwise.
pub(super) fn rewrite_root(config: &str, mode: RootfsMode, rootfs: &Path) -> Result<String, Error> {
    let mut v: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| Error::Refused(format!("config.json from the source is not JSON: {e}")))?;
    let path = match mode {
        RootfsMode::Ship => "rootfs".to_string(),
        RootfsMode::Shared => rootfs.display().to_string(),
    };
    let root = v
        .as_object_mut()
        .ok_or_else(|| Error::Refused("config.json is not an object".into()))?
        .entry("root")
        .or_insert_with(|| serde_json::json!({}));
    match root.as_object_mut() {
        Some(r) => {
            r.insert("path".into(), serde_json::Value::String(path));
        }
        None => return Err(Error::Refused("config.json root is not an object".into())),
    }
    Ok(serde_json::to_string_pretty(&v).expect("a Value serializes"))
}

/// Writes a new file atomically (temp file, fsync, rename).
fn write_new(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    f.write_all(data).map_err(Error::io("write", &tmp))?;
    f.sync_all().map_err(Error::io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    Ok(())
}
