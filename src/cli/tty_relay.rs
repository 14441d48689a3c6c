//! A foreground `run` or `exec -t` without `--console-socket`: ferry relays
//! the container's terminal to the caller's, as runc does. While relaying,
//! the caller's terminal takes raw input (keys such as ^C reach the
//! container as bytes) and gets its mode back afterwards. As with runc, the
//! caller's terminal keeps its output processing (it turns the "\n" of the
//! container's terminal, which leaves it alone, into "\r\n").
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

/// How often the output copier looks whether the process is gone, once the
/// terminal is quiet (another process may still hold it open).
const QUIET: Duration = Duration::from_millis(100);

/// The caller's terminal: stderr, stdout or stdin, whichever is one, else
/// the controlling terminal (the order runc tries them in).
pub fn host_terminal() -> anyhow::Result<OwnedFd> {
    for fd in [2, 1, 0] {
        // SAFETY: the standard descriptors stay open for ferry's lifetime.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if nix::unistd::isatty(fd).unwrap_or(false) {
            return Ok(fd.try_clone_to_owned()?);
        }
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
        .map_err(|e| {
            anyhow::anyhow!(
                "the process has a terminal, which ferry in the foreground relays to its own, \
                 but ferry has none (/dev/tty: {e}): run it from a terminal, or pass -d and \
                 --console-socket, or set process.terminal to false"
            )
        })?;
    Ok(tty.into())
}

/// A running relay; [`Relay::finish`] (or dropping it) gives the caller's
/// terminal its mode back.
pub struct Relay {
    host: OwnedFd,
    saved: Termios,
    master: OwnedFd,
    done: Arc<AtomicBool>,
    output: Option<JoinHandle<()>>,
}

impl Relay {
    /// Sizes the container's terminal like `host`, switches `host` to raw
    /// input and starts copying stdin to `master` and `master` to stdout.
    pub fn start(host: OwnedFd, master: OwnedFd) -> anyhow::Result<Relay> {
        let saved = termios::tcgetattr(&host).context("reading the terminal's mode")?;
        let done = Arc::new(AtomicBool::new(false));
        let to_master = File::from(master.try_clone()?);
        let from_master = File::from(master.try_clone()?);
        let mut relay = Relay {
            host,
            saved,
            master,
            done: done.clone(),
            output: None,
        };
        relay.resize();
        let mut raw = relay.saved.clone();
        termios::cfmakeraw(&mut raw);
        raw.output_flags = relay.saved.output_flags;
        termios::tcsetattr(&relay.host, SetArg::TCSANOW, &raw)
            .context("switching the terminal to raw input")?;
        // Blocked in read(stdin) when the process ends: left behind, as it
        // holds nothing that needs closing.
        std::thread::spawn(move || copy_input(to_master));
        relay.output = Some(std::thread::spawn(move || copy_output(from_master, &done)));
        Ok(relay)
    }

    /// Gives the container's terminal the caller's size (at start and on
    /// SIGWINCH).
    pub fn resize(&self) {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize we own.
        if unsafe { libc::ioctl(self.host.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
            return;
        }
        let (rows, cols) = (ws.ws_row.into(), ws.ws_col.into());
        if let Err(e) = ferry::console::set_size(&self.master, rows, cols) {
            tracing::warn!("{e}");
        }
    }

    /// Once the process is gone: copies what it wrote last, then restores
    /// the caller's terminal.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        let _ = termios::tcsetattr(&self.host, SetArg::TCSANOW, &self.saved);
    }
}

fn copy_input(mut master: File) {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies until every process closed the terminal (EIO), or until it is
/// quiet once the process is gone.
fn copy_output(mut master: File, done: &AtomicBool) {
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    let quiet = PollTimeout::try_from(QUIET).unwrap_or(PollTimeout::NONE);
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, quiet) {
            Ok(0) if done.load(Ordering::Acquire) => return,
            Ok(0) | Err(Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
