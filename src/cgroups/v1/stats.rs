//! Counters from the v1 hierarchies' files, read as runc's fs driver reads
//! them. A controller without a hierarchy, or a file this kernel does not
//! offer (swap accounting off, no BFQ/CFQ), leaves its fields zero.
use std::collections::BTreeMap;
use std::path::Path;

use super::super::stats::{
    hugepage_sizes, parse_list, read_keyed, read_num, read_opt, BlkioEntry, CpuSet, Hugetlb,
    MemoryEntry, Stats,
};
use super::super::{Error, Result};

pub(super) fn read(dirs: &BTreeMap<String, std::path::PathBuf>) -> Result<Stats> {
    let mut s = Stats::default();
    if let Some(d) = dirs.get("cpuacct") {
        cpuacct(d, &mut s)?;
    }
    if let Some(d) = dirs.get("cpu") {
        let kv = read_keyed(&d.join("cpu.stat"))?;
        let t = &mut s.cpu.throttling;
        t.periods = kv.get("nr_periods").copied().unwrap_or(0);
        t.throttled_periods = kv.get("nr_throttled").copied().unwrap_or(0);
        t.throttled_time = kv.get("throttled_time").copied().unwrap_or(0);
    }
    if let Some(d) = dirs.get("cpuset") {
        s.cpuset = cpuset(d)?;
    }
    if let Some(d) = dirs.get("memory") {
        memory(d, &mut s)?;
    }
    if let Some(d) = dirs.get("pids") {
        s.pids.current = read_num(&d.join("pids.current"))?;
        s.pids.limit = read_num(&d.join("pids.max"))?;
        if s.pids.limit == u64::MAX {
            s.pids.limit = 0;
        }
    }
    if let Some(d) = dirs.get("blkio") {
        blkio(d, &mut s)?;
    }
    if let Some(d) = dirs.get("hugetlb") {
        for size in hugepage_sizes() {
            let f = |name: &str| read_num(&d.join(format!("hugetlb.{size}.{name}")));
            let h = Hugetlb {
                usage: f("usage_in_bytes")?,
                max: f("max_usage_in_bytes")?,
                failcnt: f("failcnt")?,
            };
            s.hugetlb.insert(size, h);
        }
    }
    Ok(s)
}

fn cpuacct(d: &Path, s: &mut Stats) -> Result<()> {
    let u = &mut s.cpu.usage;
    u.total = read_num(&d.join("cpuacct.usage"))?;
    u.percpu = numbers(&d.join("cpuacct.usage_percpu"))?;
    // "cpu user system" then one row per cpu, in nanoseconds.
    if let Some(text) = read_opt(&d.join("cpuacct.usage_all"))? {
        for row in text.lines().skip(1) {
            let f: Vec<u64> = row
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [_, user, system] = f[..] {
                u.percpu_user.push(user);
                u.percpu_kernel.push(system);
            }
        }
    }
    // cpuacct.stat counts clock ticks; runc reports them in nanoseconds.
    let kv = read_keyed(&d.join("cpuacct.stat"))?;
    // SAFETY: sysconf has no memory effects.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    let ns = |k: &str| kv.get(k).copied().unwrap_or(0) * (1_000_000_000 / hz);
    u.user = ns("user");
    u.kernel = ns("system");
    Ok(())
}

fn numbers(path: &Path) -> Result<Vec<u64>> {
    Ok(read_opt(path)?
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect())
}

fn cpuset(d: &Path) -> Result<CpuSet> {
    let f = |name: &str| read_num(&d.join(format!("cpuset.{name}")));
    let list = |name: &str| -> Result<Vec<u16>> {
        Ok(parse_list(
            &read_opt(&d.join(format!("cpuset.{name}")))?.unwrap_or_default(),
        ))
    };
    let relax = read_opt(&d.join("cpuset.sched_relax_domain_level"))?.unwrap_or_default();
    Ok(CpuSet {
        cpus: list("cpus")?,
        cpu_exclusive: f("cpu_exclusive")?,
        mems: list("mems")?,
        mem_hardwall: f("mem_hardwall")?,
        mem_exclusive: f("mem_exclusive")?,
        memory_migrate: f("memory_migrate")?,
        memory_spread_page: f("memory_spread_page")?,
        memory_spread_slab: f("memory_spread_slab")?,
        memory_pressure: f("memory_pressure")?,
        sched_load_balance: f("sched_load_balance")?,
        sched_relax_domain_level: relax.trim().parse().unwrap_or(0),
    })
}

fn memory(d: &Path, s: &mut Stats) -> Result<()> {
    let entry = |prefix: &str| -> Result<MemoryEntry> {
        let f = |name: &str| read_num(&d.join(format!("{prefix}.{name}")));
        Ok(MemoryEntry {
            limit: f("limit_in_bytes")?,
            usage: f("usage_in_bytes")?,
            max: f("max_usage_in_bytes")?,
            failcnt: f("failcnt")?,
        })
    };
    let m = &mut s.memory;
    m.usage = entry("memory")?;
    m.swap = entry("memory.memsw")?;
    m.kernel = entry("memory.kmem")?;
    m.kernel_tcp = entry("memory.kmem.tcp")?;
    m.raw = read_keyed(&d.join("memory.stat"))?;
    m.cache = m.raw.get("cache").copied().unwrap_or(0);
    Ok(())
}

/// runc's order: the CFQ files, else BFQ's, else the throttling policy's
/// (the only ones kernels without a proportional scheduler keep).
fn blkio(d: &Path, s: &mut Stats) -> Result<()> {
    let b = &mut s.blkio;
    for prefix in ["blkio.", "blkio.bfq."] {
        let f = |name: &str| entries(&d.join(format!("{prefix}{name}")));
        b.io_service_bytes_recursive = f("io_service_bytes_recursive")?;
        b.io_serviced_recursive = f("io_serviced_recursive")?;
        if !b.io_serviced_recursive.is_empty() {
            b.io_queued_recursive = f("io_queued_recursive")?;
            b.io_service_time_recursive = f("io_service_time_recursive")?;
            b.io_wait_time_recursive = f("io_wait_time_recursive")?;
            b.io_merged_recursive = f("io_merged_recursive")?;
            b.io_time_recursive = f("time_recursive")?;
            b.sectors_recursive = f("sectors_recursive")?;
            return Ok(());
        }
    }
    b.io_service_bytes_recursive = entries(&d.join("blkio.throttle.io_service_bytes_recursive"))?;
    b.io_serviced_recursive = entries(&d.join("blkio.throttle.io_serviced_recursive"))?;
    Ok(())
}

/// `major:minor [op] value` lines; the `Total` summary line is skipped.
fn entries(path: &Path) -> Result<Vec<BlkioEntry>> {
    let Some(text) = read_opt(path)? else {
        return Ok(Vec::new());
    };
    parse_entries(&text).map_err(|message| Error::Cgroup {
        path: path.display().to_string(),
        message,
    })
}

fn parse_entries(text: &str) -> std::result::Result<Vec<BlkioEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dev, op, value) = match f[..] {
            [] | ["Total", _] => continue,
            [dev, value] => (dev, "", value),
            [dev, op, value] => (dev, op, value),
            _ => return Err(format!("unexpected line {line:?}")),
        };
        let bad = || format!("unexpected line {line:?}");
        let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
        out.push(BlkioEntry {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
            op: op.to_string(),
            value: value.parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_lines() {
        let e = parse_entries("8:0 Read 4096\n8:0 Write 0\n8:0 Total 4096\nTotal 4096\n").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].major, e[0].minor, e[0].op.as_str()), (8, 0, "Read"));
        assert_eq!(e[0].value, 4096);
        let t = parse_entries("8:16 12\n").unwrap();
        assert_eq!((t[0].minor, t[0].op.as_str(), t[0].value), (16, "", 12));
        assert!(parse_entries("garbage here now and more\n").is_err());
    }
}
