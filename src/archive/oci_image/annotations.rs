//! The annotations podman's `container checkpoint --create-image`,
//! checkpointctl's `build` and CRI-O read on a checkpoint image.
use std::collections::BTreeMap;
use std::path::Path;

use super::oci_arch;

/// Annotations of a checkpoint image, as podman's `--create-image` and
/// checkpointctl's `build` write them, from what ferry knows.
pub fn checkpoint_annotations(
    meta: &crate::archive::Metadata,
    name: &str,
    rootfs_image: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let image = rootfs_image.unwrap_or("");
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    let (dist, dist_version) = os_release();
    for (podman, criu, value) in [
        ("name", "container.name", name),
        ("rawImageName", "rawImageName", image),
        ("rootfsImageName", "rootfsImageName", image),
        (
            "criu.version",
            "criu.version",
            &criu_number(&meta.criu_version),
        ),
        ("runtime.name", "runtime.name", "ferry"),
        ("runtime.version", "runtime.version", &meta.ferry_version),
        ("host.arch", "host.arch", oci_arch()),
        ("host.kernel", "host.kernel", &meta.kernel),
        ("cgroups.version", "cgroup.version", cgroups),
        ("distribution.name", "distribution.name", &dist),
        (
            "distribution.version",
            "distribution.version",
            &dist_version,
        ),
    ] {
        a.insert(
            format!("io.podman.annotations.checkpoint.{podman}"),
            value.to_string(),
        );
        a.insert(format!("org.criu.checkpoint.{criu}"), value.to_string());
    }
    a.insert("org.criu.checkpoint.engine.name".into(), "ferry".into());
    a.insert(
        "org.criu.checkpoint.engine.version".into(),
        meta.ferry_version.clone(),
    );
    // CRI-O recognises a checkpoint image by this one.
    a.insert(
        "io.kubernetes.cri-o.annotations.checkpoint.name".into(),
        name.into(),
    );
    a.insert(
        "org.opencontainers.image.created".into(),
        meta.checkpoint_time.clone(),
    );
    a
}

/// CRIU's version as podman writes it: major*10000 + minor*100 + sublevel.
pub(super) fn criu_number(v: &str) -> String {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (a * 10000 + b * 100 + c).to_string()
}

/// `ID` and `VERSION_ID` of /etc/os-release.
fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}
