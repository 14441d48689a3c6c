//! Nothing inherited leaks into the user program.
use super::{Failure, Result};

/// Every inherited fd above stderr gets CLOEXEC so nothing leaks into the
/// user program, except the `preserve` fds from 3 on that the caller asked
/// to pass (`--preserve-fds`), which lose it; ferry's own fds already have
/// it. Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: there each fd listed
/// in /proc/self/fd is marked.
pub fn mark_cloexec(preserve: u32) -> Result<()> {
    let first = 3 + preserve;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        let why = std::io::Error::last_os_error();
        let fds = open_fds().map_err(|e| {
            Failure::io(
                "fds",
                format!("close_range failed ({why}), so inherited descriptors would leak into the container, and /proc/self/fd cannot be listed"),
                &e,
            )
        })?;
        let fds: Vec<i32> = fds.into_iter().filter(|fd| *fd >= first as i32).collect();
        set_cloexec(&fds)?;
    }
    for fd in 3..first as i32 {
        // SAFETY: only the descriptor flags change.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Failure::io(
                "fds",
                format!("passing fd {fd} (--preserve-fds {preserve})"),
                &e,
            ));
        }
    }
    Ok(())
}

/// The fds from 3 on that were open when this process started, recorded
/// before ferry opens any of its own: what `--preserve-fds` may pass.
static INHERITED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

/// Records the inherited fds; call first thing in `main`.
pub fn record_inherited() {
    let _ = INHERITED.set(open_below(1024));
}

/// The open fds from 3 up to `end`, found by one poll(2) that asks nothing
/// of any of them (a closed one answers POLLNVAL): one syscall instead of
/// one per number, which every ferry command pays at start (about a
/// thousand syscalls cost hundreds of ms under emulation). poll refuses
/// more entries than RLIMIT_NOFILE allows; then each fd is asked alone.
fn open_below(end: i32) -> Vec<i32> {
    let mut fds: Vec<libc::pollfd> = (3..end)
        .map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        })
        .collect();
    // SAFETY: poll reads and writes only the array it is given.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if r < 0 {
        return (3..end)
            // SAFETY: F_GETFD only reads the descriptor flags.
            .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
            .collect();
    }
    fds.iter()
        .filter(|p| p.revents & libc::POLLNVAL == 0)
        .map(|p| p.fd)
        .collect()
}

/// Checks that fds 3..3+`n` were all passed to this process (so none of
/// ferry's own can take their numbers and leak into the container).
pub fn check_preserved(n: u32) -> std::result::Result<(), String> {
    let inherited = INHERITED.get().map(Vec::as_slice).unwrap_or_default();
    match (3..3 + n as i32).find(|fd| !inherited.contains(fd)) {
        None => Ok(()),
        Some(fd) => Err(format!(
            "--preserve-fds {n}: fd {fd} was not passed to ferry (pass fds 3 to {} open)",
            2 + n
        )),
    }
}

/// The descriptors above stderr, from /proc/self/fd.
fn open_fds() -> std::io::Result<Vec<i32>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect())
}

fn set_cloexec(fds: &[i32]) -> Result<()> {
    for &fd in fds {
        // SAFETY: only the descriptor flags change; fds that closed since
        // the listing (the directory's own) answer EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBADF) {
                return Err(Failure::io(
                    "fds",
                    format!("marking fd {fd} close-on-exec"),
                    &e,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_poll_finds_exactly_the_open_fds() {
        // High numbers, which the parallel tests' own opens never take.
        // SAFETY: our own descriptors, opened and closed here.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(unsafe { libc::dup2(fd, 901) } == 901 && unsafe { libc::dup2(fd, 902) } == 902);
        unsafe { libc::close(902) };
        let found = open_below(1024);
        assert!(found.contains(&fd) && found.contains(&901), "{found:?}");
        assert!(!found.contains(&902) && !found.contains(&1023), "{found:?}");
        assert!(found.iter().all(|fd| (3..1024).contains(fd)));
        unsafe {
            libc::close(901);
            libc::close(fd);
        }
    }

    #[test]
    fn the_fallback_marks_inherited_fds_close_on_exec() {
        // SAFETY: a plain open without O_CLOEXEC, closed below.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(fd > 2);
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        // Only this fd is changed: the test harness's own must stay as they are.
        assert!(open_fds().unwrap().contains(&fd));
        set_cloexec(&[fd]).unwrap();
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        unsafe { libc::close(fd) };
    }
}
