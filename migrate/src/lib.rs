//! Live migration for ferry (crate docs are completed below).

pub mod certs;
pub mod files;
pub mod tls;
pub mod transport;
pub mod wire;
