//! Migration modes, how one is chosen, and the CRIU requests each makes.
//!
//! * **stop-copy**: freeze, dump with memory pages streamed straight into
//!   the destination's CRIU page server, ship the other images, restore.
//!   Works wherever CRIU works.
//! * **pre-copy**: iterative pre-dumps (`track_mem`, each iteration's
//!   images pointing at the previous one as parent) while the container
//!   runs, then a final dump that only sends what changed since. Needs
//!   soft-dirty memory tracking (`mem_track`) on the source.
//! * **post-copy**: dump without memory (`lazy_pages`), restore at once,
//!   pages fetched on demand from the source. Needs userfaultfd
//!   (`lazy_pages`) on both sides.
//!
//! The plan types ([`DumpPlan`], [`PageServerPlan`], [`RestorePlan`],
//! [`LazyPagesPlan`]) are what a host maps onto its CRIU client; their
//! fields are named after the `criu_opts` fields they set.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::info::{Features, SourceInfo};
use crate::tls::TlsPaths;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    StopCopy,
    PreCopy,
    PostCopy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::StopCopy => "stop-copy",
            Mode::PreCopy => "pre-copy",
            Mode::PostCopy => "post-copy",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeRequest {
    #[default]
    Auto,
    StopCopy,
    PreCopy,
    PostCopy,
}

impl std::str::FromStr for ModeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => ModeRequest::Auto,
            "stop-copy" => ModeRequest::StopCopy,
            "pre-copy" => ModeRequest::PreCopy,
            "post-copy" => ModeRequest::PostCopy,
            _ => {
                return Err(format!(
                    "unknown mode {s:?} (auto, stop-copy, pre-copy or post-copy)"
                ))
            }
        })
    }
}

/// A mode that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUsed {
    pub mode: Mode,
    pub reason: String,
}

/// The chosen mode, why, and why not the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChoice {
    pub mode: Mode,
    pub reason: String,
    pub not_used: Vec<NotUsed>,
}

/// Why pre-copy cannot run with these features and this source host's
/// implementation (`implemented`: the modes it can drive), if it cannot.
pub fn precopy_unavailable(src: &Features, implemented: &[Mode]) -> Option<String> {
    if !src.mem_track {
        return Some(
            "the source kernel has no soft-dirty memory tracking (CRIU feature mem_track; \
             CONFIG_MEM_SOFT_DIRTY), which pre-dumps need"
                .to_string(),
        );
    }
    (!implemented.contains(&Mode::PreCopy)).then(|| {
        "the source kernel tracks dirty memory, but this runtime's source host does not \
         implement pre-dump iterations yet"
            .to_string()
    })
}

/// Why post-copy cannot run with these features, if it cannot.
pub fn postcopy_unavailable(src: &Features, dst: &Features) -> Option<String> {
    if !src.lazy_pages || !dst.lazy_pages {
        let side = match (src.lazy_pages, dst.lazy_pages) {
            (false, false) => "neither host",
            (false, true) => "the source",
            _ => "the destination",
        };
        let verb = if side == "neither host" {
            "has"
        } else {
            "lacks"
        };
        return Some(format!(
            "{side} {verb} userfaultfd lazy-pages support (CRIU feature lazy_pages)"
        ));
    }
    Some(POSTCOPY_NOT_DRIVEN.to_string())
}

/// Post-copy is planned (see [`postcopy_plans`]) but not run: after the
/// switchover the container's memory would live on both hosts until every
/// page arrived, so a lost link would lose the container — the opposite of
/// the transactional switchover every other mode keeps — and lazy dumps
/// fail on the kernels it was tried on (`page-pipe: tee: Operation not
/// permitted`) even where CRIU reports the feature.
pub const POSTCOPY_NOT_DRIVEN: &str = "post-copy is not run by this version: a link lost after \
     the switchover would lose the container, and CRIU's lazy dump fails on the kernels it was \
     measured on even when the lazy_pages feature is reported";

/// Chooses the mode among those both hosts' kernels support *and* the
/// source host implements (`implemented`, from `SourceHost::modes`).
/// `Auto` picks pre-copy where possible, else stop-copy, and never
/// post-copy (see [`POSTCOPY_NOT_DRIVEN`]). An explicit mode that cannot run
/// is an error with the reason: it is never silently replaced.
pub fn choose_mode(
    req: ModeRequest,
    src: &Features,
    dst: &Features,
    implemented: &[Mode],
) -> Result<ModeChoice, String> {
    let pre = precopy_unavailable(src, implemented);
    let post = postcopy_unavailable(src, dst);
    let explicit = |mode: Mode, why: Option<String>| match why {
        Some(reason) => Err(format!("{mode} migration is not possible: {reason}")),
        None => Ok(ModeChoice {
            mode,
            reason: "requested".into(),
            not_used: Vec::new(),
        }),
    };
    match req {
        ModeRequest::StopCopy => explicit(Mode::StopCopy, None),
        ModeRequest::PreCopy => explicit(Mode::PreCopy, pre),
        ModeRequest::PostCopy => explicit(Mode::PostCopy, post),
        ModeRequest::Auto => {
            let mut not_used = Vec::new();
            if let Some(reason) = post {
                not_used.push(NotUsed {
                    mode: Mode::PostCopy,
                    reason,
                });
            }
            match pre {
                None => Ok(ModeChoice {
                    mode: Mode::PreCopy,
                    reason: "auto: the source tracks dirty memory, so memory is copied while \
                             the container runs and only the last changes during the freeze"
                        .into(),
                    not_used: {
                        not_used.push(NotUsed {
                            mode: Mode::StopCopy,
                            reason: "pre-copy is available and shortens the downtime".into(),
                        });
                        not_used
                    },
                }),
                Some(reason) => {
                    not_used.insert(
                        0,
                        NotUsed {
                            mode: Mode::PreCopy,
                            reason,
                        },
                    );
                    Ok(ModeChoice {
                        mode: Mode::StopCopy,
                        reason: "auto: the only mode this pair of hosts and runtime supports"
                            .into(),
                        not_used,
                    })
                }
            }
        }
    }
}

/// Where a dump sends its pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageServerTarget {
    /// `criu_opts.ps.address`
    pub address: String,
    /// `criu_opts.ps.port`
    pub port: u16,
}

/// Dump or pre-dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpKind {
    /// `PRE_DUMP`: memory only, the tree keeps running.
    PreDump,
    /// `DUMP`.
    Dump,
}

/// One dump request, in CRIU's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpPlan {
    pub kind: DumpKind,
    /// `images_dir_fd` (the host opens it). Created by the migration.
    pub images_dir: PathBuf,
    /// `parent_img`: the previous iteration's images, relative to
    /// `images_dir`.
    pub parent_img: Option<String>,
    /// `track_mem`
    pub track_mem: bool,
    /// `ps` (with `page_server` unset on the dump itself: CRIU connects to
    /// the page server when `ps` is given).
    pub page_server: Option<PageServerTarget>,
    /// `tls`, `tls_cacert`, `tls_cert`, `tls_key`.
    pub tls: Option<TlsPaths>,
    /// `leave_stopped`: the tree stays frozen after the dump.
    pub leave_stopped: bool,
    /// `lazy_pages` (post-copy), with `ps.port` the port the dumping CRIU
    /// serves pages on.
    pub lazy_pages: bool,
}

/// A page server on the destination, in CRIU's terms (`PAGE_SERVER_CHLD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageServerPlan {
    /// `images_dir_fd`: where pages are written.
    pub images_dir: PathBuf,
    /// `ps.address`: the local address to listen on.
    pub address: String,
    /// `ps.port`; 0 lets CRIU pick.
    pub port: u16,
    /// `parent_img`, relative to `images_dir` (pre-copy iterations).
    pub parent_img: Option<String>,
    /// `tls`, `tls_cacert`, `tls_cert`, `tls_key`.
    pub tls: Option<TlsPaths>,
    /// `tls_no_cn_verify`: CRIU's page server checks the *client's*
    /// certificate name against its own listen address, which a source
    /// host's certificate does not carry; the chain is still verified
    /// against the CA.
    pub tls_no_cn_verify: bool,
}

/// The restore request, in CRIU's terms plus the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub id: String,
    /// `images_dir_fd`
    pub images_dir: PathBuf,
    /// The bundle on this host (holds `config.json`).
    pub bundle_dir: PathBuf,
    /// The root filesystem on this host (shipped into the bundle, or the
    /// shared path).
    pub rootfs: PathBuf,
    /// `lazy_pages` (post-copy), pages served by the lazy-pages daemon.
    pub lazy_pages: bool,
    /// Hold the restored tree until started (`leave_stopped` or a frozen
    /// cgroup; the host decides how).
    pub hold: bool,
    /// The source's description (features, extra runtime data).
    pub source: SourceInfo,
}

/// `criu lazy-pages` on the destination (post-copy): it fetches pages from
/// the dumping CRIU, which serves them on `address:port`. CRIU has no RPC
/// request for it, so this is the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyPagesPlan {
    pub images_dir: PathBuf,
    pub address: String,
    pub port: u16,
    pub tls: Option<TlsPaths>,
}

impl LazyPagesPlan {
    /// Arguments after `criu`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "lazy-pages".to_string(),
            "--images-dir".into(),
            self.images_dir.display().to_string(),
            "--page-server".into(),
            "--address".into(),
            self.address.clone(),
            "--port".into(),
            self.port.to_string(),
        ];
        if let Some(t) = &self.tls {
            a.extend([
                "--tls".into(),
                "--tls-cacert".into(),
                t.ca.display().to_string(),
                "--tls-cert".into(),
                t.cert.display().to_string(),
                "--tls-key".into(),
                t.key.display().to_string(),
            ]);
        }
        a
    }
}

/// Directory of pre-copy iteration `i` (1-based) under an images root.
pub fn predump_dir_name(i: u32) -> String {
    format!("pre-{i}")
}

/// Directory of the final dump under an images root.
pub const FINAL_DIR: &str = "dump";

/// The log file name hosts give CRIU's dump (`criu_opts.log_file`); it
/// stays on the source and is not shipped with the images.
pub const DUMP_LOG: &str = "dump.log";

/// The source and destination requests of pre-copy iteration `i`
/// (1-based): a pre-dump into `<src_root>/pre-i` streaming to a page
/// server writing `<dst_root>/pre-i`, both with `../pre-(i-1)` as parent.
pub fn predump_plans(
    i: u32,
    src_root: &Path,
    dst_root: &Path,
    target: PageServerTarget,
    listen: &str,
    tls: Option<&TlsPaths>,
) -> (DumpPlan, PageServerPlan) {
    let dir = predump_dir_name(i);
    let parent = (i > 1).then(|| format!("../{}", predump_dir_name(i - 1)));
    (
        DumpPlan {
            kind: DumpKind::PreDump,
            images_dir: src_root.join(&dir),
            parent_img: parent.clone(),
            track_mem: true,
            page_server: Some(target),
            tls: tls.cloned(),
            leave_stopped: false,
            lazy_pages: false,
        },
        PageServerPlan {
            images_dir: dst_root.join(&dir),
            address: listen.to_string(),
            port: 0,
            parent_img: parent,
            tls: tls.cloned(),
            tls_no_cn_verify: tls.is_some(),
        },
    )
}

/// The final dump's requests; `iterations` pre-dumps came before it (0
/// for stop-copy).
pub fn final_dump_plans(
    iterations: u32,
    src_root: &Path,
    dst_root: &Path,
    target: PageServerTarget,
    listen: &str,
    tls: Option<&TlsPaths>,
) -> (DumpPlan, PageServerPlan) {
    let parent = (iterations > 0).then(|| format!("../{}", predump_dir_name(iterations)));
    (
        DumpPlan {
            kind: DumpKind::Dump,
            images_dir: src_root.join(FINAL_DIR),
            parent_img: parent.clone(),
            track_mem: iterations > 0,
            page_server: Some(target),
            tls: tls.cloned(),
            leave_stopped: true,
            lazy_pages: false,
        },
        PageServerPlan {
            images_dir: dst_root.join(FINAL_DIR),
            address: listen.to_string(),
            port: 0,
            parent_img: parent,
            tls: tls.cloned(),
            tls_no_cn_verify: tls.is_some(),
        },
    )
}

/// Post-copy's requests: the source dumps everything but memory and then
/// serves pages on `serve_port`; the destination's lazy-pages daemon
/// fetches them while the restored container runs.
pub fn postcopy_plans(
    src_root: &Path,
    dst_root: &Path,
    source_address: &str,
    serve_port: u16,
    tls: Option<&TlsPaths>,
) -> (DumpPlan, LazyPagesPlan) {
    (
        DumpPlan {
            kind: DumpKind::Dump,
            images_dir: src_root.join(FINAL_DIR),
            parent_img: None,
            track_mem: false,
            page_server: Some(PageServerTarget {
                address: source_address.to_string(),
                port: serve_port,
            }),
            tls: tls.cloned(),
            leave_stopped: true,
            lazy_pages: true,
        },
        LazyPagesPlan {
            images_dir: dst_root.join(FINAL_DIR),
            address: source_address.to_string(),
            port: serve_port,
            tls: tls.cloned(),
        },
    )
}

/// When pre-copy stops iterating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreCopyPolicy {
    pub max_iterations: u32,
    /// Stop once the final dump is predicted to fit this downtime.
    pub max_downtime: Duration,
    /// Stop when an iteration wrote more than this fraction of the pages
    /// of the one before (the container dirties memory as fast as it is
    /// copied).
    pub min_shrink: f64,
}

impl Default for PreCopyPolicy {
    fn default() -> PreCopyPolicy {
        PreCopyPolicy {
            max_iterations: 5,
            max_downtime: Duration::from_millis(300),
            min_shrink: 0.8,
        }
    }
}

/// One pre-copy iteration's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    pub pages_written: u64,
    #[serde(with = "crate::serde_fmt::ms")]
    pub duration: Duration,
}

/// Page size assumed when predicting transfer times.
pub const PAGE_SIZE: u64 = 4096;

/// Predicted time to send `pages` at the rate the last iteration reached.
pub fn predict(pages: u64, last: &Iteration) -> Option<Duration> {
    if last.pages_written == 0 || last.duration.is_zero() {
        return None;
    }
    let per_page = last.duration.as_secs_f64() / last.pages_written as f64;
    Some(Duration::from_secs_f64(per_page * pages as f64))
}

/// After the iterations so far, whether to pre-dump again; `Err` holds why
/// to stop.
pub fn precopy_next(history: &[Iteration], policy: &PreCopyPolicy) -> Result<(), String> {
    let Some(last) = history.last() else {
        return Ok(());
    };
    if history.len() as u32 >= policy.max_iterations {
        return Err(format!(
            "reached the maximum of {} pre-copy iterations",
            policy.max_iterations
        ));
    }
    // The final dump sends about what the last iteration sent.
    if let Some(t) = predict(last.pages_written, last) {
        if t <= policy.max_downtime {
            return Err(format!(
                "predicted final transfer {:.0} ms fits the downtime target of {} ms",
                t.as_secs_f64() * 1e3,
                policy.max_downtime.as_millis()
            ));
        }
    }
    if history.len() >= 2 {
        let prev = history[history.len() - 2].pages_written;
        if last.pages_written as f64 > prev as f64 * policy.min_shrink {
            return Err(format!(
                "stopped converging: iteration {} wrote {} pages after {}",
                history.len(),
                last.pages_written,
                prev
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Features = Features {
        mem_track: false,
        lazy_pages: false,
    };
    const ALL: Features = Features {
        mem_track: true,
        lazy_pages: true,
    };
    /// What this project's test machines report: no soft-dirty, and a
    /// lazy_pages flag that CRIU sets although lazy dumps fail.
    const HERE: Features = Features {
        mem_track: false,
        lazy_pages: true,
    };

    /// A source host that implements pre-dump, and one that does not.
    const PRE: &[Mode] = &[Mode::StopCopy, Mode::PreCopy];
    const STOP: &[Mode] = &[Mode::StopCopy];

    #[test]
    fn auto_falls_back_to_stop_copy_and_says_why() {
        let c = choose_mode(ModeRequest::Auto, &HERE, &HERE, PRE).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        assert_eq!(c.not_used.len(), 2);
        assert_eq!(c.not_used[0].mode, Mode::PreCopy);
        assert!(c.not_used[0].reason.contains("soft-dirty"), "{c:?}");
        assert_eq!(c.not_used[1].mode, Mode::PostCopy);
        assert!(c.not_used[1].reason.contains("lose the container"), "{c:?}");
        let c = choose_mode(ModeRequest::Auto, &NONE, &NONE, PRE).unwrap();
        assert!(c.not_used[1].reason.contains("neither host"), "{c:?}");
    }

    #[test]
    fn auto_prefers_pre_copy_when_memory_can_be_tracked() {
        let c = choose_mode(ModeRequest::Auto, &ALL, &ALL, PRE).unwrap();
        assert_eq!(c.mode, Mode::PreCopy);
        assert!(c.not_used.iter().any(|n| n.mode == Mode::StopCopy));
    }

    #[test]
    fn auto_never_picks_a_mode_the_source_does_not_implement() {
        // A stock kernel tracks dirty memory; a source without pre-dump
        // must still get stop-copy, and the report says why.
        let c = choose_mode(ModeRequest::Auto, &ALL, &ALL, STOP).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        assert_eq!(c.not_used[0].mode, Mode::PreCopy);
        assert!(
            c.not_used[0].reason.contains("does not implement pre-dump"),
            "{c:?}"
        );
        let e = choose_mode(ModeRequest::PreCopy, &ALL, &ALL, STOP).unwrap_err();
        assert!(e.contains("does not implement pre-dump"), "{e}");
    }

    #[test]
    fn explicit_unavailable_modes_are_refused_not_replaced() {
        let e = choose_mode(ModeRequest::PreCopy, &HERE, &HERE, PRE).unwrap_err();
        assert!(e.starts_with("pre-copy migration is not possible"), "{e}");
        let e = choose_mode(ModeRequest::PostCopy, &ALL, &NONE, PRE).unwrap_err();
        assert!(e.contains("the destination lacks userfaultfd"), "{e}");
        assert_eq!(
            choose_mode(ModeRequest::StopCopy, &NONE, &NONE, STOP)
                .unwrap()
                .mode,
            Mode::StopCopy
        );
        assert_eq!(
            choose_mode(ModeRequest::PreCopy, &ALL, &NONE, PRE)
                .unwrap()
                .mode,
            Mode::PreCopy
        );
    }

    fn target() -> PageServerTarget {
        PageServerTarget {
            address: "10.0.0.2".into(),
            port: 4000,
        }
    }

    #[test]
    fn pre_dump_iterations_chain_their_parents() {
        let tls = TlsPaths {
            ca: "/c/ca.pem".into(),
            cert: "/c/a.pem".into(),
            key: "/c/a-key.pem".into(),
        };
        let (d1, p1) = predump_plans(
            1,
            Path::new("/s"),
            Path::new("/d"),
            target(),
            "10.0.0.2",
            Some(&tls),
        );
        assert_eq!(d1.kind, DumpKind::PreDump);
        assert_eq!(d1.images_dir, Path::new("/s/pre-1"));
        assert_eq!(d1.parent_img, None);
        assert!(d1.track_mem && !d1.leave_stopped && !d1.lazy_pages);
        assert_eq!(d1.page_server, Some(target()));
        assert_eq!(d1.tls.as_ref(), Some(&tls));
        assert_eq!(p1.images_dir, Path::new("/d/pre-1"));
        assert_eq!(p1.parent_img, None);
        assert!(p1.tls_no_cn_verify);

        let (d3, p3) = predump_plans(3, Path::new("/s"), Path::new("/d"), target(), "x", None);
        assert_eq!(d3.images_dir, Path::new("/s/pre-3"));
        assert_eq!(d3.parent_img.as_deref(), Some("../pre-2"));
        assert_eq!(p3.parent_img.as_deref(), Some("../pre-2"));
        assert!(!p3.tls_no_cn_verify && p3.tls.is_none());

        let (f, pf) = final_dump_plans(3, Path::new("/s"), Path::new("/d"), target(), "x", None);
        assert_eq!(f.kind, DumpKind::Dump);
        assert_eq!(f.images_dir, Path::new("/s/dump"));
        assert_eq!(f.parent_img.as_deref(), Some("../pre-3"));
        assert!(f.track_mem && f.leave_stopped);
        assert_eq!(pf.images_dir, Path::new("/d/dump"));
        assert_eq!(pf.parent_img.as_deref(), Some("../pre-3"));

        let (s, ps) = final_dump_plans(0, Path::new("/s"), Path::new("/d"), target(), "x", None);
        assert_eq!(s.parent_img, None);
        assert!(!s.track_mem && s.leave_stopped);
        assert_eq!(ps.parent_img, None);
    }

    #[test]
    fn post_copy_requests() {
        let tls = TlsPaths {
            ca: "/c/ca.pem".into(),
            cert: "/c/b.pem".into(),
            key: "/c/b-key.pem".into(),
        };
        let (d, l) = postcopy_plans(
            Path::new("/s"),
            Path::new("/d"),
            "10.0.0.1",
            27027,
            Some(&tls),
        );
        assert!(d.lazy_pages && d.leave_stopped && !d.track_mem);
        assert_eq!(
            d.page_server,
            Some(PageServerTarget {
                address: "10.0.0.1".into(),
                port: 27027
            })
        );
        assert_eq!(
            l.args().join(" "),
            "lazy-pages --images-dir /d/dump --page-server --address 10.0.0.1 --port 27027 \
             --tls --tls-cacert /c/ca.pem --tls-cert /c/b.pem --tls-key /c/b-key.pem"
        );
    }

    fn it(pages: u64, ms: u64) -> Iteration {
        Iteration {
            pages_written: pages,
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn pre_copy_stops_when_the_downtime_fits_or_progress_stalls() {
        let p = PreCopyPolicy {
            max_iterations: 5,
            max_downtime: Duration::from_millis(100),
            min_shrink: 0.8,
        };
        assert!(precopy_next(&[], &p).is_ok());
        // 65536 pages in 2 s: the same again would take 2 s.
        assert!(precopy_next(&[it(65536, 2000)], &p).is_ok());
        // 2000 pages at that rate: ~61 ms, fits.
        let e = precopy_next(&[it(65536, 2000), it(2000, 61)], &p).unwrap_err();
        assert!(e.contains("fits the downtime target of 100 ms"), "{e}");
        // Barely shrinking.
        let e = precopy_next(&[it(65536, 2000), it(60000, 1800)], &p).unwrap_err();
        assert!(e.contains("stopped converging"), "{e}");
        // Shrinking well but slowly: goes on until the cap.
        let h: Vec<_> = (0..5).map(|i| it(65536 >> i, 2000 >> i)).collect();
        assert!(precopy_next(&h[..4], &p).is_ok());
        let e = precopy_next(&h, &p).unwrap_err();
        assert!(e.contains("maximum of 5"), "{e}");
    }
}
