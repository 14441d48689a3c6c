//! When pre-copy iterates again and when it stops.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When pre-copy stops iterating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreCopyPolicy {
    pub max_iterations: u32,
    /// Stop once the final dump is predicted to fit this downtime.
    pub max_downtime: Duration,
    /// Stop when an iteration wrote more than this fraction of the pages
    /// of the one before (the container dirties memory as fast as it is
    /// copied).
    pub min_shrink: f64,
}

impl Default for PreCopyPolicy {
    fn default() -> PreCopyPolicy {
        PreCopyPolicy {
            max_iterations: 5,
            max_downtime: Duration::from_millis(300),
            min_shrink: 0.8,
        }
    }
}

/// One pre-copy iteration's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    pub pages_written: u64,
    #[serde(with = "crate::serde_fmt::ms")]
    pub duration: Duration,
}

/// Page size assumed when predicting transfer times.
pub const PAGE_SIZE: u64 = 4096;

/// Predicted time to send `pages` at the rate the last iteration reached.
pub fn predict(pages: u64, last: &Iteration) -> Option<Duration> {
    if last.pages_written == 0 || last.duration.is_zero() {
        return None;
    }
    let per_page = last.duration.as_secs_f64() / last.pages_written as f64;
    Some(Duration::from_secs_f64(per_page * pages as f64))
}

/// After the iterations so far, whether to pre-dump again; `Err` holds why
/// to stop.
pub fn precopy_next(history: &[Iteration], policy: &PreCopyPolicy) -> Result<(), String> {
    let Some(last) = history.last() else {
        return Ok(());
    };
    if history.len() as u32 >= policy.max_iterations {
        return Err(format!(
            "reached the maximum of {} pre-copy iterations",
            policy.max_iterations
        ));
    }
    // The final dump sends about what the last iteration sent.
    if let Some(t) = predict(last.pages_written, last) {
        if t <= policy.max_downtime {
            return Err(format!(
                "predicted final transfer {:.0} ms fits the downtime target of {} ms",
                t.as_secs_f64() * 1e3,
                policy.max_downtime.as_millis()
            ));
        }
    }
    if history.len() >= 2 {
        let prev = history[history.len() - 2].pages_written;
        if last.pages_written as f64 > prev as f64 * policy.min_shrink {
            return Err(format!(
                "stopped converging: iteration {} wrote {} pages after {}",
                history.len(),
                last.pages_written,
                prev
            ));
        }
    }
    Ok(())
}
