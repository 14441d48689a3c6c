//! Native decoding of a directory of CRIU images: the process tree, each
//! process's command line, environment, memory, open files and sockets, the
//! mounts and namespaces, and the dump statistics.
//!
//! Protobuf schemas for the images read here are ferry's own (`proto/images/`),
//! with the field numbers of CRIU's `images/*.proto`. Every problem in a file
//! is an [`ImageError`] naming the file and the byte offset; nothing here
//! panics on bad input.
//!
//! A process's argv and environment are not stored as such: like
//! checkpointctl, ferry reads them from the dumped memory, the bytes between
//! `mm_arg_start`/`mm_arg_end` (`mm_env_start`/`mm_env_end`) found through
//! the pagemap in `pages-N.img`.
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub mod cgroups;
mod describe;
pub mod diff;
mod files;
mod memory;
mod namespaces;
pub mod root_fs;
mod search;

pub use crate::criu::image::{ErrorKind, ImageError, Result};
pub use describe::{fstype_name, FileKind};
pub use search::{MemoryMatch, Pattern, MAX_MATCH_BYTES};

use crate::criu::image::*;
use crate::proto::inventory::Inventory_entry;
use crate::proto::task::{Core_entry, Pstree_entry, Task_kobj_ids_entry};

/// Longest argv or environment block read from the pages (Linux caps a
/// process's arguments plus environment well below this).
pub const MAX_ARGS_BYTES: u64 = 4 << 20;

/// CRIU's process states (compel/include/uapi/task-state.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Alive,
    Dead,
    Stopped,
    Zombie,
    Unknown,
}

impl TaskState {
    fn from_raw(v: u32) -> TaskState {
        match v {
            0x1 => TaskState::Alive,
            0x2 => TaskState::Dead,
            0x3 => TaskState::Stopped,
            0x6 => TaskState::Zombie,
            _ => TaskState::Unknown,
        }
    }

    /// Whether CRIU dumped this task's memory and files.
    pub fn has_memory(self) -> bool {
        matches!(self, TaskState::Alive | TaskState::Stopped)
    }
}

/// What `inventory.img` records about the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Image format version (2 for every CRIU since 1.x).
    pub image_version: u32,
    /// Ids of the namespaces CRIU ran in when dumping (the host's).
    pub root_ids: Option<NamespaceIds>,
    /// Host uptime at dump time, µs.
    pub dump_uptime_us: Option<u64>,
    pub tcp_close: bool,
    pub network_lock_method: Option<&'static str>,
    pub plugins: Vec<String>,
}

/// CRIU's ids of the kernel objects a task uses (equal ids: shared object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceIds {
    pub vm: u32,
    pub files: u32,
    pub fs: u32,
    pub sighand: u32,
    pub pid_ns: Option<u32>,
    pub net_ns: Option<u32>,
    pub ipc_ns: Option<u32>,
    pub uts_ns: Option<u32>,
    pub mnt_ns: Option<u32>,
    pub user_ns: Option<u32>,
    pub cgroup_ns: Option<u32>,
    pub time_ns: Option<u32>,
}

impl From<&Task_kobj_ids_entry> for NamespaceIds {
    fn from(e: &Task_kobj_ids_entry) -> Self {
        NamespaceIds {
            vm: e.vm_id(),
            files: e.files_id(),
            fs: e.fs_id(),
            sighand: e.sighand_id(),
            pid_ns: e.pid_ns_id,
            net_ns: e.net_ns_id,
            ipc_ns: e.ipc_ns_id,
            uts_ns: e.uts_ns_id,
            mnt_ns: e.mnt_ns_id,
            user_ns: e.user_ns_id,
            cgroup_ns: e.cgroup_ns_id,
            time_ns: e.time_ns_id,
        }
    }
}

/// One task of the dumped tree (ids as seen inside its pid namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: Vec<u32>,
    /// The kernel's task name (`comm`, at most 15 bytes).
    pub comm: String,
    pub state: TaskState,
    pub ids: Option<NamespaceIds>,
}

/// A process's memory as dumped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub page_size: u64,
    /// Number of mappings.
    pub vmas: usize,
    /// Sum of the mappings' sizes (virtual size).
    pub mapped_bytes: u64,
    /// Pages written into this dump's pages image.
    pub dumped_pages: u64,
    /// Pages left in a parent (pre-dump) image.
    pub parent_pages: u64,
    /// Pages to be served lazily (post-copy).
    pub lazy_pages: u64,
    /// `dumped_pages * page_size`.
    pub dumped_bytes: u64,
}

/// An open file descriptor and what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenFile {
    pub fd: u32,
    #[serde(rename = "type")]
    pub kind: FileKind,
    /// A path, `pipe:[ID]`, a socket's addresses, ...
    pub description: String,
}

/// A mount of a dumped mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub id: u32,
    pub parent_id: u32,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
    pub root: String,
    pub options: String,
    /// Bind mount from outside the container (restored by its key).
    pub external: Option<String>,
}

/// A namespace of the root task, and whether CRIU dumped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub kind: &'static str,
    pub id: u32,
    /// True when the images hold this namespace (it was not the host's).
    pub dumped: bool,
}

/// The root task's namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Namespaces {
    pub namespaces: Vec<Namespace>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
}

/// A directory of CRIU images.
#[derive(Debug, Clone)]
pub struct ImageDir {
    path: PathBuf,
}

fn missing_ok<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

fn invalid(path: &Path, offset: u64, msg: String) -> ImageError {
    ImageError::new(path, offset, ErrorKind::Invalid(msg))
}

impl ImageDir {
    /// Opens a directory of CRIU images; it must hold `inventory.img`.
    pub fn open(path: impl AsRef<Path>) -> Result<ImageDir> {
        let path = path.as_ref().to_path_buf();
        let inv = path.join("inventory.img");
        std::fs::metadata(&inv).map_err(|e| ImageError::new(&inv, 0, ErrorKind::Io(e)))?;
        Ok(ImageDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn inventory(&self) -> Result<Inventory> {
        let path = self.file("inventory.img");
        let e: Inventory_entry = read_one(&path, INVENTORY_MAGIC, "inventory entry")?;
        Ok(Inventory {
            image_version: e.img_version(),
            root_ids: e.root_ids.as_ref().map(NamespaceIds::from),
            dump_uptime_us: e.dump_uptime,
            tcp_close: e.tcp_close(),
            network_lock_method: e.network_lock_method.map(|m| match m {
                0 => "iptables",
                1 => "nftables",
                2 => "skip",
                _ => "unknown",
            }),
            plugins: e
                .plugins_entry
                .as_ref()
                .map(|p| p.plugins.clone())
                .unwrap_or_default(),
        })
    }

    pub(crate) fn pstree(&self) -> Result<Vec<Pstree_entry>> {
        let path = self.file("pstree.img");
        let entries: Vec<Pstree_entry> = read_all(&path, PSTREE_MAGIC, "pstree entry")?;
        if entries.is_empty() {
            return Err(ImageError::new(
                &path,
                8,
                ErrorKind::EntryCount {
                    what: "pstree entries",
                    expected: "at least one",
                    found: 0,
                },
            ));
        }
        Ok(entries)
    }

    pub(crate) fn core(&self, pid: u32) -> Result<Core_entry> {
        read_one(
            &self.file(&format!("core-{pid}.img")),
            CORE_MAGIC,
            "core entry",
        )
    }

    /// ids-PID.img (where CRIU 4 keeps a task's object ids).
    fn ids(&self, pid: u32) -> Result<Option<NamespaceIds>> {
        let path = self.file(&format!("ids-{pid}.img"));
        Ok(missing_ok(read_one::<Task_kobj_ids_entry>(
            &path,
            IDS_MAGIC,
            "ids entry",
        ))?
        .map(|e| NamespaceIds::from(&e)))
    }

    /// The dumped tasks, root first, in CRIU's order (parents before children).
    pub fn process_tree(&self) -> Result<Vec<Process>> {
        let mut out = Vec::new();
        for e in self.pstree()? {
            let path = self.file(&format!("core-{}.img", e.pid()));
            let core = self.core(e.pid())?;
            let tc = core
                .tc
                .as_ref()
                .ok_or_else(|| invalid(&path, 8, "core entry has no task section (tc)".into()))?;
            out.push(Process {
                pid: e.pid(),
                ppid: e.ppid(),
                pgid: e.pgid(),
                sid: e.sid(),
                threads: e.threads.clone(),
                comm: tc.comm().to_string(),
                state: TaskState::from_raw(tc.task_state()),
                ids: match core.ids.as_ref() {
                    Some(ids) => Some(NamespaceIds::from(ids)),
                    None => self.ids(e.pid())?,
                },
            });
        }
        Ok(out)
    }

    fn process(&self, pid: u32) -> Result<Process> {
        self.process_tree()?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| invalid(&self.file("pstree.img"), 0, format!("no process {pid}")))
    }

    /// `stats-dump`, if CRIU left it in this directory.
    pub fn dump_stats(&self) -> Result<Option<crate::criu::DumpStats>> {
        if !self.file(crate::criu::stats::DUMP_STATS_FILE).exists() {
            return Ok(None);
        }
        crate::criu::read_dump_stats(&self.path).map(Some)
    }

    /// The CRIU release that wrote the images, from the `Version:` line of
    /// a dump log in the directory (CRIU does not record it in the images).
    pub fn criu_version_from_log(&self) -> Option<String> {
        let rd = std::fs::read_dir(&self.path).ok()?;
        let mut logs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".log") && n.contains("dump"))
            })
            .collect();
        logs.sort();
        for log in logs {
            let Ok(f) = File::open(&log) else { continue };
            let mut head = String::new();
            // The version is among the first lines.
            let _ = f.take(64 * 1024).read_to_string(&mut head);
            for line in head.lines() {
                if let Some(rest) = line.split("Version: ").nth(1) {
                    if let Some(v) = rest.split_whitespace().next() {
                        return Some(v.to_string());
                    }
                }
            }
        }
        None
    }

    /// Everything `ferry inspect` shows; environments only with `env`.
    pub fn summary(&self, env: bool) -> Result<Summary> {
        let inventory = self.inventory()?;
        let tree = self.process_tree()?;
        let files = self.files()?;
        let mut processes = Vec::new();
        for p in tree {
            let alive = p.state.has_memory();
            let (cmdline, environ, memory, paths) = if alive {
                (
                    self.cmdline(p.pid)?,
                    if env { self.environ(p.pid)? } else { None },
                    Some(self.memory(p.pid)?),
                    self.paths_with(p.pid, &files)?,
                )
            } else {
                (None, None, None, ProcessPaths::default())
            };
            let open_files = self.open_files_with(&p, &files)?;
            processes.push(ProcessReport {
                process: p,
                cmdline,
                env: environ,
                paths,
                memory,
                files: open_files,
            });
        }
        Ok(Summary {
            images_dir: self.path.clone(),
            image_version: inventory.image_version,
            criu_version: self.criu_version_from_log(),
            network_lock_method: inventory.network_lock_method,
            processes,
            mounts: self.mounts()?,
            namespaces: self.namespaces()?,
            dump_stats: self.dump_stats()?,
        })
    }
}

/// A process's executable, working directory and root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessPaths {
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub root: Option<String>,
}

/// One process with everything read about it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    #[serde(flatten)]
    pub process: Process,
    pub cmdline: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(flatten)]
    pub paths: ProcessPaths,
    pub memory: Option<Memory>,
    pub files: Vec<OpenFile>,
}

/// What a directory of images holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub images_dir: PathBuf,
    pub image_version: u32,
    pub criu_version: Option<String>,
    pub network_lock_method: Option<&'static str>,
    pub processes: Vec<ProcessReport>,
    pub mounts: Vec<Mount>,
    pub namespaces: Namespaces,
    pub dump_stats: Option<crate::criu::DumpStats>,
}

/// The page size images of this host's architecture use.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
