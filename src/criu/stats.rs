//! The `stats-dump` / `stats-restore` files CRIU writes into its work dir
//! (the images dir unless `work_dir_fd` was given).
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::image::{read_single, ErrorKind, ImageError, STATS_MAGIC};
use crate::proto::stats::Stats_entry;

pub const DUMP_STATS_FILE: &str = "stats-dump";
pub const RESTORE_STATS_FILE: &str = "stats-restore";

/// Timings (µs) and page counts of one dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpStats {
    pub freezing_time_us: u32,
    pub frozen_time_us: u32,
    pub memdump_time_us: u32,
    pub memwrite_time_us: u32,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub irmap_resolve_us: Option<u32>,
    pub page_pipes: Option<u64>,
    pub page_pipe_bufs: Option<u64>,
    pub shpages_scanned: Option<u64>,
    pub shpages_skipped_parent: Option<u64>,
    pub shpages_written: Option<u64>,
}

/// Timings (µs) and page counts of one restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    pub forking_time_us: u32,
    pub restore_time_us: u32,
    pub pages_restored: Option<u64>,
}

fn missing(path: &Path, what: &'static str) -> ImageError {
    ImageError {
        path: path.to_path_buf(),
        offset: 0,
        kind: ErrorKind::Truncated {
            what,
            needed: 1,
            available: 0,
        },
    }
}

/// Reads `stats-dump` from `dir`.
pub fn read_dump_stats(dir: &Path) -> Result<DumpStats, ImageError> {
    let path = dir.join(DUMP_STATS_FILE);
    let entry: Stats_entry = read_single(&path, STATS_MAGIC)?;
    let d = entry
        .dump
        .into_option()
        .ok_or_else(|| missing(&path, "dump statistics"))?;
    Ok(DumpStats {
        freezing_time_us: d.freezing_time(),
        frozen_time_us: d.frozen_time(),
        memdump_time_us: d.memdump_time(),
        memwrite_time_us: d.memwrite_time(),
        pages_scanned: d.pages_scanned(),
        pages_skipped_parent: d.pages_skipped_parent(),
        pages_written: d.pages_written(),
        pages_lazy: d.pages_lazy(),
        irmap_resolve_us: d.irmap_resolve,
        page_pipes: d.page_pipes,
        page_pipe_bufs: d.page_pipe_bufs,
        shpages_scanned: d.shpages_scanned,
        shpages_skipped_parent: d.shpages_skipped_parent,
        shpages_written: d.shpages_written,
    })
}

/// Reads `stats-restore` from `dir`.
pub fn read_restore_stats(dir: &Path) -> Result<RestoreStats, ImageError> {
    let path = dir.join(RESTORE_STATS_FILE);
    let entry: Stats_entry = read_single(&path, STATS_MAGIC)?;
    let r = entry
        .restore
        .into_option()
        .ok_or_else(|| missing(&path, "restore statistics"))?;
    Ok(RestoreStats {
        pages_compared: r.pages_compared(),
        pages_skipped_cow: r.pages_skipped_cow(),
        forking_time_us: r.forking_time(),
        restore_time_us: r.restore_time(),
        pages_restored: r.pages_restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::image::{encode, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
    use crate::proto::stats::{Dump_stats_entry, Restore_stats_entry};

    fn dump_entry() -> Stats_entry {
        let mut d = Dump_stats_entry::new();
        d.set_freezing_time(1500);
        d.set_frozen_time(30_000);
        d.set_memdump_time(2_000);
        d.set_memwrite_time(1_000);
        d.set_pages_scanned(4096);
        d.set_pages_skipped_parent(0);
        d.set_pages_written(1234);
        d.set_pages_lazy(0);
        d.set_page_pipes(2);
        let mut e = Stats_entry::new();
        e.dump = Some(d).into();
        e
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn good_dump_and_restore_stats() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode(STATS_MAGIC, &[&dump_entry()]);
        assert_eq!(&bytes[..4], &IMG_SERVICE_MAGIC.to_le_bytes());
        write(dir.path(), DUMP_STATS_FILE, &bytes);
        let s = read_dump_stats(dir.path()).unwrap();
        assert_eq!(s.freezing_time_us, 1500);
        assert_eq!(s.frozen_time_us, 30_000);
        assert_eq!(s.pages_scanned, 4096);
        assert_eq!(s.pages_written, 1234);
        assert_eq!(s.page_pipes, Some(2));
        assert_eq!(s.shpages_written, None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["memdump_time_us"], 2000);

        let mut r = Restore_stats_entry::new();
        r.set_pages_compared(1);
        r.set_pages_skipped_cow(2);
        r.set_forking_time(3);
        r.set_restore_time(4);
        let mut e = Stats_entry::new();
        e.restore = Some(r).into();
        write(dir.path(), RESTORE_STATS_FILE, &encode(STATS_MAGIC, &[&e]));
        let r = read_restore_stats(dir.path()).unwrap();
        assert_eq!(
            (r.forking_time_us, r.restore_time_us, r.pages_restored),
            (3, 4, None)
        );
    }

    #[test]
    fn wrong_magics_name_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode(STATS_MAGIC, &[&dump_entry()]);
        bytes[..4].copy_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        write(dir.path(), DUMP_STATS_FILE, &bytes);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::BadHeadMagic { .. }), "{err}");
        assert_eq!(err.offset, 0);
        assert!(err.to_string().contains("stats-dump"), "{err}");

        let mut bytes = encode(STATS_MAGIC, &[&dump_entry()]);
        bytes[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        write(dir.path(), DUMP_STATS_FILE, &bytes);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(
                err.kind,
                ErrorKind::BadMagic {
                    found: 0x1234_5678,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.offset, 4);
        assert!(err.to_string().contains("offset 4"), "{err}");
    }

    #[test]
    fn truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode(STATS_MAGIC, &[&dump_entry()]);
        // Cut inside the entry body.
        write(dir.path(), DUMP_STATS_FILE, &bytes[..bytes.len() - 3]);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Truncated { what: "entry", .. }),
            "{err}"
        );
        assert_eq!(err.offset, 8);
        // Cut inside the length prefix.
        write(dir.path(), DUMP_STATS_FILE, &bytes[..10]);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(
                err.kind,
                ErrorKind::Truncated {
                    what: "entry length",
                    ..
                }
            ),
            "{err}"
        );
        // Cut inside the magic.
        write(dir.path(), DUMP_STATS_FILE, &bytes[..6]);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Truncated { what: "magic", .. }),
            "{err}"
        );
        // No entry at all.
        write(dir.path(), DUMP_STATS_FILE, &bytes[..8]);
        let err = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::EntryCount { found: 0, .. }),
            "{err}"
        );
        // Missing file.
        let err = read_restore_stats(dir.path()).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Io(_)), "{err}");
        assert!(err.to_string().contains("stats-restore"), "{err}");
    }

    #[test]
    fn restore_entry_in_dump_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let e = Stats_entry::new();
        write(dir.path(), DUMP_STATS_FILE, &encode(STATS_MAGIC, &[&e]));
        assert!(read_dump_stats(dir.path()).is_err());
    }
}
