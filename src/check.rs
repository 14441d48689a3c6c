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
//! - `tls`: a page server started with `--tls` and a throwaway self-signed
//!   certificate (made with `openssl`) must answer a TLS ClientHello with a
//!   TLS record. A CRIU built without GnuTLS silently ignores `--tls`.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::criu::{AckAll, Criu, Features, Opts, ReqType, Request};

pub use crate::cgroups::CgroupLayout;

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
    let criu = match Criu::new() {
        Ok(c) => c,
        Err(e) => {
            let reason = e.to_string();
            return Report {
                criu: CriuInfo {
                    path: None,
                    version: None,
                    error: Some(reason.clone()),
                    features: None,
                },
                kernel,
                cgroups,
                network_lock_methods: Vec::new(),
                capabilities: [
                    CHECKPOINT_RESTORE,
                    TCP_ESTABLISHED,
                    PAGE_SERVER,
                    PRE_COPY,
                    POST_COPY,
                    NETWORK_LOCK,
                    TLS,
                ]
                .iter()
                .map(|n| cap(n, false, reason.clone()))
                .collect(),
            };
        }
    };
    let mut info = CriuInfo {
        path: Some(criu.binary.clone()),
        version: None,
        error: None,
        features: None,
    };
    match criu.version() {
        Ok(v) => info.version = Some(v.to_string()),
        Err(e) => info.error = Some(e.to_string()),
    }
    let mut caps = Vec::new();

    let basic = criu.check();
    caps.push(match &basic {
        Ok(()) => cap(CHECKPOINT_RESTORE, true, "criu check passed"),
        Err(e) => cap(CHECKPOINT_RESTORE, false, format!("criu check failed: {e}")),
    });

    // Network lock methods.
    let mut methods = Vec::new();
    let mut lock_notes = Vec::new();
    let (legacy, legacy_msg) = criu_feature(&criu, "has_ipt_legacy");
    let restore_bin = on_path("iptables-legacy-restore").or_else(|| on_path("iptables-restore"));
    match (&restore_bin, legacy) {
        (Some(bin), _) => {
            methods.push("iptables".to_string());
            lock_notes.push(format!(
                "iptables: {} ({})",
                bin.display(),
                if legacy {
                    "legacy API"
                } else {
                    "no legacy iptables"
                }
            ));
        }
        (None, _) => lock_notes.push(format!(
            "iptables: no iptables-restore found ({legacy_msg})"
        )),
    }
    let (nft, nft_msg) = criu_feature(&criu, "network_lock_nftables");
    if nft {
        methods.push("nftables".to_string());
        lock_notes.push("nftables: supported (criu check --feature network_lock_nftables)".into());
    } else {
        lock_notes.push(format!("nftables: unavailable ({nft_msg})"));
    }
    caps.push(cap(
        NETWORK_LOCK,
        !methods.is_empty(),
        lock_notes.join("; "),
    ));

    let (half, half_msg) = criu_feature(&criu, "tcp_half_closed");
    let half_note = if half {
        "half-closed connections supported".to_string()
    } else {
        format!("half-closed connections unsupported ({half_msg})")
    };
    caps.push(match (&basic, methods.is_empty()) {
        (Ok(()), false) => cap(
            TCP_ESTABLISHED,
            true,
            format!(
                "TCP repair mode works (criu check), network lock by {}; {half_note}",
                methods[0]
            ),
        ),
        (Ok(()), true) => cap(
            TCP_ESTABLISHED,
            false,
            "no network lock method: CRIU cannot keep connections quiet during the dump",
        ),
        (Err(e), _) => cap(TCP_ESTABLISHED, false, format!("criu check failed: {e}")),
    });

    caps.push(match try_page_server(&criu, None) {
        Ok(port) => cap(
            PAGE_SERVER,
            true,
            format!("a page server started on 127.0.0.1:{port}"),
        ),
        Err(e) => cap(PAGE_SERVER, false, e),
    });

    match criu.features() {
        Ok(f) => {
            info.features = Some(f);
            caps.push(if f.mem_track {
                cap(PRE_COPY, true, "soft-dirty memory tracking available (FEATURE_CHECK mem_track)")
            } else {
                cap(
                    PRE_COPY,
                    false,
                    "the kernel has no soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY): CRIU pre-dump and --track-mem cannot work (FEATURE_CHECK mem_track)",
                )
            });
            caps.push(if f.lazy_pages {
                match try_lazy_dump(&criu) {
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
            });
        }
        Err(e) => {
            let reason = format!("feature check failed: {e}");
            caps.push(cap(PRE_COPY, false, reason.clone()));
            caps.push(cap(POST_COPY, false, reason));
        }
    }

    caps.push(match try_tls(&criu) {
        Ok(note) => cap(TLS, true, note),
        Err(reason) => cap(TLS, false, reason),
    });

    // Report in a fixed order.
    let order = [
        CHECKPOINT_RESTORE,
        TCP_ESTABLISHED,
        PAGE_SERVER,
        PRE_COPY,
        POST_COPY,
        NETWORK_LOCK,
        TLS,
    ];
    caps.sort_by_key(|c| order.iter().position(|o| *o == c.name));
    Report {
        criu: info,
        kernel,
        cgroups,
        network_lock_methods: methods,
        capabilities: caps,
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn kill(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        // Reap it if it is ours; otherwise init does.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

/// TLS files for a page server.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// Starts a page server on 127.0.0.1 (with `tls`, a TLS one), runs `probe`
/// against its port, and stops it. Returns the port and the probe's answer.
fn with_page_server<T>(
    criu: &Criu,
    tls: Option<&TlsFiles>,
    probe: impl FnOnce(u16) -> T,
) -> Result<(u16, T), String> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-check")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let images = std::fs::File::open(dir.path()).map_err(|e| e.to_string())?;
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file("page-server.log".into());
    o.set_log_level(4);
    let mut ps = crate::proto::rpc::Criu_page_server_info::new();
    ps.set_address("127.0.0.1".into());
    ps.set_port(0);
    o.ps = Some(ps).into();
    if let Some(t) = tls {
        o.set_tls(true);
        o.set_tls_cacert(t.cert.display().to_string());
        o.set_tls_cert(t.cert.display().to_string());
        o.set_tls_key(t.key.display().to_string());
        o.set_tls_no_cn_verify(true);
    }
    let server = criu
        .page_server(o)
        .map_err(|e| format!("page server did not start: {e}"))?;
    let port = u16::try_from(server.port).map_err(|_| format!("bad port {}", server.port))?;
    let out = probe(port);
    kill(server.pid);
    Ok((port, out))
}

fn try_page_server(criu: &Criu, tls: Option<&TlsFiles>) -> Result<u16, String> {
    with_page_server(criu, tls, |_| ()).map(|(p, _)| p)
}

/// A TLS 1.2 ClientHello (RSA and ECDHE-RSA AES-GCM suites, P-256).
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x42u8; 32]);
    body.push(0); // session id
    let suites: [u8; 10] = [0xc0, 0x2f, 0xc0, 0x30, 0x00, 0x9c, 0x00, 0x9d, 0x00, 0x2f];
    body.extend((suites.len() as u16).to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: null
    let ext: Vec<u8> = [
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17][..], // supported_groups: P-256
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],                 // ec_point_formats
        &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x08, 0x04], // signature_algorithms
    ]
    .concat();
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

fn try_tls(criu: &Criu) -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-check-tls")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    let openssl = on_path("openssl")
        .or_else(|| Some(PathBuf::from("/usr/bin/openssl")).filter(|p| p.is_file()))
        .ok_or("not measured: openssl is needed to make a test certificate and is not installed")?;
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ferry-check",
            "-keyout",
        ])
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("not measured: cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "not measured: openssl could not make a test certificate: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (port, answer) =
        with_page_server(criu, Some(&files), |port| -> std::io::Result<Vec<u8>> {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&client_hello())?;
            let mut buf = [0u8; 5];
            let n = s.read(&mut buf)?;
            Ok(buf[..n].to_vec())
        })?;
    match answer {
        Ok(b) if matches!(b.first(), Some(0x15) | Some(0x16)) => Ok(format!(
            "a page server started with --tls on 127.0.0.1:{port} answered a TLS ClientHello"
        )),
        Ok(b) if b.is_empty() => Err(
            "a page server started with --tls closed the connection instead of answering a TLS ClientHello: CRIU was built without GnuTLS".into(),
        ),
        Ok(b) => Err(format!(
            "a page server started with --tls answered a TLS ClientHello with non-TLS bytes {b:02x?}: CRIU was built without GnuTLS"
        )),
        Err(e) => Err(format!(
            "no TLS answer from a page server started with --tls: {e}"
        )),
    }
}

/// The first error line CRIU wrote to `log` (harmless ones skipped).
fn first_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("Error") && !crate::criu::log::is_harmless(l))
        .map(|l| crate::criu::log::strip_timestamp(l).trim().to_string())
        .next()
}

/// Whether some socket listens on TCP `port` (from /proc/net/tcp).
fn listening(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

/// CRIU's `struct page_server_iov` (criu/page-xfer.c), natural alignment.
fn page_server_iov(cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..4].copy_from_slice(&cmd.to_le_bytes());
    b[8..16].copy_from_slice(&nr_pages.to_le_bytes());
    b[16..24].copy_from_slice(&vaddr.to_le_bytes());
    b[24..32].copy_from_slice(&dst_id.to_le_bytes());
    b
}

/// Asks a lazy-pages server for every lazy run of `pid`, as the restoring
/// side's lazy-pages daemon does (PS_IOV_GET), and reads the pages back.
fn fetch_lazy_pages(port: u16, pid: u32, runs: &[(u64, u64)]) -> Result<u64, String> {
    const PS_IOV_GET: u32 = 7;
    let page = crate::images::page_size();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("cannot connect to the lazy-pages server: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for &(vaddr, nr_pages) in runs {
        s.write_all(&page_server_iov(
            PS_IOV_GET,
            nr_pages,
            vaddr,
            u64::from(pid),
        ))
        .map_err(|e| format!("cannot ask for pages: {e}"))?;
        let mut head = [0u8; 32];
        s.read_exact(&mut head).map_err(|e| {
            format!("the lazy-pages server sent no pages for {nr_pages} pages at {vaddr:#x}: {e}")
        })?;
        let sent = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if sent == 0 || sent > nr_pages {
            return Err(format!(
                "the lazy-pages server answered {sent} pages for {nr_pages}"
            ));
        }
        let mut left = sent * page;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            match s.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(format!(
                        "the lazy-pages server closed the connection with {left} bytes of {sent} pages at {vaddr:#x} unsent"
                    ))
                }
                Ok(n) => left -= n as u64,
                Err(e) => return Err(format!("reading lazy pages: {e}")),
            }
        }
        total += sent;
    }
    Ok(total)
}

/// Dumps a throwaway `sleep` with lazy pages and fetches one of its lazy
/// pages from the server the dump leaves running, as a restore would.
fn try_lazy_dump(criu: &Criu) -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-check-lazy")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let images = std::fs::File::open(dir.path()).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sleep");
    cmd.arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the dumped tree must be its own session.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start sleep: {e}"))?;
    let pid = child.id();
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file("lazy-dump.log".into());
    o.set_log_level(4);
    o.set_pid(pid as i32);
    o.set_lazy_pages(true);
    let mut ps = crate::proto::rpc::Criu_page_server_info::new();
    ps.set_address("127.0.0.1".into());
    ps.set_port(i32::from(port));
    o.ps = Some(ps).into();
    let log = dir.path().join("lazy-dump.log");
    let result = match criu.session(&[]) {
        Err(e) => Err(format!("cannot start criu: {e}")),
        Ok(mut session) => {
            let criu_pid = session.pid();
            let (tx, rx) = std::sync::mpsc::channel();
            let worker = std::thread::spawn(move || {
                let r = session.request(Request::new(ReqType::DUMP, Some(o)), &mut AckAll);
                let _ = tx.send(r.map(drop).map_err(|e| e.to_string()));
                session.wait();
            });
            // The dump ends in a server waiting for the restore side.
            let mut outcome = None;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while outcome.is_none() && std::time::Instant::now() < deadline {
                if let Ok(r) = rx.try_recv() {
                    outcome = Some(match r {
                        Ok(()) => Err("the lazy dump ended without serving pages".to_string()),
                        Err(e) => Err(e),
                    });
                    break;
                }
                // Not by connecting: the server accepts a single client.
                if listening(port) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let outcome = outcome.unwrap_or_else(|| {
                let images = crate::images::ImageDir::open(dir.path()).map_err(|e| e.to_string())?;
                let runs = images.lazy_ranges(pid).map_err(|e| e.to_string())?;
                if runs.is_empty() {
                    return Err("the lazy dump left no lazy pages to fetch".into());
                }
                fetch_lazy_pages(port, pid, &runs)
                    .map(|n| format!("a lazy-pages dump served all {n} lazy pages on request (127.0.0.1:{port})"))
                    .map_err(|e| match first_error(&log) {
                        Some(err) => format!("{e}; CRIU: {err}"),
                        None => e,
                    })
            });
            if let Some(p) = criu_pid {
                kill(p as i32);
            }
            let _ = worker.join();
            outcome
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(images);
    result
}
