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
        with_causes(err)
    } else {
        err.to_string()
    };
    if let Some(fix) = super::advice::advice(cli, err) {
        msg.push_str(&fix);
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

/// The message and its causes, joined with ": ". Many errors already show
/// their source in their own message (and still return it from `source()`):
/// a cause whose text is already there is not repeated.
fn with_causes(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

pub fn warn_all<E: std::fmt::Display>(warnings: &[E]) {
    for w in warnings {
        eprintln!("ferry: warning: {w}");
    }
}

/// Aligns rows as runc's tables do (Go's tabwriter with minimum width 12 and
/// padding 3): each column but the last is as wide as its widest cell plus
/// three spaces, and at least 12.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [12usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count() + 3);
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<0$}", widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Shown {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let inner = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(Shown {
            path: "/x",
            source: inner,
        })
        .context("restoring c1");
        assert_eq!(
            super::with_causes(&err),
            "restoring c1: cannot read /x: disk on fire"
        );
        // A cause not in the message is still shown.
        let err = anyhow::Error::new(std::io::Error::other("no room")).context("writing /y");
        assert_eq!(super::with_causes(&err), "writing /y: no room");
    }

    #[test]
    fn columns_align_as_runc_does() {
        let rows = [
            ["ID", "PID", "BUNDLE", "OWNER"].map(String::from),
            ["r12b", "0", "/tmp/r12/b", "root"].map(String::from),
        ];
        assert_eq!(
            super::columns(&rows),
            "ID          PID         BUNDLE       OWNER\n\
             r12b        0           /tmp/r12/b   root\n"
        );
    }
}
