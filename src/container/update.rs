//! `update`: change cgroup resources of a live container.
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources, LinuxThrottleDevice, LinuxWeightDevice,
};

use super::{Container, Error, Result, Status};
use crate::cgroups::Cgroup;

impl Container {
    /// Applies `resources` and records in the container's config exactly
    /// what was applied, merged over what was recorded before.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        let _span = tracing::info_span!("update", id = %self.id()).entered();
        let _lock = self.dir.lock()?;
        self.require(
            &[Status::Created, Status::Running, Status::Paused],
            "only a live container can be updated",
        )?;
        let cgroup = self.cgroup_or_err()?;
        if let Err(e) = cgroup.apply(resources) {
            return Err(self.explain_memory(&cgroup, resources).unwrap_or(e.into()));
        }
        let mut linux = self.state.config.linux().clone().unwrap_or_default();
        let merged = merge(linux.resources().clone().unwrap_or_default(), resources);
        linux.set_resources(Some(merged));
        self.state.config.set_linux(Some(linux));
        self.dir.save(&self.state)?;
        Ok(())
    }
}

impl Container {
    /// A memory limit the kernel refused because the container already uses
    /// more than it (v1 answers EBUSY once reclaim fails; v2 OOM-kills).
    fn explain_memory(&self, cgroup: &Cgroup, r: &LinuxResources) -> Option<Error> {
        let limit = r.memory().as_ref()?.limit().filter(|l| *l >= 0)?;
        let usage = cgroup.stats().ok()?.memory.usage.usage;
        (usage > limit as u64).then(|| Error::MemoryBelowUsage {
            id: self.id().to_string(),
            limit,
            usage,
        })
    }
}

/// `new` over `old`, field by field: a field `new` leaves unset keeps its
/// recorded value (an update of the memory limit keeps the swap limit).
/// Device rules add to the cgroup's list, so they are appended; unified
/// keys replace the same keys.
fn merge(mut old: LinuxResources, new: &LinuxResources) -> LinuxResources {
    if let Some(m) = new.memory() {
        old.set_memory(Some(merge_memory(old.memory().unwrap_or_default(), m)));
    }
    if let Some(c) = new.cpu() {
        old.set_cpu(Some(merge_cpu(old.cpu().clone().unwrap_or_default(), c)));
    }
    if new.pids().is_some() {
        old.set_pids(*new.pids());
    }
    if let Some(b) = new.block_io() {
        old.set_block_io(Some(merge_block_io(
            old.block_io().clone().unwrap_or_default(),
            b,
        )));
    }
    if let Some(rules) = new.devices().as_ref().filter(|r| !r.is_empty()) {
        let mut all = old.devices().clone().unwrap_or_default();
        all.extend(rules.iter().cloned());
        old.set_devices(Some(all));
    }
    if let Some(u) = new.unified().as_ref().filter(|u| !u.is_empty()) {
        let mut all = old.unified().clone().unwrap_or_default();
        all.extend(u.iter().map(|(k, v)| (k.clone(), v.clone())));
        old.set_unified(Some(all));
    }
    old
}

fn merge_memory(mut old: LinuxMemory, new: &LinuxMemory) -> LinuxMemory {
    if new.limit().is_some() {
        old.set_limit(new.limit());
    }
    if new.reservation().is_some() {
        old.set_reservation(new.reservation());
    }
    if new.swap().is_some() {
        old.set_swap(new.swap());
    }
    if new.swappiness().is_some() {
        old.set_swappiness(new.swappiness());
    }
    if new.kernel_tcp().is_some() {
        old.set_kernel_tcp(new.kernel_tcp());
    }
    old
}

fn merge_cpu(mut old: LinuxCpu, new: &LinuxCpu) -> LinuxCpu {
    if new.shares().is_some() {
        old.set_shares(new.shares());
    }
    if new.quota().is_some() {
        old.set_quota(new.quota());
    }
    if new.period().is_some() {
        old.set_period(new.period());
    }
    if new.realtime_runtime().is_some() {
        old.set_realtime_runtime(new.realtime_runtime());
    }
    if new.realtime_period().is_some() {
        old.set_realtime_period(new.realtime_period());
    }
    if new.cpus().is_some() {
        old.set_cpus(new.cpus().clone());
    }
    if new.mems().is_some() {
        old.set_mems(new.mems().clone());
    }
    old
}

/// Weights replace; a device's weight or throttle replaces the entry for
/// the same device (the kernel keeps one per device), others stay.
fn merge_block_io(mut old: LinuxBlockIo, new: &LinuxBlockIo) -> LinuxBlockIo {
    if new.weight().is_some() {
        old.set_weight(new.weight());
    }
    if new.leaf_weight().is_some() {
        old.set_leaf_weight(new.leaf_weight());
    }
    let key = |d: &LinuxWeightDevice| (d.major(), d.minor());
    old.set_weight_device(by_device(old.weight_device(), new.weight_device(), key));
    let key = |d: &LinuxThrottleDevice| (d.major(), d.minor());
    let t = by_device(
        old.throttle_read_bps_device(),
        new.throttle_read_bps_device(),
        key,
    );
    old.set_throttle_read_bps_device(t);
    let t = by_device(
        old.throttle_write_bps_device(),
        new.throttle_write_bps_device(),
        key,
    );
    old.set_throttle_write_bps_device(t);
    let t = by_device(
        old.throttle_read_iops_device(),
        new.throttle_read_iops_device(),
        key,
    );
    old.set_throttle_read_iops_device(t);
    let t = by_device(
        old.throttle_write_iops_device(),
        new.throttle_write_iops_device(),
        key,
    );
    old.set_throttle_write_iops_device(t);
    old
}

fn by_device<T: Clone>(
    old: &Option<Vec<T>>,
    new: &Option<Vec<T>>,
    key: impl Fn(&T) -> (i64, i64),
) -> Option<Vec<T>> {
    let Some(new) = new else {
        return old.clone();
    };
    let mut all: Vec<T> = old.clone().unwrap_or_default();
    all.retain(|o| !new.iter().any(|n| key(n) == key(o)));
    all.extend(new.iter().cloned());
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn memory_update_keeps_recorded_swap() {
        let old = res(serde_json::json!({"memory": {"limit": 100, "swap": 300}}));
        let new = res(serde_json::json!({"memory": {"limit": 200}}));
        let m = merge(old, &new).memory().unwrap();
        assert_eq!((m.limit(), m.swap()), (Some(200), Some(300)));
    }

    #[test]
    fn cpu_fields_merge_one_by_one() {
        let old = res(serde_json::json!({"cpu": {"shares": 512, "quota": 50000}}));
        let new = res(serde_json::json!({"cpu": {"period": 100000}}));
        let c = merge(old, &new).cpu().clone().unwrap();
        assert_eq!(
            (c.shares(), c.quota(), c.period()),
            (Some(512), Some(50000), Some(100000))
        );
    }

    #[test]
    fn block_io_devices_replace_by_device() {
        let old = res(serde_json::json!({"blockIO": {"weight": 100,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}, {"major": 8, "minor": 16, "rate": 2}]}}));
        let new = res(serde_json::json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 3}]}}));
        let b = merge(old, &new).block_io().clone().unwrap();
        assert_eq!(b.weight(), Some(100));
        let t = b.throttle_read_bps_device().clone().unwrap();
        let rates: Vec<(i64, u64)> = t.iter().map(|d| (d.minor(), d.rate())).collect();
        assert_eq!(rates, vec![(16, 2), (0, 3)]);
    }

    #[test]
    fn devices_and_unified_are_recorded() {
        let old = res(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "unified": {"memory.high": "1000", "pids.max": "10"}
        }));
        let new = res(serde_json::json!({
            "devices": [{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"}],
            "unified": {"pids.max": "20"}
        }));
        let m = merge(old, &new);
        assert_eq!(m.devices().as_ref().unwrap().len(), 2);
        let u = m.unified().clone().unwrap();
        assert_eq!(u["pids.max"], "20");
        assert_eq!(u["memory.high"], "1000");
    }
}
