//! The one way the network code runs a tool (`ip`, `nft`, `iptables`):
//! in the caller's network namespace or, through `nsenter --net`, in a
//! process's; dying with the ferry that runs it; its stderr made into the
//! error.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{Error, Result};

/// A network namespace: the caller's (`None`) or that of a process.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ns(pub(super) Option<i32>);

pub(super) fn netns_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// One tool invocation; `interface` is the link the errors name.
pub(super) struct Tool<'a> {
    pub(super) interface: &'a str,
    pub(super) ns: Ns,
    pub(super) program: &'static str,
    pub(super) args: &'a [&'a str],
}

impl Tool<'_> {
    /// Runs it; a failure is [`Error::Command`] with the tool's stderr.
    pub(super) fn run(&self) -> Result<()> {
        self.run_with_input(None)
    }

    /// Runs it with `input` on its stdin.
    pub(super) fn run_with_input(&self, input: Option<&str>) -> Result<()> {
        let out = self.output(input)?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(self.error(if detail.is_empty() {
            out.status.to_string()
        } else {
            detail
        }))
    }

    /// Whether it succeeds (a probe: `ip link show`, `nft list`, `iptables
    /// -C`); only a tool that cannot be started is an error.
    pub(super) fn succeeds(&self) -> Result<bool> {
        Ok(self.output(None)?.status.success())
    }

    fn error(&self, detail: String) -> Error {
        let prefix = match self.ns.0 {
            None => String::new(),
            Some(pid) => format!("nsenter --net={} ", netns_path(pid).display()),
        };
        Error::Command {
            interface: self.interface.to_string(),
            command: format!("{prefix}{} {}", self.program, self.args.join(" ")),
            detail,
        }
    }

    fn output(&self, input: Option<&str>) -> Result<Output> {
        let install = match self.program {
            "ip" => "install iproute2 (ip) and util-linux (nsenter)",
            _ => "install nftables and iptables",
        };
        let spawned = self
            .command()
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = spawned.map_err(|e| self.error(format!("{e}; {install}")))?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            // A tool that exits early closes its end: its status says why.
            let _ = stdin.write_all(text.as_bytes());
        }
        child
            .wait_with_output()
            .map_err(|e| self.error(e.to_string()))
    }

    fn command(&self) -> Command {
        let mut c = match self.ns.0 {
            None => Command::new(self.program),
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns_path(pid).display()))
                    .arg(self.program);
                c
            }
        };
        c.args(self.args);
        // A tool that outlives a killed ferry could make a link (or a lock)
        // after `delete --force` looked for it: it dies with the thread
        // that runs it (which waits for it).
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // ferry died before the request was made.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        c
    }
}
