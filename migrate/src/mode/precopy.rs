//! When pre-copy iterates again and when it stops.
//!
//! Each pre-dump round sends the pages written since the round before
//! (all of them in round 1). From the rounds so far the rule estimates
//! two rates: the link's (pages sent per second of transfer, over all
//! rounds, so the large first round dominates) and the container's dirty
//! rate (pages a round found changed, per second since the round before
//! it started). The final dump, which runs frozen, will send what the
//! container dirties from the start of the last round until the freeze:
//! the dirty rate times the last round's duration and the gap between
//! rounds. After round 1 there is no dirty rate yet, so everything is
//! assumed to change again.
//!
//! Iteration stops at the first of:
//! 1. the predicted final transfer fits the downtime target;
//! 2. at most `min_pages` pages are predicted for the final dump;
//! 3. a round sent more than `min_shrink` of the round before (it does not
//!    converge: the container dirties memory about as fast as it is sent;
//!    more rounds would cost time and bandwidth without shortening the
//!    freeze);
//! 4. `max_iterations` rounds ran.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When pre-copy stops iterating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreCopyPolicy {
    pub max_iterations: u32,
    /// Stop once the final dump is predicted to fit this downtime.
    pub max_downtime: Duration,
    /// Stop when a round wrote more than this fraction of the pages of
    /// the one before.
    pub min_shrink: f64,
    /// Stop when no more than this many pages are predicted for the final
    /// dump.
    pub min_pages: u64,
}

impl Default for PreCopyPolicy {
    /// P.Haul's bounds (8 rounds, 64 pages), with a stricter progress
    /// test: P.Haul goes on until a round grows by more than 10 %, this
    /// stops once a round fails to shrink by 20 %.
    fn default() -> PreCopyPolicy {
        PreCopyPolicy {
            max_iterations: 8,
            max_downtime: Duration::from_millis(300),
            min_shrink: 0.8,
            min_pages: 64,
        }
    }
}

/// One pre-copy round, as measured and as judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    pub pages_written: u64,
    /// `pages_written` in bytes.
    pub bytes: u64,
    /// When the round started, since the first one did.
    #[serde(with = "crate::serde_fmt::ms")]
    pub started: Duration,
    /// The whole round (its call), start to end.
    #[serde(with = "crate::serde_fmt::ms")]
    pub duration: Duration,
    /// Time spent writing the pages (CRIU's figure), else `duration`.
    #[serde(with = "crate::serde_fmt::ms")]
    pub transfer: Duration,
    /// How long the round held the container frozen.
    #[serde(with = "crate::serde_fmt::ms")]
    pub frozen: Duration,
    /// Pages the final dump would send if iteration stopped after this
    /// round (filled by [`precopy_next`]).
    pub predicted_pages: u64,
    /// Their transfer time at the measured link rate: the predicted
    /// downtime's memory part.
    #[serde(with = "crate::serde_fmt::ms_opt", default)]
    pub predicted_downtime: Option<Duration>,
}

impl Iteration {
    /// A round as measured; the predictions are filled in later.
    pub fn measured(
        pages_written: u64,
        started: Duration,
        duration: Duration,
        transfer: Option<Duration>,
        frozen: Duration,
    ) -> Iteration {
        Iteration {
            pages_written,
            bytes: pages_written * PAGE_SIZE,
            started,
            duration,
            transfer: transfer.unwrap_or(duration),
            frozen,
            predicted_pages: 0,
            predicted_downtime: None,
        }
    }
}

/// Page size assumed when predicting transfer times.
pub const PAGE_SIZE: u64 = 4096;

/// The link rate measured over all rounds, in pages per second.
pub fn link_rate(history: &[Iteration]) -> Option<f64> {
    let pages: u64 = history.iter().map(|i| i.pages_written).sum();
    let secs: f64 = history.iter().map(|i| i.transfer.as_secs_f64()).sum();
    (pages > 0 && secs > 0.0).then(|| pages as f64 / secs)
}

/// Pages the final dump would send if iteration stopped now: the dirty
/// rate seen by the last round times the time from that round's start to
/// the freeze (its duration plus the gap between rounds, as last measured:
/// starting the next page server, confirming the round); after round 1,
/// everything that round sent.
pub fn predict_pages(history: &[Iteration]) -> Option<u64> {
    let last = history.last()?;
    let [.., prev, _] = history else {
        return Some(last.pages_written);
    };
    let since = last.started.saturating_sub(prev.started);
    if since.is_zero() {
        return Some(last.pages_written);
    }
    let gap = since.saturating_sub(prev.duration);
    let dirty_rate = last.pages_written as f64 / since.as_secs_f64();
    Some((dirty_rate * (last.duration + gap).as_secs_f64()).ceil() as u64)
}

/// Predicted time to send `pages` at `rate` pages per second.
pub fn predict(pages: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(pages as f64 / rate)
}

/// After the rounds so far, whether to pre-dump again; `Err` holds why to
/// stop. Fills in the last round's prediction.
pub fn precopy_next(history: &mut [Iteration], policy: &PreCopyPolicy) -> Result<(), String> {
    let Some(pages) = predict_pages(history) else {
        return Ok(());
    };
    let rate = link_rate(history);
    let n = history.len();
    let last = &mut history[n - 1];
    last.predicted_pages = pages;
    last.predicted_downtime = rate.map(|r| predict(pages, r));
    let (last, prev) = (history[n - 1], n.checked_sub(2).map(|i| history[i]));
    if let (Some(t), Some(r)) = (last.predicted_downtime, rate) {
        if t <= policy.max_downtime {
            return Err(format!(
                "the final dump is predicted to send {pages} pages in {:.0} ms at {:.1} MiB/s, \
                 within the downtime target of {} ms",
                t.as_secs_f64() * 1e3,
                r * PAGE_SIZE as f64 / (1 << 20) as f64,
                policy.max_downtime.as_millis()
            ));
        }
    }
    if pages <= policy.min_pages {
        return Err(format!(
            "only {pages} pages are predicted for the final dump (at most {})",
            policy.min_pages
        ));
    }
    if let Some(prev) = prev {
        if last.pages_written as f64 > prev.pages_written as f64 * policy.min_shrink {
            return Err(format!(
                "not converging: round {n} sent {} pages after {} (more than {:.0} %); the \
                 container dirties memory about as fast as it is sent",
                last.pages_written,
                prev.pages_written,
                policy.min_shrink * 100.0
            ));
        }
    }
    if n as u32 >= policy.max_iterations {
        return Err(format!(
            "reached the maximum of {} pre-copy rounds",
            policy.max_iterations
        ));
    }
    Ok(())
}
