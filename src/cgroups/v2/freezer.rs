//! The v2 freezer: `cgroup.freeze` requests it, `cgroup.events` reports it
//! and signals each change, so a freeze sleeps in poll(2) instead of polling.
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::super::common::{read_file, Freezer, FREEZE_TIMEOUT};
use super::super::{Error, FreezerState, Result};
use super::V2;

impl Freezer for V2 {
    fn freeze(&self) -> Result<()> {
        let dir = self.dir();
        let events_path = dir.join("cgroup.events");
        let events = fs::File::open(&events_path).map_err(|source| Error::Io {
            path: events_path.clone(),
            op: "open".into(),
            source,
        })?;
        fs::write(dir.join("cgroup.freeze"), "1").map_err(|source| Error::Io {
            path: dir.join("cgroup.freeze"),
            op: "request freeze".into(),
            source,
        })?;
        let start = Instant::now();
        loop {
            let state = self.freezer_state()?;
            if state == FreezerState::Frozen {
                return Ok(());
            }
            let left = FREEZE_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return self.h.freeze_timed_out(&dir, start, state);
            }
            let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: events_path,
                        op: "wait for the freeze".into(),
                        source: e.into(),
                    })
                }
            }
        }
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        let dir = self.dir();
        let requested = read_file(&dir.join("cgroup.freeze"))?;
        let events = read_file(&dir.join("cgroup.events"))?;
        Ok(parse(&requested, &events))
    }
}

/// Whether `dir` is frozen or asked to be (`frozen 1` in cgroup.events also
/// covers a frozen ancestor); `None` if unreadable.
pub(in super::super) fn frozen(dir: &Path) -> Option<bool> {
    let events = fs::read_to_string(dir.join("cgroup.events")).ok()?;
    let requested = fs::read_to_string(dir.join("cgroup.freeze")).ok();
    Some(events_say_frozen(&events) || requested.is_some_and(|r| r.trim() == "1"))
}

fn events_say_frozen(events: &str) -> bool {
    events
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"])
}

fn parse(requested: &str, events: &str) -> FreezerState {
    match (requested.trim() == "1", events_say_frozen(events)) {
        (true, true) => FreezerState::Frozen,
        (true, false) => FreezerState::Freezing,
        // Thaw requested but not yet done counts as not frozen.
        (false, _) => FreezerState::Thawed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezer_parsing() {
        let ev_frozen = "populated 1\nfrozen 1\n";
        let ev_not = "populated 1\nfrozen 0\n";
        assert_eq!(parse("1\n", ev_frozen), FreezerState::Frozen);
        assert_eq!(parse("1\n", ev_not), FreezerState::Freezing);
        assert_eq!(parse("0\n", ev_not), FreezerState::Thawed);
        assert_eq!(parse("0\n", ev_frozen), FreezerState::Thawed);
    }
}
