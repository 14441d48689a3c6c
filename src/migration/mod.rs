//! ferry's side of a live migration: [`source::ContainerSource`] makes a
//! ferry container the sending end of [`migrate::source::migrate`], and
//! [`dest::Receiver`] restores incoming containers for `ferry serve`
//! ([`migrate::dest::Server`]).
//!
//! Both ends hold CRIU at a notification while the other host works:
//! the source at post-dump (the tree frozen, every image written and every
//! page sent; `Ok` lets CRIU kill the tree, `Err` makes it resume the tree
//! where it was), the destination at post-restore (the tree restored but
//! not running; `Ok` lets it run, `Err` makes CRIU kill it and the restore
//! undo itself). Each CRIU call runs in its own thread; the hold is a pair
//! of channels.
use std::time::Instant;

use crate::criu::{Criu, Opts};

pub mod dest;
mod lazy;
pub mod source;

/// What a CRIU call in a worker thread reports to the agent.
enum Event<T> {
    /// The hold point was reached at this instant (pid: the restored init).
    Held(Instant, i32),
    /// The call returned (after the hold, or without reaching it).
    Done(T),
}

/// The hold in the worker thread: reports that it was reached, then
/// blocks until the agent decides. A dropped agent counts as "roll back".
struct Hold<T> {
    events: std::sync::mpsc::Sender<Event<T>>,
    decision: std::sync::mpsc::Receiver<bool>,
}

impl<T> Hold<T> {
    fn wait(&mut self, pid: i32, what: &str) -> Result<(), String> {
        let _ = self.events.send(Event::Held(Instant::now(), pid));
        match self.decision.recv() {
            Ok(true) => Ok(()),
            _ => Err(format!("the migration was rolled back ({what})")),
        }
    }
}

/// Keeps CRIU's log `name` of a failed call, which lives in a directory
/// the migration removes: copies it to `keep_dir` and points the error
/// message at the copy.
fn keep_log(
    message: String,
    dir: &std::path::Path,
    name: &str,
    keep_dir: &std::path::Path,
    keep_name: &str,
) -> String {
    let log = dir.join(name);
    if !log.exists() || !message.contains(&*log.to_string_lossy()) {
        return message;
    }
    let kept = keep_dir.join(keep_name);
    match std::fs::copy(&log, &kept) {
        Ok(_) => message.replace(&*log.to_string_lossy(), &kept.to_string_lossy()),
        Err(_) => message,
    }
}

/// CRIU's options for a request that only needs an images directory.
fn dir_opts(images: &std::fs::File, log: &str) -> Opts {
    use std::os::fd::AsRawFd;
    let mut o = Opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_log_file(log.into());
    o.set_log_level(4);
    o
}

/// CRIU, checked to be recent enough for migration.
fn criu() -> Result<Criu, migrate::HostError> {
    let c = Criu::new()?;
    c.require(crate::criu::MIN_VERSION)?;
    Ok(c)
}

/// What this host can do for a migration. Post-copy counts only where a
/// lazy dump was measured to work (CRIU reports the feature on kernels
/// where the dump still fails).
fn features(c: &Criu) -> Result<migrate::Features, migrate::HostError> {
    let f = c.features()?;
    let lazy = f.lazy_pages && crate::check::lazy_pages_work(c).is_ok();
    Ok(migrate::Features {
        mem_track: f.mem_track,
        lazy_pages: lazy,
    })
}

/// Runtime data the source sends in `SourceInfo::extra`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Extra {
    /// The dump included established TCP connections.
    #[serde(default)]
    tcp_established: bool,
    /// The dump included file locks.
    #[serde(default)]
    file_locks: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_calls_log_is_kept_and_the_message_follows_it() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("dump.log"), "Error (x): boom\n").unwrap();
        let msg = format!(
            "criu dump failed (criu log: {})",
            images.join("dump.log").display()
        );
        let kept = keep_log(msg, &images, "dump.log", d.path(), "c1-dump.log");
        assert!(
            kept.ends_with(&format!("{})", d.path().join("c1-dump.log").display())),
            "{kept}"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("c1-dump.log")).unwrap(),
            "Error (x): boom\n"
        );
        // A message that names no log is left alone.
        assert_eq!(
            keep_log("other".into(), &images, "dump.log", d.path(), "x"),
            "other"
        );
    }
}
