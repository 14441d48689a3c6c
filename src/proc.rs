//! Facts about host processes read from /proc, and pidfds.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// A pidfd of `pid` (Linux 5.3 and later): it names that process and no
/// later one that reuses the pid, and is readable once the process exits.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for the process of `pidfd` to exit, and says
/// whether it has: woken the moment it does.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a last fraction of a millisecond is waited, not spun.
    let ms = timeout
        .as_micros()
        .div_ceil(1000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Process start time in clock ticks since boot (field 22 of /proc/PID/stat),
/// used to tell a container's init from a later process that reused its PID.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19).and_then(|v| v.parse().ok()))
}

/// The one-letter scheduler state (R, S, D, Z, T, ...).
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid).and_then(|f| f.first().and_then(|s| s.chars().next()))
}

/// Fields of /proc/PID/stat after the `(comm)` field, starting at `state`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The parent pid of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid).and_then(|f| f.get(1).and_then(|v| v.parse().ok()))
}

/// true while `pid` is the same live (non-zombie) process that started at `start`.
pub fn is_alive(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start) && !matches!(state(pid), Some('Z') | Some('X') | None)
}

/// Command line of a process, NUL separators turned into spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// What a file descriptor of `pid` points at ("pipe:[1234]", "/dev/null", ...).
pub fn fd_target(pid: i32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

pub fn ns_path(pid: i32, ns: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/{ns}"))
}

/// Boot time + ticks → RFC 3339 is not needed; this returns the current time.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats a UNIX timestamp as RFC 3339 in UTC.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_facts() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert!(cmdline(me).contains("ferry"));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
    }
}
