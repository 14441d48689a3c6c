//! Extracting the interesting part of a CRIU log file.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Lines of context kept before and after each error line.
pub const CONTEXT_LINES: usize = 3;
/// Most lines an excerpt holds; later error windows are dropped.
pub const MAX_EXCERPT_LINES: usize = 60;
/// Only the tail of a huge log is searched.
const MAX_LOG_BYTES: u64 = 8 << 20;

/// Errors CRIU logs on every run on some hosts, which explain nothing. The
/// iproute2 lines come from every restore of a network namespace CRIU
/// dumped: `ip addr restore` meets the loopback addresses the kernel
/// already gave the new namespace, and CRIU goes on.
const HARMLESS: &[&str] = &[
    "Can't setup RLIMIT_NOFILE for self",
    "Error: ipv4: Address already assigned.",
    "Error: ipv6: address already assigned.",
];

/// True for error lines CRIU prints on every run on some hosts.
pub fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

fn is_error_line(line: &str) -> bool {
    (line.contains("Error") || is_bug(line)) && !is_harmless(line)
}

/// CRIU's assertion failures (`BUG_ON`) log "BUG at FILE:LINE" and abort:
/// a defect of CRIU, not of what it was asked to do.
pub fn is_bug(line: &str) -> bool {
    line.contains("BUG at ")
}

/// "BUG at criu/mem.c:123" out of a log line, if it is one.
pub fn bug_location(line: &str) -> Option<&str> {
    let at = line.find("BUG at ")?;
    Some(line[at..].trim())
}

/// A log line without its "(00.012345) " timestamp.
pub fn strip_timestamp(line: &str) -> &str {
    let t = line.trim();
    match (t.starts_with('('), t.find(") ")) {
        (true, Some(i)) => t[i + 2..].trim(),
        _ => t,
    }
}

/// The lines around each line containing `Error`, `context` lines either
/// side, overlapping windows merged, separated by "..." and capped at `max`
/// lines.
pub fn excerpt(log: &str, context: usize, max: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut windows: Vec<(usize, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !is_error_line(line) {
            continue;
        }
        let (lo, hi) = (
            i.saturating_sub(context),
            (i + context).min(lines.len() - 1),
        );
        match windows.last_mut() {
            Some(last) if lo <= last.1 + 1 => last.1 = hi,
            _ => windows.push((lo, hi)),
        }
    }
    let mut out = Vec::new();
    for (n, (lo, hi)) in windows.iter().enumerate() {
        if n > 0 || *lo > 0 {
            if out.len() >= max {
                break;
            }
            out.push("...".to_string());
        }
        for line in &lines[*lo..=*hi] {
            if out.len() >= max {
                break;
            }
            out.push(line.to_string());
        }
    }
    out
}

/// Reads (the tail of) a log file and extracts the error excerpt.
pub fn excerpt_file(path: &Path) -> std::io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > MAX_LOG_BYTES {
        file.seek(SeekFrom::Start(len - MAX_LOG_BYTES))?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(excerpt(
        &String::from_utf8_lossy(&bytes),
        CONTEXT_LINES,
        MAX_EXCERPT_LINES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize, errors: &[usize]) -> String {
        (0..n)
            .map(|i| {
                if errors.contains(&i) {
                    format!("({i:02}) Error (criu/x.c:{i}): boom {i}\n")
                } else {
                    format!("({i:02}) info line {i}\n")
                }
            })
            .collect()
    }

    #[test]
    fn context_around_each_error() {
        let ex = excerpt(&log(20, &[5, 15]), 2, 100);
        assert_eq!(ex[0], "...");
        assert_eq!(ex[1], "(03) info line 3");
        assert_eq!(ex[3], "(05) Error (criu/x.c:5): boom 5");
        assert_eq!(ex[5], "(07) info line 7");
        assert_eq!(ex[6], "...");
        assert_eq!(ex[7], "(13) info line 13");
        assert_eq!(ex.last().unwrap(), "(17) info line 17");
        assert_eq!(ex.len(), 12);
    }

    #[test]
    fn overlapping_windows_merge_and_edges_clamp() {
        let ex = excerpt(&log(6, &[0, 2, 5]), 2, 100);
        assert_eq!(ex.len(), 6, "{ex:?}");
        assert_eq!(ex[0], "(00) Error (criu/x.c:0): boom 0");
        assert!(!ex.contains(&"...".to_string()));
    }

    #[test]
    fn timestamps_are_stripped() {
        assert_eq!(
            strip_timestamp("(00.032966) Error (criu/a.c:1): x"),
            "Error (criu/a.c:1): x"
        );
        assert_eq!(strip_timestamp("Error: y"), "Error: y");
    }

    #[test]
    fn bug_lines_are_found() {
        let l = "(00.1) info\n(00.2) Error (criu/mem.c:42): BUG at criu/mem.c:42\n(00.3) x\n";
        let ex = excerpt(l, 1, 50);
        assert_eq!(ex.len(), 3, "{ex:?}");
        assert_eq!(bug_location(&ex[1]), Some("BUG at criu/mem.c:42"));
        assert_eq!(bug_location("(00.1) info"), None);
    }

    #[test]
    fn capped() {
        let errs: Vec<usize> = (0..1000).step_by(10).collect();
        let ex = excerpt(&log(1000, &errs), 3, 25);
        assert_eq!(ex.len(), 25);
    }

    #[test]
    fn no_errors_no_excerpt_and_harmless_ignored() {
        assert!(excerpt(&log(10, &[]), 3, 50).is_empty());
        let l = "(00.0) info\n(00.1) Error (criu/util.c:1): Can't setup RLIMIT_NOFILE for self: x\n(00.2) info\n";
        assert!(excerpt(l, 3, 50).is_empty());
        let l = "(00.0) info\nError: ipv4: Address already assigned.\nError: ipv6: address already assigned.\n(9.0) Error (criu/cr-restore.c:1269): 11444 killed by signal 15\n";
        let ex = excerpt(l, 0, 50);
        assert_eq!(
            ex,
            [
                "...",
                "(9.0) Error (criu/cr-restore.c:1269): 11444 killed by signal 15"
            ]
        );
    }

    #[test]
    fn from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dump.log");
        std::fs::write(&p, log(10, &[4])).unwrap();
        let ex = excerpt_file(&p).unwrap();
        assert!(ex.iter().any(|l| l.contains("boom 4")));
        assert!(excerpt_file(&dir.path().join("missing.log")).is_err());
    }
}
