//! Post-copy, measured: a real lazy-pages dump of a throwaway process, and
//! its lazy pages fetched back the way the restoring side's daemon does.
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::page_server::{free_port, kill};
use super::temp_dir;
use crate::criu::{AckAll, Criu, Opts, ReqType, Request};

/// CRIU's log of the lazy dump, in the images dir.
const LOG_FILE: &str = "lazy-dump.log";

/// The variable in the throwaway process's environment, set to the pid of
/// the ferry that started it: a leftover is told apart from any other
/// `sleep` on the machine, and names its owner.
pub const SLEEPER_MARK: &str = "FERRY_CHECK_SLEEPER";

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
pub(super) fn try_lazy_dump(criu: &Criu) -> Result<String, String> {
    let dir = temp_dir("ferry-check-lazy")?;
    let images = std::fs::File::open(dir.path()).map_err(|e| e.to_string())?;
    let mut child = spawn_sleeper()?;
    let pid = child.id();
    let result = free_port()
        .map_err(|e| format!("no free port: {e}"))
        .and_then(|port| {
            let opts = lazy_dump_opts(&images, pid, port);
            dump_and_fetch(criu, opts, dir.path(), pid, port)
        });
    let _ = child.kill();
    let _ = child.wait();
    drop(images);
    result
}

/// `sleep 600` in a session of its own (the dumped tree must be one),
/// killed by the kernel if ferry dies before it does (a killed `ferry
/// check` or migration preflight must leave no process behind).
fn spawn_sleeper() -> Result<Child, String> {
    let mut cmd = Command::new("sleep");
    cmd.arg("600")
        .env(SLEEPER_MARK, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: setsid, prctl and getppid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // ferry died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("cannot start sleep: {e}"))
}

/// A lazy-pages dump of `pid` into `images`, serving on 127.0.0.1:`port`.
fn lazy_dump_opts(images: &File, pid: u32, port: u16) -> Opts {
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file(LOG_FILE.into());
    o.set_log_level(4);
    o.set_pid(pid as i32);
    o.set_lazy_pages(true);
    let mut ps = crate::proto::rpc::Criu_page_server_info::new();
    ps.set_address("127.0.0.1".into());
    ps.set_port(i32::from(port));
    o.ps = Some(ps).into();
    o
}

/// Runs the dump in the background and, once its server listens, fetches
/// every lazy page from it; stops criu either way.
fn dump_and_fetch(
    criu: &Criu,
    opts: Opts,
    dir: &Path,
    pid: u32,
    port: u16,
) -> Result<String, String> {
    let mut session = criu
        .session(&[])
        .map_err(|e| format!("cannot start criu: {e}"))?;
    let criu_pid = session.pid();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = session.request(Request::new(ReqType::DUMP, Some(opts)), &mut AckAll);
        let _ = tx.send(r.map(drop).map_err(|e| e.to_string()));
        session.wait();
    });
    let outcome = match wait_for_server(&rx, port) {
        Some(ended) => ended,
        None => fetch_all(dir, pid, port),
    };
    if let Some(p) = criu_pid {
        kill(p as i32);
    }
    let _ = worker.join();
    outcome
}

/// Waits until the dump's server listens on `port` (`None`), or the dump
/// ended first (what it ended with). Gives up waiting after 15 s.
fn wait_for_server(
    rx: &mpsc::Receiver<Result<(), String>>,
    port: u16,
) -> Option<Result<String, String>> {
    // The dump ends in a server waiting for the restore side.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = rx.try_recv() {
            return Some(match r {
                Ok(()) => Err("the lazy dump ended without serving pages".to_string()),
                Err(e) => Err(e),
            });
        }
        // Not by connecting: the server accepts a single client.
        if listening(port) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Fetches every lazy run of `pid` the images in `dir` list.
fn fetch_all(dir: &Path, pid: u32, port: u16) -> Result<String, String> {
    let images = crate::images::ImageDir::open(dir).map_err(|e| e.to_string())?;
    let runs = images.lazy_ranges(pid).map_err(|e| e.to_string())?;
    if runs.is_empty() {
        return Err("the lazy dump left no lazy pages to fetch".into());
    }
    fetch_lazy_pages(port, pid, &runs)
        .map(|n| {
            format!("a lazy-pages dump served all {n} lazy pages on request (127.0.0.1:{port})")
        })
        .map_err(|e| match first_error(&dir.join(LOG_FILE)) {
            Some(err) => format!("{e}; CRIU: {err}"),
            None => e,
        })
}
