//! v2 OOM notifications as runc's notify_v2 finds them: inotify on
//! `memory.events`, reporting when its `oom_kill` counter grows.
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::super::common::read_file;
use super::super::notify::{io_error, Notification, Source};
use super::super::stats::parse_keyed;
use super::super::Result;

pub(in crate::cgroups) struct V2Notify {
    events: PathBuf,
    inotify: Inotify,
    /// `oom_kill` when last read: kills before `events` started are old news.
    kills: u64,
}

impl V2Notify {
    /// Watches `memory.events` in the cgroup directory `dir`.
    pub fn new(dir: &Path) -> Result<V2Notify> {
        let events = dir.join("memory.events");
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| io_error(&events, "inotify", e))?;
        inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .map_err(|e| io_error(&events, "watch", e))?;
        let kills = oom_kills(&events)?;
        Ok(V2Notify {
            events,
            inotify,
            kills,
        })
    }
}

fn oom_kills(events: &Path) -> Result<u64> {
    let kv = parse_keyed(&read_file(events)?);
    Ok(kv.get("oom_kill").copied().unwrap_or(0))
}

impl Source for V2Notify {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.inotify.as_fd()]
    }

    fn drain(&mut self) -> Result<Option<Vec<Notification>>> {
        match self.inotify.read_events() {
            Ok(_) | Err(Errno::EAGAIN) => {}
            Err(e) => return Err(io_error(&self.events, "read inotify events", e)),
        }
        if !self.events.exists() {
            return Ok(None);
        }
        let kills = oom_kills(&self.events)?;
        let grew = kills > self.kills;
        self.kills = kills;
        Ok(Some(if grew {
            vec![Notification::Oom]
        } else {
            Vec::new()
        }))
    }
}
