//! v2 settings that differ from v1: swap on its own, cpu weight and a
//! combined quota/period, device rules as an eBPF program, and
//! `linux.resources.unified`.
use std::collections::HashMap;
use std::fs;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxCpu, LinuxResources};

use super::super::common::Resources;
use super::super::devices::Rule;
use super::super::error::{refused, set};
use super::super::{Error, Result};
use super::{devices_bpf, V2};

impl Resources for V2 {
    fn check(&self, r: &LinuxResources) -> Result<()> {
        let realtime =
            |c: &LinuxCpu| c.realtime_runtime().is_some() || c.realtime_period().is_some();
        self.h.refuse_any(&[
            (
                r.memory()
                    .as_ref()
                    .is_some_and(|m| m.swappiness().is_some()),
                "linux.resources.memory.swappiness",
                "on cgroup v2 (the kernel has no per-cgroup swappiness there)",
            ),
            (
                r.cpu().as_ref().is_some_and(realtime),
                "linux.resources.cpu.realtimeRuntime/realtimePeriod",
                "on cgroup v2",
            ),
        ])
    }

    /// OCI's `swap` is memory+swap; v2's `memory.swap.max` is swap alone,
    /// so the limit is needed to convert it.
    fn set_limit_and_swap(&self, ctl: &MemController, lim: Option<i64>, swap: i64) -> Result<()> {
        let dir = ctl.path();
        let Some(limit) = lim else {
            return Err(self.h.unsupported(
                "linux.resources.memory.swap without memory.limit",
                "on cgroup v2 (swap is memory+swap; give the limit too)",
            ));
        };
        set(dir, "memory.limit", Some(limit), |v| ctl.set_limit(v))?;
        let swap_only = if swap < 0 || limit < 0 {
            -1
        } else if swap < limit {
            return Err(self.h.invalid(format!(
                "memory.swap ({swap}) is smaller than memory.limit ({limit}); swap counts memory plus swap, make it >= the limit"
            )));
        } else {
            swap - limit
        };
        // Reported as configured (memory+swap).
        ctl.set_memswap_limit(swap_only)
            .map_err(|e| refused(dir, "memory.swap", swap, e))
    }

    fn set_cpu(&self, ctl: &CpuController, c: &LinuxCpu) -> Result<()> {
        let dir = ctl.path();
        set(dir, "cpu.shares", c.shares(), |v| {
            ctl.set_shares(shares_to_weight(v))
        })?;
        if c.quota().is_some() || c.period().is_some() {
            ctl.set_cfs_quota_and_period(c.quota(), c.period())
                .map_err(|e| {
                    let value = format!("{:?}/{:?}", c.quota(), c.period());
                    refused(dir, "cpu.quota/period", value, e)
                })?;
        }
        Ok(())
    }

    fn set_devices(&self, rules: &[Rule]) -> Result<()> {
        let dir = self.dir();
        devices_bpf::apply(&dir, rules).map_err(|e| Error::Controller {
            path: dir,
            op: "linux.resources.devices".into(),
            detail: e.to_string(),
        })
    }

    /// Writes each entry to the file it names.
    fn set_unified(&self, u: &HashMap<String, String>) -> Result<()> {
        let dir = self.dir();
        for (k, v) in u {
            if k.is_empty() || k.contains('/') || k.starts_with('.') {
                return Err(self.h.invalid(format!(
                    "linux.resources.unified key {k:?} is not a cgroup file name"
                )));
            }
            fs::write(dir.join(k), v).map_err(|source| Error::Refused {
                path: dir.clone(),
                setting: format!("unified.{k}"),
                value: v.clone(),
                detail: source.to_string(),
                hint: "see the kernel's cgroup-v2 documentation for the file",
            })?;
        }
        Ok(())
    }
}

/// Converts cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
