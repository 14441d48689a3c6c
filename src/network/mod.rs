//! ferry's built-in container network: one veth pair per container, declared
//! with the `org.ferry.net.veth` annotation.
//!
//! # Annotation
//!
//! ```text
//! org.ferry.net.veth = "host=<host-if>,container=<ct-if>,address=<ip/prefix>[,host-address=<ip/prefix>][,mac=<aa:bb:cc:dd:ee:ff>]"
//! ```
//!
//! * `host`: name of the end that stays in the runtime's network namespace.
//! * `container`: name of the end inside the container's network namespace.
//! * `address`: address with prefix length given to the container end
//!   (IPv4 or IPv6, e.g. `10.0.3.2/30` or `fd00::2/64`).
//! * `host-address` (optional): address with prefix for the host end.
//! * `mac` (optional): MAC address of the container end (unicast, six
//!   two-digit hex octets separated by `:`).
//!
//! Interface names are 1–15 bytes without `/`, `:` or whitespace. Unknown
//! keys, repeated keys, empty items and missing `host`, `container` or
//! `address` are errors. Nothing is routed: the pair is a point-to-point link
//! between the host end and the container.
//!
//! The pair is made and configured over netlink (`netlink`), and the
//! traffic lock's nftables table made and removed over nfnetlink (`nft`),
//! with no process started: a checkpoint and a restore do both while the
//! tree waits. Removal of the pair, the iptables lock and a few probes use
//! iproute2 (`ip`) and iptables, each started through one runner (`run`)
//! that enters the network namespace with `nsenter --net=/proc/<pid>/ns/net`,
//! ties the tool's life to ferry's and turns a failure into
//! [`Error::Command`] with the tool's own stderr. The parts: the annotation
//! (`config`), the pair itself (`veth`), holding its traffic (`lock`), its
//! counters (`stats`), whether a namespace holds only what ferry made
//! (`own_netns`), and a namespace made ahead of its tree (`new_netns`).
use std::path::PathBuf;

mod config;
mod in_netns;
mod lock;
mod netlink;
mod new_netns;
mod nft;
mod own_netns;
mod run;
mod stats;
mod veth;

pub use config::VethConfig;
pub use in_netns::make_in_netns_of;
pub use lock::{is_locked, is_locked_in, lock, lock_in, unlock, unlock_in, LockMethod};
pub use new_netns::NewNetns;
pub use own_netns::{Changed, OwnNetns};
pub use stats::{host_stats, host_stats_in, InterfaceStats};
pub use veth::{
    configure_host, create, create_held, create_in, link_exists_on_host, release_host_end, remove,
    remove_in,
};

pub const VETH_ANNOTATION: &str = "org.ferry.net.veth";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("annotation {VETH_ANNOTATION}: {0}")]
    Annotation(String),
    #[error("veth {interface}: {message}")]
    Link { interface: String, message: String },
    /// A command (`ip`, `nsenter`) could not be started or failed.
    #[error("veth {interface}: `{command}` failed: {detail}")]
    Command {
        interface: String,
        command: String,
        detail: String,
    },
    /// A netlink request to the kernel failed.
    #[error("network namespace of process {pid}: {what}: {source}")]
    Netlink {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading interface counters failed.
    #[error("veth {interface}: read {}: {source}", path.display())]
    Stats {
        interface: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn link_err(cfg: &VethConfig, message: String) -> Error {
    Error::Link {
        interface: cfg.host_if.clone(),
        message,
    }
}

/// A failed netlink call as a [`link_err`]: "<what> (netlink): <error>".
fn netlink_err<'a>(
    cfg: &'a VethConfig,
    what: impl std::fmt::Display + 'a,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| link_err(cfg, format!("{what} (netlink): {e}"))
}

/// Whether the network namespace of `pid` holds only what ferry made for
/// a container with `veth` (see [`OwnNetns`]); `Err(why)` inside when the
/// container changed it.
pub fn inspect_own_netns(
    pid: i32,
    veth: Option<&VethConfig>,
) -> Result<std::result::Result<OwnNetns, Changed>> {
    own_netns::inspect(pid, veth).map_err(|source| Error::Netlink {
        pid,
        what: "inspecting it",
        source,
    })
}

/// Brings `lo` up in the network namespace of `pid`.
pub fn loopback_up(pid: i32) -> Result<()> {
    netlink::loopback_up(pid).map_err(|source| Error::Netlink {
        pid,
        what: "bringing lo up",
        source,
    })
}
