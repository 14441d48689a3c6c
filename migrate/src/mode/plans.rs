//! The CRIU requests of each mode, for the host to map onto its client.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::info::SourceInfo;
use crate::tls::TlsPaths;

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
    /// The destination's certificate as the control channel verified it
    /// (PEM), with TLS. A host whose CRIU reaches the page server through
    /// a relay (an address that is not the destination's) gives CRIU this
    /// file as `tls_cacert` with `tls_no_cn_verify`: CRIU then accepts
    /// that certificate and no other, the name check it replaces included.
    pub peer_cert: Option<PathBuf>,
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
    /// The rootfs is not in place yet: a shipped one, whose last pass
    /// follows the dump, when the restore is readied before the freeze.
    pub rootfs_later: bool,
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

/// Where the memory of a pre-dump or final dump goes: the images roots on
/// both hosts, the page server the dump streams to, the address that page
/// server listens on, and the TLS files of both CRIUs.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub src_root: &'a Path,
    pub dst_root: &'a Path,
    pub target: PageServerTarget,
    pub listen: &'a str,
    pub tls: Option<&'a TlsPaths>,
    /// See [`DumpPlan::peer_cert`].
    pub peer_cert: Option<&'a Path>,
}

impl Route<'_> {
    /// A dump into `<src_root>/dir` streaming to a page server writing
    /// `<dst_root>/dir`, both relative to the iteration `parent`.
    fn plans(
        self,
        dump: DumpPlan,
        dir: &str,
        parent: Option<String>,
    ) -> (DumpPlan, PageServerPlan) {
        (
            DumpPlan {
                images_dir: self.src_root.join(dir),
                parent_img: parent.clone(),
                page_server: Some(self.target),
                tls: self.tls.cloned(),
                peer_cert: self.peer_cert.map(Path::to_path_buf),
                ..dump
            },
            PageServerPlan {
                images_dir: self.dst_root.join(dir),
                address: self.listen.to_string(),
                port: 0,
                parent_img: parent,
                tls: self.tls.cloned(),
                tls_no_cn_verify: self.tls.is_some(),
            },
        )
    }
}

/// What a dump plan is before [`Route::plans`] fills in where it goes.
fn dump_of(kind: DumpKind, track_mem: bool, leave_stopped: bool) -> DumpPlan {
    DumpPlan {
        kind,
        images_dir: PathBuf::new(),
        parent_img: None,
        track_mem,
        page_server: None,
        tls: None,
        peer_cert: None,
        leave_stopped,
        lazy_pages: false,
    }
}

/// The source and destination requests of pre-copy iteration `i`
/// (1-based): a pre-dump into `<src_root>/pre-i` streaming to a page
/// server writing `<dst_root>/pre-i`, both with `../pre-(i-1)` as parent.
pub fn predump_plans(i: u32, route: Route) -> (DumpPlan, PageServerPlan) {
    let parent = (i > 1).then(|| format!("../{}", predump_dir_name(i - 1)));
    let dump = dump_of(DumpKind::PreDump, true, false);
    route.plans(dump, &predump_dir_name(i), parent)
}

/// The final dump's requests; `iterations` pre-dumps came before it (0
/// for stop-copy).
pub fn final_dump_plans(iterations: u32, route: Route) -> (DumpPlan, PageServerPlan) {
    let parent = (iterations > 0).then(|| format!("../{}", predump_dir_name(iterations)));
    let dump = dump_of(DumpKind::Dump, iterations > 0, true);
    route.plans(dump, FINAL_DIR, parent)
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
            // The lazy dump serves pages itself: it connects nowhere.
            peer_cert: None,
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
