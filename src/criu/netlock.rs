//! What CRIU's network lock leaves behind when CRIU aborts or is killed.
//!
//! With `--network-lock nftables` CRIU creates `table inet CRIU-<run id>`:
//! in the dumped tree's network namespace when the tree has its own, else
//! in CRIU's (per-connection locks). The run id is a UUID CRIU makes at
//! start; the table name is cut to 31 bytes ("inet " included) by CRIU's
//! buffer, so the name carries the first 21 characters of the id. CRIU
//! logs the id first thing (from its early log buffer), which is where
//! [`run_id`] finds it. With `--network-lock iptables` CRIU adds a chain
//! `CRIU` and jumps to it from INPUT and OUTPUT in the tree's namespace.
//! A CRIU that finishes removes these itself; one that aborts does not.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::network::LockMethod;

/// The line CRIU logs (at info level, from its early log buffer) as it
/// starts; the last one belongs to the request being served.
const RUN_ID_PREFIX: &str = "CRIU run id = ";
/// The part of the run id that fits into CRIU's table name.
const TABLE_ID_LEN: usize = 21;

/// The run id of the CRIU writing `log` (log level 3 or more).
pub fn run_id(log: &Path) -> Option<String> {
    use std::io::{BufRead, BufReader};
    let f = std::fs::File::open(log).ok()?;
    let head: Vec<String> = BufReader::new(f)
        .lines()
        .take(64)
        .map_while(Result::ok)
        .collect();
    parse_run_id(&head.join("\n"))
}

fn parse_run_id(log: &str) -> Option<String> {
    log.lines()
        .take(64)
        .filter_map(|l| l.split_once(RUN_ID_PREFIX).map(|(_, id)| id.trim()))
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .last()
        .map(str::to_string)
}

/// Whether `table` (an inet table name) is the one CRIU made for `run_id`.
fn is_table_of(table: &str, run_id: &str) -> bool {
    let Some(id) = table.strip_prefix("CRIU-") else {
        return false;
    };
    id.len() >= TABLE_ID_LEN.min(run_id.len()) && run_id.starts_with(id)
}

/// The network namespace inode of `pid` (`None`: this process).
pub fn netns_inode(pid: Option<i32>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = match pid {
        Some(p) => format!("/proc/{p}/ns/net"),
        None => "/proc/self/ns/net".into(),
    };
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Removes what the CRIU run `run_id` locked with `method` in the network
/// namespace of `netns_pid` (this process's when `None`), if it is there.
/// Returns what was removed.
pub fn remove(
    run_id: &str,
    method: LockMethod,
    netns_pid: Option<i32>,
) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    match method {
        LockMethod::Skip => {}
        LockMethod::Nftables => {
            let tables = run(netns_pid, "nft", &["list", "tables", "inet"])?;
            for name in tables
                .lines()
                .filter_map(|l| l.trim().strip_prefix("table inet "))
                .map(str::trim)
                .filter(|t| is_table_of(t, run_id))
            {
                run(netns_pid, "nft", &["delete", "table", "inet", name])?;
                removed.push(format!("nft table inet {name}"));
            }
        }
        LockMethod::Iptables => {
            // CRIU's chain has no id in its name: only ever removed in the
            // container's own namespace, where only its CRIU adds it.
            if netns_pid.is_none() {
                return Ok(removed);
            }
            for bin in ["iptables", "ip6tables"] {
                if run(netns_pid, bin, &["-w", "-n", "-L", "CRIU"]).is_err() {
                    continue;
                }
                for chain in ["INPUT", "OUTPUT"] {
                    while run(netns_pid, bin, &["-w", "-C", chain, "-j", "CRIU"]).is_ok() {
                        run(netns_pid, bin, &["-w", "-D", chain, "-j", "CRIU"])?;
                    }
                }
                run(netns_pid, bin, &["-w", "-F", "CRIU"])?;
                run(netns_pid, bin, &["-w", "-X", "CRIU"])?;
                removed.push(format!("{bin} chain CRIU"));
            }
        }
    }
    Ok(removed)
}

fn run(netns_pid: Option<i32>, program: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = match netns_pid {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!(
                "--net={}",
                PathBuf::from(format!("/proc/{pid}/ns/net")).display()
            ))
            .arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}; install nftables and iptables"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_is_the_last_one_printed() {
        let text = "(00.000000) CRIU run id = ba74a61b-c416-4f9e-aa48-7867a6947aca\n\
                    (00.000000) CRIU run id = e2adc6d3-38f9-4f47-b9d7-19590a574eef\n\
                    Error (criu/cr-service.c:1373): Can't recv request\n";
        assert_eq!(
            parse_run_id(text).as_deref(),
            Some("e2adc6d3-38f9-4f47-b9d7-19590a574eef")
        );
        assert_eq!(parse_run_id("nothing here\n"), None);
    }

    #[test]
    fn table_names_match_the_cut_run_id() {
        let id = "3ff7aa4d-ff4b-4802-9b2c-1234567890ab";
        assert!(is_table_of("CRIU-3ff7aa4d-ff4b-4802-9b", id));
        assert!(is_table_of(&format!("CRIU-{id}"), id));
        assert!(!is_table_of("CRIU-3ff7aa4d-ff4b-4802-9c", id));
        assert!(!is_table_of("CRIU-3ff7aa4d", id));
        assert!(!is_table_of("ferry_lock_x", id));
        assert!(!is_table_of("CRIU-1a8977c0-ff0d-456c-8c", id));
    }
}
