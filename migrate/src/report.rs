//! What a migration reports: progress while it runs, a [`Report`] at the
//! end (serializable for `--json`).
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mode::{Iteration, Mode, NotUsed};
use crate::wire::Compression;

pub use crate::serde_fmt::ms;

/// Phases of a migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Connect,
    Preflight,
    RootfsPrecopy,
    PreDump,
    Dump,
    RootfsDelta,
    Images,
    Restore,
    Switchover,
    /// Post-copy: the destination runs, pages still coming.
    Pages,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Preflight => "preflight",
            Phase::RootfsPrecopy => "rootfs pre-copy",
            Phase::PreDump => "pre-dump",
            Phase::Dump => "dump",
            Phase::RootfsDelta => "rootfs delta",
            Phase::Images => "images",
            Phase::Restore => "restore",
            Phase::Switchover => "switchover",
            Phase::Pages => "post-copy pages",
            Phase::Done => "done",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A progress update for the CLI to render.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes moved in this phase so far.
    pub bytes: u64,
    /// Bytes expected in this phase, when known.
    pub total: Option<u64>,
    /// Bytes per second over this phase so far.
    pub rate: Option<f64>,
    /// Estimated time left in this phase.
    pub eta: Option<Duration>,
}

/// Bytes in binary units, e.g. `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl std::fmt::Display for Progress {
    /// One progress line: `dump 12.0 MiB/64.0 MiB 210.3 MiB/s ETA 0.2s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.phase)?;
        if self.bytes > 0 || self.total.is_some() {
            write!(f, " {}", human_bytes(self.bytes))?;
            if let Some(t) = self.total {
                write!(f, "/{}", human_bytes(t))?;
            }
        }
        if let Some(r) = self.rate {
            write!(f, " {}/s", human_bytes(r as u64))?;
        }
        if let Some(e) = self.eta {
            write!(f, " ETA {:.1}s", e.as_secs_f64())?;
        }
        Ok(())
    }
}

impl Report {
    /// A human summary, one item per line, for the CLI.
    pub fn summary(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let t = &self.timings;
        let mut out = vec![
            format!(
                "migrated {} to {} ({}, rootfs {}, {})",
                self.id,
                self.destination,
                self.mode.map(|m| m.name()).unwrap_or("no mode"),
                match self.rootfs {
                    crate::RootfsMode::Ship => "shipped",
                    crate::RootfsMode::Shared => "shared",
                },
                if self.tls {
                    "mutual TLS"
                } else {
                    "INSECURE plaintext"
                }
            ),
            format!("mode: {}", self.mode_reason),
        ];
        for n in &self.not_used {
            out.push(format!("not {}: {}", n.mode, n.reason));
        }
        out.push(format!(
            "downtime {}, total {}",
            ms(t.downtime),
            ms(t.total)
        ));
        out.push(format!(
            "preflight {}, rootfs pre-copy {}, pre-dump {}, early images {}, freeze {}, dump {}, \
             memory {}, rootfs delta {}, images {}, restore {}",
            ms(t.preflight),
            ms(t.rootfs_precopy),
            ms(t.pre_dump),
            ms(t.early_images),
            ms(t.freeze),
            ms(t.dump),
            ms(t.memory_transfer),
            ms(t.rootfs_delta),
            ms(t.image_transfer),
            ms(t.restore)
        ));
        out.push(format!(
            "moved: memory {} ({} pages, {} pre-copied), images {} (+ {} before the freeze), \
             rootfs {} + {} delta",
            human_bytes(self.bytes.memory),
            self.pages.written,
            self.pages.pre_dumped,
            human_bytes(self.bytes.images),
            human_bytes(self.bytes.early_images),
            human_bytes(self.bytes.rootfs_precopy),
            human_bytes(self.bytes.rootfs_delta)
        ));
        out.extend(self.pre_copy_lines());
        if self.mode == Some(crate::Mode::PostCopy) {
            out.push(format!(
                "post-copy: the destination stopped depending on this host {} after it \
                 started running the container",
                ms(t.post_copy)
            ));
        }
        for w in &self.warnings {
            out.push(format!("warning: {w}"));
        }
        out
    }
}

impl Report {
    /// One line per pre-copy round, then the final dump against its
    /// prediction and why iteration stopped.
    pub fn pre_copy_lines(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let Some(stop) = &self.pre_copy_stop else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .pre_copy
            .iter()
            .enumerate()
            .map(|(n, i)| {
                format!(
                    "pre-copy round {}: {} pages ({}) in {} (transfer {}, frozen {}); \
                     predicted final: {} pages, {}",
                    n + 1,
                    i.pages_written,
                    human_bytes(i.bytes),
                    ms(i.duration),
                    ms(i.transfer),
                    ms(i.frozen),
                    i.predicted_pages,
                    i.predicted_downtime
                        .map(ms)
                        .unwrap_or_else(|| "unknown".into())
                )
            })
            .collect();
        out.push(format!(
            "final dump: {} pages, memory transfer {} (predicted {}), downtime {}",
            self.pages.written,
            ms(self.timings.memory_transfer),
            self.predicted_downtime
                .map(ms)
                .unwrap_or_else(|| "unknown".into()),
            ms(self.timings.downtime)
        ));
        out.push(format!(
            "pre-copy stopped after {} rounds: {stop}",
            self.pre_copy.len()
        ));
        out
    }
}

/// Tracks bytes in one phase and reports at most every `every`.
pub(crate) struct Meter<'a> {
    phase: Phase,
    start: std::time::Instant,
    last: Option<std::time::Instant>,
    bytes: u64,
    total: Option<u64>,
    sink: &'a mut dyn FnMut(&Progress),
}

impl<'a> Meter<'a> {
    pub(crate) fn new(
        phase: Phase,
        total: Option<u64>,
        sink: &'a mut dyn FnMut(&Progress),
    ) -> Meter<'a> {
        let mut m = Meter {
            phase,
            start: std::time::Instant::now(),
            last: None,
            bytes: 0,
            total,
            sink,
        };
        m.emit();
        m
    }

    fn emit(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = (secs > 0.0 && self.bytes > 0).then(|| self.bytes as f64 / secs);
        let eta = match (rate, self.total) {
            (Some(r), Some(t)) if r > 0.0 => Some(Duration::from_secs_f64(
                t.saturating_sub(self.bytes) as f64 / r,
            )),
            _ => None,
        };
        (self.sink)(&Progress {
            phase: self.phase,
            bytes: self.bytes,
            total: self.total,
            rate,
            eta,
        });
        self.last = Some(std::time::Instant::now());
    }

    pub(crate) fn add(&mut self, n: u64) {
        self.bytes += n;
        if self
            .last
            .is_none_or(|l| l.elapsed() >= Duration::from_millis(200))
        {
            self.emit();
        }
    }

    pub(crate) fn finish(mut self) -> u64 {
        self.emit();
        self.bytes
    }
}

/// Per-phase wall-clock times, in milliseconds in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(with = "ms")]
    pub preflight: Duration,
    #[serde(with = "ms")]
    pub rootfs_precopy: Duration,
    /// Pre-copy iterations, all together.
    #[serde(with = "ms")]
    pub pre_dump: Duration,
    #[serde(with = "ms")]
    pub freeze: Duration,
    #[serde(with = "ms")]
    pub dump: Duration,
    /// Memory pages to the destination (during the dump in stop-copy).
    #[serde(with = "ms")]
    pub memory_transfer: Duration,
    /// Rootfs delta while frozen.
    #[serde(with = "ms")]
    pub rootfs_delta: Duration,
    /// Image files sent before the freeze (tmpfs contents).
    #[serde(with = "ms", default)]
    pub early_images: Duration,
    /// The non-memory images.
    #[serde(with = "ms")]
    pub image_transfer: Duration,
    #[serde(with = "ms")]
    pub restore: Duration,
    /// From the source container stopping to the destination's running.
    #[serde(with = "ms")]
    pub downtime: Duration,
    /// Post-copy: from the destination running to its last page arriving,
    /// when it stopped depending on the source.
    #[serde(with = "ms", default)]
    pub post_copy: Duration,
    #[serde(with = "ms")]
    pub total: Duration,
}

/// Bytes moved, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// File content in the first rootfs pass.
    pub rootfs_precopy: u64,
    /// File content in the rootfs delta.
    pub rootfs_delta: u64,
    /// Non-memory image files, after the dump.
    pub images: u64,
    /// Image files sent before the freeze.
    #[serde(default)]
    pub early_images: u64,
    /// Memory pages (pages written x page size), all iterations.
    pub memory: u64,
    /// Everything on the control channel, framing included (memory pages
    /// travel on CRIU's own connection and are not in here).
    pub channel: u64,
}

/// Pages moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pages {
    /// In the final dump.
    pub written: u64,
    /// In pre-copy iterations.
    pub pre_dumped: u64,
    /// Unchanged since the last iteration, not sent again.
    pub skipped: u64,
    /// Post-copy: left out of the dump and served to the destination on
    /// demand and in the background.
    #[serde(default)]
    pub lazy: u64,
}

/// What happened, for the CLI's summary and `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub migration_id: String,
    pub destination: String,
    pub mode: Option<Mode>,
    pub mode_reason: String,
    pub not_used: Vec<NotUsed>,
    pub rootfs: crate::RootfsMode,
    pub compression: Compression,
    /// Whether the channel and the pages were encrypted and authenticated.
    pub tls: bool,
    pub timings: Timings,
    pub bytes: Bytes,
    pub pages: Pages,
    pub pre_copy: Vec<Iteration>,
    /// Why pre-copy stopped iterating.
    pub pre_copy_stop: Option<String>,
    /// The final dump's memory transfer as pre-copy predicted it when it
    /// stopped iterating (compare `timings.memory_transfer` and
    /// `timings.downtime`).
    #[serde(with = "crate::serde_fmt::ms_opt", default)]
    pub predicted_downtime: Option<Duration>,
    /// The restored container's pid on the destination.
    pub dest_pid: Option<i32>,
    /// The destination prepared the restore (state, cgroup, network
    /// namespace, CRIU) before the freeze, leaving only CRIU's restore
    /// for the downtime.
    #[serde(default)]
    pub restore_prepared: bool,
    /// Things that went wrong without failing the migration.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line() {
        let p = Progress {
            phase: Phase::RootfsPrecopy,
            bytes: 3 << 20,
            total: Some(12 << 20),
            rate: Some((6 << 20) as f64),
            eta: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            p.to_string(),
            "rootfs pre-copy 3.0 MiB/12.0 MiB 6.0 MiB/s ETA 1.5s"
        );
        assert_eq!(human_bytes(999), "999 B");
    }

    #[test]
    fn durations_are_milliseconds_in_json() {
        let t = Timings {
            downtime: Duration::from_micros(123_456),
            ..Timings::default()
        };
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(v["downtime"], 123.456);
        let back: Timings = serde_json::from_value(v).unwrap();
        assert_eq!(back.downtime, Duration::from_micros(123_456));
    }

    #[test]
    fn every_pre_copy_round_and_the_stop_reason_are_reported() {
        let mut h = vec![
            Iteration::measured(
                65536,
                Duration::ZERO,
                Duration::from_secs(2),
                None,
                Duration::from_millis(40),
            ),
            Iteration::measured(
                512,
                Duration::from_secs(2),
                Duration::from_millis(100),
                Some(Duration::from_millis(20)),
                Duration::from_millis(3),
            ),
        ];
        let policy = Default::default();
        crate::mode::precopy_next(&mut h[..1], &policy).unwrap();
        let stop = crate::mode::precopy_next(&mut h, &policy).unwrap_err();
        let r = Report {
            id: "c1".into(),
            migration_id: "m".into(),
            destination: "10.0.0.2:7070".into(),
            mode: Some(Mode::PreCopy),
            mode_reason: "auto".into(),
            not_used: Vec::new(),
            rootfs: crate::RootfsMode::Shared,
            compression: Compression::None,
            tls: true,
            timings: Timings {
                downtime: Duration::from_millis(90),
                memory_transfer: Duration::from_millis(4),
                ..Timings::default()
            },
            bytes: Default::default(),
            pages: Pages {
                written: 30,
                ..Default::default()
            },
            predicted_downtime: h[1].predicted_downtime,
            pre_copy: h,
            pre_copy_stop: Some(stop),
            dest_pid: None,
            restore_prepared: false,
            warnings: Vec::new(),
        };
        let lines = r.summary();
        let text = lines.join("\n");
        assert!(
            text.contains("pre-copy round 1: 65536 pages (256.0 MiB) in 2000.0 ms"),
            "{text}"
        );
        assert!(
            text.contains("predicted final: 65536 pages, 2000.0 ms"),
            "{text}"
        );
        assert!(text.contains("pre-copy round 2: 512 pages"), "{text}");
        // 512 pages in the 2 s since round 1 began, round 2 took 100 ms.
        assert!(text.contains("predicted final: 26 pages"), "{text}");
        assert!(
            text.contains("final dump: 30 pages, memory transfer 4.0 ms (predicted "),
            "{text}"
        );
        assert!(text.contains("downtime 90.0 ms"), "{text}");
        assert!(
            text.contains("pre-copy stopped after 2 rounds: the final dump is predicted"),
            "{text}"
        );
        // And in JSON, every round with its prediction.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pre_copy"][1]["predicted_pages"], 26);
        assert_eq!(v["pre_copy"][0]["frozen"], 40.0);
        assert!(v["predicted_downtime"].as_f64().unwrap() > 0.0);
        assert_eq!(v["pre_copy"][0]["predicted_pages"], 65536);
        let back: Report = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
    }
}
