//! Generates an operator CA and host certificates for trying migration by
//! hand (what `ferry certs` will do). An existing CA in DIR is reused:
//!
//! `gen-certs DIR HOST=SAN[,SAN...] [HOST=SAN...]`
use std::path::PathBuf;

use migrate::certs::{generate_ca, generate_host, CaPaths, Validity};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: gen-certs DIR HOST=SAN[,SAN...]...");
        std::process::exit(2);
    };
    let existing = CaPaths::in_dir(&dir);
    let ca = if existing.cert.exists() && existing.key.exists() {
        Ok(existing)
    } else {
        generate_ca(&dir, "ferry operator CA", Validity::days(365))
    };
    let ca = match ca {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("gen-certs: {e}");
            std::process::exit(1);
        }
    };
    for spec in args {
        let (name, sans) = spec.split_once('=').unwrap_or((&spec, ""));
        let sans: Vec<String> = sans
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        match generate_host(&ca, &dir, name, &sans, Validity::days(365)) {
            Ok(p) => println!("{}: {} {}", name, p.cert.display(), p.key.display()),
            Err(e) => {
                eprintln!("gen-certs: {e}");
                std::process::exit(1);
            }
        }
    }
}
