//! Incoming containers for `ferry serve`: each migration gets a
//! [`Receiver`] from [`Incoming`], which restores the container into this
//! host's state root, bundle directory and cgroup parent, held until the
//! source commits.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use migrate::mode::LazyPagesPlan;
use migrate::{
    DestFactory, DestHost, DestInfo, HostError, PageServer, PageServerPlan, RestorePlan, Restored,
    SourceInfo,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Event, Extra, Hold};
use crate::cgroups::Cgroup;
use crate::container::netns_image;
use crate::container::{HoldError, PreparedRestore, RestoreHold, RestoreOptions};
use crate::network::{self, LockMethod, VethConfig};
use crate::state::StateDir;
use crate::Container;

/// Where incoming containers go on this host.
#[derive(Debug, Clone)]
pub struct DestOptions {
    /// State root (`ferry --root`).
    pub root: PathBuf,
    /// Each container's bundle is `<bundle_dir>/<id>`.
    pub bundle_dir: PathBuf,
    /// Images of migrations in progress (pages included), removed when
    /// each ends. Default: `<bundle_dir>/.incoming`.
    pub images_dir: PathBuf,
    /// Each container's cgroup is `<cgroup_parent>/<id>`; `None`: what
    /// the container's config.json says (or ferry's default).
    pub cgroup_parent: Option<String>,
    pub network_lock: LockMethod,
}

impl DestOptions {
    pub fn new(root: &Path, bundle_dir: &Path) -> DestOptions {
        DestOptions {
            root: root.to_path_buf(),
            bundle_dir: bundle_dir.to_path_buf(),
            images_dir: bundle_dir.join(".incoming"),
            cgroup_parent: None,
            network_lock: LockMethod::Nftables,
        }
    }

    /// This process's own directory for images (so that a restarted server
    /// can tell what a dead one left behind).
    fn own_images_dir(&self) -> PathBuf {
        self.images_dir
            .join(format!("serve-{}", std::process::id()))
    }

    fn cgroup_path(&self, id: &str, config: &oci_spec::runtime::Spec) -> String {
        match &self.cgroup_parent {
            Some(p) => format!("{}/{id}", p.trim_end_matches('/')),
            None => config
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().clone())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("ferry/{id}")),
        }
    }
}

/// Makes a [`Receiver`] per migration; reaps the containers restored here
/// (their inits are children of this process).
pub struct Incoming {
    opts: Arc<DestOptions>,
    reaper: Arc<Reaper>,
}

impl Incoming {
    /// Prepares the directories and removes what a killed server left.
    pub fn new(opts: DestOptions) -> std::io::Result<Incoming> {
        std::fs::create_dir_all(&opts.root)?;
        std::fs::create_dir_all(&opts.bundle_dir)?;
        std::fs::create_dir_all(&opts.images_dir)?;
        sweep(&opts)?;
        Ok(Incoming {
            opts: Arc::new(opts),
            reaper: Reaper::start(),
        })
    }
}

/// Removes images directories of servers that no longer run, and staging
/// directories of receivers that died, under the configured directories.
fn sweep(opts: &DestOptions) -> std::io::Result<()> {
    for e in std::fs::read_dir(&opts.images_dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("serve-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && migrate::host::pid_gone(pid) {
            stop_recorded_page_servers(&e.path());
            remove_abandoned_restores(&e.path(), &opts.root);
            tracing::info!(dir = %e.path().display(), "removing images of a server that is gone");
            // Its CRIU may still be winding down in there (it stops at its
            // next notification): the next start removes what is left.
            if let Err(err) = crate::fs_remove::remove_tree(&e.path()) {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove yet");
            }
        }
    }
    migrate::files::remove_stale_staging(&opts.bundle_dir)?;
    if let Ok(rd) = std::fs::read_dir(&opts.bundle_dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let _ = migrate::files::remove_stale_staging(&e.path());
            }
        }
    }
    Ok(())
}

/// Names the record of a page server started by this server (in its
/// images directory): CRIU forks the page server off, so it outlives the
/// server that asked for it. It runs in the process group of the criu
/// that forked it; the record is named after that group and holds the
/// start time of its leader, and is written before the page server
/// exists, so the next server can stop it whenever this one was killed.
const PAGE_SERVER_RECORD: &str = "page-server-group-";

/// Names the record of a restore in progress (prepared before the freeze,
/// or running), by container ID, in the server's images directory.
const RESTORE_RECORD: &str = "restoring-";

/// Removes the containers a dead server was restoring, as its records in
/// `dir` name them: each still being created, by nobody (its lock free:
/// a creator holds it throughout), and with no restored tree alive. A tree
/// that runs is left alone, even before its state says so: the source may
/// have committed and stayed frozen, and this is then the only copy that
/// runs (`delete -f` removes it).
fn remove_abandoned_restores(dir: &Path, root: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix(RESTORE_RECORD)) else {
            continue;
        };
        if crate::id::validate(id).is_err() {
            continue;
        }
        let free = StateDir::new(root, id).lock_within(Duration::ZERO).is_ok();
        let abandoned = Container::load(root, id).ok().filter(|c| {
            free && c.status() == crate::container::Status::Creating
                && !crate::proc::is_alive(c.state.pid, c.state.pid_start_time)
        });
        if let Some(c) = abandoned {
            tracing::info!(
                container = id,
                "removing a container a server that is gone was restoring"
            );
            if let Err(err) = c.delete(true) {
                tracing::warn!(container = id, error = %err, "cannot remove it");
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// Stops the page servers recorded in a dead server's images directory:
/// the criu processes left in each recorded process group.
fn stop_recorded_page_servers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(group) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PAGE_SERVER_RECORD))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        for pid in criu_in_group(group) {
            tracing::info!(pid, "stopping the page server of a server that is gone");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = migrate::host::wait_pid_gone(pid, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// The criu processes in process group `group`. (A group ID is not given
/// to a new process while the group has members, so while the criu we
/// started has one left the group is still ours.)
fn criu_in_group(group: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold anything.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map(|x| x.1).unwrap_or("");
            let mut f = rest.split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|g| g.parse().ok());
            comm == "criu" && pgrp == Some(group) && !matches!(state, Some("Z" | "X"))
        })
        .collect()
}

impl DestFactory for Incoming {
    fn host(&self, container_id: &str) -> Result<Box<dyn DestHost>, HostError> {
        Ok(Box::new(Receiver {
            opts: self.opts.clone(),
            reaper: self.reaper.clone(),
            id: container_id.to_string(),
            veth: None,
            cgroup_dirs: Vec::new(),
            page_server: None,
            page_server_record: None,
            restoring: None,
            prepared: None,
            restore_record: None,
            state_existed: false,
            lazy: None,
            running_lazy: None,
        }))
    }

    /// A killed server's migration of `container_id`, from this host's state: not here, or
    /// never started and its tree gone, is aborted (the source may resume: nothing runs it
    /// here); started here is this host's; a tree being restored is not known yet (CRIU kills
    /// a tree it held once its server is gone).
    fn outcome_without_record(&self, container_id: &str) -> Option<migrate::proto::Outcome> {
        use crate::container::Status;
        use migrate::proto::Outcome;
        crate::id::validate(container_id).ok()?;
        if !StateDir::new(&self.opts.root, container_id).path.exists() {
            return Some(Outcome::Aborted);
        }
        let c = Container::load(&self.opts.root, container_id).ok()?;
        let alive = crate::proc::is_alive(c.state.pid, c.state.pid_start_time);
        Some(match c.status() {
            Status::Creating if alive => Outcome::InProgress,
            Status::Creating => Outcome::Aborted,
            _ => Outcome::Running,
        })
    }
}

/// Waits for the restored containers' inits (children of this process)
/// when they exit, one pid at a time so no other child is taken.
pub struct Reaper {
    pids: Mutex<HashSet<i32>>,
}

impl Reaper {
    fn start() -> Arc<Reaper> {
        let r = Arc::new(Reaper {
            pids: Mutex::new(HashSet::new()),
        });
        let weak = Arc::downgrade(&r);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(r) = weak.upgrade() else { return };
            let mut pids = r.pids.lock().unwrap_or_else(|e| e.into_inner());
            pids.retain(|&p| {
                matches!(
                    waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                )
            });
        });
        r
    }

    fn add(&self, pid: i32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
    }
}

type RestoreResult = crate::container::Result<crate::container::Restored>;

impl RestoreHold for Hold<RestoreResult> {
    fn restored(&mut self, pid: i32) -> Result<(), HoldError> {
        self.wait(pid, "the restored container is removed")
            .map_err(HoldError::Declined)
    }
}

/// A restore held at CRIU's post-restore notification.
struct Restoring {
    decision: mpsc::Sender<bool>,
    events: mpsc::Receiver<Event<RestoreResult>>,
    thread: JoinHandle<()>,
}

impl Restoring {
    fn release(self, start: bool) -> RestoreResult {
        let _ = self.decision.send(start);
        let mut result = Err(crate::Error::RestoreThreadLost);
        for ev in self.events.iter() {
            if let Event::Done(r) = ev {
                result = r;
            }
        }
        let _ = self.thread.join();
        result
    }
}

/// One incoming container.
pub struct Receiver {
    opts: Arc<DestOptions>,
    reaper: Arc<Reaper>,
    id: String,
    veth: Option<VethConfig>,
    /// The cgroup directories the container will get (checked free).
    cgroup_dirs: Vec<PathBuf>,
    page_server: Option<i32>,
    /// Where the running page server is recorded.
    page_server_record: Option<PathBuf>,
    /// Where the restore in progress is recorded.
    restore_record: Option<PathBuf>,
    restoring: Option<Restoring>,
    /// The restore readied before the freeze, until the images are in.
    prepared: Option<PreparedRestore>,
    /// A state directory of this ID existed when the restore began (an ID
    /// clash): it is not ours to remove.
    state_existed: bool,
    /// Post-copy: CRIU's lazy-pages daemon.
    lazy: Option<super::lazy::Daemon>,
    /// Post-copy: the container runs while pages are still coming; the
    /// guard kills it should this process die.
    running_lazy: Option<crate::freeze_guard::FreezeGuard>,
}

impl Receiver {
    fn state_dir(&self) -> StateDir {
        StateDir::new(&self.opts.root, &self.id)
    }

    fn stop_page_server(&mut self) {
        if let Some(pid) = self.page_server.take() {
            if !migrate::host::pid_gone(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = migrate::host::wait_pid_gone(pid, Duration::from_secs(5));
            }
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        self.forget_page_server();
    }

    fn forget_page_server(&mut self) {
        if let Some(r) = self.page_server_record.take() {
            let _ = std::fs::remove_file(r);
        }
    }

    /// Records the restore in progress, for a server started after this
    /// one died (see [`remove_abandoned_restores`]).
    fn record_restore(&mut self) -> Result<(), HostError> {
        if self.restore_record.is_none() {
            let record = self
                .opts
                .own_images_dir()
                .join(format!("{RESTORE_RECORD}{}", self.id));
            std::fs::write(&record, b"")?;
            self.restore_record = Some(record);
        }
        Ok(())
    }

    fn forget_restore(&mut self) {
        if let Some(r) = self.restore_record.take() {
            let _ = std::fs::remove_file(r);
        }
    }

    /// The options of the restore `plan` asks for.
    fn restore_options(&self, plan: &RestorePlan) -> Result<RestoreOptions, HostError> {
        let extra: Extra = serde_json::from_value(plan.source.extra.clone()).unwrap_or_default();
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&plan.source.config_json)?;
        let mut o = RestoreOptions::new(&plan.id, &plan.bundle_dir, &plan.images_dir);
        o.cgroup_path = Some(self.opts.cgroup_path(&self.id, &spec));
        o.tcp_established = extra.tcp_established;
        o.file_locks = extra.file_locks;
        o.network_lock = self.opts.network_lock;
        o.lazy_pages = plan.lazy_pages;
        Ok(o)
    }

    /// What of this container is still on this host.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let dir = self.state_dir();
        if !self.state_existed && dir.path.exists() {
            left.push(format!("state directory {}", dir.path.display()));
        }
        for d in &self.cgroup_dirs {
            if d.exists() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        if let Some(v) = &self.veth {
            if network::link_exists_on_host(&v.host_if) {
                left.push(format!("interface {}", v.host_if));
            }
        }
        left
    }
}

/// Written into a bundle this server received a container into.
const RECEIVED: &str = ".ferry-received";

impl Receiver {
    /// A bundle this server made for a container that has since left (or
    /// was deleted) is removed, so the container can come back.
    fn remove_stale_bundle(&self) -> Result<(), HostError> {
        let bundle = self.opts.bundle_dir.join(&self.id);
        if bundle.join(RECEIVED).exists() && !self.state_dir().path.exists() {
            tracing::info!(bundle = %bundle.display(), "removing the bundle of a container that left");
            crate::fs_remove::remove_tree(&bundle)
                .map_err(|e| format!("removing the old bundle {}: {e}", bundle.display()))?;
        }
        Ok(())
    }
}

impl DestHost for Receiver {
    fn preflight(&mut self, info: &SourceInfo, _shared: bool) -> Result<DestInfo, HostError> {
        crate::id::validate(&self.id).map_err(|e| format!("container ID {:?}: {e}", self.id))?;
        if self.state_dir().path.exists() {
            return Err(format!("a container {} already exists on this host", self.id).into());
        }
        let criu = super::criu()?;
        // CPU compatibility.
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("cpuinfo.img"),
            info.cpuinfo
                .as_deref()
                .ok_or("the source sent no CPU description")?,
        )?;
        let images = std::fs::File::open(dir.path())?;
        criu.cpuinfo_check(super::dir_opts(&images, "cpuinfo.log"))
            .map_err(|e| format!("this CPU cannot run the container: {e}"))?;
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&info.config_json)
            .map_err(|e| format!("the container's config.json does not parse here: {e}"))?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        self.veth = VethConfig::from_annotations(&annotations)?;
        if let Some(v) = &self.veth {
            if network::link_exists_on_host(&v.host_if) {
                return Err(format!(
                    "interface {} (the container's veth) already exists on this host",
                    v.host_if
                )
                .into());
            }
        }
        // The cgroup must not hold processes already (it would be shared,
        // and removed with them on a rollback).
        let path = self.opts.cgroup_path(&self.id, &spec);
        let cg = Cgroup::create(&path, None)?;
        let busy = cg.pids().map(|p| !p.is_empty()).unwrap_or(true);
        self.cgroup_dirs = cg.descriptor().dirs.values().cloned().collect();
        let _ = cg.remove();
        if busy {
            return Err(format!(
                "cgroup {path} already holds processes on this host (the server's cgroup parent must be one no other container uses)"
            )
            .into());
        }
        self.remove_stale_bundle()?;
        let images_root = self.opts.own_images_dir();
        std::fs::create_dir_all(&images_root)?;
        let (arch, kernel) = migrate::host::uname();
        Ok(DestInfo {
            criu_version: criu.version()?.to_string(),
            kernel,
            arch,
            features: super::features(&criu)?,
            images_dir: images_root.join(crate::id::file_name(
                &self.id,
                &format!("-{}", migrate::random_id()),
            )),
            bundle_dir: self.opts.bundle_dir.join(&self.id),
            free_bytes: migrate::host::free_bytes(&self.opts.images_dir),
            // The session says what its protocol takes.
            early_images: false,
        })
    }

    fn start_page_server(&mut self, plan: &PageServerPlan) -> Result<PageServer, HostError> {
        self.stop_page_server();
        let images = std::fs::File::open(&plan.images_dir)?;
        let mut o = super::dir_opts(&images, "page-server.log");
        let mut ps = crate::proto::rpc::Criu_page_server_info::new();
        ps.set_address(plan.address.clone());
        ps.set_port(i32::from(plan.port));
        o.ps = Some(ps).into();
        if let Some(p) = &plan.parent_img {
            o.set_parent_img(p.clone());
        }
        if let Some(t) = &plan.tls {
            crate::criu::set_tls(&mut o, t);
        }
        o.set_tls_no_cn_verify(plan.tls_no_cn_verify);
        let criu = super::criu()?;
        let mut session = crate::criu::Session::spawn_in_own_group(&criu.binary, &[])?;
        let group = session.pid().ok_or("criu exited at once")? as i32;
        // Recorded for the next server, should this one be killed.
        let record = self
            .opts
            .own_images_dir()
            .join(format!("{PAGE_SERVER_RECORD}{group}"));
        std::fs::write(&record, b"")?;
        self.page_server_record = Some(record);
        let s = session.page_server(o)?;
        drop(session);
        self.page_server = Some(s.pid);
        match crate::criu::page_socket::no_delay_on_listener(s.pid, s.port as u16) {
            Ok(true) => {}
            Ok(false) => tracing::debug!(pid = s.pid, "page server's socket not found"),
            Err(e) => {
                tracing::debug!(pid = s.pid, error = %e, "cannot set the page server's socket")
            }
        }
        Ok(PageServer {
            port: s.port as u16,
            pid: Some(s.pid),
        })
    }

    fn finish_page_server(&mut self, ps: &PageServer, timeout: Duration) -> Result<(), HostError> {
        if let Some(pid) = ps.pid {
            migrate::host::wait_pid_gone(pid, timeout)?;
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        self.page_server = None;
        self.forget_page_server();
        Ok(())
    }

    fn prepare_restore(&mut self, plan: &RestorePlan, early: &Path) -> Result<bool, HostError> {
        self.prepared = None;
        let kept = netns_image::read(early)?;
        let o = self.restore_options(plan)?;
        self.state_existed = self.state_dir().path.exists();
        self.record_restore()?;
        self.prepared = Some(if plan.rootfs_later {
            Container::prepare_restore_before_rootfs(&self.opts.root, &o, kept)?
        } else {
            Container::prepare_restore(&self.opts.root, &o, kept)?
        });
        Ok(true)
    }

    fn restore(&mut self, plan: &RestorePlan) -> Result<Restored, HostError> {
        if plan.lazy_pages && self.lazy.is_none() {
            return Err("a lazy restore needs the lazy-pages daemon first".into());
        }
        let o = self.restore_options(plan)?;
        // Used only if the images record the network namespace the early
        // pass did (the container may have changed it since); dropped, it
        // is undone.
        let prepared = self.prepared.take().filter(|p| {
            let fits = p.fits_images();
            if !fits {
                tracing::info!(container = %self.id, "the images record another network namespace than the restore was prepared for: restoring afresh");
            }
            fits
        });
        let prepared_used = prepared.is_some();
        if !prepared_used {
            self.state_existed = self.state_dir().path.exists();
        }
        self.record_restore()?;
        let root = self.opts.root.clone();
        let (ev_tx, ev_rx) = mpsc::channel();
        let (dec_tx, dec_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("restore".into())
            .spawn(move || {
                let mut hold = Hold {
                    events: ev_tx.clone(),
                    decision: dec_rx,
                };
                let r = match prepared {
                    Some(p) => p.restore(Some(&mut hold)),
                    None => Container::restore_with(&root, &o, Some(&mut hold)),
                };
                let _ = ev_tx.send(Event::Done(r));
            })?;
        match ev_rx.recv() {
            Ok(Event::Held(_, pid)) => {
                self.restoring = Some(Restoring {
                    decision: dec_tx,
                    events: ev_rx,
                    thread,
                });
                Ok(Restored {
                    pid,
                    prepared: prepared_used,
                })
            }
            Ok(Event::Done(r)) => {
                let _ = thread.join();
                match r {
                    Err(e) => Err(super::keep_log(
                        e.to_string(),
                        &plan.images_dir,
                        "restore.log",
                        &self.opts.images_dir,
                        &crate::id::file_name(&self.id, "-restore.log"),
                    )
                    .into()),
                    Ok(_) => Err("the restore finished without stopping before the start".into()),
                }
            }
            Err(_) => {
                let _ = thread.join();
                Err("the restore thread ended without a result".into())
            }
        }
    }

    fn start(&mut self) -> Result<(), HostError> {
        let r = self
            .restoring
            .take()
            .ok_or("no restored container is held")?;
        let restored = r.release(true)?;
        for w in &restored.hook_warnings {
            tracing::warn!(container = %self.id, warning = %w, "poststart hook");
        }
        self.reaper.add(restored.container.state.pid);
        if self.lazy.is_some() {
            // Without its pages the container must not outlive this
            // process: the guard kills it should ferry die first.
            let cg = restored
                .container
                .cgroup()?
                .ok_or("the container has no cgroup")?;
            let g = crate::freeze_guard::FreezeGuard::arm(&crate::freeze_guard::Target {
                freezer: crate::freeze_guard::Freezer::of(&cg)?,
                on_death: crate::freeze_guard::OnDeath::Kill,
                id: &self.id,
                criu: None,
                dump: None,
            });
            match g {
                Ok(g) => self.running_lazy = Some(g),
                Err(e) => {
                    let _ = restored.container.delete(true);
                    return Err(e.into());
                }
            }
        }
        // Marks the bundle as this server's, for when the container leaves.
        let _ = std::fs::write(restored.container.state.bundle.join(RECEIVED), b"");
        self.forget_restore();
        Ok(())
    }

    fn start_lazy_pages(&mut self, plan: &LazyPagesPlan) -> Result<(), HostError> {
        let criu = super::criu()?;
        self.lazy = Some(super::lazy::Daemon::spawn(&criu.binary, plan)?);
        Ok(())
    }

    fn lazy_pages_done(&mut self) -> Result<bool, HostError> {
        let d = self.lazy.as_mut().ok_or("no lazy-pages daemon")?;
        let done = d.done()?;
        if done {
            if let Some(g) = self.running_lazy.take() {
                g.disarm()?;
            }
        }
        Ok(done)
    }

    fn abort(&mut self) -> Result<(), HostError> {
        if let Some(g) = self.running_lazy.take() {
            // Pages are missing: the container cannot go on here.
            if let Ok(c) = Container::load(&self.opts.root, &self.id) {
                c.delete(true)?;
            }
            let _ = g.disarm();
        }
        if let Some(mut d) = self.lazy.take() {
            d.stop();
        }
        self.stop_page_server();
        // Undone as it drops: criu stopped, state, cgroup and namespace removed.
        self.prepared = None;
        if let Some(r) = self.restoring.take() {
            if r.release(false).is_ok() {
                // CRIU let the tree run after all: remove it.
                if let Ok(c) = Container::load(&self.opts.root, &self.id) {
                    c.delete(true)?;
                }
            }
        }
        self.forget_restore();
        let left = self.leftovers();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left on this host after the rollback: {}", left.join(", ")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_server_stops_the_page_servers_a_dead_one_recorded() {
        let Ok(criu) = crate::criu::Criu::new() else {
            crate::test_skip::skip("criu is not installed (scripts/install-deps.sh)");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let opts = DestOptions::new(&tmp.path().join("root"), &tmp.path().join("b"));
        // A server that is gone: a process that has exited.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id() as i32;
        gone.wait().unwrap();
        let dir = opts.images_dir.join(format!("serve-{dead}"));
        std::fs::create_dir_all(&dir).unwrap();
        // What it left: a page server nobody connects to, recorded as
        // start_page_server records it.
        let images = std::fs::File::open(&dir).unwrap();
        let mut o = super::super::dir_opts(&images, "page-server.log");
        let mut ps = crate::proto::rpc::Criu_page_server_info::new();
        ps.set_address("127.0.0.1".into());
        ps.set_port(0);
        o.ps = Some(ps).into();
        let mut session = crate::criu::Session::spawn_in_own_group(&criu.binary, &[]).unwrap();
        let group = session.pid().unwrap() as i32;
        std::fs::write(dir.join(format!("{PAGE_SERVER_RECORD}{group}")), b"").unwrap();
        let pid = session.page_server(o).unwrap().pid;
        drop(session);
        assert_eq!(criu_in_group(group), vec![pid]);
        drop(Incoming::new(opts.clone()).unwrap());
        assert!(migrate::host::pid_gone(pid), "the page server still runs");
        assert!(criu_in_group(group).is_empty());
        assert!(!dir.exists());
    }

    /// A container recorded by a dead server as being restored, still
    /// `creating`: its restored tree (here a `sleep`) may be the only copy
    /// that runs, so it stays while the tree lives, and goes once it is
    /// gone.
    #[test]
    fn a_new_server_removes_a_restore_left_only_without_a_live_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, records) = (tmp.path().join("root"), tmp.path().join("serve-1"));
        std::fs::create_dir_all(&records).unwrap();
        let mut tree = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = tree.id() as i32;
        let dir = StateDir::new(&root, "r1");
        std::fs::create_dir_all(&dir.path).unwrap();
        let state = crate::state::State {
            id: "r1".into(),
            pid,
            pid_start_time: crate::proc::start_time(pid).unwrap(),
            bundle: tmp.path().join("b"),
            rootfs: tmp.path().join("b/rootfs"),
            created: "now".into(),
            annotations: Default::default(),
            cgroup: None,
            veth: None,
            stdio: Vec::new(),
            config: oci_spec::runtime::Spec::default(),
            started: false,
            creating: true,
            no_new_keyring: false,
        };
        dir.save(&state).unwrap();
        // What a restarted server tells a source asking about the migration of r1.
        let incoming = Incoming {
            opts: Arc::new(DestOptions::new(&root, &tmp.path().join("bundles"))),
            reaper: Reaper::start(),
        };
        let asked = || incoming.outcome_without_record("r1");
        use migrate::proto::Outcome;
        assert_eq!(
            asked(),
            Some(Outcome::InProgress),
            "a live tree being restored"
        );
        let record = records.join(format!("{RESTORE_RECORD}r1"));
        std::fs::write(&record, b"").unwrap();
        remove_abandoned_restores(&records, &root);
        assert!(dir.path.exists(), "a container whose tree runs was removed");
        let started = crate::state::State {
            creating: false,
            started: true,
            ..state.clone()
        };
        dir.save(&started).unwrap();
        assert_eq!(asked(), Some(Outcome::Running), "started here");
        dir.save(&state).unwrap();
        tree.kill().unwrap();
        tree.wait().unwrap();
        assert_eq!(asked(), Some(Outcome::Aborted), "never started, tree gone");
        assert_eq!(incoming.outcome_without_record("../x"), None);
        std::fs::write(&record, b"").unwrap();
        // Held by someone: still being created.
        let lock = dir.lock().unwrap();
        remove_abandoned_restores(&records, &root);
        assert!(dir.path.exists(), "a container being created was removed");
        drop(lock);
        std::fs::write(&record, b"").unwrap();
        remove_abandoned_restores(&records, &root);
        assert!(!dir.path.exists(), "the abandoned restore stayed");
        assert!(!record.exists());
        assert_eq!(asked(), Some(Outcome::Aborted), "nothing of it here");
    }

    #[test]
    fn cgroup_goes_under_the_parent_or_where_the_config_says() {
        let mut o = DestOptions::new(Path::new("/r"), Path::new("/b"));
        assert_eq!(o.images_dir, Path::new("/b/.incoming"));
        let spec: oci_spec::runtime::Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/pods/c1"}}"#)
                .unwrap();
        assert_eq!(o.cgroup_path("c1", &spec), "/pods/c1");
        let bare: oci_spec::runtime::Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(o.cgroup_path("c1", &bare), "ferry/c1");
        o.cgroup_parent = Some("hostb/".into());
        assert_eq!(o.cgroup_path("c1", &spec), "hostb/c1");
    }
}
