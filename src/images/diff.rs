//! What changed between two checkpoints (`ferry inspect A --diff B`):
//! processes that appeared or went, and for the others their command
//! line, memory and open files; mounts that appeared or went.
use serde::Serialize;

use super::{Mount, OpenFile, ProcessReport, Summary};

/// A process, by the pid it has in the checkpoint and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessKey {
    pub pid: u32,
    pub comm: String,
}

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

/// How a process present in both checkpoints differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessDiff {
    #[serde(flatten)]
    pub process: ProcessKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<Change<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Change<Option<Vec<String>>>>,
    /// Bytes of memory the dump wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dumped_bytes: Option<Change<u64>>,
    pub files_opened: Vec<OpenFile>,
    pub files_closed: Vec<OpenFile>,
}

impl ProcessDiff {
    fn is_empty(&self) -> bool {
        self.comm.is_none()
            && self.cmdline.is_none()
            && self.dumped_bytes.is_none()
            && self.files_opened.is_empty()
            && self.files_closed.is_empty()
    }
}

/// What changed from one checkpoint to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryDiff {
    pub processes_added: Vec<ProcessKey>,
    pub processes_removed: Vec<ProcessKey>,
    pub processes_changed: Vec<ProcessDiff>,
    pub mounts_added: Vec<Mount>,
    pub mounts_removed: Vec<Mount>,
}

impl SummaryDiff {
    pub fn is_empty(&self) -> bool {
        self.processes_added.is_empty()
            && self.processes_removed.is_empty()
            && self.processes_changed.is_empty()
            && self.mounts_added.is_empty()
            && self.mounts_removed.is_empty()
    }
}

fn key(p: &ProcessReport) -> ProcessKey {
    ProcessKey {
        pid: p.process.pid,
        comm: p.process.comm.clone(),
    }
}

fn change<T: PartialEq + Clone>(a: &T, b: &T) -> Option<Change<T>> {
    (a != b).then(|| Change {
        from: a.clone(),
        to: b.clone(),
    })
}

/// Items of `a` not in `b` (same value, not only the same position).
fn missing<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().filter(|x| !b.contains(x)).cloned().collect()
}

/// Mounts are compared by what a user sees of them (ids change).
fn mount_view(m: &Mount) -> (&str, &str, &str, &str, &str) {
    (&m.mountpoint, &m.fstype, &m.source, &m.root, &m.options)
}

/// What changed from `a` to `b`. Processes are matched by pid: in a
/// container's own pid namespace pids stay the same across checkpoints.
pub fn diff(a: &Summary, b: &Summary) -> SummaryDiff {
    let find =
        |s: &'_ Summary, pid: u32| s.processes.iter().find(|p| p.process.pid == pid).cloned();
    let mut changed = Vec::new();
    for pa in &a.processes {
        let Some(pb) = find(b, pa.process.pid) else {
            continue;
        };
        let bytes = |p: &ProcessReport| p.memory.map(|m| m.dumped_bytes).unwrap_or(0);
        let d = ProcessDiff {
            process: key(&pb),
            comm: change(&pa.process.comm, &pb.process.comm),
            cmdline: change(&pa.cmdline, &pb.cmdline),
            dumped_bytes: change(&bytes(pa), &bytes(&pb)),
            files_opened: missing(&pb.files, &pa.files),
            files_closed: missing(&pa.files, &pb.files),
        };
        if !d.is_empty() {
            changed.push(d);
        }
    }
    let keys = |s: &Summary| s.processes.iter().map(key).collect::<Vec<_>>();
    let pids = |s: &Summary| {
        s.processes
            .iter()
            .map(|p| p.process.pid)
            .collect::<Vec<_>>()
    };
    let (pids_a, pids_b) = (pids(a), pids(b));
    let mounts_only = |x: &Summary, y: &Summary| -> Vec<Mount> {
        x.mounts
            .iter()
            .filter(|m| !y.mounts.iter().any(|n| mount_view(n) == mount_view(m)))
            .cloned()
            .collect()
    };
    SummaryDiff {
        processes_added: keys(b)
            .into_iter()
            .filter(|k| !pids_a.contains(&k.pid))
            .collect(),
        processes_removed: keys(a)
            .into_iter()
            .filter(|k| !pids_b.contains(&k.pid))
            .collect(),
        processes_changed: changed,
        mounts_added: mounts_only(b, a),
        mounts_removed: mounts_only(a, b),
    }
}
