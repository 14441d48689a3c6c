//! The v1 freezer: `freezer.state` in the freezer hierarchy, polled (v1
//! has no change notification for it).
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::Controller;

use super::super::common::{read_file, Freezer, FREEZE_TIMEOUT};
use super::super::error::backend;
use super::super::{Error, FreezerState, Result};
use super::V1;

impl Freezer for V1 {
    fn freeze(&self) -> Result<()> {
        let ctl = self.h.controller::<FreezerController>("freezer")?;
        let request = || {
            ctl.freeze()
                .map_err(|e| backend(ctl.path(), "request freeze", e))
        };
        let start = Instant::now();
        let mut step = Duration::from_millis(1);
        request()?;
        loop {
            let state = self.freezer_state()?;
            if state == FreezerState::Frozen {
                return Ok(());
            }
            if start.elapsed() >= FREEZE_TIMEOUT {
                return self.h.freeze_timed_out(ctl.path(), start, state);
            }
            thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(10));
            // Writing again picks up tasks forked while freezing.
            request()?;
        }
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        let dir = self.h.desc.dirs.get("freezer").ok_or_else(|| {
            self.h
                .unsupported("the freezer controller", "on this host (it is not mounted)")
        })?;
        let file = dir.join("freezer.state");
        let text = read_file(&file)?;
        parse(&text).ok_or_else(|| Error::Cgroup {
            path: file.display().to_string(),
            message: format!("unexpected freezer state {:?}", text.trim()),
        })
    }
}

/// Whether the freezer directory `dir` says frozen or freezing (a v1 child
/// reports its parent's freezing as its own); `None` if unreadable.
pub(in super::super) fn frozen(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("freezer.state")).ok()?;
    Some(matches!(
        parse(&text),
        Some(FreezerState::Frozen | FreezerState::Freezing)
    ))
}

fn parse(text: &str) -> Option<FreezerState> {
    match text.trim() {
        "THAWED" => Some(FreezerState::Thawed),
        "FREEZING" => Some(FreezerState::Freezing),
        "FROZEN" => Some(FreezerState::Frozen),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezer_parsing() {
        assert_eq!(parse("FROZEN\n"), Some(FreezerState::Frozen));
        assert_eq!(parse("FREEZING\n"), Some(FreezerState::Freezing));
        assert_eq!(parse("THAWED\n"), Some(FreezerState::Thawed));
        assert_eq!(parse("what"), None);
    }
}
