//! CRIU notifications ("action scripts" sent over RPC) and their handlers.
use std::fmt;
use std::os::fd::OwnedFd;

/// A CRIU notification, delivered to the caller's handler before CRIU goes on.
#[derive(Debug)]
pub enum Notify {
    PreDump,
    PostDump,
    PreRestore,
    /// The restored tree's root pid.
    PostRestore {
        pid: i32,
    },
    NetworkLock,
    NetworkUnlock,
    /// The restored root's pid, once its namespaces exist.
    SetupNamespaces {
        pid: i32,
    },
    PostSetupNamespaces,
    PreResume,
    PostResume,
    /// The master side of a pty whose master end was not in the dumped tree.
    OrphanPtsMaster {
        master: OwnedFd,
    },
    StatusReady,
    /// CRIU asks which external files to add; see [`NotifyHandler::external_files`].
    QueryExtFiles,
    PreStream,
    /// A script name this version of ferry does not know; acknowledged.
    Other(String),
}

/// Every script name CRIU sends, in the order of `action_names` in CRIU.
pub const SCRIPT_NAMES: [&str; 14] = [
    "pre-stream",
    "pre-dump",
    "post-dump",
    "pre-restore",
    "post-restore",
    "network-lock",
    "network-unlock",
    "setup-namespaces",
    "post-setup-namespaces",
    "pre-resume",
    "post-resume",
    "orphan-pts-master",
    "status-ready",
    "query-ext-files",
];

/// Why a notification could not be turned into a [`Notify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyDecodeError {
    #[error("notification {0} carries no pid")]
    MissingPid(&'static str),
    #[error("notification orphan-pts-master carries no file descriptor")]
    MissingFd,
}

impl Notify {
    /// Builds the notification CRIU named `script`; `pid` is `criu_notify.pid`
    /// and `fd` the descriptor passed with the message, if any.
    pub fn from_script(
        script: &str,
        pid: Option<i32>,
        fd: Option<OwnedFd>,
    ) -> Result<Notify, NotifyDecodeError> {
        Ok(match script {
            "pre-dump" => Notify::PreDump,
            "post-dump" => Notify::PostDump,
            "pre-restore" => Notify::PreRestore,
            "post-restore" => Notify::PostRestore {
                pid: pid.ok_or(NotifyDecodeError::MissingPid("post-restore"))?,
            },
            "network-lock" => Notify::NetworkLock,
            "network-unlock" => Notify::NetworkUnlock,
            "setup-namespaces" => Notify::SetupNamespaces {
                pid: pid.ok_or(NotifyDecodeError::MissingPid("setup-namespaces"))?,
            },
            "post-setup-namespaces" => Notify::PostSetupNamespaces,
            "pre-resume" => Notify::PreResume,
            "post-resume" => Notify::PostResume,
            "orphan-pts-master" => Notify::OrphanPtsMaster {
                master: fd.ok_or(NotifyDecodeError::MissingFd)?,
            },
            "status-ready" => Notify::StatusReady,
            "query-ext-files" => Notify::QueryExtFiles,
            "pre-stream" => Notify::PreStream,
            other => Notify::Other(other.to_string()),
        })
    }

    /// The script name CRIU uses for this notification.
    pub fn script(&self) -> &str {
        match self {
            Notify::PreDump => "pre-dump",
            Notify::PostDump => "post-dump",
            Notify::PreRestore => "pre-restore",
            Notify::PostRestore { .. } => "post-restore",
            Notify::NetworkLock => "network-lock",
            Notify::NetworkUnlock => "network-unlock",
            Notify::SetupNamespaces { .. } => "setup-namespaces",
            Notify::PostSetupNamespaces => "post-setup-namespaces",
            Notify::PreResume => "pre-resume",
            Notify::PostResume => "post-resume",
            Notify::OrphanPtsMaster { .. } => "orphan-pts-master",
            Notify::StatusReady => "status-ready",
            Notify::QueryExtFiles => "query-ext-files",
            Notify::PreStream => "pre-stream",
            Notify::Other(name) => name,
        }
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.script())
    }
}

/// Why the caller's code that runs while CRIU waits (a notification
/// handler, or the preparation before a request is sent) refused to go on:
/// the caller's own error, kept whole so its sources stay reachable.
#[derive(Debug)]
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl HandlerError {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> HandlerError {
        HandlerError(e.into())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> HandlerError {
        HandlerError(message.into())
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> HandlerError {
        HandlerError(message.into())
    }
}

impl From<NotifyDecodeError> for HandlerError {
    fn from(e: NotifyDecodeError) -> HandlerError {
        HandlerError(Box::new(e))
    }
}

/// Answers notifications; an `Err` makes CRIU abort the operation cleanly.
pub trait NotifyHandler {
    fn notify(&mut self, event: Notify) -> Result<(), HandlerError>;

    /// External objects (`--external` keys) to add when CRIU sends
    /// `query-ext-files`; called after `notify(QueryExtFiles)` succeeded.
    fn external_files(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// A handler that acknowledges everything.
pub struct AckAll;

impl NotifyHandler for AckAll {
    fn notify(&mut self, _event: Notify) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<F> NotifyHandler for F
where
    F: FnMut(Notify) -> Result<(), HandlerError>,
{
    fn notify(&mut self, event: Notify) -> Result<(), HandlerError> {
        self(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_maps_and_round_trips() {
        for name in SCRIPT_NAMES {
            let fd = (name == "orphan-pts-master")
                .then(|| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
            let n = Notify::from_script(name, Some(42), fd).unwrap();
            assert!(!matches!(n, Notify::Other(_)), "{name} not recognised");
            assert_eq!(n.script(), name);
        }
    }

    #[test]
    fn pids_are_carried() {
        match Notify::from_script("post-restore", Some(7), None).unwrap() {
            Notify::PostRestore { pid } => assert_eq!(pid, 7),
            n => panic!("got {n:?}"),
        }
        match Notify::from_script("setup-namespaces", Some(9), None).unwrap() {
            Notify::SetupNamespaces { pid } => assert_eq!(pid, 9),
            n => panic!("got {n:?}"),
        }
        assert_eq!(
            Notify::from_script("post-restore", None, None).unwrap_err(),
            NotifyDecodeError::MissingPid("post-restore")
        );
    }

    #[test]
    fn orphan_pts_master_needs_its_fd() {
        assert_eq!(
            Notify::from_script("orphan-pts-master", None, None).unwrap_err(),
            NotifyDecodeError::MissingFd
        );
    }

    #[test]
    fn unknown_scripts_are_kept() {
        let n = Notify::from_script("post-frobnicate", None, None).unwrap();
        assert!(matches!(&n, Notify::Other(s) if s == "post-frobnicate"));
        assert_eq!(n.to_string(), "post-frobnicate");
    }
}
