//! Helpers shared by the agent tests: certificates, a server on
//! 127.0.0.1, and a TCP proxy that can cut a connection at a chosen point.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use migrate::certs::{generate_ca, generate_host, CaPaths, Validity};
use migrate::dest::{DestConfig, Server, ServerHandle};
use migrate::tls::{Security, TlsPaths};
use migrate::DestFactory;

#[path = "../../../tests/common/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::skip;

/// A CA and certificates for a source and a destination on 127.0.0.1.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CaPaths,
    pub src: TlsPaths,
    pub dst: TlsPaths,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca(&dir.path().join("ca"), "test CA", Validity::days(2)).unwrap();
        let hosts = dir.path().join("hosts");
        let src =
            generate_host(&ca, &hosts, "src", &["127.0.0.1".into()], Validity::days(1)).unwrap();
        let dst =
            generate_host(&ca, &hosts, "dst", &["127.0.0.1".into()], Validity::days(1)).unwrap();
        Pki { dir, ca, src, dst }
    }

    /// A certificate for 127.0.0.1 from a CA the peers do not trust.
    pub fn rogue(&self) -> TlsPaths {
        let cert = self.dir.path().join("rogue/rogue.pem");
        if cert.exists() {
            return TlsPaths {
                ca: self.ca.cert.clone(),
                cert,
                key: self.dir.path().join("rogue/rogue-key.pem"),
            };
        }
        let other = generate_ca(
            &self.dir.path().join("rogue-ca"),
            "rogue CA",
            Validity::days(2),
        )
        .unwrap();
        let mut p = generate_host(
            &other,
            &self.dir.path().join("rogue"),
            "rogue",
            &["127.0.0.1".into()],
            Validity::days(1),
        )
        .unwrap();
        p.ca = self.ca.cert.clone();
        p
    }

    pub fn src_security(&self) -> Security {
        Security::tls(&self.src).unwrap()
    }

    pub fn dst_security(&self) -> Security {
        Security::tls(&self.dst).unwrap()
    }
}

/// A destination agent running in a thread.
pub struct Serving {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Serving {
    pub fn start(cfg: DestConfig, factory: Arc<dyn DestFactory>) -> Serving {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, factory).unwrap();
        let addr = server.local_addr().unwrap();
        let handle = server.handle();
        let thread = Some(thread::spawn(move || server.run()));
        Serving {
            addr,
            handle,
            thread,
        }
    }

    /// Waits until the destination has finished (and cleaned up) every
    /// migration.
    pub fn idle(&self) {
        assert!(
            self.handle.wait_idle(Duration::from_secs(30)),
            "destination still busy"
        );
    }

    pub fn stop(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards TCP connections to `target`; each direction can be armed to
/// cut the connection after a number of further bytes.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Source → destination: bytes still allowed, or -1 (no cut).
    pub s2d: Arc<AtomicI64>,
    /// Destination → source.
    pub d2s: Arc<AtomicI64>,
    pub cuts: Arc<Mutex<u32>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn new(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s2d = Arc::new(AtomicI64::new(-1));
        let d2s = Arc::new(AtomicI64::new(-1));
        let cuts = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, c, st) = (s2d.clone(), d2s.clone(), cuts.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let (client, _) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(target).unwrap();
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pair = [client.try_clone().unwrap(), server.try_clone().unwrap()];
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    a.clone(),
                    c.clone(),
                    pair,
                );
                let pair = [client.try_clone().unwrap(), server.try_clone().unwrap()];
                pump(server, client, b.clone(), c.clone(), pair);
            }
        });
        Proxy {
            addr,
            s2d,
            d2s,
            cuts,
            stop,
        }
    }

    pub fn cut_s2d_after(&self, bytes: i64) {
        self.s2d.store(bytes, Ordering::SeqCst);
    }

    pub fn cut_d2s_after(&self, bytes: i64) {
        self.d2s.store(bytes, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> u32 {
        *self.cuts.lock().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: Arc<AtomicI64>,
    cuts: Arc<Mutex<u32>>,
    both: [TcpStream; 2],
) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let left = budget.load(Ordering::SeqCst);
            if left >= 0 {
                let pass = (left as usize).min(n);
                if pass == n && (pass as i64) < left {
                    budget.store(left - n as i64, Ordering::SeqCst);
                } else {
                    let _ = to.write_all(&buf[..pass]);
                    budget.store(-1, Ordering::SeqCst);
                    *cuts.lock().unwrap() += 1;
                    for s in &both {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    return;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Lists every path under `dir` (for "nothing left behind" checks).
pub fn contents(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(contents(&p));
            }
            out.push(p);
        }
    }
    out.sort();
    out
}
