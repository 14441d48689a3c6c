//! v1 settings that differ from v2: memory+swap, cpu shares and the
//! realtime scheduler, and device rules written to the devices controller.
use std::collections::HashMap;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use oci_spec::runtime::{LinuxCpu, LinuxResources};

use super::super::common::Resources;
use super::super::devices::{Kind, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};
use super::super::error::{refused, set};
use super::super::Result;
use super::V1;

impl Resources for V1 {
    fn check(&self, r: &LinuxResources) -> Result<()> {
        self.h.refuse_any(&[(
            r.unified().as_ref().is_some_and(|v| !v.is_empty()),
            "linux.resources.unified",
            "on a cgroup v1 host (it needs cgroup v2)",
        )])
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

    fn set_cpu(&self, ctl: &CpuController, c: &LinuxCpu) -> Result<()> {
        let dir = ctl.path();
        set(dir, "cpu.shares", c.shares(), |v| ctl.set_shares(v))?;
        set(dir, "cpu.period", c.period(), |v| ctl.set_cfs_period(v))?;
        set(dir, "cpu.quota", c.quota(), |v| ctl.set_cfs_quota(v))?;
        set(dir, "cpu.realtimePeriod", c.realtime_period(), |v| {
            ctl.set_rt_period_us(v)
        })?;
        set(dir, "cpu.realtimeRuntime", c.realtime_runtime(), |v| {
            ctl.set_rt_runtime(v)
        })
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
}
