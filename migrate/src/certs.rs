//! Generating an operator CA and host certificates (what `ferry certs`
//! does), with rcgen. Keys are ECDSA P-256 in PKCS#8 PEM, written with
//! mode 0600; certificates with mode 0644.
//!
//! Layout: [`generate_ca`] writes `ca.pem` and `ca-key.pem`;
//! [`generate_host`] writes `NAME.pem` and `NAME-key.pem`. Host
//! certificates allow both TLS server and client authentication, since a
//! host is the client when it sends a container and the server when it
//! receives one; their SANs must list every address and name peers use to
//! reach the host. The IP address matters even when peers use a name: the
//! dumping CRIU checks the page server's certificate against the address
//! it connects to.
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::tls::TlsPaths;

/// File name of the CA certificate in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists (remove it first; certificates are never overwritten)")]
    Exists { path: PathBuf },
    #[error("invalid name {name:?} for a certificate: {reason}")]
    BadName { name: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(days as u64 * 86_400),
        }
    }

    /// A validity that ended `ago` ago (for tests of expired certificates).
    pub fn expired(ago: Duration) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - ago - Duration::from_secs(86_400),
            not_after: now - ago,
        }
    }
}

/// Paths of a generated CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    pub fn in_dir(dir: &Path) -> CaPaths {
        CaPaths {
            cert: dir.join(CA_CERT),
            key: dir.join(CA_KEY),
        }
    }
}

fn write_new(path: &Path, data: &str, mode: u32) -> Result<(), CertError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                CertError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let werr = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    f.write_all(data.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates a CA (`ca.pem`, `ca-key.pem`) in `dir`. Refuses to overwrite.
pub fn generate_ca(
    dir: &Path,
    common_name: &str,
    validity: Validity,
) -> Result<CaPaths, CertError> {
    ensure_dir(dir)?;
    let paths = CaPaths::in_dir(dir);
    for p in [&paths.cert, &paths.key] {
        if p.exists() {
            return Err(CertError::Exists { path: p.clone() });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    write_new(&paths.key, &key.serialize_pem(), 0o600)?;
    write_new(&paths.cert, &cert.pem(), 0o644)?;
    Ok(paths)
}

fn check_name(name: &str) -> Result<(), CertError> {
    let bad = |reason: &str| CertError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.contains('/') || name.starts_with('.') {
        return Err(bad("used as a file name, so no '/' and no leading '.'"));
    }
    Ok(())
}

/// Creates `NAME.pem` and `NAME-key.pem` in `out_dir`, signed by the CA
/// in `ca`. `sans` are the IP addresses and DNS names the host is reached
/// by; `name` is also the certificate's common name. Returns the paths to
/// hand to [`Security::tls`](crate::tls::Security::tls).
pub fn generate_host(
    ca: &CaPaths,
    out_dir: &Path,
    name: &str,
    sans: &[String],
    validity: Validity,
) -> Result<TlsPaths, CertError> {
    check_name(name)?;
    ensure_dir(out_dir)?;
    let cert_path = out_dir.join(format!("{name}.pem"));
    let key_path = out_dir.join(format!("{name}-key.pem"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::Exists { path: p.clone() });
        }
    }
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| CertError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca.key)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca.cert)?, ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(TlsPaths {
        ca: ca.cert.clone(),
        cert: cert_path,
        key: key_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_ca_and_host_with_private_keys() {
        let d = tempfile::tempdir().unwrap();
        let ca = generate_ca(d.path(), "test CA", Validity::days(10)).unwrap();
        let host = generate_host(
            &ca,
            &d.path().join("hosts"),
            "a",
            &["127.0.0.1".into(), "a.example".into()],
            Validity::days(1),
        )
        .unwrap();
        for (p, mode) in [
            (&ca.key, 0o600),
            (&host.key, 0o600),
            (&ca.cert, 0o644),
            (&host.cert, 0o644),
        ] {
            let m = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{}", p.display());
        }
        // Loading checks the host certificate against the CA.
        crate::tls::Credentials::load(&host).unwrap();
        // Never overwritten.
        assert!(matches!(
            generate_ca(d.path(), "again", Validity::days(1)),
            Err(CertError::Exists { .. })
        ));
        assert!(matches!(
            generate_host(&ca, &d.path().join("hosts"), "a", &[], Validity::days(1)),
            Err(CertError::Exists { .. })
        ));
        assert!(matches!(
            generate_host(&ca, d.path(), "../x", &[], Validity::days(1)),
            Err(CertError::BadName { .. })
        ));
    }

    #[test]
    fn own_expired_or_foreign_certificate_is_caught_at_load() {
        let d = tempfile::tempdir().unwrap();
        let ca = generate_ca(&d.path().join("ca1"), "CA 1", Validity::days(10)).unwrap();
        let ca2 = generate_ca(&d.path().join("ca2"), "CA 2", Validity::days(10)).unwrap();
        let old = generate_host(
            &ca,
            d.path(),
            "old",
            &["127.0.0.1".into()],
            Validity::expired(Duration::from_secs(3600)),
        )
        .unwrap();
        let e = crate::tls::Credentials::load(&old).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let mut foreign = generate_host(&ca2, d.path(), "foreign", &[], Validity::days(1)).unwrap();
        foreign.ca = ca.cert.clone();
        let e = crate::tls::Credentials::load(&foreign)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed by the trusted CA"), "{e}");
        // A key that does not belong to the certificate.
        let mut mixed = old.clone();
        mixed.cert = generate_host(&ca, d.path(), "fresh", &[], Validity::days(1))
            .unwrap()
            .cert;
        let e = crate::tls::Credentials::load(&mixed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong"), "{e}");
    }
}
