//! The destination agent (`ferry serve`): accepts migrations, one at a
//! time per container ID and several IDs at once, and cleans up after
//! every one that does not reach `Running`.
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::files::{Limits, TreeReceiver};
use crate::host::{DestFactory, DestHost, PageServer};
use crate::info::{DestInfo, SourceInfo};
use crate::mode::{self, PageServerTarget, RestorePlan};
use crate::proto::{self, Msg, Outcome};
use crate::tls::Security;
use crate::transport::{self, Channel, Closer};
use crate::{Error, RootfsMode, Timeouts};

/// How `ferry serve` receives.
#[derive(Debug, Clone)]
pub struct DestConfig {
    pub security: Security,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Connections handled at once (handshakes included); more are closed
    /// at once.
    pub max_connections: usize,
    /// Directories under which a `--rootfs shared` root filesystem may
    /// live. Empty: shared root filesystems are refused (a peer must not be
    /// able to name any directory of this host as a container's root).
    pub shared_rootfs_under: Vec<PathBuf>,
}

impl DestConfig {
    pub fn new(security: Security) -> DestConfig {
        DestConfig {
            security,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_connections: 64,
            shared_rootfs_under: Vec::new(),
        }
    }
}

/// A migration's state as the server tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for or working on the next step; the session's connection.
    Active(u64),
    /// `Commit` received, starting the container.
    Committing,
    Running,
    Aborted,
}

/// Locks `m` even if a thread panicked while holding it: every critical
/// section here leaves its map consistent, and one connection's panic must
/// not take every later connection down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    cfg: DestConfig,
    factory: Arc<dyn DestFactory>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    active_ids: Mutex<HashSet<String>>,
    migrations: Mutex<HashMap<String, State>>,
    changed: Condvar,
    ids_changed: Condvar,
    closers: Mutex<HashMap<u64, Closer>>,
}

impl Shared {
    fn set_state(&self, mid: &str, s: State) {
        let mut m = lock(&self.migrations);
        // Forget old outcomes beyond a bound.
        if m.len() > 4096 {
            m.retain(|_, st| matches!(st, State::Active(_) | State::Committing));
        }
        m.insert(mid.to_string(), s);
        self.changed.notify_all();
    }
}

/// A listening destination agent.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Stops a running [`Server`] from another thread (e.g. on SIGTERM).
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Stops accepting, cuts every migration still in progress (each is
    /// aborted and cleaned up), and makes [`Server::run`] return once they
    /// are.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in lock(&self.shared.closers).values() {
            c.close();
        }
    }

    /// Waits until no migration is in progress (or `timeout` passes).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ids = lock(&self.shared.active_ids);
        while !ids.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ids = self
                .shared
                .ids_changed
                .wait_timeout(ids, left.min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Server {
    pub fn bind(
        addr: SocketAddr,
        cfg: DestConfig,
        factory: Arc<dyn DestFactory>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                cfg,
                factory,
                stop: AtomicBool::new(false),
                next_conn: AtomicU64::new(1),
                active_ids: Mutex::new(HashSet::new()),
                migrations: Mutex::new(HashMap::new()),
                changed: Condvar::new(),
                ids_changed: Condvar::new(),
                closers: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until [`ServerHandle::shutdown`], each in its
    /// own thread; returns when all have finished.
    pub fn run(self) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let mut sessions: Vec<JoinHandle<()>> = Vec::new();
        while !self.shared.stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((tcp, peer)) => {
                    sessions.retain(|h| !h.is_finished());
                    if sessions.len() >= self.shared.cfg.max_connections {
                        warn!(%peer, limit = self.shared.cfg.max_connections, "too many connections, closing");
                        drop(tcp);
                        continue;
                    }
                    tcp.set_nonblocking(false)?;
                    let shared = self.shared.clone();
                    sessions.push(std::thread::spawn(move || connection(shared, tcp, peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            sessions.retain(|h| !h.is_finished());
        }
        for c in lock(&self.shared.closers).values() {
            c.close();
        }
        for h in sessions {
            let _ = h.join();
        }
        Ok(())
    }
}

/// One accepted connection: handshake, then a migration or a status query.
fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let mut ch = match transport::accept(tcp, &shared.cfg.security) {
        Ok(ch) => ch,
        Err(e) => {
            warn!(%peer, error = %e, "refused connection");
            return;
        }
    };
    let conn_id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Some(c) = ch.closer() {
        if shared.stop.load(Ordering::SeqCst) {
            c.close();
        }
        lock(&shared.closers).insert(conn_id, c);
    }
    ch.set_timeout(Some(shared.cfg.timeouts.reply));
    let first: Msg = match ch.recv() {
        Ok(m) => m,
        Err(e) => {
            warn!(%peer, error = %e, "no hello");
            lock(&shared.closers).remove(&conn_id);
            return;
        }
    };
    match first {
        Msg::Status { migration_id } => {
            let outcome = status(&shared, &migration_id);
            let _ = ch.send(&Msg::StatusIs { outcome });
        }
        Msg::Hello {
            protocol,
            migration_id,
            container_id,
            ..
        } => {
            if protocol != proto::PROTOCOL {
                let _ = ch.send(&Msg::Error {
                    reason: format!(
                        "protocol version {protocol} is not supported (this side speaks {})",
                        proto::PROTOCOL
                    ),
                });
            } else {
                receive(&shared, ch, conn_id, peer, migration_id, container_id);
            }
        }
        m => {
            let _ = ch.send(&Msg::Error {
                reason: format!("expected hello, got {}", m.name()),
            });
        }
    }
    lock(&shared.closers).remove(&conn_id);
}

/// Answers a status query. A migration still waiting for its commit is
/// aborted first: the source asks only after losing its connection, so
/// the commit will never come.
fn status(shared: &Shared, mid: &str) -> Outcome {
    let deadline = Instant::now() + shared.cfg.timeouts.work;
    let mut m = lock(&shared.migrations);
    loop {
        match m.get(mid).copied() {
            None => return Outcome::Unknown,
            Some(State::Running) => return Outcome::Running,
            Some(State::Aborted) => return Outcome::Aborted,
            Some(State::Active(conn)) => {
                if let Some(c) = lock(&shared.closers).get(&conn) {
                    c.close();
                }
            }
            Some(State::Committing) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::InProgress;
        }
        m = shared
            .changed
            .wait_timeout(m, left.min(Duration::from_millis(50)))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Releases the container ID when the migration ends.
struct IdGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.active_ids).remove(&self.id);
        self.shared.ids_changed.notify_all();
    }
}

fn receive(
    shared: &Shared,
    mut ch: Channel,
    conn_id: u64,
    peer: SocketAddr,
    mid: String,
    id: String,
) {
    if !valid_id(&id) {
        let _ = ch.send(&Msg::Error {
            reason: format!("invalid container ID {id:?}"),
        });
        return;
    }
    if !lock(&shared.active_ids).insert(id.clone()) {
        let _ = ch.send(&Msg::Error {
            reason: format!("a migration of container {id:?} is already in progress here"),
        });
        return;
    }
    let _guard = IdGuard {
        shared,
        id: id.clone(),
    };
    if lock(&shared.migrations).contains_key(&mid) {
        let _ = ch.send(&Msg::Error {
            reason: format!("migration {mid} was seen before"),
        });
        return;
    }
    shared.set_state(&mid, State::Active(conn_id));
    info!(%peer, container = %id, migration = %mid, "incoming migration");
    let mut s = Session {
        shared,
        mid: mid.clone(),
        id,
        local: ch.local_addr(),
        host: None,
        dest: None,
        source: None,
        rootfs_mode: RootfsMode::Shared,
        created: Vec::new(),
        rootfs_rx: None,
        page_server: None,
        predumps: 0,
        final_dumped: false,
        images_done: false,
        restored: false,
    };
    let result = s.run(&mut ch);
    match result {
        Ok(()) => {
            shared.set_state(&mid, State::Running);
            info!(container = %s.id, migration = %mid, "container running");
        }
        Err(e) => {
            warn!(container = %s.id, migration = %mid, error = %e, "migration failed, cleaning up");
            // Tell the source (if it is still there) before the slow part.
            if !matches!(e, Error::Aborted(_)) {
                ch.set_timeout(Some(Duration::from_secs(2)));
                let _ = ch.send(&Msg::Error {
                    reason: e.to_string(),
                });
            }
            s.abort();
            shared.set_state(&mid, State::Aborted);
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    mid: String,
    id: String,
    local: Option<SocketAddr>,
    host: Option<Box<dyn DestHost>>,
    dest: Option<DestInfo>,
    source: Option<SourceInfo>,
    rootfs_mode: RootfsMode,
    /// Paths this migration created, removed on abort (last first).
    created: Vec<PathBuf>,
    rootfs_rx: Option<TreeReceiver>,
    page_server: Option<PageServer>,
    predumps: u32,
    final_dumped: bool,
    images_done: bool,
    restored: bool,
}

fn out_of_order(m: &Msg) -> Error {
    Error::Unexpected {
        expected: "the next step of the migration",
        got: m.name().to_string(),
    }
}

impl Session<'_> {
    fn host(&mut self) -> &mut dyn DestHost {
        self.host.as_deref_mut().expect("host made at hello")
    }

    fn dest(&self) -> &DestInfo {
        self.dest.as_ref().expect("after preflight")
    }

    fn run(&mut self, ch: &mut Channel) -> Result<(), Error> {
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
            ch.set_timeout(Some(if self.restored { t.reply } else { t.idle }));
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
                Msg::Images
                    if self.final_dumped && self.page_server.is_none() && !self.images_done =>
                {
                    let stats = self.receive_images(ch)?;
                    ch.send(&Msg::TreeOk { stats })?;
                }
                Msg::Restore if self.images_done && !self.restored => {
                    let pid = self.restore()?;
                    ch.send(&Msg::Restored { pid })?;
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
        let plan = match iteration {
            Some(i) if i == self.predumps + 1 => {
                mode::predump_plans(i, Path::new(""), &root, target, &listen, tls.as_ref()).1
            }
            Some(i) => {
                return Err(Error::Refused(format!(
                    "pre-dump iteration {i} out of order (expected {})",
                    self.predumps + 1
                )))
            }
            None => {
                mode::final_dump_plans(
                    self.predumps,
                    Path::new(""),
                    &root,
                    target,
                    &listen,
                    tls.as_ref(),
                )
                .1
            }
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

    fn receive_images(&mut self, ch: &mut Channel) -> Result<crate::files::ReceiveStats, Error> {
        let dir = self.dest().images_dir.join(mode::FINAL_DIR);
        let mut rx = TreeReceiver::new(&dir, self.shared.cfg.limits)?;
        let stats = rx.receive(ch, &mut |_| {})?;
        rx.commit_merge()?;
        self.images_done = true;
        Ok(stats)
    }

    fn restore(&mut self) -> Result<i32, Error> {
        let dest = self.dest().clone();
        let info = self.source.clone().expect("after preflight");
        let rootfs = match self.rootfs_mode {
            RootfsMode::Ship => {
                let rx = self.rootfs_rx.take().ok_or_else(|| {
                    Error::Refused("--rootfs ship, but no rootfs was sent".into())
                })?;
                let target = rx.commit()?;
                self.created.push(target.clone());
                target
            }
            RootfsMode::Shared => info.rootfs.clone(),
        };
        let config = rewrite_root(&info.config_json, self.rootfs_mode, &rootfs)?;
        let cfg_path = dest.bundle_dir.join("config.json");
        write_new(&cfg_path, config.as_bytes())?;
        self.created.push(cfg_path);
        let plan = RestorePlan {
            id: self.id.clone(),
            images_dir: dest.images_dir.join(mode::FINAL_DIR),
            bundle_dir: dest.bundle_dir.clone(),
            rootfs,
            lazy_pages: false,
            hold: true,
            source: info,
        };
        let r = self.host().restore(&plan).map_err(Error::host("restore"))?;
        self.restored = true;
        Ok(r.pid)
    }

    fn remove_images(&mut self) {
        if let Some(d) = &self.dest {
            if let Err(e) = crate::remove::remove_tree(&d.images_dir) {
                warn!(dir = %d.images_dir.display(), error = %e, "cannot remove images");
            }
        }
        self.created.clear();
    }

    fn abort(&mut self) {
        self.rootfs_rx = None;
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
fn check_shared_rootfs(rootfs: &Path, allowed: &[PathBuf]) -> Result<(), Error> {
    let real = match std::fs::canonicalize(rootfs) {
        Ok(r) if r.is_dir() => r,
        _ => {
            return Err(Error::Incompatible(format!(
                "--rootfs shared, but {} is not a directory on this host",
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
            "--rootfs shared: {} is not under a directory this destination allows for shared \
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
fn rewrite_root(config: &str, mode: RootfsMode, rootfs: &Path) -> Result<String, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_holder_does_not_lock_out_later_connections() {
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let held = ids.clone();
        let r = std::thread::spawn(move || {
            let mut g = held.lock().unwrap();
            g.insert("c1".to_string());
            panic!("a connection thread fails while holding the lock");
        })
        .join();
        assert!(r.is_err());
        assert!(ids.is_poisoned());
        assert!(lock(&ids).insert("c2".to_string()));
        assert_eq!(lock(&ids).len(), 2);
    }

    #[test]
    fn config_root_points_at_this_hosts_rootfs() {
        let c = r#"{"ociVersion":"1.0.2","root":{"path":"/var/lib/a/rootfs","readonly":true}}"#;
        let v: serde_json::Value = serde_json::from_str(
            &rewrite_root(c, RootfsMode::Ship, Path::new("/b/x/rootfs")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], true);
        let v: serde_json::Value = serde_json::from_str(
            &rewrite_root(c, RootfsMode::Shared, Path::new("/shared/rootfs")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["root"]["path"], "/shared/rootfs");
        assert!(rewrite_root("[1]", RootfsMode::Ship, Path::new("/x")).is_err());
    }

    #[test]
    fn ids_from_peers_are_checked() {
        for ok in ["counter", "a-b_c.1", "X", "a+b", &"x".repeat(255)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "\u{e9}",
            &"x".repeat(256),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn shared_rootfs_must_be_under_an_allowed_directory() {
        let d = tempfile::tempdir().unwrap();
        let allowed = d.path().join("shared");
        std::fs::create_dir_all(allowed.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), allowed.join("sneaky")).unwrap();
        let ok = check_shared_rootfs(&allowed.join("c1/rootfs"), std::slice::from_ref(&allowed));
        assert!(ok.is_ok(), "{ok:?}");
        for bad in [
            d.path().join("elsewhere"),
            allowed.join("sneaky"),
            allowed.join("c1/../.."),
            allowed.clone(),
            PathBuf::from("/"),
        ] {
            let e = check_shared_rootfs(&bad, std::slice::from_ref(&allowed)).unwrap_err();
            assert!(
                e.to_string().contains("not under a directory"),
                "{bad:?}: {e}"
            );
        }
        let e = check_shared_rootfs(&allowed.join("c1/rootfs"), &[]).unwrap_err();
        assert!(e.to_string().contains("none configured"), "{e}");
        let e = check_shared_rootfs(&allowed.join("missing"), &[allowed]).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
