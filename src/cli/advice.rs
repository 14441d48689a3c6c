//! The fix for a library error in terms of ferry's own flags: the library
//! names the problem, the command line knows which flag mends it.
use ferry::container::{Error, ImagesError};
use ferry::{console, state, Status};

use super::{Cli, Command};

/// What to do about `err`, if a flag of this command is the answer.
pub fn advice(cli: &Cli, err: &anyhow::Error) -> Option<&'static str> {
    let exec = matches!(cli.command, Command::Exec(_));
    let delete = matches!(cli.command, Command::Delete(_));
    let err = err.chain().find_map(|e| e.downcast_ref::<Error>())?;
    Some(match err {
        Error::Console(console::Error::NoSocket(_)) if exec => {
            "pass --console-socket (or drop --tty)"
        }
        Error::Console(console::Error::NoSocket(_)) => {
            "pass --console-socket (or set process.terminal to false)"
        }
        Error::Console(console::Error::NoTerminal(_)) if exec => {
            "pass --tty too (or drop --console-socket)"
        }
        Error::Console(console::Error::NoTerminal(_)) => {
            "drop --console-socket (or set process.terminal to true)"
        }
        Error::Images(ImagesError::Unreadable { .. }) => {
            "pass the directory `ferry checkpoint --image-path` wrote"
        }
        Error::LeaveRunningAndStopped => "pass --leave-running or --leave-stopped, not both",
        Error::WrongState {
            status: Status::Creating,
            ..
        } => "`ferry delete --force` removes it",
        Error::WrongState { .. } if delete => "stop it with `ferry kill`, or pass --force",
        Error::StillAlive { .. } => "run `ferry delete --force` again",
        Error::State(state::Error::Corrupt { .. }) => {
            "`ferry delete --force` removes the container"
        }
        _ => return None,
    })
}
