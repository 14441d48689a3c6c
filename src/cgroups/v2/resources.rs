//! v2 settings that differ from v1: swap on its own, cpu weight and a
//! combined quota/period, device rules as an eBPF program, block I/O in
//! `io.*`, and `linux.resources.unified`.
use std::collections::HashMap;
use std::fs;
use std::path::Path;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxResources};

use super::super::common::Resources;
use super::super::devices::Rule;
use super::super::error::{refused, set, write_setting};
use super::super::resources::throttles;
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
            (
                r.memory()
                    .as_ref()
                    .is_some_and(|m| m.kernel_tcp().is_some()),
                "linux.resources.memory.kernelTCP",
                "on cgroup v2 (socket memory is part of memory.max there)",
            ),
        ])?;
        match r.block_io() {
            Some(b) => self.check_block_io(b),
            None => Ok(()),
        }
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

    fn set_kernel_tcp(&self, _limit: i64) -> Result<()> {
        // Refused by check.
        Ok(())
    }

    /// As runc: the weight goes to `io.bfq.weight` as is when BFQ is there,
    /// else to `io.weight` converted; device weights to `io.bfq.weight`;
    /// throttles to `io.max` as `major:minor key=rate`.
    fn set_block_io(&self, b: &LinuxBlockIo) -> Result<()> {
        let dir = self.dir();
        let bfq = dir.join(BFQ).exists();
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            if bfq {
                write_setting(&dir, BFQ, "blockIO.weight", &w.to_string())?;
            } else {
                let v = blkio_to_io_weight(w).to_string();
                write_setting(&dir, "io.weight", "blockIO.weight", &v)?;
            }
        }
        for wd in b.weight_device().as_deref().unwrap_or(&[]) {
            if let Some(w) = wd.weight().filter(|w| *w != 0) {
                let dev = format!("{}:{}", wd.major(), wd.minor());
                let setting = format!("blockIO.weightDevice[{dev}].weight");
                write_setting(&dir, BFQ, &setting, &format!("{dev} {w}"))?;
            }
        }
        for (setting, _, key, devices) in throttles(b) {
            for t in devices {
                let value = format!("{}:{} {key}={}", t.major(), t.minor(), t.rate());
                write_setting(&dir, "io.max", setting, &value)?;
            }
        }
        Ok(())
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

impl V2 {
    /// Refuses the blockIO settings v2 or this kernel cannot apply, before
    /// anything is written. runc drops leaf weights, and per-device weights
    /// without BFQ, without a word; ferry says so.
    fn check_block_io(&self, b: &LinuxBlockIo) -> Result<()> {
        let dir = self.dir();
        let devs = b.weight_device().as_deref().unwrap_or(&[]);
        let set = |w: Option<u16>| w.is_some_and(|w| w != 0);
        let dev_weight = devs.iter().any(|d| set(d.weight()));
        let leaf = set(b.leaf_weight()) || devs.iter().any(|d| set(d.leaf_weight()));
        let throttle = throttles(b).iter().any(|(.., d)| !d.is_empty());
        let bfq = dir.join(BFQ);
        self.h.refuse_any(&[
            (
                leaf,
                "linux.resources.blockIO.leafWeight",
                "on cgroup v2 (it has no leaf weights)",
            ),
            (
                set(b.weight()) && !bfq.exists() && !dir.join("io.weight").exists(),
                "linux.resources.blockIO.weight",
                "here (neither io.bfq.weight nor io.weight exists: enable the io controller and BFQ or io cost)",
            ),
            (
                dev_weight && !bfq_device_weights(&bfq),
                "linux.resources.blockIO.weightDevice",
                "here (per-device weights need io.bfq.weight of a kernel >= 5.4 with BFQ)",
            ),
            (
                throttle && !dir.join("io.max").exists(),
                "linux.resources.blockIO.throttle*",
                "here (no io.max: the io controller is not enabled for this cgroup)",
            ),
        ])
    }
}

const BFQ: &str = "io.bfq.weight";

/// Whether `io.bfq.weight` takes per-device weights (kernel >= 5.4): it
/// then reads `default N` rather than a bare number (runc's test).
fn bfq_device_weights(bfq: &Path) -> bool {
    fs::read_to_string(bfq).is_ok_and(|t| t.trim().parse::<u64>().is_err())
}

/// runc's conversion of a blkio weight (10..1000) to io.weight (1..10000).
fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
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
    fn blkio_weights_convert_as_runc_does() {
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn shares_become_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
