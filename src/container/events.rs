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

/// runc's `types.Stats`: the cgroup's counters, Intel RDT (which ferry
/// does not manage: always empty, as runc shows it without RDT) and the
/// container's network interfaces (`null` without any, as runc).
#[derive(Debug, Serialize)]
pub struct StatsData {
    #[serde(flatten)]
    pub cgroup: Stats,
    pub intel_rdt: IntelRdt,
    pub network_interfaces: Option<Vec<InterfaceStats>>,
}

#[derive(Debug, Default, Serialize)]
pub struct IntelRdt {}

impl Container {
    pub fn stats(&self) -> Result<StatsSnapshot> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, "a stopped container has no statistics"));
        }
        let s: Stats = self.cgroup_or_err()?.stats()?;
        let network_interfaces = match &self.state.veth {
            Some(v) => Some(vec![crate::network::host_stats(v)?]),
            None => None,
        };
        Ok(StatsSnapshot {
            kind: "stats",
            id: self.state.id.clone(),
            data: StatsData {
                cgroup: s,
                intel_rdt: IntelRdt::default(),
                network_interfaces,
            },
        })
    }
}
