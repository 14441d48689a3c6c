//! The guard process itself, after the fork: only async-signal-safe
//! system calls on memory [`Plan`] prepared before it.
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};

use super::{Plan, DISARM, SETTLE, SETTLE_ARGS, SETTLE_MAX};

impl Plan {
    /// The guard itself (in the grandchild). Never returns.
    pub(super) unsafe fn run(&self, keep: &[RawFd], ready: RawFd) -> ! {
        detach(keep, ready, &self.dev_null);
        let mut settle = Settle::new();
        let mode = self.wait_for_ferry(&mut settle);
        if let Some(criu) = &self.criu {
            let mut p = libc::pollfd {
                fd: criu.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while libc::poll(&mut p, 1, -1) <= 0 || p.revents == 0 {}
        }
        if let Some((images, work)) = &self.dump {
            if libc::faccessat(work.as_raw_fd(), self.stats.as_ptr(), libc::F_OK, 0) == 0 {
                libc::unlinkat(images.as_raw_fd(), self.marker.as_ptr(), 0);
            }
        }
        match mode {
            b'H' => {
                settle.exec();
                libc::write(
                    2,
                    self.hold_message.as_ptr().cast(),
                    self.hold_message.len(),
                );
            }
            b'K' => {
                self.kill_all();
                self.thaw();
            }
            b'L' => {}
            _ => self.thaw(),
        }
        libc::_exit(0)
    }

    /// Follows ferry's instructions on the control pipe until ferry is
    /// gone; returns what its death means (exits on a disarm).
    unsafe fn wait_for_ferry(&self, settle: &mut Settle) -> u8 {
        let ctl = self.ctl_r.as_raw_fd();
        let mut mode = self.on_death;
        'wait: loop {
            let mut fds = [
                libc::pollfd {
                    fd: ctl,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.watch.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                continue; // EINTR
            }
            let ferry_gone = fds[1].revents != 0;
            if ferry_gone {
                // Read what ferry wrote before it died without blocking.
                libc::fcntl(ctl, libc::F_SETFL, libc::O_NONBLOCK);
            }
            if fds[0].revents != 0 || ferry_gone {
                let mut buf = [0u8; 256];
                loop {
                    let n = libc::read(ctl, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        // EOF (every write end closed: ferry is gone),
                        // nothing more for now, or EINTR.
                        if n == 0 || ferry_gone {
                            break;
                        }
                        continue 'wait;
                    }
                    for &b in &buf[..n as usize] {
                        if let Some(m) = settle.feed(b) {
                            if m == DISARM {
                                libc::_exit(0);
                            }
                            mode = m;
                        }
                    }
                    if !ferry_gone {
                        continue 'wait;
                    }
                }
            }
            return mode;
        }
    }

    unsafe fn thaw(&self) {
        let fd = libc::open(self.freezer.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, self.thawed.as_ptr().cast(), self.thawed.len());
            libc::close(fd);
        }
    }

    /// SIGKILLs every pid listed in `cgroup.procs` (they die once thawed).
    unsafe fn kill_all(&self) {
        let fd = libc::open(self.procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut pid: i32 = 0;
        let mut digits = false;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                if b.is_ascii_digit() {
                    pid = pid.saturating_mul(10).saturating_add((b - b'0') as i32);
                    digits = true;
                } else {
                    if digits && pid > 0 {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    pid = 0;
                    digits = false;
                }
            }
        }
        if digits && pid > 0 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::close(fd);
    }
}

/// Makes the forked guard its own quiet process: only the descriptors in
/// `keep`, stdin and stdout on /dev/null, no terminal signals, a name;
/// then tells ferry its pid on `ready`.
unsafe fn detach(keep: &[RawFd], ready: RawFd, dev_null: &CString) {
    close_all_but(keep);
    let null = libc::open(dev_null.as_ptr(), libc::O_RDWR);
    if null >= 0 {
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        if null > 2 {
            libc::close(null);
        }
    }
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGPIPE] {
        libc::signal(sig, libc::SIG_IGN);
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    libc::prctl(libc::PR_SET_NAME, c"ferry-guard".as_ptr());
    let me = libc::getpid().to_ne_bytes();
    libc::write(ready, me.as_ptr().cast(), me.len());
    libc::close(ready);
}

/// The control stream's parser (in the guard: no allocation).
struct Settle {
    cmd: [u8; SETTLE_MAX],
    len: usize,
    state: SettleState,
    /// A whole settle command arrived.
    ready: bool,
}

#[derive(Clone, Copy)]
enum SettleState {
    Op,
    Len0,
    Len1(u8),
    /// Bytes of the command still to come.
    Body(usize),
}

impl Settle {
    fn new() -> Settle {
        Settle {
            cmd: [0; SETTLE_MAX],
            len: 0,
            state: SettleState::Op,
            ready: false,
        }
    }

    /// Takes one byte; returns a one-byte command once one is complete.
    fn feed(&mut self, b: u8) -> Option<u8> {
        match self.state {
            SettleState::Op if b == SETTLE => self.state = SettleState::Len0,
            SettleState::Op => return Some(b),
            SettleState::Len0 => self.state = SettleState::Len1(b),
            SettleState::Len1(lo) => {
                let n = u16::from_le_bytes([lo, b]) as usize;
                self.len = 0;
                self.ready = false;
                self.state = if n == 0 {
                    SettleState::Op
                } else {
                    SettleState::Body(n)
                };
            }
            SettleState::Body(n) => {
                if self.len < self.cmd.len() {
                    self.cmd[self.len] = b;
                    self.len += 1;
                }
                if n == 1 {
                    self.state = SettleState::Op;
                    self.ready = self.len > 0 && self.cmd[self.len - 1] == 0;
                } else {
                    self.state = SettleState::Body(n - 1);
                }
            }
        }
        None
    }

    /// Execs the settle command, if one came; returns only if none did or
    /// the exec failed.
    unsafe fn exec(&self) {
        if !self.ready {
            return;
        }
        let mut argv = [std::ptr::null::<libc::c_char>(); SETTLE_ARGS + 1];
        let mut n = 0;
        let mut start = 0;
        for i in 0..self.len {
            if self.cmd[i] == 0 {
                if n < SETTLE_ARGS {
                    argv[n] = self.cmd[start..].as_ptr().cast();
                    n += 1;
                }
                start = i + 1;
            }
        }
        if n > 0 {
            libc::execv(argv[0], argv.as_ptr());
        }
    }
}

/// Closes every descriptor not in `keep` (sorted; -1 entries ignored).
unsafe fn close_all_but(keep: &[RawFd]) {
    let mut from: u32 = 0;
    for &fd in keep {
        if fd < 0 || (fd as u32) < from {
            continue;
        }
        if fd as u32 > from {
            libc::syscall(libc::SYS_close_range, from, fd as u32 - 1, 0);
        }
        from = fd as u32 + 1;
    }
    libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);
}
