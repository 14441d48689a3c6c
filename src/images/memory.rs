//! A process's memory as dumped: the pagemap, the pages it points into,
//! and the argv and environment read from them.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::{invalid, missing_ok, page_size, ImageDir, Memory, MAX_ARGS_BYTES};
use crate::criu::image::*;
use crate::proto::memory::{Mm_entry, Pagemap_entry, Pagemap_head};

/// CRIU's pagemap flags (criu/include/pagemap.h).
pub(super) const PE_PARENT: u32 = 1 << 0;
pub(super) const PE_LAZY: u32 = 1 << 1;
pub(super) const PE_PRESENT: u32 = 1 << 2;

/// A pagemap entry with where its pages sit in the pages image.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageRun {
    pub(super) vaddr: u64,
    pub(super) nr_pages: u64,
    pub(super) flags: u32,
    /// Offset in `pages-N.img`, for present runs.
    pub(super) file_offset: u64,
    /// Offset of the entry in the pagemap image, for errors.
    entry_at: u64,
}

pub(super) struct Pagemap {
    path: PathBuf,
    pub(super) pages_id: u32,
    pub(super) runs: Vec<PageRun>,
}

impl ImageDir {
    pub(super) fn mm(&self, pid: u32) -> Result<Mm_entry> {
        read_one(&self.file(&format!("mm-{pid}.img")), MM_MAGIC, "mm entry")
    }

    pub(super) fn pagemap(&self, pid: u32) -> Result<Pagemap> {
        let path = self.file(&format!("pagemap-{pid}.img"));
        let mut r = EntryReader::open(&path, PAGEMAP_MAGIC)?;
        let head: Pagemap_head = r.next("pagemap head")?.ok_or_else(|| {
            ImageError::new(
                &path,
                8,
                ErrorKind::EntryCount {
                    what: "pagemap head",
                    expected: "one",
                    found: 0,
                },
            )
        })?;
        let mut runs = Vec::new();
        let mut file_offset = 0u64;
        let page = page_size();
        loop {
            let at = r.offset();
            let Some(e) = r.next::<Pagemap_entry>("pagemap entry")? else {
                break;
            };
            // Older images: in_parent instead of flags, compat_nr_pages
            // instead of nr_pages (criu/pagemap.c init_compat_pagemap_entry).
            let flags = if e.in_parent() {
                PE_PARENT
            } else {
                e.flags.unwrap_or(PE_PRESENT)
            };
            let nr_pages = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages()));
            let run = PageRun {
                vaddr: e.vaddr(),
                nr_pages,
                flags,
                file_offset,
                entry_at: at,
            };
            if flags & PE_PRESENT != 0 {
                let bytes = nr_pages
                    .checked_mul(page)
                    .and_then(|b| b.checked_add(file_offset))
                    .ok_or_else(|| {
                        invalid(
                            &path,
                            at,
                            format!("pagemap entry of {nr_pages} pages overflows"),
                        )
                    })?;
                file_offset = bytes;
            }
            runs.push(run);
        }
        Ok(Pagemap {
            path,
            pages_id: head.pages_id(),
            runs,
        })
    }

    /// The (address, pages) runs of process `pid` left for lazy restore.
    pub fn lazy_ranges(&self, pid: u32) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .pagemap(pid)?
            .runs
            .iter()
            .filter(|r| r.flags & PE_LAZY != 0)
            .map(|r| (r.vaddr, r.nr_pages))
            .collect())
    }

    /// The memory of process `pid` (all zero for a zombie).
    pub fn memory(&self, pid: u32) -> Result<Memory> {
        let page = page_size();
        let mut m = Memory {
            page_size: page,
            ..Memory::default()
        };
        let Some(mm) = missing_ok(self.mm(pid))? else {
            return Ok(m);
        };
        m.vmas = mm.vmas.len();
        m.mapped_bytes = mm
            .vmas
            .iter()
            .map(|v| v.end().saturating_sub(v.start()))
            .fold(0u64, u64::saturating_add);
        let pm = self.pagemap(pid)?;
        for r in &pm.runs {
            if r.flags & PE_PRESENT != 0 {
                m.dumped_pages = m.dumped_pages.saturating_add(r.nr_pages);
            } else if r.flags & PE_PARENT != 0 {
                m.parent_pages = m.parent_pages.saturating_add(r.nr_pages);
            }
            if r.flags & PE_LAZY != 0 && r.flags & PE_PRESENT == 0 {
                m.lazy_pages = m.lazy_pages.saturating_add(r.nr_pages);
            }
        }
        m.dumped_bytes = m.dumped_pages.saturating_mul(page);
        // The pages image must hold every present page.
        let pages = self.file(&format!("pages-{}.img", pm.pages_id));
        if m.dumped_pages > 0 {
            let len = std::fs::metadata(&pages)
                .map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?
                .len();
            if len < m.dumped_bytes {
                return Err(ImageError::new(
                    &pages,
                    len,
                    ErrorKind::Truncated {
                        what: "dumped pages",
                        needed: m.dumped_bytes,
                        available: len,
                    },
                ));
            }
        }
        Ok(m)
    }

    /// Reads `len` bytes of process memory at `addr` from the dumped pages.
    /// `Ok(None)` when (part of) the range was not dumped into these images.
    fn read_memory(&self, pm: &Pagemap, addr: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let page = page_size();
        let pages = self.file(&format!("pages-{}.img", pm.pages_id));
        let mut f: Option<File> = None;
        let mut out = Vec::with_capacity(len.min(MAX_ARGS_BYTES) as usize);
        let mut cur = addr;
        let end = addr.saturating_add(len);
        while cur < end {
            // Runs come from the images: a run reaching past the top of
            // the address space ends there.
            let run_end = |r: &PageRun| r.vaddr.saturating_add(r.nr_pages.saturating_mul(page));
            let run = pm.runs.iter().find(|r| r.vaddr <= cur && cur < run_end(r));
            let Some(run) = run else { return Ok(None) };
            if run.flags & PE_PRESENT == 0 {
                return Ok(None);
            }
            let chunk = end.min(run_end(run)) - cur;
            // pagemap() checked that a present run's pages fit in u64.
            let off = run.file_offset + (cur - run.vaddr);
            if f.is_none() {
                f = Some(
                    File::open(&pages).map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?,
                );
            }
            let file = f.as_mut().expect("opened above");
            let io = |e| ImageError::new(&pages, off, ErrorKind::Io(e));
            let flen = file.metadata().map_err(io)?.len();
            if off.checked_add(chunk).is_none_or(|e| e > flen) {
                return Err(ImageError::new(
                    &pm.path,
                    run.entry_at,
                    ErrorKind::Invalid(format!(
                        "pages at {:#x} lie beyond the end of {} ({flen} bytes)",
                        cur,
                        pages.display()
                    )),
                ));
            }
            file.seek(SeekFrom::Start(off)).map_err(io)?;
            let start = out.len();
            out.resize(start + chunk as usize, 0);
            file.read_exact(&mut out[start..]).map_err(io)?;
            cur += chunk;
        }
        Ok(Some(out))
    }

    fn strings_at(&self, pid: u32, env: bool) -> Result<Option<Vec<String>>> {
        let Some(mm) = missing_ok(self.mm(pid))? else {
            return Ok(None);
        };
        let (start, end) = if env {
            (mm.mm_env_start(), mm.mm_env_end())
        } else {
            (mm.mm_arg_start(), mm.mm_arg_end())
        };
        if end <= start {
            return Ok(Some(Vec::new()));
        }
        let len = end - start;
        if len > MAX_ARGS_BYTES {
            return Err(invalid(
                &self.file(&format!("mm-{pid}.img")),
                8,
                format!(
                    "{} area of {len} bytes exceeds {MAX_ARGS_BYTES}",
                    if env { "environment" } else { "argument" }
                ),
            ));
        }
        let pm = self.pagemap(pid)?;
        let Some(bytes) = self.read_memory(&pm, start, len)? else {
            return Ok(None);
        };
        let mut v: Vec<String> = bytes
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        while v.last().is_some_and(|s| s.is_empty()) {
            v.pop();
        }
        Ok(Some(v))
    }

    /// Process `pid`'s argv, read from its dumped memory. `None` when the
    /// pages are not in these images (zombie, lazy or parent pages).
    pub fn cmdline(&self, pid: u32) -> Result<Option<Vec<String>>> {
        self.strings_at(pid, false)
    }

    /// Process `pid`'s environment (`NAME=value` strings), like [`Self::cmdline`].
    pub fn environ(&self, pid: u32) -> Result<Option<Vec<String>>> {
        self.strings_at(pid, true)
    }
}
