//! Commands that report.
use std::path::Path;
use std::time::Duration;

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
    pub id: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: TableFormat,
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
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<32}",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for c in &containers {
                let s = c.oci_state();
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created
                );
            }
        }
    }
    Ok(())
}

pub fn ps(root: &Path, a: &PsArgs) -> anyhow::Result<()> {
    let procs = Container::load(root, &a.id)?.processes()?;
    match a.format {
        TableFormat::Json => {
            let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            println!("{}", serde_json::to_string(&pids)?);
        }
        TableFormat::Table => {
            println!("{:<8} {:<8} {:<5} CMD", "PID", "PPID", "STAT");
            for p in procs {
                println!("{:<8} {:<8} {:<5} {}", p.pid, p.ppid, p.state, p.cmd);
            }
        }
    }
    Ok(())
}

pub fn events(root: &Path, a: &EventsArgs) -> anyhow::Result<()> {
    let c = Container::load(root, &a.id)?;
    if a.stats {
        println!("{}", serde_json::to_string(&c.stats()?)?);
        return Ok(());
    }
    // Stream a snapshot per interval until the container stops.
    loop {
        match c.stats() {
            Ok(s) => println!("{}", serde_json::to_string(&s)?),
            Err(ferry::Error::WrongState { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(a.interval);
    }
}
