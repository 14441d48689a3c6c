//! `ps`: the container's processes, from its cgroup.
use super::{Container, Result, Status};

impl Container {
    /// The host pids of the container's processes, sorted. As with runc, a
    /// stopped container has none (an answer, not an error).
    pub fn pids(&self) -> Result<Vec<i32>> {
        if self.status() == Status::Stopped {
            return Ok(Vec::new());
        }
        let mut pids = self.cgroup_or_err()?.pids()?;
        pids.sort_unstable();
        Ok(pids)
    }
}

/// Keeps the header of `ps` output and the lines whose PID column is one of
/// `pids` (runc's `ps ID [ps options]`). `None` when the header has no PID
/// column (options such as `-o comm` leave nothing to match on).
pub fn filter_ps_output(output: &str, pids: &[i32]) -> Option<String> {
    let mut lines = output.lines();
    let header = lines.next()?;
    let column = header.split_whitespace().position(|f| f == "PID")?;
    let mut kept = vec![header];
    kept.extend(lines.filter(|line| {
        line.split_whitespace()
            .nth(column)
            .and_then(|f| f.parse::<i32>().ok())
            .is_some_and(|p| pids.contains(&p))
    }));
    Some(kept.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::filter_ps_output;

    #[test]
    fn keeps_header_and_the_container_pids_only() {
        let out = "UID PID PPID C STIME TTY TIME CMD\n\
                   root 1 0 0 10:00 ? 00:00:01 /sbin/init\n\
                   root 42 1 0 10:00 ? 00:00:00 sleep 1000\n\
                   root 421 1 0 10:00 ? 00:00:00 sleep 42\n";
        assert_eq!(
            filter_ps_output(out, &[42]).unwrap(),
            "UID PID PPID C STIME TTY TIME CMD\nroot 42 1 0 10:00 ? 00:00:00 sleep 1000\n"
        );
        assert_eq!(
            filter_ps_output(out, &[]).unwrap(),
            "UID PID PPID C STIME TTY TIME CMD\n"
        );
        assert!(filter_ps_output("COMMAND\nsleep\n", &[42]).is_none());
    }
}
