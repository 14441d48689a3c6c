//! Errors of the CRIU client.
use std::fmt;
use std::path::PathBuf;

use super::image::ImageError;
use super::log::{bug_location, is_harmless, strip_timestamp};
use super::notify::HandlerError;
use super::version::Version;

/// Where CRIU's own defects are reported.
const CRIU_ISSUES: &str = "https://github.com/checkpoint-restore/criu/issues";

/// Where to get a CRIU that works with ferry.
const INSTALL_HINT: &str = "run scripts/install-deps.sh to build and install it";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable `criu` binary.
    #[error("criu not found ({looked_in}): {INSTALL_HINT} (ferry needs CRIU >= {min})")]
    NotFound { looked_in: String, min: Version },

    /// The installed CRIU predates what ferry needs.
    #[error("criu {found} is too old, ferry needs >= {min}: run scripts/install-deps.sh to build a newer one")]
    TooOld { found: Version, min: Version },

    /// The host (kernel or CRIU build) cannot do what was asked.
    #[error("{what} is not supported on this host: {reason}")]
    Unsupported { what: String, reason: String },

    /// A file descriptor the caller asked criu to inherit is unusable.
    #[error("cannot pass fd {fd} to criu: {reason}")]
    BadFd { fd: i32, reason: String },

    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Talking to the swrk process failed at the socket level.
    #[error("criu swrk socket: {context}: {source}")]
    Socket {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot encode criu request: {0}")]
    Encode(#[source] protobuf::Error),

    #[error("cannot decode criu response: {0}")]
    Decode(#[source] protobuf::Error),

    /// CRIU answered something the protocol does not allow here.
    #[error("unexpected criu response: {0}")]
    Protocol(String),

    /// The caller's own preparation between spawning criu and sending the
    /// request failed (cgroup placement).
    #[error("{source}")]
    Prepare {
        #[source]
        source: HandlerError,
    },

    /// The options cannot make a valid request.
    #[error("invalid criu options: {0}")]
    InvalidOpts(String),

    /// CRIU reported failure, or went away without answering.
    #[error("{0}")]
    Failed(Box<Failure>),

    /// The notify handler refused a notification, so CRIU aborted.
    #[error(
        "criu {op} aborted: {script} handler failed: {source}{}",
        failure_suffix(failure)
    )]
    Notify {
        op: &'static str,
        script: String,
        #[source]
        source: HandlerError,
        /// What CRIU said afterwards, if it reported failure.
        failure: Option<Box<Failure>>,
    },

    #[error(transparent)]
    Image(#[from] ImageError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Multi-line detail for `--debug`: CRIU's log lines around each error,
    /// and whatever criu wrote on stderr.
    pub fn detail(&self) -> Option<String> {
        match self {
            Error::Failed(f) => f.detail(),
            Error::Notify {
                failure: Some(f), ..
            } => f.detail(),
            _ => None,
        }
    }

    /// CRIU's failure report, when CRIU sent one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Failed(f) => Some(f),
            Error::Notify { failure, .. } => failure.as_deref(),
            _ => None,
        }
    }
}

fn failure_suffix(failure: &Option<Box<Failure>>) -> String {
    match failure.as_deref().and_then(|f| f.log_path.as_ref()) {
        Some(p) => format!(" (criu log: {})", p.display()),
        None => String::new(),
    }
}

/// CRIU's own account of a failed request.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// The request, e.g. "dump".
    pub op: &'static str,
    /// False when criu ended without sending a final response.
    pub answered: bool,
    /// `cr_errmsg`: the first error CRIU logged.
    pub errmsg: Option<String>,
    /// `cr_errno`, as sent.
    pub errno: Option<i32>,
    /// The log file CRIU wrote, if known.
    pub log_path: Option<PathBuf>,
    /// Lines around each `Error` line of the log (capped).
    pub log_excerpt: Vec<String>,
    /// Why the log could not be read, if it could not.
    pub log_unreadable: Option<String>,
    /// How the criu process ended, if it did.
    pub exit_status: Option<String>,
    /// What criu wrote on stderr (tail).
    pub stderr: String,
}

impl Failure {
    /// `cr_errno` as text, e.g. "No such file or directory".
    pub fn errno_text(&self) -> Option<String> {
        self.errno
            .filter(|e| *e != 0)
            .map(|e| format!("{} ({})", nix::errno::Errno::from_raw(e).desc(), e))
    }

    /// The most useful one-line reason: `cr_errmsg`, unless it is one of
    /// the errors CRIU logs on every run, then the first real error line of
    /// the log, then the last line criu wrote on stderr.
    pub fn summary(&self) -> String {
        let errmsg = self
            .errmsg
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty() && !is_harmless(m));
        if let Some(m) = errmsg {
            return m.to_string();
        }
        let log_line = self
            .log_excerpt
            .iter()
            .find(|l| l.contains("Error") && !is_harmless(l));
        if let Some(l) = log_line {
            return strip_timestamp(l).to_string();
        }
        let stderr_last = self
            .stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty());
        if let Some(l) = stderr_last {
            return l.to_string();
        }
        match self
            .errmsg
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(m) => m.to_string(),
            None => "no error message from criu".to_string(),
        }
    }

    pub fn detail(&self) -> Option<String> {
        let mut out = String::new();
        if let Some(p) = &self.log_path {
            out.push_str(&format!("criu log {}:\n", p.display()));
        }
        if let Some(why) = &self.log_unreadable {
            out.push_str(&format!("  (cannot read log: {why})\n"));
        }
        for line in &self.log_excerpt {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        if let Some(s) = &self.exit_status {
            out.push_str(&format!("criu {s}\n"));
        }
        if !self.stderr.trim().is_empty() {
            out.push_str("criu stderr:\n");
            for line in self.stderr.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

impl Failure {
    /// "BUG at FILE:LINE" when CRIU failed one of its own assertions (in
    /// its message, its log or its stderr).
    pub fn bug(&self) -> Option<&str> {
        self.errmsg
            .iter()
            .map(String::as_str)
            .chain(self.log_excerpt.iter().map(String::as_str))
            .chain(self.stderr.lines())
            .find_map(bug_location)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(bug) = self.bug() {
            // Not the container's fault and nothing the user can change:
            // say so, and what a CRIU bug report needs.
            write!(
                f,
                "criu {} hit an internal error of CRIU ({bug}), a CRIU defect rather than a problem with the container: report it at {CRIU_ISSUES} with ",
                self.op
            )?;
            match &self.log_path {
                Some(p) => write!(f, "the log {}", p.display())?,
                None => write!(f, "CRIU's log")?,
            }
            write!(f, ", `criu --version` and `uname -r`")?;
            if let Some(s) = &self.exit_status {
                write!(f, " [criu {s}]")?;
            }
            return Ok(());
        }
        if self.answered {
            write!(f, "criu {} failed: ", self.op)?;
        } else {
            write!(f, "criu {} ended without answering: ", self.op)?;
        }
        write!(f, "{}", self.summary())?;
        if let Some(e) = self.errno_text() {
            write!(f, " (errno: {e})")?;
        }
        if let Some(s) = &self.exit_status {
            write!(f, " [criu {s}]")?;
        }
        if let Some(p) = &self.log_path {
            write!(f, " (criu log: {})", p.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bug_lines_say_what_to_report() {
        let f = Failure {
            op: "dump",
            answered: false,
            errmsg: None,
            log_path: Some(PathBuf::from("/tmp/w/dump.log")),
            log_excerpt: vec![
                "(00.1) info".into(),
                "(00.2) Error (criu/mem.c:42): BUG at criu/mem.c:42".into(),
            ],
            exit_status: Some("killed by signal SIGABRT".into()),
            ..Default::default()
        };
        assert_eq!(f.bug(), Some("BUG at criu/mem.c:42"));
        let s = f.to_string();
        assert!(s.contains("BUG at criu/mem.c:42"), "{s}");
        assert!(s.contains("/tmp/w/dump.log"), "{s}");
        assert!(s.contains(CRIU_ISSUES), "{s}");
        assert!(!s.contains('\n'), "{s}");
    }

    #[test]
    fn ordinary_failures_are_unchanged() {
        let f = Failure {
            op: "restore",
            answered: true,
            errmsg: Some("Can't open file".into()),
            log_path: Some(PathBuf::from("/tmp/w/restore.log")),
            ..Default::default()
        };
        assert_eq!(f.bug(), None);
        let s = f.to_string();
        assert!(s.starts_with("criu restore failed: Can't open file"), "{s}");
        assert!(s.contains("(criu log: /tmp/w/restore.log)"), "{s}");
    }

    #[test]
    fn failure_message_is_one_line_with_errno_and_log() {
        let f = Failure {
            op: "restore",
            answered: true,
            errmsg: Some("Can't open pstree image".into()),
            errno: Some(2),
            log_path: Some(PathBuf::from("/tmp/x/restore.log")),
            log_excerpt: vec!["(0.1) Error (criu/x.c:1): boom".into()],
            ..Failure::default()
        };
        let msg = Error::Failed(Box::new(f)).to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("Can't open pstree image"), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
        assert!(msg.contains("/tmp/x/restore.log"), "{msg}");
    }

    #[test]
    fn harmless_errmsg_gives_way_to_the_real_error() {
        let f = Failure {
            op: "restore",
            answered: true,
            errmsg: Some("Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n".into()),
            log_excerpt: vec![
                "(00.01) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: x".into(),
                "(00.03) Error (criu/cr-restore.c:1237): Can't fork for 20081: File exists".into(),
            ],
            ..Failure::default()
        };
        assert_eq!(
            f.summary(),
            "Error (criu/cr-restore.c:1237): Can't fork for 20081: File exists"
        );
        let bare = Failure {
            errmsg: Some(
                "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self".into(),
            ),
            ..Failure::default()
        };
        assert!(bare.summary().contains("RLIMIT_NOFILE"));
        let died = Failure {
            op: "dump",
            stderr: "first\nlast words\n\n".into(),
            ..Failure::default()
        };
        assert_eq!(died.summary(), "last words");
        assert!(died
            .to_string()
            .starts_with("criu dump ended without answering: last words"));
    }
}
