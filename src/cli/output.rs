//! Logging setup and error reporting.
use std::io::Write;

use tracing_subscriber::EnvFilter;

use super::{Cli, LogFormat};

pub fn init_logging(cli: &Cli) {
    // cgroups-rs logs through `log`; route it into tracing.
    let _ = tracing_log::LogTracer::init();
    let level = if cli.debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match (file, cli.log_format) {
        (Some(f), LogFormat::Json) => builder
            .json()
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (Some(f), LogFormat::Text) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (None, _) => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// One line on stderr; with --log also a line in the log file (JSON lines in
/// runc's `{"level","msg","time"}` shape for callers such as conmon).
pub fn report_error(cli: &Cli, err: &anyhow::Error) {
    let mut msg = if cli.debug {
        format!("{err:#}")
    } else {
        err.to_string()
    };
    if let Some(fix) = super::advice::advice(cli, err) {
        msg = format!("{msg}: {fix}");
    }
    eprintln!("ferry: {msg}");
    if let Some(path) = &cli.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let line = match cli.log_format {
                LogFormat::Json => serde_json::json!({
                    "level": "error",
                    "msg": msg,
                    "time": ferry::proc::now_rfc3339(),
                })
                .to_string(),
                LogFormat::Text => format!("{} error: {msg}", ferry::proc::now_rfc3339()),
            };
            let _ = writeln!(f, "{line}");
        }
    }
}

pub fn warn_all<E: std::fmt::Display>(warnings: &[E]) {
    for w in warnings {
        eprintln!("ferry: warning: {w}");
    }
}
