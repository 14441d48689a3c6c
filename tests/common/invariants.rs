//! What must hold after `ferry delete --force` of a container, whatever
//! happened to the ferry commands before it: no process, no mount below
//! the state root, no cgroup directory in any hierarchy, no veth, no CRIU
//! network-lock table, no state directory, and the bundle's rootfs exactly
//! as it was.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Env, NetNs};

/// Every file below a rootfs: type, size, mode and content checksum (or
/// link target), keyed by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSnapshot(pub BTreeMap<PathBuf, String>);

impl TreeSnapshot {
    pub fn take(root: &Path) -> TreeSnapshot {
        use std::os::unix::fs::MetadataExt;
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let ft = md.file_type();
                let what = if ft.is_symlink() {
                    format!("link {}", std::fs::read_link(&p).unwrap().display())
                } else if ft.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", md.mode())
                } else if ft.is_file() {
                    let data = std::fs::read(&p).unwrap();
                    format!(
                        "file {:o} {} {:08x}",
                        md.mode(),
                        md.len(),
                        crc32fast::hash(&data)
                    )
                } else {
                    format!("other {:o}", md.mode())
                };
                out.insert(rel, what);
            }
        }
        TreeSnapshot(out)
    }

    /// Panics with the differences if `other` is not the same tree.
    pub fn assert_same(&self, other: &TreeSnapshot, context: &str) {
        if self == other {
            return;
        }
        let mut diff = Vec::new();
        for (k, v) in &self.0 {
            match other.0.get(k) {
                None => diff.push(format!("missing {}", k.display())),
                Some(w) if w != v => diff.push(format!("changed {}: {v} -> {w}", k.display())),
                _ => {}
            }
        }
        for k in other.0.keys().filter(|k| !self.0.contains_key(*k)) {
            diff.push(format!("added {}", k.display()));
        }
        diff.truncate(20);
        panic!(
            "{context}: the bundle's rootfs changed:\n{}",
            diff.join("\n")
        );
    }
}

/// Mount points at or below `dir` in this mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// The directory of relative cgroup path `rel` in *every* mounted
/// hierarchy (v1 controllers, named ones such as name=systemd, and the
/// unified one of a hybrid host), below this process's own cgroup there.
pub fn cgroup_dirs_everywhere(rel: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // (fstype, mount root, mount point, super options)
    let mounts: Vec<(String, String, String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let fstype = post.first()?.to_string();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let opts = post
                .get(2)
                .map(|o| o.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            Some((fstype, pre[3].to_string(), pre[4].to_string(), opts))
        })
        .collect();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or(""));
        let wanted: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
        for (fstype, root, point, opts) in &mounts {
            let matches = if wanted.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && wanted.iter().all(|w| opts.iter().any(|o| o == w))
            };
            if !matches {
                continue;
            }
            let below = Path::new(path)
                .strip_prefix(root)
                .unwrap_or(Path::new(path))
                .to_path_buf();
            let below = below.strip_prefix("/").unwrap_or(&below).to_path_buf();
            out.push(Path::new(point).join(below).join(rel));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Processes that belong to container `id`: in its cgroup, or carrying
/// the ID on their command line (a ferry, or an init not yet in its cgroup).
pub fn processes_of(id: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let cg = format!("/ferry/{id}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroups = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let in_cgroup = cgroups
            .lines()
            .any(|l| l.ends_with(&cg) || l.contains(&format!("{cg}/")));
        if in_cgroup || cmdline.split(' ').any(|a| a == id) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// Names of the nft tables in `ns` that CRIU made (`CRIU-<run id>`).
pub fn criu_tables(ns: &NetNs) -> Vec<String> {
    let out = ns.exec(&["nft", "list", "tables"]);
    assert!(out.status.success(), "nft list tables: {:?}", out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|t| t.starts_with("CRIU"))
        .map(str::to_string)
        .collect()
}

/// Whether interface `name` exists in `ns`.
pub fn has_link(ns: &NetNs, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", "dev", name])
        .status
        .success()
}

/// Asserts that nothing of container `id` is left anywhere. `net` is the
/// namespace ferry ran in and the name of the container's host veth, if any.
pub fn assert_nothing_left(
    env: &Env,
    id: &str,
    net: Option<(&NetNs, Option<&str>)>,
    context: &str,
) {
    let state = env.root.path().join(id);
    assert!(
        !state.exists(),
        "{context}: state dir {} left",
        state.display()
    );
    let mounts = mounts_below(env.root.path());
    assert!(
        mounts.is_empty(),
        "{context}: mounts left below the state root: {mounts:?}"
    );
    let procs = super::wait_until(std::time::Duration::from_secs(2), || {
        processes_of(id).is_empty()
    });
    assert!(procs, "{context}: processes left: {:?}", processes_of(id));
    for dir in cgroup_dirs_everywhere(&format!("ferry/{id}")) {
        assert!(!dir.exists(), "{context}: cgroup {} left", dir.display());
    }
    if let Some((ns, veth)) = net {
        if let Some(v) = veth {
            assert!(!has_link(ns, v), "{context}: veth {v} left");
        }
        let tables = criu_tables(ns);
        assert!(
            tables.is_empty(),
            "{context}: CRIU nft tables left: {tables:?}"
        );
    }
}
