//! The limits of `linux.resources` that systemd knows as unit properties
//! (as runc's v2 systemd driver sets them). systemd writes its own values
//! into a unit's cgroup again on `daemon-reload`; a limit it was not told
//! about would be reset then. The cgroupfs writes that follow cover every
//! setting, these included.
use oci_spec::runtime::LinuxResources;
use zbus::zvariant::Value;

use crate::cgroups::v2::resources::{shares_to_weight, swap_only};

/// systemd's "infinity" for the `t` (u64) properties.
const INFINITY: u64 = u64::MAX;

pub type Property = (&'static str, Value<'static>);

/// The unit properties for `r` (only those it sets).
pub fn from_resources(r: &LinuxResources) -> Vec<Property> {
    let mut p: Vec<Property> = Vec::new();
    if let Some(m) = r.memory() {
        let limit = m.limit().unwrap_or(0);
        if limit > 0 {
            p.push(("MemoryMax", Value::U64(limit as u64)));
        } else if limit == -1 {
            p.push(("MemoryMax", Value::U64(INFINITY)));
        }
        if let Some(low) = m.reservation().filter(|v| *v > 0) {
            p.push(("MemoryLow", Value::U64(low as u64)));
        }
        if let Some(swap) = m.swap() {
            // An invalid pair is refused by the cgroupfs writes, with the reason.
            if let Ok(Some(s)) = swap_only(swap, limit) {
                let v = if s < 0 { INFINITY } else { s as u64 };
                p.push(("MemorySwapMax", Value::U64(v)));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(w) = c.shares().and_then(shares_to_weight) {
            p.push(("CPUWeight", Value::U64(w)));
        }
        let period = c.period().filter(|p| *p > 0);
        if let Some(quota) = c.quota() {
            if quota < 0 {
                p.push(("CPUQuotaPerSecUSec", Value::U64(INFINITY)));
            } else if quota > 0 {
                p.push((
                    "CPUQuotaPerSecUSec",
                    Value::U64(quota_per_sec(quota as u64, period.unwrap_or(100_000))),
                ));
            }
        }
        if let Some(period) = period {
            p.push(("CPUQuotaPeriodUSec", Value::U64(period)));
        }
        if let Some(bits) = c.cpus().as_deref().and_then(range_to_bits) {
            p.push(("AllowedCPUs", Value::from(bits)));
        }
        if let Some(bits) = c.mems().as_deref().and_then(range_to_bits) {
            p.push(("AllowedMemoryNodes", Value::from(bits)));
        }
    }
    if let Some(pids) = r.pids() {
        let limit = pids.limit();
        if limit > 0 {
            p.push(("TasksMax", Value::U64(limit as u64)));
        } else if limit == -1 {
            p.push(("TasksMax", Value::U64(INFINITY)));
        }
    }
    p
}

/// Quota per second of CPU time; systemd keeps it as a whole percentage,
/// so it is rounded up to the next 10 ms, as runc does (the exact quota
/// follows through cpu.max).
fn quota_per_sec(quota: u64, period: u64) -> u64 {
    let per_sec = quota.saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000) * 10_000
}

/// A CPU or memory-node list ("0-3,7") as systemd's bitmask bytes (byte 0
/// holds 0..7, lowest bit first); `None` if it does not parse (the
/// cgroupfs write then names the problem).
fn range_to_bits(list: &str) -> Option<Vec<u8>> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut bytes: Vec<u8> = Vec::new();
    for part in list.split(',') {
        let (lo, hi) = match part.trim().split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.trim().parse::<usize>().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi >= 8192 {
            return None;
        }
        for bit in lo..=hi {
            if bytes.len() <= bit / 8 {
                bytes.resize(bit / 8 + 1, 0);
            }
            bytes[bit / 8] |= 1 << (bit % 8);
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn get<'a>(p: &'a [Property], name: &str) -> Option<&'a Value<'static>> {
        p.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn limits_become_unit_properties() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(96 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1,3")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(42).build().unwrap())
            .build()
            .unwrap();
        let p = from_resources(&r);
        assert_eq!(get(&p, "MemoryMax"), Some(&Value::U64(64 << 20)));
        assert_eq!(get(&p, "MemorySwapMax"), Some(&Value::U64(32 << 20)));
        assert_eq!(get(&p, "CPUWeight"), Some(&Value::U64(39)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(&Value::U64(500_000)));
        assert_eq!(get(&p, "CPUQuotaPeriodUSec"), Some(&Value::U64(100_000)));
        assert_eq!(get(&p, "AllowedCPUs"), Some(&Value::from(vec![0b1011u8])));
        assert_eq!(get(&p, "TasksMax"), Some(&Value::U64(42)));
        assert!(get(&p, "MemoryLow").is_none());
    }

    #[test]
    fn unlimited_is_infinity_and_unset_is_absent() {
        let r = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        let p = from_resources(&r);
        assert_eq!(get(&p, "MemoryMax"), Some(&Value::U64(u64::MAX)));
        assert_eq!(get(&p, "TasksMax"), Some(&Value::U64(u64::MAX)));
        assert!(from_resources(&LinuxResources::default()).is_empty());
    }

    #[test]
    fn quota_rounds_up_to_whole_percent() {
        assert_eq!(quota_per_sec(12_345, 100_000), 130_000);
        assert_eq!(quota_per_sec(200_000, 100_000), 2_000_000);
    }

    #[test]
    fn cpu_lists_become_bitmasks() {
        assert_eq!(range_to_bits("0"), Some(vec![1]));
        assert_eq!(range_to_bits("8-9"), Some(vec![0, 3]));
        assert_eq!(range_to_bits("x"), None);
        assert_eq!(range_to_bits("3-1"), None);
    }
}
