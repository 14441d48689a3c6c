//! v2 settings that differ from v1: swap on its own, cpu weight and a
//! combined quota/period, device rules as an eBPF program, block I/O in
//! `io.*`, and `linux.resources.unified`.
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxResources};

use super::super::common::{read_file, write_beneath, Resources};
use super::super::devices::Rule;
use super::super::error::{set, write_setting};
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
    /// converted as runc converts it (`swap_only`). Without swap
    /// accounting in the kernel, "no limit" and "no swap" are what the
    /// container gets anyway; any other value is refused.
    fn set_limit_and_swap(&self, ctl: &MemController, lim: Option<i64>, swap: i64) -> Result<()> {
        let dir = ctl.path();
        let swap_max = swap_only(swap, lim.unwrap_or(0)).map_err(|why| {
            self.h
                .invalid(format!("linux.resources.memory.swap: {why}"))
        })?;
        if let Some(v) = swap_max {
            let v = if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            };
            if let Err(e) = write_beneath(dir, "memory.swap.max", &v) {
                let off = e.kind() == io::ErrorKind::NotFound;
                if !(off && (v == "max" || v == "0")) {
                    let detail = if off {
                        "the kernel does not account swap (boot with swapaccount=1)".into()
                    } else {
                        e.to_string()
                    };
                    return Err(Error::Refused {
                        path: dir.to_path_buf(),
                        setting: "memory.swap".into(),
                        value: swap.to_string(),
                        detail,
                        hint: "the limit must be above current usage, and memory+swap >= memory",
                    });
                }
            }
        }
        set(dir, "memory.limit", lim, |v| ctl.set_limit(v))
    }

    /// Shares become `cpu.weight` as runc converts them; quota and period
    /// become `cpu.max` ("max" for a quota of -1; a period alone keeps
    /// the quota in force).
    fn set_cpu(&self, ctl: &CpuController, c: &LinuxCpu) -> Result<()> {
        let dir = ctl.path();
        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            let weight = shares_to_weight(shares).ok_or_else(|| {
                self.h.invalid(format!(
                    "linux.resources.cpu.shares {shares} is outside 2..262144"
                ))
            })?;
            set(dir, "cpu.shares", Some(weight), |v| ctl.set_shares(v))?;
        }
        let quota = c.quota().filter(|q| *q != 0);
        let period = c.period().filter(|p| *p != 0);
        if quota.is_none() && period.is_none() {
            return Ok(());
        }
        let quota = match quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_string(),
            None => read_file(&dir.join("cpu.max"))?
                .split_whitespace()
                .next()
                .unwrap_or("max")
                .to_string(),
        };
        let line = match period {
            Some(p) => format!("{quota} {p}"),
            None => quota,
        };
        write_beneath(dir, "cpu.max", &line).map_err(|e| Error::Refused {
            path: dir.to_path_buf(),
            setting: "cpu.quota/period".into(),
            value: line.clone(),
            detail: e.to_string(),
            hint: "quota must be -1 or at least 1000 us, period between 1000 us and 1 s",
        })
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

    /// Writes each entry to the file it names, as is. A name must be
    /// `<controller>.<parameter>` of this cgroup's directory (opened
    /// beneath it by the kernel), and the controller enabled for it.
    fn set_unified(&self, u: &HashMap<String, String>) -> Result<()> {
        let dir = self.dir();
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for k in keys {
            let v = &u[k];
            let controller = unified_controller(k).map_err(|why| {
                self.h
                    .invalid(format!("linux.resources.unified key {k:?}: {why}"))
            })?;
            let Err(e) = write_beneath(&dir, k, v) else {
                continue;
            };
            let enabled = read_file(&dir.join("cgroup.controllers"))?
                .split_whitespace()
                .any(|c| c == controller);
            let detail = match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                    if controller != "cgroup" && !enabled =>
                {
                    format!("controller {controller:?} is not enabled for this cgroup (add it to the parent's cgroup.subtree_control)")
                }
                io::ErrorKind::NotFound => format!("no file {k} in the cgroup"),
                _ => e.to_string(),
            };
            return Err(Error::Refused {
                path: dir.clone(),
                setting: format!("unified.{k}"),
                value: v.clone(),
                detail,
                hint: "see the kernel's cgroup-v2 documentation for the file",
            });
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
pub(in crate::cgroups) fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

/// The controller a `linux.resources.unified` key belongs to: the part
/// before the first dot of a plain file name.
fn unified_controller(key: &str) -> std::result::Result<&str, &'static str> {
    if key.contains('/') || key.contains('\0') {
        return Err("must be a file name of the cgroup (no slashes)");
    }
    match key.split_once('.') {
        Some((c, p)) if !c.is_empty() && !p.is_empty() => Ok(c),
        _ => Err("must be in the form CONTROLLER.PARAMETER"),
    }
}

/// cgroup v1 `cpu.shares` (2..262144) as v2 `cpu.weight` (1..10000),
/// runc's conversion; `None` outside the range v1 accepts.
pub(in crate::cgroups) fn shares_to_weight(shares: u64) -> Option<u64> {
    (2..=262_144)
        .contains(&shares)
        .then(|| 1 + ((shares - 2) * 9999) / 262_142)
}

/// `memory.swap.max` for OCI's memory+swap `swap` and `limit` (0 = not
/// given, -1 = no limit), as runc computes it: `None` leaves it alone,
/// -1 is "max".
pub(in crate::cgroups) fn swap_only(
    swap: i64,
    limit: i64,
) -> std::result::Result<Option<i64>, String> {
    // No memory limit and no swap given: both unlimited, as on v1.
    if limit == -1 && swap == 0 {
        return Ok(Some(-1));
    }
    if swap == 0 {
        return Ok(None);
    }
    if swap == -1 {
        return Ok(Some(-1));
    }
    if limit == 0 || limit == -1 {
        return Err(format!(
            "{swap} needs a memory limit too (swap counts memory plus swap); set linux.resources.memory.limit"
        ));
    }
    if swap < limit || limit < 0 {
        return Err(format!(
            "{swap} is smaller than memory.limit ({limit}); swap counts memory plus swap, make it >= the limit"
        ));
    }
    Ok(Some(swap - limit))
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
        assert_eq!(shares_to_weight(2), Some(1));
        assert_eq!(shares_to_weight(1024), Some(39));
        assert_eq!(shares_to_weight(262_144), Some(10_000));
        assert_eq!(shares_to_weight(1), None);
        assert_eq!(shares_to_weight(262_145), None);
    }

    #[test]
    fn swap_is_converted_as_runc_does() {
        assert_eq!(swap_only(0, -1), Ok(Some(-1)));
        assert_eq!(swap_only(0, 64), Ok(None));
        assert_eq!(swap_only(-1, 64), Ok(Some(-1)));
        assert_eq!(swap_only(128, 64), Ok(Some(64)));
        assert_eq!(swap_only(64, 64), Ok(Some(0)));
        assert!(swap_only(32, 64).is_err());
        assert!(swap_only(128, 0).is_err());
        assert!(swap_only(128, -1).is_err());
    }

    #[test]
    fn unified_keys() {
        assert_eq!(unified_controller("memory.high"), Ok("memory"));
        assert_eq!(unified_controller("cgroup.max.depth"), Ok("cgroup"));
        for bad in ["../x.max", "memory", ".max", "memory.", "a/b.c", ".."] {
            assert!(unified_controller(bad).is_err(), "{bad}");
        }
    }
}
