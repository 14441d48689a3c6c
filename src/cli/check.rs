//! `ferry check`: is this host ready for checkpoint, restore and migration?
use std::io::Write as _;

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferry::check::{self, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CheckFormat,
}

/// Prints the report; exits 0 when checkpoint/restore works, 1 otherwise.
pub fn check(args: &CheckArgs) -> anyhow::Result<i32> {
    let r = check::run();
    let text = match args.format {
        CheckFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
        CheckFormat::Text => {
            let mut s = String::new();
            let c = &r.criu;
            s += &format!(
                "criu:     {} {}\n",
                c.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "not found".into()),
                c.version.as_deref().unwrap_or("")
            );
            if let Some(e) = &c.error {
                s += &format!("          {e}\n");
            }
            if let Some(k) = &c.kernel_facts_cache {
                s += &format!("          kernel-facts cache: {k}\n");
            }
            if let Some(h) = &c.breakpoint_hooks {
                s += &format!("          perf hooks: {h}\n");
            }
            s += &format!("kernel:   {} ({})\n", r.kernel.release, r.kernel.version);
            s += &format!("cgroups:  {:?}\n", r.cgroups).to_lowercase();
            s += &format!(
                "          a container's cgroup gets: {}\n",
                r.cgroup_controllers.join(" ")
            );
            if let Some(j) = &r.cgroup_join {
                s += &format!("          a new process joins it: {j}\n");
            }
            for cap in &r.capabilities {
                let status = match cap.status {
                    Status::Works => "works",
                    Status::Unavailable => "unavailable",
                };
                s += &format!("{:<20}{:<13}{}\n", cap.name, status, cap.detail);
            }
            s
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("cannot write the report")?,
    }
    let ready = r
        .capability(check::CHECKPOINT_RESTORE)
        .is_some_and(|c| c.status == Status::Works);
    Ok(if ready { 0 } else { 1 })
}
