//! Commands that report.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ferry::Container;

use super::lifecycle::IdArg;
use super::TableFormat;

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: TableFormat,
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: TableFormat,
    pub id: String,
    /// Options for the host's ps(1) (default -ef), as with runc.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    pub id: String,
    /// Print one statistics snapshot and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between snapshots when streaming.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: use e.g. 5s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: use e.g. 5s or 500ms")),
    }
    .and_then(|d| {
        if d.is_zero() {
            Err("interval must be above zero".into())
        } else {
            Ok(d)
        }
    })
}

pub fn state(root: &Path, a: &IdArg) -> anyhow::Result<()> {
    let c = Container::load(root, &a.id)?;
    println!("{}", serde_json::to_string_pretty(&c.oci_state())?);
    Ok(())
}

pub fn list(root: &Path, a: &ListArgs) -> anyhow::Result<()> {
    let containers = ferry::container::list(root)?;
    if a.quiet {
        for c in &containers {
            println!("{}", c.id());
        }
        return Ok(());
    }
    match a.format {
        TableFormat::Json => {
            let states: Vec<_> = containers.iter().map(|c| c.oci_state()).collect();
            println!("{}", serde_json::to_string(&states)?);
        }
        TableFormat::Table => {
            let mut rows =
                vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
            for c in &containers {
                let s = c.oci_state();
                rows.push([
                    s.id,
                    s.pid.to_string(),
                    s.status.to_string(),
                    s.bundle.display().to_string(),
                    s.created,
                    owner(&c.dir.path),
                ]);
            }
            print!("{}", super::output::columns(&rows));
        }
    }
    Ok(())
}

/// The user owning a container's state directory (runc's OWNER column).
fn owner(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(dir).map(|m| m.uid()) else {
        return String::new();
    };
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) => user.name,
        _ => format!("#{uid}"),
    }
}

pub fn ps(root: &Path, a: &PsArgs) -> anyhow::Result<()> {
    let pids = Container::load(root, &a.id)?.pids()?;
    if let TableFormat::Json = a.format {
        if !a.ps_args.is_empty() {
            bail!("ps options do not go with --format json: drop them or the format");
        }
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let ps_args: Vec<&str> = match a.ps_args.is_empty() {
        true => vec!["-ef"],
        false => a.ps_args.iter().map(String::as_str).collect(),
    };
    let out = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .context("running ps (is procps installed?)")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match ferry::container::filter_ps_output(&text, &pids) {
        Some(table) => print!("{table}"),
        None => bail!(
            "ps {}: its output has no PID column: add pid to the columns (-o pid,...)",
            ps_args.join(" ")
        ),
    }
    Ok(())
}

pub fn events(root: &Path, a: &EventsArgs) -> anyhow::Result<()> {
    let c = Container::load(root, &a.id)?;
    if a.stats {
        println!("{}", serde_json::to_string(&c.stats()?)?);
        return Ok(());
    }
    // A snapshot per interval and each notification as it comes, until
    // the container stops (checked at least every second).
    let mut notifier = c.notifier()?;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            match c.stats() {
                Ok(s) => println!("{}", serde_json::to_string(&s)?),
                Err(ferry::Error::WrongState { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            next = Instant::now() + a.interval;
        }
        let wait = next.saturating_duration_since(Instant::now());
        let Some(notes) = notifier.wait(wait.min(Duration::from_secs(1)))? else {
            return Ok(());
        };
        for n in notes {
            println!("{}", serde_json::to_string(&c.event(n))?);
        }
        if c.status() == ferry::container::Status::Stopped {
            return Ok(());
        }
    }
}
