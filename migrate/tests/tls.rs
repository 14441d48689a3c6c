//! Mutual TLS over real TCP sockets on 127.0.0.1: one test per way a peer
//! can be refused, each checking the message on both sides.
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use migrate::certs::{generate_ca, generate_host, CaPaths, Validity};
use migrate::tls::{Credentials, Security, TlsPaths};
use migrate::transport::{self, TransportError};
use serde_json::json;

struct Pki {
    _dir: tempfile::TempDir,
    ca: CaPaths,
    other_ca: CaPaths,
    root: std::path::PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ca = generate_ca(&root.join("ca"), "ferry test CA", Validity::days(30)).unwrap();
        let other_ca =
            generate_ca(&root.join("other-ca"), "some other CA", Validity::days(30)).unwrap();
        Pki {
            _dir: dir,
            ca,
            other_ca,
            root,
        }
    }

    fn host(&self, name: &str, ca: &CaPaths, sans: &[&str], validity: Validity) -> TlsPaths {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        generate_host(ca, &self.root.join("hosts"), name, &sans, validity).unwrap()
    }

    fn good(&self, name: &str) -> TlsPaths {
        self.host(
            name,
            &self.ca,
            &["127.0.0.1", "localhost"],
            Validity::days(1),
        )
    }
}

fn unchecked(p: &TlsPaths) -> Security {
    Security::Tls(Arc::new(Credentials::load_unchecked(p).unwrap()))
}

/// Runs a one-connection server: handshake, then echo one message.
/// Returns the server's outcome as a string error.
fn serve_once(security: Security) -> (SocketAddr, thread::JoinHandle<Result<(), String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        let mut ch = transport::accept(tcp, &security).map_err(|e| e.to_string())?;
        ch.set_timeout(Some(Duration::from_secs(10)));
        let v: serde_json::Value = ch.recv().map_err(|e| e.to_string())?;
        ch.send(&json!({"echo": v})).map_err(|e| e.to_string())?;
        Ok(())
    });
    (addr, h)
}

/// Connects, sends a hello and waits for the echo.
fn client(addr: SocketAddr, name: &str, security: &Security) -> Result<(), TransportError> {
    let mut ch = transport::connect(addr, name, security)?;
    ch.set_timeout(Some(Duration::from_secs(10)));
    ch.send(&json!({"hello": 1}))?;
    let v: serde_json::Value = ch.recv()?;
    assert_eq!(v, json!({"echo": {"hello": 1}}));
    Ok(())
}

/// A client's refused attempt against `addr`; returns its error.
fn refused(addr: SocketAddr, security: &Security) -> String {
    client(addr, "127.0.0.1", security).unwrap_err().to_string()
}

/// A certificate for 127.0.0.1 from the good CA that expired two hours ago.
fn expired(pki: &Pki) -> TlsPaths {
    let two_hours = Validity::expired(Duration::from_secs(7200));
    pki.host("old", &pki.ca, &["127.0.0.1"], two_hours)
}

fn contains(e: &str, what: &str) {
    assert!(e.contains(what), "expected {what:?} in: {e}");
}

#[test]
fn mutual_tls_succeeds_with_certificates_from_the_same_ca() {
    let pki = Pki::new();
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    client(addr, "127.0.0.1", &Security::tls(&pki.good("src")).unwrap()).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn server_with_untrusted_certificate_is_refused_by_the_client() {
    let pki = Pki::new();
    let rogue = pki.host("rogue", &pki.other_ca, &["127.0.0.1"], Validity::days(1));
    let (addr, server) = serve_once(Security::tls(&rogue).unwrap());
    let e = refused(addr, &Security::tls(&pki.good("src")).unwrap());
    contains(&e, "peer certificate rejected");
    contains(&e, "not signed by the trusted CA");
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "the peer refused our certificate: unknown CA");
}

#[test]
fn client_with_untrusted_certificate_is_refused_by_the_server() {
    let pki = Pki::new();
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    // A certificate from another CA, but configured to trust our CA (so it
    // accepts the server and the refusal comes from the server).
    let mut rogue = pki.host("rogue", &pki.other_ca, &["127.0.0.1"], Validity::days(1));
    rogue.ca = pki.ca.cert.clone();
    let e = refused(addr, &unchecked(&rogue));
    contains(&e, "the peer refused our certificate: unknown CA");
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "peer certificate rejected");
    contains(&s, "not signed by the trusted CA");
}

#[test]
fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let old = expired(&pki);
    // Our own loader already refuses it...
    let e = Security::tls(&old).unwrap_err().to_string();
    contains(&e, "our certificate");
    contains(&e, "has expired");
    // ...and so does the peer when the check is skipped.
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    let e = refused(addr, &unchecked(&old));
    contains(
        &e,
        "the peer refused our certificate: our certificate has expired",
    );
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "the certificate has expired (valid until");
}

#[test]
fn expired_server_certificate_is_refused() {
    let pki = Pki::new();
    let old = expired(&pki);
    let (addr, server) = serve_once(unchecked(&old));
    let e = refused(addr, &Security::tls(&pki.good("src")).unwrap());
    contains(&e, "peer certificate rejected: the certificate has expired");
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "our certificate has expired");
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    // A TLS client that trusts our CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(&pki.ca.cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut ch = transport::Channel::from_stream(Box::new(rustls::StreamOwned::new(conn, tcp)));
    let sent = ch.send(&json!({"hello": 1}));
    let got = sent.and_then(|_| ch.recv::<serde_json::Value>());
    assert!(got.is_err(), "a client without certificate got an answer");
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "presented no client certificate");
}

#[test]
fn client_configured_with_the_wrong_ca() {
    let pki = Pki::new();
    // The client's certificate is fine, but it trusts another CA.
    let mut p = pki.good("src");
    p.ca = pki.other_ca.cert.clone();
    let e = Security::tls(&p).unwrap_err().to_string();
    contains(&e, "cannot be used with CA");
    contains(&e, "other-ca");
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    let e = refused(addr, &unchecked(&p));
    contains(&e, "not signed by the trusted CA");
    contains(&e, &pki.other_ca.cert.display().to_string());
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "unknown CA");
}

#[test]
fn server_certificate_for_another_address_is_refused() {
    let pki = Pki::new();
    let elsewhere = pki.host("elsewhere", &pki.ca, &["192.0.2.7"], Validity::days(1));
    let (addr, server) = serve_once(Security::tls(&elsewhere).unwrap());
    let e = refused(addr, &Security::tls(&pki.good("src")).unwrap());
    contains(&e, "not valid for the name or address");
    assert!(server.join().unwrap().is_err());
}

#[test]
fn plaintext_and_tls_do_not_mix() {
    let pki = Pki::new();
    // Insecure client against a TLS server.
    let (addr, server) = serve_once(Security::tls(&pki.good("dst")).unwrap());
    assert!(client(addr, "127.0.0.1", &Security::Insecure).is_err());
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "does not speak TLS");
    // TLS client against an insecure server.
    let (addr, server) = serve_once(Security::Insecure);
    assert!(client(addr, "127.0.0.1", &Security::tls(&pki.good("src")).unwrap()).is_err());
    let s = server.join().unwrap().unwrap_err();
    contains(&s, "speaking TLS");
}

#[test]
fn insecure_mode_works_when_both_ask_for_it() {
    let (addr, server) = serve_once(Security::Insecure);
    client(addr, "127.0.0.1", &Security::Insecure).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn missing_files_are_named() {
    let p = TlsPaths {
        ca: Path::new("/nonexistent/ca.pem").into(),
        cert: Path::new("/nonexistent/c.pem").into(),
        key: Path::new("/nonexistent/k.pem").into(),
    };
    let e = Security::tls(&p).unwrap_err().to_string();
    contains(&e, "cannot read CA certificate /nonexistent/ca.pem");
}

/// The client keeps the certificate the handshake verified: what a source
/// pins for the page stream, written as PEM.
#[test]
fn the_verified_server_certificate_is_kept_and_written_as_pem() {
    let pki = Pki::new();
    let dst = pki.good("dst");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = Security::tls(&dst).unwrap();
    let h = thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        transport::accept(tcp, &server)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let ch =
        transport::connect(addr, "127.0.0.1", &Security::tls(&pki.good("src")).unwrap()).unwrap();
    h.join().unwrap().unwrap();
    let der = ch.peer_certificate().expect("no peer certificate kept");
    let pin = pki.root.join("pinned.pem");
    migrate::tls::write_pinned(der, &pin).unwrap();
    let der_of = |p: &Path| pem::parse(std::fs::read(p).unwrap()).unwrap();
    let (pinned, on_disk) = (der_of(&pin), der_of(&dst.cert));
    assert_eq!(pinned.tag(), "CERTIFICATE");
    assert_eq!(pinned.contents(), on_disk.contents());
}

/// A host whose certificate file was replaced after it loaded it refuses
/// to hand the new one to CRIU while its channel presents the old one.
#[test]
fn a_certificate_file_replaced_after_loading_is_refused() {
    let pki = Pki::new();
    let dst = pki.good("dst");
    let security = Security::tls(&dst).unwrap();
    security.check_unchanged().unwrap();
    let renewed = pki.good("dst2");
    std::fs::copy(&renewed.cert, &dst.cert).unwrap();
    let e = security.check_unchanged().unwrap_err().to_string();
    contains(&e, "changed since this host loaded it");
    Security::Insecure.check_unchanged().unwrap();
}
