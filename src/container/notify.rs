//! `events` without `--stats`: the OOM and memory-pressure notifications
//! streamed between the periodic statistics, in runc's event envelope.
use serde::Serialize;

use super::{Container, Result, Status};
use crate::cgroups::{Notification, Notifier, PressureLevel};

/// runc's `{"type":"oom","id":...}`; pressure adds
/// `"data":{"level":"medium"}`.
#[derive(Debug, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PressureData>,
}

#[derive(Debug, Serialize)]
pub struct PressureData {
    pub level: PressureLevel,
}

impl Container {
    /// Registers for the container's memory notifications.
    pub fn notifier(&self) -> Result<Notifier> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong_state(status, "a stopped container has no events"));
        }
        Ok(self.cgroup_or_err()?.notifier()?)
    }

    /// The envelope for one notification.
    pub fn event(&self, n: Notification) -> Event {
        let (kind, data) = match n {
            Notification::Oom => ("oom", None),
            Notification::MemoryPressure(level) => ("memoryPressure", Some(PressureData { level })),
        };
        Event {
            kind,
            id: self.state.id.clone(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_has_runcs_shape() {
        let e = Event {
            kind: "oom",
            id: "c1".into(),
            data: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"oom","id":"c1"}"#
        );
    }
}
