//! ferry: an OCI container runtime built around CRIU.
//!
//! The library does the work and never prints; the `ferry` binary parses
//! arguments and reports. Layers: the runtime core (`container`, `init`,
//! `rootfs`, `cgroups`, `hooks`, `console`, `network`, `state`), the CRIU client
//! (`criu`), and the generated CRIU protocol types (`proto`).

pub mod archive;
pub mod beneath;
pub mod cgroups;
pub mod check;
pub mod console;
pub mod container;
pub mod criu;
pub mod freeze_guard;
pub mod fs_remove;
pub mod hooks;
pub mod id;
pub mod images;
pub mod imports;
pub mod init;
pub mod migration;
pub mod network;
pub mod proc;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sysctl;

#[cfg(test)]
mod test_damage;
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
mod test_skip;

/// Generated from `proto/*.proto` by build.rs.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/criu_proto/mod.rs"));
}

pub use container::{Container, Error, Status};
