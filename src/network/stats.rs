//! Counters of the host end of a pair.
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Error, Result, VethConfig};

#[derive(Debug, Clone, Default, Serialize)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Counters of the host end of the pair.
pub fn host_stats(cfg: &VethConfig) -> Result<InterfaceStats> {
    let dir = Path::new("/sys/class/net")
        .join(&cfg.host_if)
        .join("statistics");
    cfg.check_host_if()?;
    let read = |f: &str| -> Result<u64> {
        let path = dir.join(f);
        let text = fs::read_to_string(&path).map_err(|source| Error::Stats {
            interface: cfg.host_if.clone(),
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| Error::Link {
            interface: cfg.host_if.clone(),
            message: format!("{}: not a number: {:?}", path.display(), text.trim()),
        })
    };
    Ok(InterfaceStats {
        name: cfg.host_if.clone(),
        rx_bytes: read("rx_bytes")?,
        rx_packets: read("rx_packets")?,
        rx_errors: read("rx_errors")?,
        rx_dropped: read("rx_dropped")?,
        tx_bytes: read("tx_bytes")?,
        tx_packets: read("tx_packets")?,
        tx_errors: read("tx_errors")?,
        tx_dropped: read("tx_dropped")?,
    })
}

/// Counters of the host end living in the namespace of `host_netns_pid`
/// (read from `/proc/<pid>/net/dev`, which shows that namespace).
pub fn host_stats_in(cfg: &VethConfig, host_netns_pid: Option<i32>) -> Result<InterfaceStats> {
    let Some(hpid) = host_netns_pid else {
        return host_stats(cfg);
    };
    let path = PathBuf::from(format!("/proc/{hpid}/net/dev"));
    let text = fs::read_to_string(&path).map_err(|source| Error::Stats {
        interface: cfg.host_if.clone(),
        path: path.clone(),
        source,
    })?;
    parse_net_dev(&text, &cfg.host_if).ok_or_else(|| Error::Link {
        interface: cfg.host_if.clone(),
        message: format!("not listed in {}", path.display()),
    })
}

/// Parses one interface's line of `/proc/net/dev`.
fn parse_net_dev(text: &str, name: &str) -> Option<InterfaceStats> {
    for line in text.lines().skip(2) {
        let (ifname, rest) = line.split_once(':')?;
        if ifname.trim() != name {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 16 {
            return None;
        }
        return Some(InterfaceStats {
            name: name.to_string(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_dropped: v[11],
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parsing() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  vh1:   1234      10    1    2    0     0          0         0     5678      20    3    4    0     0       0          0\n";
        let s = parse_net_dev(text, "vh1").unwrap();
        assert_eq!(
            (s.rx_bytes, s.rx_packets, s.rx_errors, s.rx_dropped),
            (1234, 10, 1, 2)
        );
        assert_eq!(
            (s.tx_bytes, s.tx_packets, s.tx_errors, s.tx_dropped),
            (5678, 20, 3, 4)
        );
        assert!(parse_net_dev(text, "nope").is_none());
    }
}
