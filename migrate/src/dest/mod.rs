//! The destination agent (`ferry serve`): accepts migrations, one at a
//! time per container ID and several IDs at once, and cleans up after
//! every one that does not reach `Running`.
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::files::Limits;
use crate::host::DestFactory;
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
        Msg::Status {
            migration_id,
            container_id,
        } => {
            let outcome = status(&shared, &migration_id, container_id.as_deref());
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
/// the commit will never come. One this server has no record of (its
/// server was killed and restarted) is answered from what this host holds
/// of `container` ([`DestFactory::outcome_without_record`]).
fn status(shared: &Shared, mid: &str, container: Option<&str>) -> Outcome {
    let deadline = Instant::now() + shared.cfg.timeouts.work;
    let mut m = lock(&shared.migrations);
    loop {
        match m.get(mid).copied() {
            None => {
                return container
                    .and_then(|c| shared.factory.outcome_without_record(c))
                    .unwrap_or(Outcome::Unknown)
            }
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
        images_rx: None,
        page_server: None,
        predumps: 0,
        final_dumped: false,
        images_done: false,
        restored: false,
        peer: Some(peer),
        lazy: None,
        config_written: false,
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

mod postcopy;
mod session;
#[cfg(test)]
mod tests;

pub use session::valid_id;
use session::Session;
