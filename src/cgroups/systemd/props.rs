//! The limits of `linux.resources` that systemd knows as unit properties
//! (as runc's v2 systemd driver sets them), `unified` keys included (they
//! win over the same limit given otherwise). systemd writes its own values
//! into a unit's cgroup again on `daemon-reload`, for every controller it
//! accounts: a limit it was not told about would be reset then. The
//! cgroupfs writes that follow cover every setting, these included.
use oci_spec::runtime::LinuxResources;
use zbus::zvariant::Value;

use crate::cgroups::v2::resources::{blkio_to_io_weight, shares_to_weight, swap_only};

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
    if let Some(w) = r
        .block_io()
        .as_ref()
        .and_then(|b| b.weight())
        .filter(|w| *w != 0)
    {
        p.push(("IOWeight", Value::U64(blkio_to_io_weight(w))));
    }
    let mut keys: Vec<_> = r.unified().iter().flatten().collect();
    keys.sort();
    for (key, value) in keys {
        for prop in from_unified(key, value.trim()) {
            p.retain(|(n, _)| *n != prop.0);
            p.push(prop);
        }
    }
    p
}

/// The properties for one `linux.resources.unified` key (none for keys
/// systemd has no property for, or values that do not parse: the cgroupfs
/// write then says what is wrong).
fn from_unified(key: &str, value: &str) -> Vec<Property> {
    let limit = |v: &str| -> Option<u64> {
        if v == "max" {
            Some(INFINITY)
        } else {
            v.parse().ok()
        }
    };
    let one = |name: &'static str, v: Option<u64>| -> Vec<Property> {
        v.map(|v| vec![(name, Value::U64(v))]).unwrap_or_default()
    };
    match key {
        "memory.min" => one("MemoryMin", limit(value)),
        "memory.low" => one("MemoryLow", limit(value)),
        "memory.high" => one("MemoryHigh", limit(value)),
        "memory.max" => one("MemoryMax", limit(value)),
        "memory.swap.max" => one("MemorySwapMax", limit(value)),
        "pids.max" => one("TasksMax", limit(value)),
        "cpu.weight" => one("CPUWeight", value.parse().ok()),
        "io.weight" => one(
            "IOWeight",
            value
                .strip_prefix("default ")
                .unwrap_or(value)
                .trim()
                .parse()
                .ok(),
        ),
        "cpuset.cpus" => range_to_bits(value)
            .map(|b| vec![("AllowedCPUs", Value::from(b))])
            .unwrap_or_default(),
        "cpuset.mems" => range_to_bits(value)
            .map(|b| vec![("AllowedMemoryNodes", Value::from(b))])
            .unwrap_or_default(),
        "cpu.max" => {
            let mut f = value.split_whitespace();
            let (Some(quota), period) = (f.next(), f.next()) else {
                return Vec::new();
            };
            let Ok(period) = period.map_or(Ok(100_000), str::parse::<u64>) else {
                return Vec::new();
            };
            if period == 0 {
                return Vec::new();
            }
            let per_sec = match quota {
                "max" => INFINITY,
                q => match q.parse() {
                    Ok(q) => quota_per_sec(q, period),
                    Err(_) => return Vec::new(),
                },
            };
            vec![
                ("CPUQuotaPerSecUSec", Value::U64(per_sec)),
                ("CPUQuotaPeriodUSec", Value::U64(period)),
            ]
        }
        _ => Vec::new(),
    }
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
    fn unified_keys_become_properties_and_win() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .unwrap(),
            )
            .unified(
                [
                    ("memory.max", "max"),
                    ("memory.high", "33554432"),
                    ("cpu.max", "25000 50000"),
                    ("cpu.weight", "300"),
                    ("io.weight", "default 200"),
                    ("pids.max", "7"),
                    ("memory.oom.group", "1"),
                    ("cpu.weight.nice", "x"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        let p = from_resources(&r);
        assert_eq!(get(&p, "MemoryMax"), Some(&Value::U64(u64::MAX)));
        assert_eq!(p.iter().filter(|(n, _)| *n == "MemoryMax").count(), 1);
        assert_eq!(get(&p, "MemoryHigh"), Some(&Value::U64(32 << 20)));
        assert_eq!(get(&p, "CPUQuotaPerSecUSec"), Some(&Value::U64(500_000)));
        assert_eq!(get(&p, "CPUQuotaPeriodUSec"), Some(&Value::U64(50_000)));
        assert_eq!(get(&p, "CPUWeight"), Some(&Value::U64(300)));
        assert_eq!(get(&p, "IOWeight"), Some(&Value::U64(200)));
        assert_eq!(get(&p, "TasksMax"), Some(&Value::U64(7)));
        assert_eq!(p.len(), 7, "{p:?}");
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
