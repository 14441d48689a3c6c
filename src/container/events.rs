//! `events --stats`: one snapshot of cgroup and network counters.
use serde::Serialize;

use super::{Container, Result, Status};
use crate::cgroups::Stats;
use crate::network::InterfaceStats;

/// runc's `events` envelope: `{"type":"stats","id":...,"data":{...}}`.
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub data: StatsData,
}

#[derive(Debug, Serialize)]
pub struct StatsData {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub network_interfaces: Vec<InterfaceStats>,
}

#[derive(Debug, Serialize)]
pub struct CpuStats {
    pub usage: CpuUsage,
}

#[derive(Debug, Serialize)]
pub struct CpuUsage {
    pub total: u64,
    pub user: u64,
    pub kernel: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryStats {
    pub usage: MemoryUsage,
}

#[derive(Debug, Serialize)]
pub struct MemoryUsage {
    pub usage: u64,
    pub max: u64,
    pub limit: u64,
}

#[derive(Debug, Serialize)]
pub struct PidsStats {
    pub current: u64,
    pub limit: u64,
}

impl Container {
    pub fn stats(&self) -> Result<StatsSnapshot> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, "a stopped container has no statistics"));
        }
        let s: Stats = self.cgroup_or_err()?.stats()?;
        let mut network_interfaces = Vec::new();
        if let Some(v) = &self.state.veth {
            network_interfaces.push(crate::network::host_stats(v)?);
        }
        Ok(StatsSnapshot {
            kind: "stats",
            id: self.state.id.clone(),
            data: StatsData {
                cpu: CpuStats {
                    usage: CpuUsage {
                        total: s.cpu_usage_ns,
                        user: s.cpu_user_ns,
                        kernel: s.cpu_system_ns,
                    },
                },
                memory: MemoryStats {
                    usage: MemoryUsage {
                        usage: s.memory_usage,
                        max: s.memory_max_usage,
                        limit: s.memory_limit,
                    },
                },
                pids: PidsStats {
                    current: s.pids_current,
                    limit: s.pids_limit,
                },
                network_interfaces,
            },
        })
    }
}
