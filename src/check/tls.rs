//! Whether CRIU's page server speaks TLS: a CRIU built without GnuTLS
//! silently ignores `--tls`, so a real handshake is started against one.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use migrate::certs::{generate_ca, generate_host, Validity};
use migrate::TlsPaths;

use super::page_server::with_page_server;
use super::{cap, temp_dir, Capability, TLS};
use crate::criu::Criu;

/// The `tls` capability.
pub(super) fn capability(criu: &Criu) -> Capability {
    match try_tls(criu) {
        Ok(note) => cap(TLS, true, note),
        Err(reason) => cap(TLS, false, reason),
    }
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, made the
/// way `ferry certs` makes them.
fn test_certificate(dir: &Path) -> Result<TlsPaths, String> {
    let failed =
        |e: migrate::certs::CertError| format!("not measured: cannot make a test certificate: {e}");
    let ca = generate_ca(&dir.join("ca"), "ferry-check CA", Validity::days(1)).map_err(failed)?;
    generate_host(
        &ca,
        dir,
        "ferry-check",
        &["127.0.0.1".into()],
        Validity::days(1),
    )
    .map_err(failed)
}

/// A TLS 1.2 ClientHello (ECDHE-ECDSA, ECDHE-RSA and RSA AES-GCM suites,
/// P-256).
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x42u8; 32]);
    body.push(0); // session id
    let suites: [u8; 14] = [
        0xc0, 0x2b, 0xc0, 0x2c, 0xc0, 0x2f, 0xc0, 0x30, 0x00, 0x9c, 0x00, 0x9d, 0x00, 0x2f,
    ];
    body.extend((suites.len() as u16).to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: null
    let ext: Vec<u8> = [
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17][..], // supported_groups: P-256
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],                 // ec_point_formats
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pkcs1_sha256, rsa_pss_rsae_sha256
        &[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x04, 0x01, 0x08, 0x04,
        ],
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

/// The first bytes a page server at `port` answers a ClientHello with.
fn hello(port: u16) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&client_hello())?;
    let mut buf = [0u8; 5];
    let n = s.read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

fn try_tls(criu: &Criu) -> Result<String, String> {
    let dir = temp_dir("ferry-check-tls")?;
    let files = test_certificate(dir.path())?;
    let (port, answer) = with_page_server(criu, Some(&files), hello)?;
    match answer {
        // A handshake record or an alert: TLS either way.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_certificate_chains_to_its_ca() {
        let d = tempfile::tempdir().unwrap();
        let f = test_certificate(d.path()).unwrap();
        let paths = migrate::tls::TlsPaths {
            ca: f.ca,
            cert: f.cert,
            key: f.key,
        };
        migrate::tls::Credentials::load(&paths).unwrap();
    }

    #[test]
    fn client_hello_lengths_agree() {
        let rec = client_hello();
        assert_eq!(&rec[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([rec[3], rec[4]])),
            rec.len() - 5
        );
        assert_eq!(rec[5], 0x01, "ClientHello");
        let hs_len = u32::from_be_bytes([0, rec[6], rec[7], rec[8]]) as usize;
        assert_eq!(hs_len, rec.len() - 9);
    }

    /// The handshake against a real page server, with the certificate made
    /// here (CRIU refuses to start a TLS page server it cannot load it into).
    #[test]
    fn a_tls_page_server_answers_with_tls() {
        let Ok(criu) = Criu::new() else {
            crate::test_skip::skip("criu is not installed (scripts/install-deps.sh)");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("a page server needs root");
            return;
        }
        let note = try_tls(&criu).unwrap();
        assert!(note.contains("answered a TLS ClientHello"), "{note}");
    }
}
