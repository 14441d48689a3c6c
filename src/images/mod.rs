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
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

mod describe;

pub use crate::criu::image::{ErrorKind, ImageError, Result};
pub use describe::{fstype_name, FileKind};

use crate::criu::image::*;
use crate::proto::files::{Fdinfo_entry, File_entry};
use crate::proto::inventory::Inventory_entry;
use crate::proto::memory::{Mm_entry, Pagemap_entry, Pagemap_head};
use crate::proto::namespaces::{Mnt_entry, Utsns_entry};
use crate::proto::task::{Core_entry, Fs_entry, Pstree_entry, Task_kobj_ids_entry};

/// CRIU's pagemap flags (criu/include/pagemap.h).
const PE_PARENT: u32 = 1 << 0;
const PE_LAZY: u32 = 1 << 1;
const PE_PRESENT: u32 = 1 << 2;

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

/// A pagemap entry with where its pages sit in the pages image.
#[derive(Debug, Clone, Copy)]
struct PageRun {
    vaddr: u64,
    nr_pages: u64,
    flags: u32,
    /// Offset in `pages-N.img`, for present runs.
    file_offset: u64,
    /// Offset of the entry in the pagemap image, for errors.
    entry_at: u64,
}

struct Pagemap {
    path: PathBuf,
    pages_id: u32,
    runs: Vec<PageRun>,
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

    fn pstree(&self) -> Result<Vec<Pstree_entry>> {
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

    fn core(&self, pid: u32) -> Result<Core_entry> {
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

    fn mm(&self, pid: u32) -> Result<Mm_entry> {
        read_one(&self.file(&format!("mm-{pid}.img")), MM_MAGIC, "mm entry")
    }

    fn pagemap(&self, pid: u32) -> Result<Pagemap> {
        let path = self.file(&format!("pagemap-{pid}.img"));
        let mut r = EntryReader::open(&path, PAGEMAP_MAGIC)?;
        let head: Pagemap_head = r.next("pagemap head")?.ok_or_else(|| {
            ImageError::new(
                &path,
                8,
                ErrorKind::EntryCount {
                    what: "pagemap head",
                    expected: "one",
                    found: 0,
                },
            )
        })?;
        let mut runs = Vec::new();
        let mut file_offset = 0u64;
        let page = page_size();
        loop {
            let at = r.offset();
            let Some(e) = r.next::<Pagemap_entry>("pagemap entry")? else {
                break;
            };
            // Older images: in_parent instead of flags, compat_nr_pages
            // instead of nr_pages (criu/pagemap.c init_compat_pagemap_entry).
            let flags = if e.in_parent() {
                PE_PARENT
            } else {
                e.flags.unwrap_or(PE_PRESENT)
            };
            let nr_pages = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages()));
            let run = PageRun {
                vaddr: e.vaddr(),
                nr_pages,
                flags,
                file_offset,
                entry_at: at,
            };
            if flags & PE_PRESENT != 0 {
                let bytes = nr_pages
                    .checked_mul(page)
                    .and_then(|b| b.checked_add(file_offset))
                    .ok_or_else(|| {
                        invalid(
                            &path,
                            at,
                            format!("pagemap entry of {nr_pages} pages overflows"),
                        )
                    })?;
                file_offset = bytes;
            }
            runs.push(run);
        }
        Ok(Pagemap {
            path,
            pages_id: head.pages_id(),
            runs,
        })
    }

    /// The (address, pages) runs of process `pid` left for lazy restore.
    pub fn lazy_ranges(&self, pid: u32) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .pagemap(pid)?
            .runs
            .iter()
            .filter(|r| r.flags & PE_LAZY != 0)
            .map(|r| (r.vaddr, r.nr_pages))
            .collect())
    }

    /// The memory of process `pid` (all zero for a zombie).
    pub fn memory(&self, pid: u32) -> Result<Memory> {
        let page = page_size();
        let mut m = Memory {
            page_size: page,
            ..Memory::default()
        };
        let Some(mm) = missing_ok(self.mm(pid))? else {
            return Ok(m);
        };
        m.vmas = mm.vmas.len();
        m.mapped_bytes = mm
            .vmas
            .iter()
            .map(|v| v.end().saturating_sub(v.start()))
            .fold(0u64, u64::saturating_add);
        let pm = self.pagemap(pid)?;
        for r in &pm.runs {
            if r.flags & PE_PRESENT != 0 {
                m.dumped_pages = m.dumped_pages.saturating_add(r.nr_pages);
            } else if r.flags & PE_PARENT != 0 {
                m.parent_pages = m.parent_pages.saturating_add(r.nr_pages);
            }
            if r.flags & PE_LAZY != 0 && r.flags & PE_PRESENT == 0 {
                m.lazy_pages = m.lazy_pages.saturating_add(r.nr_pages);
            }
        }
        m.dumped_bytes = m.dumped_pages.saturating_mul(page);
        // The pages image must hold every present page.
        let pages = self.file(&format!("pages-{}.img", pm.pages_id));
        if m.dumped_pages > 0 {
            let len = std::fs::metadata(&pages)
                .map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?
                .len();
            if len < m.dumped_bytes {
                return Err(ImageError::new(
                    &pages,
                    len,
                    ErrorKind::Truncated {
                        what: "dumped pages",
                        needed: m.dumped_bytes,
                        available: len,
                    },
                ));
            }
        }
        Ok(m)
    }

    /// Reads `len` bytes of process memory at `addr` from the dumped pages.
    /// `Ok(None)` when (part of) the range was not dumped into these images.
    fn read_memory(&self, pm: &Pagemap, addr: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let page = page_size();
        let pages = self.file(&format!("pages-{}.img", pm.pages_id));
        let mut f: Option<File> = None;
        let mut out = Vec::with_capacity(len.min(MAX_ARGS_BYTES) as usize);
        let mut cur = addr;
        let end = addr.saturating_add(len);
        while cur < end {
            // Runs come from the images: a run reaching past the top of
            // the address space ends there.
            let run_end = |r: &PageRun| r.vaddr.saturating_add(r.nr_pages.saturating_mul(page));
            let run = pm.runs.iter().find(|r| r.vaddr <= cur && cur < run_end(r));
            let Some(run) = run else { return Ok(None) };
            if run.flags & PE_PRESENT == 0 {
                return Ok(None);
            }
            let chunk = end.min(run_end(run)) - cur;
            // pagemap() checked that a present run's pages fit in u64.
            let off = run.file_offset + (cur - run.vaddr);
            if f.is_none() {
                f = Some(
                    File::open(&pages).map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?,
                );
            }
            let file = f.as_mut().expect("opened above");
            let io = |e| ImageError::new(&pages, off, ErrorKind::Io(e));
            let flen = file.metadata().map_err(io)?.len();
            if off.checked_add(chunk).is_none_or(|e| e > flen) {
                return Err(ImageError::new(
                    &pm.path,
                    run.entry_at,
                    ErrorKind::Invalid(format!(
                        "pages at {:#x} lie beyond the end of {} ({flen} bytes)",
                        cur,
                        pages.display()
                    )),
                ));
            }
            file.seek(SeekFrom::Start(off)).map_err(io)?;
            let start = out.len();
            out.resize(start + chunk as usize, 0);
            file.read_exact(&mut out[start..]).map_err(io)?;
            cur += chunk;
        }
        Ok(Some(out))
    }

    fn strings_at(&self, pid: u32, env: bool) -> Result<Option<Vec<String>>> {
        let Some(mm) = missing_ok(self.mm(pid))? else {
            return Ok(None);
        };
        let (start, end) = if env {
            (mm.mm_env_start(), mm.mm_env_end())
        } else {
            (mm.mm_arg_start(), mm.mm_arg_end())
        };
        if end <= start {
            return Ok(Some(Vec::new()));
        }
        let len = end - start;
        if len > MAX_ARGS_BYTES {
            return Err(invalid(
                &self.file(&format!("mm-{pid}.img")),
                8,
                format!(
                    "{} area of {len} bytes exceeds {MAX_ARGS_BYTES}",
                    if env { "environment" } else { "argument" }
                ),
            ));
        }
        let pm = self.pagemap(pid)?;
        let Some(bytes) = self.read_memory(&pm, start, len)? else {
            return Ok(None);
        };
        let mut v: Vec<String> = bytes
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        while v.last().is_some_and(|s| s.is_empty()) {
            v.pop();
        }
        Ok(Some(v))
    }

    /// Process `pid`'s argv, read from its dumped memory. `None` when the
    /// pages are not in these images (zombie, lazy or parent pages).
    pub fn cmdline(&self, pid: u32) -> Result<Option<Vec<String>>> {
        self.strings_at(pid, false)
    }

    /// Process `pid`'s environment (`NAME=value` strings), like [`Self::cmdline`].
    pub fn environ(&self, pid: u32) -> Result<Option<Vec<String>>> {
        self.strings_at(pid, true)
    }

    /// files.img, by id.
    fn files(&self) -> Result<HashMap<u32, File_entry>> {
        let path = self.file("files.img");
        let Some(mut r) = missing_ok(EntryReader::open(&path, FILES_MAGIC))? else {
            return Ok(HashMap::new());
        };
        let mut map = HashMap::new();
        while let Some(e) = r.next::<File_entry>("file entry")? {
            map.insert(e.id(), e);
        }
        Ok(map)
    }

    fn describe_id(&self, files: &HashMap<u32, File_entry>, id: u32) -> Option<String> {
        files.get(&id).map(|f| describe::describe(f).1)
    }

    /// Process `pid`'s open descriptors, sorted by number.
    pub fn open_files(&self, pid: u32) -> Result<Vec<OpenFile>> {
        let p = self.process(pid)?;
        let files = self.files()?;
        self.open_files_with(&p, &files)
    }

    fn open_files_with(
        &self,
        p: &Process,
        files: &HashMap<u32, File_entry>,
    ) -> Result<Vec<OpenFile>> {
        if !p.state.has_memory() {
            return Ok(Vec::new());
        }
        let Some(ids) = p.ids else {
            return Ok(Vec::new());
        };
        let path = self.file(&format!("fdinfo-{}.img", ids.files));
        let Some(entries) = missing_ok(read_all::<Fdinfo_entry>(
            &path,
            FDINFO_MAGIC,
            "fdinfo entry",
        ))?
        else {
            return Ok(Vec::new());
        };
        let mut out: Vec<OpenFile> = entries
            .iter()
            .map(|fd| {
                let (kind, description) = match files.get(&fd.id()) {
                    Some(f) => describe::describe(f),
                    None => (
                        FileKind::from_type(fd.type_()),
                        format!("(no entry {} in files.img)", fd.id()),
                    ),
                };
                OpenFile {
                    fd: fd.fd(),
                    kind,
                    description,
                }
            })
            .collect();
        out.sort_by_key(|f| f.fd);
        Ok(out)
    }

    /// The executable, working and root directories of process `pid`.
    pub fn paths(&self, pid: u32) -> Result<ProcessPaths> {
        let files = self.files()?;
        self.paths_with(pid, &files)
    }

    fn paths_with(&self, pid: u32, files: &HashMap<u32, File_entry>) -> Result<ProcessPaths> {
        let mut out = ProcessPaths::default();
        if let Some(mm) = missing_ok(self.mm(pid))? {
            out.exe = self.describe_id(files, mm.exe_file_id());
        }
        let fs_path = self.file(&format!("fs-{pid}.img"));
        if let Some(fs) = missing_ok(read_one::<Fs_entry>(&fs_path, FS_MAGIC, "fs entry"))? {
            out.cwd = self.describe_id(files, fs.cwd_id());
            out.root = self.describe_id(files, fs.root_id());
        }
        Ok(out)
    }

    /// The root task's ids. (The inventory's `root_ids` are CRIU's own,
    /// the namespaces the tree was dumped from.)
    fn root_ids(&self) -> Result<Option<NamespaceIds>> {
        let tree = self.process_tree()?;
        match tree.first().and_then(|p| p.ids) {
            Some(ids) => Ok(Some(ids)),
            None => Ok(self.inventory()?.root_ids),
        }
    }

    /// Mounts of the root task's mount namespace; empty when CRIU did not
    /// dump it (the tree shared the host's mount namespace).
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        let Some(id) = self.root_ids()?.and_then(|i| i.mnt_ns) else {
            return Ok(Vec::new());
        };
        let path = self.file(&format!("mountpoints-{id}.img"));
        let Some(entries) = missing_ok(read_all::<Mnt_entry>(&path, MNTS_MAGIC, "mount entry"))?
        else {
            return Ok(Vec::new());
        };
        Ok(entries
            .iter()
            .map(|m| Mount {
                id: m.mnt_id(),
                parent_id: m.parent_mnt_id(),
                mountpoint: m.mountpoint().to_string(),
                fstype: m
                    .fsname
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| fstype_name(m.fstype()).to_string()),
                source: m.source().to_string(),
                root: m.root().to_string(),
                options: m.options().to_string(),
                external: if m.ext_mount() {
                    Some(m.ext_key.clone().unwrap_or_default())
                } else {
                    None
                },
            })
            .collect())
    }

    /// The root task's namespaces and which of them are in the images.
    pub fn namespaces(&self) -> Result<Namespaces> {
        let mut out = Namespaces::default();
        let Some(ids) = self.root_ids()? else {
            return Ok(out);
        };
        let exists = |name: String| self.file(&name).exists();
        let kinds: [(&'static str, Option<u32>, Option<String>); 8] = [
            (
                "pid",
                ids.pid_ns,
                ids.pid_ns.map(|i| format!("pidns-{i}.img")),
            ),
            (
                "net",
                ids.net_ns,
                ids.net_ns.map(|i| format!("netns-{i}.img")),
            ),
            (
                "ipc",
                ids.ipc_ns,
                ids.ipc_ns.map(|i| format!("ipcns-var-{i}.img")),
            ),
            (
                "uts",
                ids.uts_ns,
                ids.uts_ns.map(|i| format!("utsns-{i}.img")),
            ),
            (
                "mnt",
                ids.mnt_ns,
                ids.mnt_ns.map(|i| format!("mountpoints-{i}.img")),
            ),
            (
                "user",
                ids.user_ns,
                ids.user_ns.map(|i| format!("userns-{i}.img")),
            ),
            ("cgroup", ids.cgroup_ns, None),
            (
                "time",
                ids.time_ns,
                ids.time_ns.map(|i| format!("timens-{i}.img")),
            ),
        ];
        for (kind, id, file) in kinds {
            let Some(id) = id else { continue };
            out.namespaces.push(Namespace {
                kind,
                id,
                dumped: file.is_some_and(exists),
            });
        }
        if let Some(id) = ids.uts_ns {
            let path = self.file(&format!("utsns-{id}.img"));
            if let Some(u) = missing_ok(read_one::<Utsns_entry>(&path, UTSNS_MAGIC, "utsns entry"))?
            {
                out.hostname = Some(u.nodename().to_string());
                out.domainname = Some(u.domainname().to_string());
            }
        }
        Ok(out)
    }

    /// `stats-dump`, if CRIU left it in this directory.
    pub fn dump_stats(&self) -> Result<Option<crate::criu::DumpStats>> {
        if !self.file(crate::criu::stats::DUMP_STATS_FILE).exists() {
            return Ok(None);
        }
        crate::criu::read_dump_stats(&self.path)
            .map(Some)
            .map_err(|e| ImageError {
                path: e.path,
                offset: e.offset,
                kind: ErrorKind::Invalid(e.kind.to_string()),
            })
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
