//! Command-line interface, runc-compatible names and flags.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ferry::cgroups::Driver;

mod advice;
mod certs;
mod check;
mod checkpoint;
mod export;
mod inspect;
mod lifecycle;
mod migrate;
mod output;
mod query;
mod serve;
mod spec;
mod tty_relay;
mod wait;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "An OCI container runtime built for checkpoint, restore and live migration"
)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = ferry::container::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write logs (and error lines) to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the log file.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Verbose logs and error detail.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Have systemd make the cgroups of new containers (create, run,
    /// restore) as transient scopes, cgroupsPath being slice:prefix:name;
    /// other commands use the driver each container was made with.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a default config.json into the bundle.
    Spec(spec::SpecArgs),
    /// Create a container that waits for `start`.
    Create(lifecycle::CreateArgs),
    /// Start a created container.
    Start(lifecycle::IdArg),
    /// Create and start a container (foreground: wait and return its exit status).
    Run(lifecycle::RunArgs),
    /// Print a container's OCI state as JSON.
    State(lifecycle::IdArg),
    /// List containers.
    List(query::ListArgs),
    /// Send a signal to a container.
    Kill(lifecycle::KillArgs),
    /// Delete a container.
    Delete(lifecycle::DeleteArgs),
    /// Freeze every process of a container.
    Pause(lifecycle::IdArg),
    /// Thaw a paused container.
    Resume(lifecycle::IdArg),
    /// List the processes of a container.
    Ps(query::PsArgs),
    /// Run a process inside a container.
    Exec(lifecycle::ExecArgs),
    /// Container statistics (cgroup and network counters).
    Events(query::EventsArgs),
    /// Change a container's cgroup resources.
    Update(lifecycle::UpdateArgs),
    /// Dump a running container into a directory of CRIU images.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Restore a container from a checkpoint.
    Restore(checkpoint::RestoreArgs),
    /// Report whether this host can checkpoint, restore and migrate.
    Check(check::CheckArgs),
    /// Show what a checkpoint archive or CRIU images directory holds.
    Inspect(inspect::InspectArgs),
    /// Live-migrate a running container to a `ferry serve` on another host.
    Migrate(migrate::MigrateArgs),
    /// Receive migrating containers (until SIGTERM).
    Serve(serve::ServeArgs),
    /// Generate an operator CA and host certificates for serve/migrate.
    Certs(certs::CertsArgs),
    /// Run by the freeze guard of a killed `migrate` whose commit was in
    /// doubt: ask the destination, then resume or remove the container.
    #[command(hide = true)]
    SettleCommit(migrate::SettleArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse_from(go_runc_args(std::env::args_os().collect()));
    output::init_logging(&cli);
    let result = dispatch(&cli);
    match result {
        Ok(code) => code,
        Err(e) => {
            output::report_error(&cli, &e);
            1
        }
    }
}

/// containerd's runc client passes `-no-subreaper` to `restore` with one
/// dash, as Go's flag parsing allows. `restore` takes nothing after the
/// container ID, so in a restore command line it can only be that flag.
fn go_runc_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    // The global options before the subcommand, with their values.
    while i < args.len() {
        match args[i].to_str() {
            Some("--root" | "--log" | "--log-format") => i += 2,
            Some(a) if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    if args.get(i).and_then(|a| a.to_str()) == Some("restore") {
        for a in &mut args[i + 1..] {
            if a == "-no-subreaper" {
                *a = "--no-subreaper".into();
            }
        }
    }
    args
}

fn dispatch(cli: &Cli) -> anyhow::Result<i32> {
    let root = &cli.root;
    let driver = if cli.systemd_cgroup {
        Driver::Systemd
    } else {
        Driver::Cgroupfs
    };
    match &cli.command {
        Command::Spec(a) => spec::spec(a).map(|_| 0),
        Command::Create(a) => lifecycle::create(root, a, driver).map(|_| 0),
        Command::Start(a) => lifecycle::start(root, a).map(|_| 0),
        Command::Run(a) => lifecycle::run(root, a, driver),
        Command::State(a) => query::state(root, a).map(|_| 0),
        Command::List(a) => query::list(root, a).map(|_| 0),
        Command::Kill(a) => lifecycle::kill(root, a).map(|_| 0),
        Command::Delete(a) => lifecycle::delete(root, a).map(|_| 0),
        Command::Pause(a) => lifecycle::pause(root, a).map(|_| 0),
        Command::Resume(a) => lifecycle::resume(root, a).map(|_| 0),
        Command::Ps(a) => query::ps(root, a).map(|_| 0),
        Command::Exec(a) => lifecycle::exec(root, a),
        Command::Events(a) => query::events(root, a).map(|_| 0),
        Command::Update(a) => lifecycle::update(root, a).map(|_| 0),
        Command::Checkpoint(a) => checkpoint::checkpoint(root, a, cli.log_format).map(|_| 0),
        Command::Restore(a) => checkpoint::restore(root, a, cli.log_format, driver),
        Command::Check(a) => check::check(a),
        Command::Inspect(a) => inspect::inspect(a).map(|_| 0),
        Command::Migrate(a) => migrate::migrate(root, a).map(|_| 0),
        Command::Serve(_) if cli.systemd_cgroup => Err(anyhow::anyhow!(
            "serve --systemd-cgroup: migrated containers get cgroups from ferry, not systemd; drop the flag"
        )),
        Command::Serve(a) => serve::serve(root, a).map(|_| 0),
        Command::Certs(a) => certs::certs(a).map(|_| 0),
        Command::SettleCommit(a) => migrate::settle_commit(root, a).map(|_| 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn go_runcs_single_dash_no_subreaper_is_the_restore_flag() {
        let got = go_runc_args(args(&[
            "ferry",
            "--root",
            "/r",
            "--log",
            "l.json",
            "--log-format",
            "json",
            "restore",
            "--detach",
            "-no-subreaper",
            "--bundle",
            "b",
            "id",
        ]));
        assert_eq!(got[9], "--no-subreaper");
        let cli = Cli::try_parse_from(got).unwrap();
        assert!(matches!(cli.command, Command::Restore(ref r) if r.no_subreaper && r.detach));
        // Only in restore: an exec'd process may take such an argument.
        let exec = args(&["ferry", "exec", "id", "prog", "-no-subreaper"]);
        assert_eq!(go_runc_args(exec.clone()), exec);
    }
}
