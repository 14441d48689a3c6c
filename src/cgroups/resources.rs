//! Applying `linux.resources`: what is refused whatever the version, the
//! order of the writes, and the controllers v1 and v2 set alike (cpuset,
//! pids, memory reservation and limit). What differs goes through
//! [`CgroupManager`].
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, MaxValue};
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources,
    LinuxThrottleDevice,
};

use super::common::{write_beneath, CgroupManager, Handle};
use super::devices;
use super::error::{refused, set};
use super::stats::hugepage_sizes;
use super::{Error, Result, UNIFIED_KEY};

/// Applies memory, cpu, cpuset, pids, devices and unified settings.
/// Settings that cannot be applied here are an error, never skipped.
pub(super) fn apply(b: &dyn CgroupManager, r: &LinuxResources) -> Result<()> {
    let h = b.handle();
    check(h, r)?;
    b.check(r)?;
    if let Some(m) = r.memory() {
        memory(b, m)?;
    }
    if let Some(c) = r.cpu() {
        cpu(b, c)?;
    }
    if let Some(p) = r.pids() {
        pids(h, p)?;
    }
    if let Some(limits) = r.hugepage_limits().as_deref().filter(|l| !l.is_empty()) {
        hugetlb(h, limits)?;
    }
    if let Some(bio) = r.block_io() {
        b.set_block_io(bio)?;
    }
    if let Some(rules) = r.devices().as_deref().filter(|d| !d.is_empty()) {
        b.set_devices(&devices::with_defaults(h, rules)?)?;
    }
    if let Some(u) = r.unified() {
        b.set_unified(u)?;
    }
    Ok(())
}

/// Refuses what ferry applies on no host.
fn check(h: &Handle, r: &LinuxResources) -> Result<()> {
    let by_ferry = "by ferry";
    let m = r.memory().as_ref();
    let c = r.cpu().as_ref();
    h.refuse_any(&[
        (r.network().is_some(), "linux.resources.network", by_ferry),
        (
            r.rdma().as_ref().is_some_and(|v| !v.is_empty()),
            "linux.resources.rdma",
            by_ferry,
        ),
        (
            m.is_some_and(|m| m.disable_oom_killer() == Some(true)),
            "linux.resources.memory.disableOOMKiller",
            by_ferry,
        ),
        (
            m.is_some_and(|m| m.use_hierarchy() == Some(false)),
            "linux.resources.memory.useHierarchy=false",
            "(the kernel always accounts hierarchically)",
        ),
        (
            m.is_some_and(|m| m.check_before_update() == Some(true)),
            "linux.resources.memory.checkBeforeUpdate",
            by_ferry,
        ),
        (
            c.is_some_and(|c| c.idle().is_some()),
            "linux.resources.cpu.idle",
            by_ferry,
        ),
        (
            c.is_some_and(|c| c.burst().is_some()),
            "linux.resources.cpu.burst",
            by_ferry,
        ),
    ])
}

fn memory(b: &dyn CgroupManager, m: &LinuxMemory) -> Result<()> {
    if m.kernel().is_some() {
        // As runc 1.1: the kernel deprecated these limits (and dropped
        // them from v1 in 6.x; v2 never had them).
        tracing::warn!("linux.resources.memory.kernel is ignored: kernels no longer limit kernel memory on its own");
    }
    if let Some(tcp) = m.kernel_tcp() {
        b.set_kernel_tcp(tcp)?;
    }
    if m.limit().is_none()
        && m.reservation().is_none()
        && m.swap().is_none()
        && m.swappiness().is_none()
    {
        return Ok(());
    }
    let ctl = b.handle().controller::<MemController>("memory")?;
    let dir = ctl.path();
    match m.reservation() {
        // v2's memory.low takes "max" for no limit, not -1.
        Some(-1) if b.handle().desc.is_v2() => {
            write_beneath(dir, "memory.low", "max").map_err(|e| Error::Refused {
                path: dir.to_path_buf(),
                setting: "memory.reservation".into(),
                value: "-1".into(),
                detail: e.to_string(),
                hint: "see the kernel's cgroup-v2 documentation for memory.low",
            })?
        }
        r => set(dir, "memory.reservation", r, |v| ctl.set_soft_limit(v))?,
    }
    match m.swap() {
        None => set(dir, "memory.limit", m.limit(), |v| ctl.set_limit(v))?,
        Some(swap) => b.set_limit_and_swap(ctl, m.limit(), swap)?,
    }
    // v2 refuses swappiness in its check.
    set(dir, "memory.swappiness", m.swappiness(), |v| {
        ctl.set_swappiness(v)
    })
}

fn cpu(b: &dyn CgroupManager, c: &LinuxCpu) -> Result<()> {
    let any_cpu = c.shares().is_some()
        || c.quota().is_some()
        || c.period().is_some()
        || c.realtime_runtime().is_some()
        || c.realtime_period().is_some();
    if any_cpu {
        b.set_cpu(b.handle().controller::<CpuController>("cpu")?, c)?;
    }
    let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
    let mems = c.mems().as_deref().filter(|s| !s.is_empty());
    if cpus.is_some() || mems.is_some() {
        let ctl = b.handle().controller::<CpuSetController>("cpuset")?;
        set(ctl.path(), "cpu.cpus", cpus, |v| ctl.set_cpus(v))?;
        set(ctl.path(), "cpu.mems", mems, |v| ctl.set_mems(v))?;
    }
    Ok(())
}

/// 0 leaves the limit as it is (as runc), below 0 is no limit.
fn pids(h: &Handle, p: &LinuxPids) -> Result<()> {
    let limit = p.limit();
    if limit == 0 {
        return Ok(());
    }
    let ctl = h.controller::<PidController>("pids")?;
    let v = if limit < 0 {
        MaxValue::Max
    } else {
        MaxValue::Value(limit)
    };
    ctl.set_pid_max(v)
        .map_err(|e| refused(ctl.path(), "pids.limit", limit, e))
}

/// `hugetlb.<size>.max` (v2) or `.limit_in_bytes` (v1) per page size,
/// which must be one the kernel offers (so it names an existing file).
fn hugetlb(h: &Handle, limits: &[LinuxHugepageLimit]) -> Result<()> {
    let (dir, suffix) = if h.desc.is_v2() {
        (h.desc.dirs.get(UNIFIED_KEY), "max")
    } else {
        (h.desc.dirs.get("hugetlb"), "limit_in_bytes")
    };
    let dir = dir.ok_or_else(|| {
        h.unsupported(
            "linux.resources.hugepageLimits",
            "here (no hugetlb controller for the cgroup)",
        )
    })?;
    let sizes = hugepage_sizes();
    for l in limits {
        let size = l.page_size();
        if !sizes.iter().any(|s| s == size) {
            return Err(h.invalid(format!(
                "linux.resources.hugepageLimits: page size {size:?} is not one this kernel offers ({})",
                if sizes.is_empty() { "none".to_string() } else { sizes.join(", ") }
            )));
        }
        let file = format!("hugetlb.{size}.{suffix}");
        let value = l.limit().to_string();
        write_beneath(dir, &file, &value).map_err(|e| {
            let detail = if e.kind() == std::io::ErrorKind::NotFound {
                "the hugetlb controller is not enabled for this cgroup".to_string()
            } else {
                e.to_string()
            };
            Error::Refused {
                path: dir.clone(),
                setting: format!("hugepageLimits.{size}"),
                value,
                detail,
                hint: "a limit in bytes, a multiple of the page size",
            }
        })?;
    }
    Ok(())
}

/// The four throttles of `linux.resources.blockIO`: the setting's name,
/// the v1 file and the v2 `io.max` key, and the devices it lists.
pub(super) fn throttles(
    b: &LinuxBlockIo,
) -> [(
    &'static str,
    &'static str,
    &'static str,
    &[LinuxThrottleDevice],
); 4] {
    [
        (
            "blockIO.throttleReadBpsDevice",
            "blkio.throttle.read_bps_device",
            "rbps",
            b.throttle_read_bps_device().as_deref().unwrap_or(&[]),
        ),
        (
            "blockIO.throttleWriteBpsDevice",
            "blkio.throttle.write_bps_device",
            "wbps",
            b.throttle_write_bps_device().as_deref().unwrap_or(&[]),
        ),
        (
            "blockIO.throttleReadIOPSDevice",
            "blkio.throttle.read_iops_device",
            "riops",
            b.throttle_read_iops_device().as_deref().unwrap_or(&[]),
        ),
        (
            "blockIO.throttleWriteIOPSDevice",
            "blkio.throttle.write_iops_device",
            "wiops",
            b.throttle_write_iops_device().as_deref().unwrap_or(&[]),
        ),
    ]
}
