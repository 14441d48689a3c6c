//! The fix for a library error in terms of ferry's own flags and commands:
//! the library names the problem, the command line knows which flag or
//! command mends it.
use ferry::container::{Error, ImagesError};
use ferry::{archive, console, imports, spec, state, Status};

use super::{Cli, Command};

/// What to append to the message of `err` (with its own leading
/// punctuation), if a flag or command of ferry is the answer.
pub fn advice(cli: &Cli, err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|e| {
        if let Some(e) = e.downcast_ref::<Error>() {
            container(cli, e)
        } else if let Some(e) = e.downcast_ref::<imports::Error>() {
            import(cli, e)
        } else if let Some(e) = e.downcast_ref::<spec::Error>() {
            bundle(e)
        } else {
            e.downcast_ref::<archive::Error>().and_then(unpack)
        }
    })
}

fn container(cli: &Cli, err: &Error) -> Option<String> {
    let exec = matches!(cli.command, Command::Exec(_));
    let delete = matches!(cli.command, Command::Delete(_));
    let start = matches!(cli.command, Command::Start(_));
    let fix = |s: &str| Some(format!(": {s}"));
    match err {
        Error::Spec(e) => bundle(e),
        Error::PageStream { source, .. } => container(cli, source),
        Error::NotFound(_) => Some(" (`ferry list` shows the containers)".into()),
        Error::Exists(id) => fix(&format!("pick another ID or `ferry delete {id}` first")),
        Error::Console(console::Error::NoSocket(_)) if exec => {
            fix("pass --console-socket (or drop --tty)")
        }
        Error::Console(console::Error::NoSocket(_)) => {
            fix("pass --console-socket (or set process.terminal to false)")
        }
        Error::Console(console::Error::NoTerminal(_)) if exec => {
            fix("pass --tty too (or drop --console-socket)")
        }
        Error::Console(console::Error::NoTerminal(_)) => {
            fix("drop --console-socket (or set process.terminal to true)")
        }
        Error::Images(ImagesError::Unreadable { .. }) => {
            fix("pass the directory `ferry checkpoint --image-path` wrote")
        }
        Error::LeaveRunningAndStopped => fix("pass --leave-running or --leave-stopped, not both"),
        Error::WrongState { status, .. } if start => {
            let mut s = String::from(" (`ferry run` creates and starts)");
            if *status == Status::Creating {
                s.push_str(": `ferry delete --force` removes it");
            }
            Some(s)
        }
        Error::WrongState {
            status: Status::Creating,
            ..
        } => fix("`ferry delete --force` removes it"),
        Error::WrongState { .. } if delete => fix("stop it with `ferry kill`, or pass --force"),
        Error::StillAlive { .. } => fix("run `ferry delete --force` again"),
        Error::State(state::Error::Corrupt { .. }) => {
            fix("`ferry delete --force` removes the container")
        }
        _ => None,
    }
}

fn import(cli: &Cli, err: &imports::Error) -> Option<String> {
    match err {
        imports::Error::Container(e) => container(cli, e),
        imports::Error::NoRootfs(_) => Some(
            " (it was exported with --ignore-rootfs): pass --bundle DIR with the container's \
             config.json and rootfs"
                .into(),
        ),
        _ => None,
    }
}

fn bundle(err: &spec::Error) -> Option<String> {
    match err {
        spec::Error::NoBundle(_) => {
            Some(" (pass --bundle with a directory holding config.json)".into())
        }
        spec::Error::NoConfig(_) => Some(" (create one with `ferry spec`)".into()),
        _ => None,
    }
}

fn unpack(err: &archive::Error) -> Option<String> {
    match err {
        archive::Error::NoSpace { .. } => {
            Some("; free space there or import under another --root".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;

    /// The message the user sees for `err` on `args`.
    fn shown(args: &[&str], err: impl Into<anyhow::Error>) -> String {
        let cli = Cli::try_parse_from(args).unwrap();
        let err = err.into();
        format!("{err}{}", advice(&cli, &err).unwrap_or_default())
    }

    #[test]
    fn the_command_line_adds_the_fix() {
        assert_eq!(
            shown(&["ferry", "state", "c1"], Error::NotFound("c1".into())),
            "container c1 does not exist (`ferry list` shows the containers)"
        );
        assert_eq!(
            shown(
                &["ferry", "create", "c1"],
                Error::Spec(spec::Error::NoConfig("/b".into()))
            ),
            "/b: no config.json in the bundle (create one with `ferry spec`)"
        );
        assert_eq!(
            shown(
                &["ferry", "restore", "c1"],
                imports::Error::NoRootfs(PathBuf::from("/a.tar"))
            ),
            "/a.tar holds no root filesystem (it was exported with --ignore-rootfs): \
             pass --bundle DIR with the container's config.json and rootfs"
        );
        let full = imports::Error::Import {
            path: "/a.tar".into(),
            source: archive::Error::NoSpace {
                path: "/r".into(),
                needed_what: "at least 9 bytes".into(),
                available: "3 bytes are free".into(),
            },
        };
        assert!(shown(&["ferry", "restore", "c1"], full).ends_with(
            "(nothing was left behind); free space there or import under another --root"
        ),);
    }

    #[test]
    fn start_of_a_container_being_created_gets_both_fixes() {
        let err = || Error::WrongState {
            id: "c1".into(),
            status: Status::Creating,
            hint: "only a created container can be started".into(),
        };
        assert_eq!(
            shown(&["ferry", "start", "c1"], err()),
            "container c1 is creating: only a created container can be started \
             (`ferry run` creates and starts): `ferry delete --force` removes it"
        );
        assert_eq!(
            shown(&["ferry", "kill", "c1"], err()),
            "container c1 is creating: only a created container can be started: \
             `ferry delete --force` removes it"
        );
    }
}
