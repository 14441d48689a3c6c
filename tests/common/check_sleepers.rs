//! Processes `ferry check` started and did not stop.

/// Every live process carrying `ferry check`'s sleeper mark, as "pid (ppid
/// P, state S, started by ferry F)": the mark names the ferry that started
/// it, so another test's `sleep` is never mistaken for one.
pub fn check_sleepers() -> Vec<String> {
    let mark = format!("{}=", ferry::check::SLEEPER_MARK);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Empty for a zombie; unreadable once gone.
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let Some(owner) = env
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix(&mark))
        else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("?")
                .to_string()
        };
        found.push(format!(
            "{pid} (ppid {}, state {}, started by ferry {owner})",
            field("PPid:"),
            field("State:")
        ));
    }
    found
}
