//! v1 settings that differ from v2: memory+swap, cpu shares and the
//! realtime scheduler, device rules written to the devices controller, and
//! the blkio controller.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxResources};

use super::super::common::read_u64;
use super::super::common::Resources;
use super::super::devices::{Kind, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};
use super::super::error::{refused, set, write_pair, write_setting};
use super::super::resources::throttles;
use super::super::Result;
use super::V1;

impl Resources for V1 {
    fn check(&self, r: &LinuxResources) -> Result<()> {
        self.h.refuse_any(&[(
            r.unified().as_ref().is_some_and(|v| !v.is_empty()),
            "linux.resources.unified",
            "on a cgroup v1 host (it needs cgroup v2)",
        )])?;
        match r.block_io() {
            Some(b) => self.check_block_io(b),
            None => Ok(()),
        }
    }

    /// `swap` is memory+swap, which must stay >= memory.limit: the writes are
    /// ordered so that holds in between.
    fn set_limit_and_swap(&self, ctl: &MemController, lim: Option<i64>, swap: i64) -> Result<()> {
        let dir = ctl.path();
        let limit = || set(dir, "memory.limit", lim, |v| ctl.set_limit(v));
        let sw = || set(dir, "memory.swap", Some(swap), |v| ctl.set_memswap_limit(v));
        if limit().is_err() {
            sw()?;
            limit()
        } else {
            sw()
        }
    }

    /// As runc: a 0 leaves the value as it is; shares are read back (the
    /// kernel clamps them silently); period and quota, and the realtime
    /// period and runtime, are written in runc's order (see [`write_pair`]).
    fn set_cpu(&self, ctl: &CpuController, c: &LinuxCpu) -> Result<()> {
        let dir = ctl.path();
        if let Some(shares) = c.shares().filter(|v| *v != 0) {
            set(dir, "cpu.shares", Some(shares), |v| ctl.set_shares(v))?;
            let got = read_u64(&dir.join("cpu.shares"))?;
            if got != shares {
                let bound = if shares > got { "maximum" } else { "minimum" };
                return Err(self.h.invalid(format!(
                    "linux.resources.cpu.shares {shares}: the {bound} the kernel allows is {got}"
                )));
            }
        }
        let period = c
            .period()
            .filter(|v| *v != 0)
            .map(|v| ("cpu.cfs_period_us", "cpu.period", v.to_string()));
        let quota = c
            .quota()
            .filter(|v| *v != 0)
            .map(|v| ("cpu.cfs_quota_us", "cpu.quota", v.to_string()));
        write_pair(dir, period, quota)?;
        let rt_period = c
            .realtime_period()
            .filter(|v| *v != 0)
            .map(|v| ("cpu.rt_period_us", "cpu.realtimePeriod", v.to_string()));
        let rt_runtime = c
            .realtime_runtime()
            .filter(|v| *v != 0)
            .map(|v| ("cpu.rt_runtime_us", "cpu.realtimeRuntime", v.to_string()));
        write_pair(dir, rt_period, rt_runtime)
    }

    /// Writes each rule to `devices.allow` or `devices.deny`, in order.
    fn set_devices(&self, rules: &[Rule]) -> Result<()> {
        let ctl = self.h.controller::<DevicesController>("devices")?;
        for rule in rules {
            let typ = match rule.kind {
                None => DeviceType::All,
                Some(Kind::Char) => DeviceType::Char,
                Some(Kind::Block) => DeviceType::Block,
            };
            let access: String = [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
                .iter()
                .filter(|(bit, _)| rule.access & bit != 0)
                .map(|(_, c)| c)
                .collect();
            let perms = DevicePermissions::from_str(&access).expect("letters from rwm");
            let major = rule.major.map_or(-1, i64::from);
            let minor = rule.minor.map_or(-1, i64::from);
            let what = format!("devices {} {major}:{minor} {access}", typ.to_char());
            let res = if rule.allow {
                ctl.allow_device(typ, major, minor, &perms)
            } else {
                ctl.deny_device(typ, major, minor, &perms)
            };
            res.map_err(|e| refused(ctl.path(), "devices", what, e))?;
        }
        Ok(())
    }

    fn set_unified(&self, u: &HashMap<String, String>) -> Result<()> {
        // Refused by check.
        debug_assert!(u.is_empty());
        Ok(())
    }

    fn set_kernel_tcp(&self, limit: i64) -> Result<()> {
        let ctl = self.h.controller::<MemController>("memory")?;
        let value = limit.to_string();
        let file = "memory.kmem.tcp.limit_in_bytes";
        write_setting(ctl.path(), file, "memory.kernelTCP", &value)
    }

    /// As runc: the weight goes to `blkio.weight` where the kernel has it
    /// (CFQ) and to `blkio.bfq.weight` otherwise; leaf weights to the
    /// `blkio.leaf_weight*` files; throttles as `major:minor rate`.
    fn set_block_io(&self, b: &LinuxBlockIo) -> Result<()> {
        let Some(dir) = self.blkio_dir() else {
            return Ok(()); // nothing to write: check refused any setting
        };
        let (weight, weight_device) = weight_files(&dir);
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            write_setting(&dir, weight, "blockIO.weight", &w.to_string())?;
        }
        if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
            write_setting(&dir, LEAF, "blockIO.leafWeight", &w.to_string())?;
        }
        for wd in b.weight_device().as_deref().unwrap_or(&[]) {
            let dev = format!("{}:{}", wd.major(), wd.minor());
            if let Some(w) = wd.weight().filter(|w| *w != 0) {
                let setting = format!("blockIO.weightDevice[{dev}].weight");
                write_setting(&dir, weight_device, &setting, &format!("{dev} {w}"))?;
            }
            if let Some(w) = wd.leaf_weight().filter(|w| *w != 0) {
                let setting = format!("blockIO.weightDevice[{dev}].leafWeight");
                write_setting(&dir, LEAF_DEVICE, &setting, &format!("{dev} {w}"))?;
            }
        }
        for (setting, file, _, devices) in throttles(b) {
            for t in devices {
                let value = format!("{}:{} {}", t.major(), t.minor(), t.rate());
                write_setting(&dir, file, setting, &value)?;
            }
        }
        Ok(())
    }
}

const LEAF: &str = "blkio.leaf_weight";
const LEAF_DEVICE: &str = "blkio.leaf_weight_device";

/// The weight files this kernel offers: CFQ's, else BFQ's (runc's choice).
fn weight_files(dir: &Path) -> (&'static str, &'static str) {
    if dir.join("blkio.weight").exists() {
        ("blkio.weight", "blkio.weight_device")
    } else {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    }
}

impl V1 {
    fn blkio_dir(&self) -> Option<PathBuf> {
        self.h.desc.dirs.get("blkio").cloned()
    }

    /// Refuses the blockIO settings whose files this kernel lacks, before
    /// anything is written (the directory exists by then).
    fn check_block_io(&self, b: &LinuxBlockIo) -> Result<()> {
        let devs = b.weight_device().as_deref().unwrap_or(&[]);
        let weight = b.weight().is_some_and(|w| w != 0)
            || devs.iter().any(|d| d.weight().is_some_and(|w| w != 0));
        let leaf = b.leaf_weight().is_some_and(|w| w != 0)
            || devs.iter().any(|d| d.leaf_weight().is_some_and(|w| w != 0));
        let throttle = throttles(b).iter().any(|(.., d)| !d.is_empty());
        if !(weight || leaf || throttle) {
            return Ok(());
        }
        let Some(dir) = self.blkio_dir() else {
            return Err(self.h.unsupported(
                "linux.resources.blockIO",
                "here (no v1 hierarchy is mounted for the blkio controller)",
            ));
        };
        let probe = dir;
        let (w, _) = weight_files(&probe);
        self.h.refuse_any(&[
            (
                weight && !probe.join(w).exists(),
                "linux.resources.blockIO.weight",
                "by this kernel (neither blkio.weight nor blkio.bfq.weight exists: no CFQ or BFQ I/O scheduler)",
            ),
            (
                leaf && !probe.join(LEAF).exists(),
                "linux.resources.blockIO.leafWeight",
                "by this kernel (blkio.leaf_weight went with the CFQ scheduler)",
            ),
            (
                throttle && !probe.join("blkio.throttle.read_bps_device").exists(),
                "linux.resources.blockIO.throttle*",
                "by this kernel (no blkio.throttle files: CONFIG_BLK_DEV_THROTTLING is off)",
            ),
        ])
    }
}
