//! Starting a page server on 127.0.0.1 and stopping it again.
use migrate::TlsPaths;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use super::{cap, temp_dir, Capability, PAGE_SERVER};
use crate::criu::{Criu, Opts};

/// The `page-server` capability: one really starts.
pub(super) fn capability(criu: &Criu) -> Capability {
    match with_page_server(criu, None, |_| ()) {
        Ok((port, ())) => cap(
            PAGE_SERVER,
            true,
            format!("a page server started on 127.0.0.1:{port}"),
        ),
        Err(e) => cap(PAGE_SERVER, false, e),
    }
}

pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills a process this check started (a page server, criu, `sleep`).
pub(super) fn kill(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        // Reap it if it is ours; otherwise init does.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

/// Starts a page server on 127.0.0.1 (with `tls`, a TLS one), runs `probe`
/// against its port, and stops it. Returns the port and the probe's answer.
pub(super) fn with_page_server<T>(
    criu: &Criu,
    tls: Option<&TlsPaths>,
    probe: impl FnOnce(u16) -> T,
) -> Result<(u16, T), String> {
    let dir = temp_dir("ferry-check")?;
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
        crate::criu::set_tls(&mut o, t);
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
