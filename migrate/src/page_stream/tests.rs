use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::FromRawFd;

use super::*;
use crate::certs::{generate_ca, generate_host, Validity};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA and certificates for two hosts on 127.0.0.1.
fn pki(dir: &Path) -> (TlsPaths, TlsPaths) {
    let ca = generate_ca(&dir.join("ca"), "test CA", Validity::days(1)).unwrap();
    let ip = vec!["127.0.0.1".to_string()];
    let a = generate_host(&ca, dir, "a", &ip, Validity::days(1)).unwrap();
    let b = generate_host(&ca, dir, "b", &ip, Validity::days(1)).unwrap();
    (a, b)
}

/// CRIU's end of a stream, as CRIU would use it (a dup: the stream
/// closes its own copy).
fn criu_end(s: &mut PageStream) -> UnixStream {
    let fd = s.criu_fd().unwrap();
    // SAFETY: dup of a descriptor the stream keeps open until closed below.
    let dup = unsafe { libc::dup(fd) };
    assert!(dup >= 0);
    s.close_criu_end();
    // SAFETY: `dup` is a fresh descriptor we own.
    unsafe { UnixStream::from_raw_fd(dup) }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

/// What the two CRIUs do: the source sends pages and waits for the
/// page server's answer; the page server reads everything, answers and
/// exits. Returns the relays' results.
fn round_trip(
    src_tls: Option<&TlsPaths>,
    dst_tls: Option<&TlsPaths>,
    len: usize,
) -> (
    Result<RelayStats, PageStreamError>,
    Result<RelayStats, PageStreamError>,
) {
    let mut dst = listen(LOOPBACK, dst_tls, Duration::from_secs(10)).unwrap();
    let addr = SocketAddr::new(LOOPBACK, dst.port());
    let mut server = criu_end(&mut dst);
    let page_server = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        server.read_exact(&mut got)?;
        server.write_all(b"done")?;
        Ok::<_, io::Error>(got)
    });
    let mut src = connect(addr, "127.0.0.1", src_tls).unwrap();
    let mut client = criu_end(&mut src);
    let data = pattern(len);
    let sent = client.write_all(&data);
    let mut answer = [0u8; 4];
    let answered = client.read_exact(&mut answer);
    let got = page_server.join().unwrap();
    if sent.is_err() || answered.is_err() || got.is_err() {
        panic!(
            "sent {sent:?}, answered {answered:?}, received {:?}; relays: {:?} / {:?}",
            got.err(),
            src.finish(Duration::ZERO),
            dst.finish(Duration::ZERO)
        );
    }
    assert_eq!(&answer, b"done");
    assert!(got.unwrap() == data, "pages changed in flight");
    // The page server exited: the destination's relay ends, then the source's.
    let d = dst.finish(Duration::from_secs(10));
    let s = src.finish(Duration::from_secs(10));
    (s, d)
}

#[test]
fn pages_cross_intact_over_tls_and_both_relays_end_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pki(dir.path());
    let len = 9 * BLOCK + 12345;
    let (s, d) = round_trip(Some(&a), Some(&b), len);
    let s = s.unwrap();
    let d = d.unwrap();
    assert_eq!((s.up, s.down), (len as u64, 4));
    assert!(s.elapsed > Duration::ZERO, "the pages were not timed");
    assert_eq!((d.up, d.down), (4, len as u64));
}

#[test]
fn pages_cross_intact_in_plaintext() {
    let len = 3 * BLOCK + 1;
    let (s, d) = round_trip(None, None, len);
    assert_eq!(s.unwrap().up, len as u64);
    assert_eq!(d.unwrap().down, len as u64);
}

#[test]
fn a_stranger_knocking_first_is_refused_and_the_source_still_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pki(dir.path());
    let (rogue, _) = pki(&dir.path().join("rogue"));
    let mut dst = listen(LOOPBACK, Some(&b), Duration::from_secs(10)).unwrap();
    let mut server = criu_end(&mut dst);
    let addr = SocketAddr::new(LOOPBACK, dst.port());
    let e = connect(addr, "127.0.0.1", Some(&rogue)).unwrap_err();
    assert!(matches!(e, PageStreamError::Tls(_)), "{e}");
    // Nothing of it reached the page server, which still waits for the
    // source.
    let mut src = connect(addr, "127.0.0.1", Some(&a)).unwrap();
    let mut client = criu_end(&mut src);
    client.write_all(b"pages").unwrap();
    drop(client);
    src.close_criu_end();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pages");
}

#[test]
fn only_strangers_came_the_page_server_ends_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = pki(dir.path());
    let (rogue, _) = pki(&dir.path().join("rogue"));
    let mut dst = listen(LOOPBACK, Some(&b), Duration::from_secs(1)).unwrap();
    let mut server = criu_end(&mut dst);
    let addr = SocketAddr::new(LOOPBACK, dst.port());
    assert!(connect(addr, "127.0.0.1", Some(&rogue)).is_err());
    let mut buf = Vec::new();
    server.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
    let r = dst.finish(Duration::from_secs(5));
    assert!(matches!(r, Err(PageStreamError::Tls(_))), "{r:?}");
}

#[test]
fn a_source_that_never_connects_ends_the_page_servers_stream() {
    let mut dst = listen(LOOPBACK, None, Duration::from_millis(200)).unwrap();
    let mut server = criu_end(&mut dst);
    let mut buf = Vec::new();
    server.read_to_end(&mut buf).unwrap();
    assert!(matches!(
        dst.finish(Duration::from_secs(5)),
        Err(PageStreamError::NoPeer(_))
    ));
}

#[test]
fn stopping_a_relay_unblocks_criu_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pki(dir.path());
    let mut dst = listen(LOOPBACK, Some(&b), Duration::from_secs(10)).unwrap();
    let _server = criu_end(&mut dst);
    let addr = SocketAddr::new(LOOPBACK, dst.port());
    let mut src = connect(addr, "127.0.0.1", Some(&a)).unwrap();
    let mut client = criu_end(&mut src);
    // Nobody reads on the destination: CRIU blocks once the buffers fill.
    let writer = std::thread::spawn(move || {
        let block = pattern(BLOCK);
        loop {
            if let Err(e) = client.write_all(&block) {
                return e;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = src.finish(Duration::ZERO);
    assert!(matches!(r, Err(PageStreamError::Stopped)), "{r:?}");
    let e = writer.join().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

fn getsockopt_int(tcp: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int we own.
    let r = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            level,
            name,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(r, 0);
    v
}

#[test]
fn the_wire_gives_up_on_a_silent_peer_within_the_dead_peer_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    tune(&c);
    assert_eq!(
        getsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        DEAD_PEER_TIMEOUT.as_millis() as i32
    );
    assert_eq!(getsockopt_int(&c, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(getsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 2);
    assert_eq!(getsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
}
