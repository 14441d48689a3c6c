//! `certs`: an operator CA and host certificates for `serve` and `migrate`.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use migrate::certs::{generate_ca, generate_host, CaPaths, Validity};

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory for ca.pem, ca-key.pem and NAME.pem/NAME-key.pem. An
    /// existing CA there is reused; existing files are never overwritten.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Common name of a new CA.
    #[arg(long, default_value = "ferry operator CA")]
    pub ca_name: String,
    /// A host certificate: NAME,ADDR[,ADDR...] with every IP address and
    /// DNS name peers reach the host by (repeatable).
    #[arg(long, value_name = "NAME,ADDR...")]
    pub host: Vec<String>,
    /// Validity of new certificates, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

pub fn certs(a: &CertsArgs) -> anyhow::Result<()> {
    let existing = CaPaths::in_dir(&a.dir);
    let ca = if existing.cert.exists() && existing.key.exists() {
        existing
    } else {
        let ca = generate_ca(&a.dir, &a.ca_name, Validity::days(a.days))?;
        println!("CA: {} {}", ca.cert.display(), ca.key.display());
        ca
    };
    for spec in &a.host {
        let mut parts = spec.split(',').filter(|s| !s.is_empty());
        let Some(name) = parts.next() else {
            bail!("--host {spec:?}: expected NAME,ADDR[,ADDR...]");
        };
        let sans: Vec<String> = parts.map(String::from).collect();
        if sans.is_empty() {
            bail!("--host {spec:?}: name at least one address or DNS name the host is reached by");
        }
        let p = generate_host(&ca, &a.dir, name, &sans, Validity::days(a.days))?;
        println!("{name}: {} {}", p.cert.display(), p.key.display());
    }
    Ok(())
}
