//! Mutual TLS 1.3 between migration agents (rustls with *ring*).
//!
//! Both sides hold a certificate signed by the operator's CA and trust
//! only that CA: the destination requires a client certificate, the
//! source checks the destination's certificate and its name (the address
//! or host name it connected to must be in the certificate's SANs).
//! Failures are turned into [`TlsError`] variants whose messages say which
//! side refused what and why (untrusted issuer, expired, no client
//! certificate, wrong name, peer not speaking TLS).
//!
//! Plaintext is [`Security::Insecure`], which must be asked for by name.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};

/// Paths of the PEM files a host uses: the operator CA's certificate,
/// this host's certificate (optionally followed by intermediates) and its
/// private key. The same files are handed to CRIU's page server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `der`, a certificate a handshake verified, to `path` as PEM: the
/// only trust anchor of a CRIU that must accept exactly that certificate
/// and no other (see [`crate::DumpPlan::peer_cert`]).
pub fn write_pinned(der: &[u8], path: &Path) -> io::Result<()> {
    std::fs::write(
        path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
    )
}

/// Why TLS could not be set up or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no {what} found (expected PEM)")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path} changed since this host loaded it: restart `ferry serve` here to use the new certificate (CRIU would present the new one on the page stream, while the source pins the one this agent's channel presents)")]
    Changed { path: PathBuf },
    #[error("{path}: invalid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("our certificate {cert} cannot be used with CA {ca}: {reason}")]
    OwnCertificate {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("invalid server name {0:?} (an IP address or DNS name is needed)")]
    ServerName(String),
    #[error("peer certificate rejected: {reason} (trusted CA: {})", ca.display())]
    PeerCertificate { reason: String, ca: PathBuf },
    #[error("the peer presented no client certificate; a certificate signed by the operator CA is required")]
    NoPeerCertificate,
    #[error("the peer refused our certificate: {0}")]
    RefusedByPeer(String),
    #[error("the peer does not speak TLS (is it running in insecure mode?)")]
    NotTls,
    #[error("TLS error: {0}")]
    Other(#[source] rustls::Error),
}

fn explain_cert_error(e: &CertificateError) -> String {
    match e {
        CertificateError::Expired => "the certificate has expired".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the certificate has expired (valid until {}, now {})",
            fmt_time(*not_after),
            fmt_time(*time)
        ),
        CertificateError::NotValidYet => "the certificate is not valid yet".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the certificate is not valid yet (valid from {}, now {})",
            fmt_time(*not_before),
            fmt_time(*time)
        ),
        CertificateError::UnknownIssuer => {
            "it is not signed by the trusted CA (untrusted issuer: are both hosts using the same operator CA?)".into()
        }
        CertificateError::BadSignature => {
            "its signature does not verify against the trusted CA".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it is not valid for the name or address connected to (missing from its subject alternative names)".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "it is not allowed for this use (extended key usage must include both TLS server and client authentication)".into()
        }
        other => format!("{other:?}"),
    }
}

fn fmt_time(t: UnixTime) -> String {
    let secs = t.as_secs() as i64;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            dt.year(),
            dt.month() as u8,
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("{secs}s since the epoch"),
    }
}

fn explain_alert(a: AlertDescription) -> String {
    match a {
        AlertDescription::UnknownCA => {
            "unknown CA: our certificate is not signed by the CA the peer trusts".into()
        }
        AlertDescription::CertificateExpired => "our certificate has expired".into(),
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::CertificateRequired => {
            "a client certificate is required and none was sent".into()
        }
        AlertDescription::CertificateUnknown => "certificate not acceptable".into(),
        AlertDescription::ProtocolVersion => {
            "protocol version: the peer only accepts TLS 1.3".into()
        }
        AlertDescription::HandshakeFailure => "handshake failure".into(),
        AlertDescription::DecryptError => "decrypt error (key does not match certificate?)".into(),
        other => format!("{other:?}"),
    }
}

/// Turns a rustls error into a message that says who refused what.
/// `ca` is this side's trusted CA file, named in messages.
pub fn explain(e: &rustls::Error, ca: &Path) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(ce) => TlsError::PeerCertificate {
            reason: explain_cert_error(ce),
            ca: ca.to_path_buf(),
        },
        E::NoCertificatesPresented => TlsError::NoPeerCertificate,
        E::AlertReceived(a) => TlsError::RefusedByPeer(explain_alert(*a)),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsError::NotTls,
        other => TlsError::Other(other.clone()),
    }
}

/// Looks for a rustls error inside an I/O error (rustls' stream adapters
/// report TLS failures as `io::ErrorKind::InvalidData`).
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A host's loaded credentials: the CA it trusts and its own identity.
#[derive(Debug)]
pub struct Credentials {
    paths: TlsPaths,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// Loads the three PEM files and checks that our own certificate is
    /// signed by the CA, currently valid and allowed for client and server
    /// authentication, so a misconfigured host finds out before it
    /// contacts anyone.
    pub fn load(paths: &TlsPaths) -> Result<Credentials, TlsError> {
        let c = Credentials::load_unchecked(paths)?;
        c.check_own_certificate()?;
        Ok(c)
    }

    /// Loads the files without checking our own certificate against the
    /// CA. The peer still checks it; this exists so that the peer's
    /// refusal of a bad certificate can itself be tested.
    pub fn load_unchecked(paths: &TlsPaths) -> Result<Credentials, TlsError> {
        // Absolute paths: CRIU opens the same files from its own cwd.
        let abs = |what: &'static str, p: &Path| {
            fs::canonicalize(p).map_err(|source| TlsError::Read {
                what,
                path: p.to_path_buf(),
                source,
            })
        };
        let paths = &TlsPaths {
            ca: abs("CA certificate", &paths.ca)?,
            cert: abs("certificate", &paths.cert)?,
            key: abs("private key", &paths.key)?,
        };
        let ca_certs = load_certs("CA certificate", &paths.ca)?;
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots.add(c).map_err(|e| TlsError::Pem {
                path: paths.ca.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = load_certs("certificate", &paths.cert)?;
        let key_pem = read_file("private key", &paths.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                what: "private key",
                path: paths.key.clone(),
            },
            e => TlsError::Pem {
                path: paths.key.clone(),
                reason: e.to_string(),
            },
        })?;
        Ok(Credentials {
            paths: paths.clone(),
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Refuses a certificate file that no longer holds the certificate
    /// loaded from it: CRIU reads the file anew for every page stream,
    /// and a source pins the certificate this host's channel presented
    /// (see [`crate::DumpPlan::peer_cert`]).
    pub fn check_unchanged(&self) -> Result<(), TlsError> {
        let now = load_certs("certificate", &self.paths.cert)?;
        if now.first() != self.chain.first() {
            return Err(TlsError::Changed {
                path: self.paths.cert.clone(),
            });
        }
        Ok(())
    }

    fn check_own_certificate(&self) -> Result<(), TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let own_err = |reason: String| TlsError::OwnCertificate {
            cert: self.paths.cert.clone(),
            ca: self.paths.ca.clone(),
            reason,
        };
        verifier
            .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(ce) => own_err(explain_cert_error(&ce)),
                other => own_err(other.to_string()),
            })?;
        // The key must belong to the certificate.
        let key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| {
                own_err(format!(
                    "cannot use private key {}: {e}",
                    self.paths.key.display()
                ))
            })?;
        let ck = rustls::sign::CertifiedKey::new(self.chain.clone(), key);
        match ck.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(())
            }
            Err(_) => Err(own_err(format!(
                "private key {} does not belong to the certificate",
                self.paths.key.display()
            ))),
        }
    }

    /// rustls server configuration: TLS 1.3 only, client certificate
    /// required and verified against our CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        Ok(Arc::new(cfg))
    }

    /// rustls client configuration: TLS 1.3 only, server verified against
    /// our CA, our certificate presented.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        Ok(Arc::new(cfg))
    }
}

/// How the agents talk: mutual TLS, or plaintext when explicitly asked.
#[derive(Debug, Clone)]
pub enum Security {
    Tls(Arc<Credentials>),
    /// No authentication, no encryption: anyone who can reach the port can
    /// push a container or read its memory. Only for isolated test setups.
    Insecure,
}

impl Security {
    pub fn tls(paths: &TlsPaths) -> Result<Security, TlsError> {
        Ok(Security::Tls(Arc::new(Credentials::load(paths)?)))
    }

    /// The PEM paths (for CRIU's page server), when TLS is on.
    pub fn paths(&self) -> Option<&TlsPaths> {
        match self {
            Security::Tls(c) => Some(c.paths()),
            Security::Insecure => None,
        }
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }

    /// See [`Credentials::check_unchanged`].
    pub fn check_unchanged(&self) -> Result<(), TlsError> {
        match self {
            Security::Tls(c) => c.check_unchanged(),
            Security::Insecure => Ok(()),
        }
    }
}

/// Parses the name the source expects in the destination's certificate.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}
