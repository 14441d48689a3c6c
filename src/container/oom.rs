//! Telling a memory limit that is too small apart from other deaths: an
//! init that exits during setup may have been killed by the kernel's OOM
//! killer because `linux.resources.memory.limit` cannot hold even ferry's
//! own setup code (the limit itself is accepted: the cgroup is empty when
//! it is set).
use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::Error;
use crate::cgroups::CgroupDescriptor;

/// The error for an init lost during setup (`other` is what was seen: an
/// EOF, a reset connection): a precise one when the OOM killer took it.
pub(crate) fn init_lost(
    desc: &CgroupDescriptor,
    resources: Option<&LinuxResources>,
    other: Error,
) -> Error {
    let Some((kills, file)) = desc.oom_kills().filter(|(n, _)| *n > 0) else {
        return other;
    };
    Error::OomAtSetup {
        limit: resources.and_then(|r| r.memory().as_ref().and_then(|m| m.limit())),
        file,
        kills,
    }
}

/// What [`Error::OomAtSetup`] says: the container's own limit is too
/// small, or (without one) a parent's.
pub(crate) fn describe(limit: Option<i64>, file: &Path, kills: u64) -> String {
    match limit {
        Some(limit) => too_small(limit, file),
        None => format!(
            "container init: killed by the kernel's OOM killer during setup ({}: oom_kill {kills}); the memory limit of a parent cgroup is too small",
            file.display()
        ),
    }
}

fn too_small(limit: i64, file: &Path) -> String {
    format!(
        "linux.resources.memory.limit {limit} is too small: the kernel's OOM killer killed the container's init before its program could start ({}: oom_kill > 0); raise the limit (a few MiB at least, plus what the program needs)",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_limit() {
        let m = too_small(
            4096,
            Path::new("/sys/fs/cgroup/memory/x/memory.oom_control"),
        );
        assert!(
            m.starts_with("linux.resources.memory.limit 4096 is too small"),
            "{m}"
        );
    }
}
