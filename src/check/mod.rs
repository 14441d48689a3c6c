//! Host readiness: what ferry can do on this machine, measured by asking
//! CRIU and by trying, never guessed from versions.
//!
//! Each capability is measured as follows:
//! - `checkpoint-restore`: CRIU's own `check` (RPC CHECK: the kernel
//!   features every dump and restore needs).
//! - `tcp-established`: TCP repair mode works (part of `criu check`) and a
//!   network lock method is available; half-closed connection support is
//!   reported from `criu check --feature tcp_half_closed`.
//! - `page-server`: a page server is really started on 127.0.0.1 and stopped.
//! - `pre-copy`: FEATURE_CHECK `mem_track` (soft-dirty page tracking).
//! - `post-copy`: FEATURE_CHECK `lazy_pages`, then a real lazy-pages dump of
//!   a throwaway `sleep` process (the feature check can say yes where the
//!   dump still fails).
//! - `network-lock`: `criu check --feature has_ipt_legacy` / an
//!   `iptables-restore` on PATH for iptables, `criu check --feature
//!   network_lock_nftables` for nftables.
//! - `tls`: a page server started with `--tls` and a throwaway certificate
//!   (made by ferry's own certificate code, as `ferry certs` makes them)
//!   must answer a TLS ClientHello with a TLS record. A CRIU built without
//!   GnuTLS silently ignores `--tls`.
//! - `cgroup-freezer`, `cgroup-devices`, `cgroup-namespace`: tried in a
//!   throwaway cgroup where containers go (`cgroups.rs`), which also
//!   yields the controllers a container gets here.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::criu::{Criu, Features};

mod cgroups;
mod lazy;
mod page_server;
mod tls;

pub use crate::cgroups::CgroupLayout;
pub use lazy::SLEEPER_MARK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Works,
    Unavailable,
}

/// One capability and why it has the status it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuInfo {
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    pub error: Option<String>,
    /// FEATURE_CHECK answers, when criu could be asked.
    pub features: Option<Features>,
    /// Where CRIU finds its kernel-facts cache (see `criu::kdat_cache`), or why it has none.
    #[serde(default)]
    pub kernel_facts_cache: Option<String>,
    /// Whether CRIU's hardware breakpoints find the kernel's perf hooks on (see
    /// `criu::perf_hooks`), or why they wait for them.
    #[serde(default)]
    pub breakpoint_hooks: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub release: String,
    pub version: String,
}

/// The whole report of `ferry check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub criu: CriuInfo,
    pub kernel: Kernel,
    pub cgroups: CgroupLayout,
    /// The controllers a container's cgroup gets here (measured).
    #[serde(default)]
    pub cgroup_controllers: Vec<String>,
    /// How a new process gets into a container's cgroup here, and whether
    /// that waits for an RCU grace period.
    #[serde(default)]
    pub cgroup_join: Option<String>,
    /// Network lock methods CRIU can use here, in preference order.
    pub network_lock_methods: Vec<String>,
    pub capabilities: Vec<Capability>,
}

impl Report {
    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name == name)
    }
}

pub const CHECKPOINT_RESTORE: &str = "checkpoint-restore";
pub const TCP_ESTABLISHED: &str = "tcp-established";
pub const PAGE_SERVER: &str = "page-server";
pub const PRE_COPY: &str = "pre-copy";
pub const POST_COPY: &str = "post-copy";
pub const NETWORK_LOCK: &str = "network-lock";
pub const TLS: &str = "tls";

pub use cgroups::{CGROUP_DEVICES, CGROUP_FREEZER, CGROUP_NAMESPACE};

/// Every capability, in the order the report lists them.
const CAPABILITIES: [&str; 10] = [
    CHECKPOINT_RESTORE,
    TCP_ESTABLISHED,
    PAGE_SERVER,
    PRE_COPY,
    POST_COPY,
    NETWORK_LOCK,
    TLS,
    CGROUP_FREEZER,
    CGROUP_DEVICES,
    CGROUP_NAMESPACE,
];

fn cap(name: &str, works: bool, detail: impl Into<String>) -> Capability {
    Capability {
        name: name.to_string(),
        status: if works {
            Status::Works
        } else {
            Status::Unavailable
        },
        detail: detail.into(),
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn kernel() -> Kernel {
    Kernel {
        release: read_trim("/proc/sys/kernel/osrelease"),
        version: read_trim("/proc/sys/kernel/version"),
    }
}

/// `criu check --feature NAME`: whether it passed, and CRIU's last words.
pub fn criu_feature(criu: &Criu, name: &str) -> (bool, String) {
    match Command::new(&criu.binary)
        .args(["check", "--feature", name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let last = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !crate::criu::log::is_harmless(l))
                .unwrap_or("")
                .to_string();
            (out.status.success(), last)
        }
        Err(e) => (false, format!("cannot run {}: {e}", criu.binary.display())),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs every check. Starts (and stops) a page server, a throwaway `sleep`
/// process for the post-copy try, and criu itself several times; takes a
/// few seconds.
pub fn run() -> Report {
    let kernel = kernel();
    let cgroups = CgroupLayout::host();
    let (cgroup_controllers, cgroup_join, cgroup_caps) = cgroups::probe();
    let criu = match Criu::new() {
        Ok(c) => c,
        Err(e) => {
            let mut r = without_criu(kernel, cgroups, e.to_string());
            r.cgroup_controllers = cgroup_controllers;
            r.cgroup_join = cgroup_join;
            r.capabilities
                .retain(|c| !cgroup_caps.iter().any(|m| m.name == c.name));
            r.capabilities.extend(cgroup_caps);
            r.capabilities
                .sort_by_key(|c| CAPABILITIES.iter().position(|o| *o == c.name));
            return r;
        }
    };
    let mut info = CriuInfo {
        path: Some(criu.binary.clone()),
        version: None,
        error: None,
        features: None,
        kernel_facts_cache: Some(crate::criu::kdat_cache::ensure(&criu.binary).to_string()),
        breakpoint_hooks: Some(match crate::criu::perf_hooks::available() {
            Ok(()) => "turned on ahead of CRIU's breakpoints (a placeholder perf event)".into(),
            Err(e) => format!(
                "cannot be turned on ahead ({e}): CRIU's first breakpoint waits for an RCU grace period"
            ),
        }),
    };
    match criu.version() {
        Ok(v) => info.version = Some(v.to_string()),
        Err(e) => info.error = Some(e.to_string()),
    }
    let mut caps = Vec::new();

    let basic = criu.check().map_err(|e| e.to_string());
    caps.push(match &basic {
        Ok(()) => cap(CHECKPOINT_RESTORE, true, "criu check passed"),
        Err(e) => cap(CHECKPOINT_RESTORE, false, format!("criu check failed: {e}")),
    });
    let (methods, lock) = network_lock(&criu);
    caps.push(lock);
    caps.push(tcp_established(&criu, &basic, &methods));
    caps.push(page_server::capability(&criu));
    let (features, copy_modes) = copy_modes(&criu);
    info.features = features;
    caps.extend(copy_modes);
    caps.push(tls::capability(&criu));
    caps.extend(cgroup_caps);

    caps.sort_by_key(|c| CAPABILITIES.iter().position(|o| *o == c.name));
    Report {
        criu: info,
        kernel,
        cgroups,
        cgroup_controllers,
        cgroup_join,
        network_lock_methods: methods,
        capabilities: caps,
    }
}

/// The report when there is no criu to ask: nothing works, for `reason`.
fn without_criu(kernel: Kernel, cgroups: CgroupLayout, reason: String) -> Report {
    Report {
        criu: CriuInfo {
            path: None,
            version: None,
            error: Some(reason.clone()),
            features: None,
            kernel_facts_cache: None,
            breakpoint_hooks: None,
        },
        kernel,
        cgroups,
        cgroup_controllers: Vec::new(),
        cgroup_join: None,
        network_lock_methods: Vec::new(),
        capabilities: CAPABILITIES
            .iter()
            .map(|n| cap(n, false, reason.clone()))
            .collect(),
    }
}

/// The network lock methods CRIU can use here, in preference order, and
/// the capability they make.
fn network_lock(criu: &Criu) -> (Vec<String>, Capability) {
    let mut methods = Vec::new();
    let mut notes = Vec::new();
    let (legacy, legacy_msg) = criu_feature(criu, "has_ipt_legacy");
    match on_path("iptables-legacy-restore").or_else(|| on_path("iptables-restore")) {
        Some(bin) => {
            methods.push("iptables".to_string());
            notes.push(format!(
                "iptables: {} ({})",
                bin.display(),
                if legacy {
                    "legacy API"
                } else {
                    "no legacy iptables"
                }
            ));
        }
        None => notes.push(format!(
            "iptables: no iptables-restore found ({legacy_msg})"
        )),
    }
    let (nft, nft_msg) = criu_feature(criu, "network_lock_nftables");
    if nft {
        methods.push("nftables".to_string());
        notes.push("nftables: supported (criu check --feature network_lock_nftables)".into());
    } else {
        notes.push(format!("nftables: unavailable ({nft_msg})"));
    }
    let works = !methods.is_empty();
    (methods, cap(NETWORK_LOCK, works, notes.join("; ")))
}

/// TCP repair (from `criu check`, whose outcome is `basic`) with a network
/// lock method to keep connections quiet.
fn tcp_established(criu: &Criu, basic: &Result<(), String>, methods: &[String]) -> Capability {
    let (half, half_msg) = criu_feature(criu, "tcp_half_closed");
    let half_note = if half {
        "half-closed connections supported".to_string()
    } else {
        format!("half-closed connections unsupported ({half_msg})")
    };
    match (basic, methods.first()) {
        (Ok(()), Some(method)) => cap(
            TCP_ESTABLISHED,
            true,
            format!("TCP repair mode works (criu check), network lock by {method}; {half_note}"),
        ),
        (Ok(()), None) => cap(
            TCP_ESTABLISHED,
            false,
            "no network lock method: CRIU cannot keep connections quiet during the dump",
        ),
        (Err(e), _) => cap(TCP_ESTABLISHED, false, format!("criu check failed: {e}")),
    }
}

/// Pre-copy and post-copy, from FEATURE_CHECK (and, for post-copy, a real
/// lazy-pages dump); also the features CRIU reported.
fn copy_modes(criu: &Criu) -> (Option<Features>, [Capability; 2]) {
    let f = match criu.features() {
        Ok(f) => f,
        Err(e) => {
            let reason = format!("feature check failed: {e}");
            return (
                None,
                [
                    cap(PRE_COPY, false, reason.clone()),
                    cap(POST_COPY, false, reason),
                ],
            );
        }
    };
    let pre_copy = if f.mem_track {
        cap(
            PRE_COPY,
            true,
            "soft-dirty memory tracking available (FEATURE_CHECK mem_track)",
        )
    } else {
        cap(
            PRE_COPY,
            false,
            "the kernel has no soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY): CRIU pre-dump and --track-mem cannot work (FEATURE_CHECK mem_track)",
        )
    };
    let post_copy = if f.lazy_pages {
        match lazy::try_lazy_dump(criu) {
            Ok(note) => cap(POST_COPY, true, note),
            Err(reason) => cap(
                POST_COPY,
                false,
                format!("FEATURE_CHECK lazy_pages says supported, but a lazy-pages dump fails: {reason}"),
            ),
        }
    } else {
        cap(
            POST_COPY,
            false,
            "the kernel lacks non-cooperative userfaultfd (FEATURE_CHECK lazy_pages)",
        )
    };
    (Some(f), [pre_copy, post_copy])
}

/// Whether post-copy's lazy dump works here, measured with a throwaway
/// process; the error is the measured reason.
pub fn lazy_pages_work(criu: &Criu) -> Result<(), String> {
    let f = criu
        .features()
        .map_err(|e| format!("feature check failed: {e}"))?;
    if !f.lazy_pages {
        return Err(
            "the kernel lacks non-cooperative userfaultfd (FEATURE_CHECK lazy_pages)".into(),
        );
    }
    lazy::try_lazy_dump(criu).map(|_| ()).map_err(|r| {
        format!("FEATURE_CHECK lazy_pages says supported, but a lazy-pages dump fails: {r}")
    })
}

/// A fresh temp dir for one check, named `<prefix>-<pid>-…`; the ones a killed ferry left are
/// removed first.
fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    let tmp = std::env::temp_dir();
    sweep_dead(&tmp, prefix);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-{}-", std::process::id()))
        .tempdir_in(&tmp)
        .map_err(|e| format!("cannot create a temp dir: {e}"))
}

/// Removes the `<prefix>-<pid>-…` directories in `tmp` whose ferry is gone (killed before its
/// check cleaned up). Only flat directories of regular files that this user made on `tmp`'s own
/// filesystem; [`crate::fs_remove::remove_tree`] never crosses a mount or follows a link.
fn sweep_dead(tmp: &Path, prefix: &str) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(entries), Ok(top)) = (std::fs::read_dir(tmp), std::fs::metadata(tmp)) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let dir = e.path();
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == me && m.dev() == top.dev() => {}
            _ => continue,
        }
        let Ok(mut files) = std::fs::read_dir(&dir) else {
            continue;
        };
        if files.all(|f| f.and_then(|f| f.file_type()).is_ok_and(|t| t.is_file())) {
            let _ = crate::fs_remove::remove_tree(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_ferrys_flat_check_dirs_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let alive = std::process::id();
        let make = |name: &str| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("core-1.img"), b"x").unwrap();
            d
        };
        let killed = make(&format!("ferry-check-lazy-{dead}-ab12"));
        let running = make(&format!("ferry-check-lazy-{alive}-cd34"));
        let other_check = make(&format!("ferry-check-tls-{dead}-ef56"));
        let nested = make(&format!("ferry-check-lazy-{dead}-gh78"));
        std::fs::create_dir(nested.join("sub")).unwrap();
        let linked = tmp.path().join(format!("ferry-check-lazy-{dead}-ij90"));
        std::os::unix::fs::symlink(&running, &linked).unwrap();

        sweep_dead(tmp.path(), "ferry-check-lazy");
        assert!(!killed.exists(), "a dead ferry's directory was kept");
        assert!(
            running.join("core-1.img").exists(),
            "a live one was touched"
        );
        assert!(other_check.exists(), "another prefix was swept");
        assert!(
            nested.join("sub").exists(),
            "a directory not flat was emptied"
        );
        assert!(
            std::fs::symlink_metadata(&linked).is_ok(),
            "a link was followed"
        );
    }
}
