//! Counters from the unified directory's files, in runc's v1-compatible
//! terms (as runc's fs2 driver reports them): nanoseconds from `cpu.stat`'s
//! microseconds, swap as memory plus swap, `io.stat` as blkio entries, a
//! pids limit of "max" as 0. Controllers not enabled for the cgroup leave
//! their fields zero.
use std::path::Path;

use super::super::stats::{
    hugepage_sizes, parse_list, read_keyed, read_num, read_opt, BlkioEntry, Hugetlb, MemoryEntry,
    Stats,
};
use super::super::{Error, Result};

pub(super) fn read(dir: &Path) -> Result<Stats> {
    let mut s = Stats::default();
    let kv = read_keyed(&dir.join("cpu.stat"))?;
    let k = |key: &str| kv.get(key).copied().unwrap_or(0);
    s.cpu.usage.total = k("usage_usec") * 1000;
    s.cpu.usage.user = k("user_usec") * 1000;
    s.cpu.usage.kernel = k("system_usec") * 1000;
    s.cpu.throttling.periods = k("nr_periods");
    s.cpu.throttling.throttled_periods = k("nr_throttled");
    s.cpu.throttling.throttled_time = k("throttled_usec") * 1000;

    let list = |name: &str| -> Result<Vec<u16>> {
        Ok(parse_list(&read_opt(&dir.join(name))?.unwrap_or_default()))
    };
    s.cpuset.cpus = list("cpuset.cpus.effective")?;
    s.cpuset.mems = list("cpuset.mems.effective")?;

    if dir.join("memory.current").exists() {
        let entry = |prefix: &str| -> Result<MemoryEntry> {
            Ok(MemoryEntry {
                usage: read_num(&dir.join(format!("{prefix}.current")))?,
                limit: read_num(&dir.join(format!("{prefix}.max")))?,
                max: read_num(&dir.join(format!("{prefix}.peak")))?,
                failcnt: 0,
            })
        };
        let m = &mut s.memory;
        m.usage = entry("memory")?;
        m.raw = read_keyed(&dir.join("memory.stat"))?;
        m.cache = m.raw.get("file").copied().unwrap_or(0);
        if dir.join("memory.swap.current").exists() {
            let swap = entry("memory.swap")?;
            m.swap = MemoryEntry {
                usage: swap.usage + m.usage.usage,
                limit: if swap.limit == u64::MAX || m.usage.limit == u64::MAX {
                    u64::MAX
                } else {
                    swap.limit + m.usage.limit
                },
                max: 0,
                failcnt: 0,
            };
        }
    }

    if dir.join("pids.current").exists() {
        s.pids.current = read_num(&dir.join("pids.current"))?;
        s.pids.limit = read_num(&dir.join("pids.max"))?;
        if s.pids.limit == u64::MAX {
            s.pids.limit = 0;
        }
    }

    if let Some(text) = read_opt(&dir.join("io.stat"))? {
        io_stat(&text, &mut s).map_err(|message| Error::Cgroup {
            path: dir.join("io.stat").display().to_string(),
            message,
        })?;
    }

    for size in hugepage_sizes() {
        let current = dir.join(format!("hugetlb.{size}.current"));
        if !current.exists() {
            continue;
        }
        let events = read_keyed(&dir.join(format!("hugetlb.{size}.events")))?;
        let h = Hugetlb {
            usage: read_num(&current)?,
            max: 0,
            failcnt: events.get("max").copied().unwrap_or(0),
        };
        s.hugetlb.insert(size, h);
    }
    Ok(s)
}

/// `maj:min rbytes=.. wbytes=.. rios=.. wios=..` lines: bytes become
/// `ioServiceBytesRecursive`, operations `ioServicedRecursive`.
fn io_stat(text: &str, s: &mut Stats) -> std::result::Result<(), String> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(dev) = parts.next() else { continue };
        let bad = || format!("unexpected line {line:?}");
        let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
        let (major, minor) = (
            major.parse().map_err(|_| bad())?,
            minor.parse().map_err(|_| bad())?,
        );
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(bad());
            };
            let (list, op) = match k {
                "rbytes" => (&mut s.blkio.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut s.blkio.io_service_bytes_recursive, "Write"),
                "rios" => (&mut s.blkio.io_serviced_recursive, "Read"),
                "wios" => (&mut s.blkio.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value: v.parse().map_err(|_| bad())?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_lines() {
        let mut s = Stats::default();
        io_stat(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
            &mut s,
        )
        .unwrap();
        let b = &s.blkio.io_service_bytes_recursive;
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].major, b[0].op.as_str(), b[0].value),
            (254, "Read", 4096)
        );
        assert_eq!((b[1].op.as_str(), b[1].value), ("Write", 8192));
        assert_eq!(s.blkio.io_serviced_recursive[1].value, 2);
        assert!(io_stat("nodevice rbytes=1\n", &mut s).is_err());
    }
}
