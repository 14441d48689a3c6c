//! Searching and dumping a process's dumped memory (checkpointctl's
//! `memparse`): the pages are read run by run, in bounded chunks, so a
//! gigabyte of memory is never held at once.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

use super::memory::PE_PRESENT;
use super::{page_size, ImageDir, Result};
use crate::criu::image::{ErrorKind, ImageError};

/// What to look for.
pub enum Pattern {
    Text(Vec<u8>),
    Regex(regex::bytes::Regex),
}

impl Pattern {
    /// The first match in `hay` at or after `from`: (start, end).
    fn find(&self, hay: &[u8], from: usize) -> Option<(usize, usize)> {
        match self {
            Pattern::Text(t) if t.is_empty() => None,
            Pattern::Text(t) => hay[from..]
                .windows(t.len())
                .position(|w| w == t.as_slice())
                .map(|i| (from + i, from + i + t.len())),
            Pattern::Regex(r) => r
                .find_at(hay, from)
                .filter(|m| m.end() > m.start())
                .map(|m| (m.start(), m.end())),
        }
    }
}

/// One match, with up to `context` bytes on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryMatch {
    pub address: u64,
    #[serde(with = "lossy")]
    pub before: Vec<u8>,
    #[serde(rename = "match", with = "lossy")]
    pub matched: Vec<u8>,
    #[serde(with = "lossy")]
    pub after: Vec<u8>,
}

mod lossy {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
}

/// Bytes read at a time; a match (with its context) longer than the
/// overlap kept between chunks may be missed where two chunks meet.
const CHUNK: u64 = 1 << 20;
pub const MAX_MATCH_BYTES: usize = 64 << 10;

/// A contiguous run of dumped memory: its address and where its bytes are.
struct Run {
    vaddr: u64,
    len: u64,
    file_offset: u64,
}

impl ImageDir {
    fn present_runs(&self, pid: u32) -> Result<(std::path::PathBuf, Vec<Run>)> {
        let pm = self.pagemap(pid)?;
        let page = page_size();
        let runs = pm
            .runs
            .iter()
            .filter(|r| r.flags & PE_PRESENT != 0)
            .map(|r| Run {
                vaddr: r.vaddr,
                len: r.nr_pages.saturating_mul(page),
                file_offset: r.file_offset,
            })
            .collect();
        Ok((self.file(&format!("pages-{}.img", pm.pages_id)), runs))
    }

    /// Calls `f(address, bytes)` for the dumped memory of `pid`, in address
    /// runs of at most [`CHUNK`] bytes (plus `overlap` bytes repeated from
    /// the chunk before, within a run). `f` returns false to stop.
    fn each_chunk(
        &self,
        pid: u32,
        overlap: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<()> {
        let (pages, runs) = self.present_runs(pid)?;
        if runs.is_empty() {
            return Ok(());
        }
        let mut file =
            File::open(&pages).map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?;
        let flen = file
            .metadata()
            .map_err(|e| ImageError::new(&pages, 0, ErrorKind::Io(e)))?
            .len();
        let mut buf = Vec::new();
        for run in runs {
            if run.file_offset.saturating_add(run.len) > flen {
                return Err(ImageError::new(
                    &pages,
                    run.file_offset,
                    ErrorKind::Invalid(format!(
                        "pages at {:#x} lie beyond the end of the file ({flen} bytes)",
                        run.vaddr
                    )),
                ));
            }
            let mut done = 0u64;
            while done < run.len {
                let back = done.min(overlap);
                let start = done - back;
                let n = (run.len - done).min(CHUNK) + back;
                let off = run.file_offset + start;
                buf.resize(n as usize, 0);
                file.seek(SeekFrom::Start(off))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| ImageError::new(&pages, off, ErrorKind::Io(e)))?;
                if !f(run.vaddr + start, &buf) {
                    return Ok(());
                }
                done += n - back;
            }
        }
        Ok(())
    }

    /// The matches of `pattern` in the dumped memory of `pid` (at most
    /// `limit`), each with up to `context` bytes around it.
    pub fn search_memory(
        &self,
        pid: u32,
        pattern: &Pattern,
        context: usize,
        limit: usize,
    ) -> Result<Vec<MemoryMatch>> {
        let overlap = (MAX_MATCH_BYTES + 2 * context) as u64;
        let mut out: Vec<MemoryMatch> = Vec::new();
        // Matches in the overlap were found in the chunk before.
        let mut next_address = 0u64;
        self.each_chunk(pid, overlap, |base, hay| {
            let mut from = 0;
            while let Some((s, e)) = pattern.find(hay, from) {
                from = e.max(s + 1);
                let address = base + s as u64;
                if address < next_address {
                    continue;
                }
                next_address = address + 1;
                out.push(MemoryMatch {
                    address,
                    before: hay[s.saturating_sub(context)..s].to_vec(),
                    matched: hay[s..e].to_vec(),
                    after: hay[e..(e + context).min(hay.len())].to_vec(),
                });
                if out.len() >= limit {
                    return false;
                }
                if from >= hay.len() {
                    break;
                }
            }
            true
        })?;
        Ok(out)
    }

    /// Calls `f(address, bytes)` over the dumped memory of `pid`, chunk
    /// by chunk, in address order.
    pub fn dump_memory(&self, pid: u32, f: impl FnMut(u64, &[u8]) -> bool) -> Result<()> {
        self.each_chunk(pid, 0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::image::{encode, PAGEMAP_MAGIC};
    use crate::proto::memory::{Pagemap_entry, Pagemap_head};

    /// Images of one process whose single run of `bytes` sits at `base`.
    fn images(bytes: &[u8], base: u64) -> (tempfile::TempDir, ImageDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"").unwrap();
        std::fs::write(dir.path().join("pages-1.img"), bytes).unwrap();
        let mut head = Pagemap_head::new();
        head.set_pages_id(1);
        let mut run = Pagemap_entry::new();
        run.set_vaddr(base);
        let pages = bytes.len() as u64 / page_size();
        run.set_compat_nr_pages(pages as u32);
        run.set_nr_pages(pages);
        run.set_flags(PE_PRESENT);
        let mut img = encode(PAGEMAP_MAGIC, &[&head]);
        img.extend_from_slice(&encode(PAGEMAP_MAGIC, &[&run])[8..]);
        std::fs::write(dir.path().join("pagemap-7.img"), img).unwrap();
        let d = ImageDir::open(dir.path()).unwrap();
        (dir, d)
    }

    #[test]
    fn matches_across_chunk_ends_are_found_once_with_their_context() {
        let len = 3 * CHUNK as usize;
        let mut bytes = vec![b'.'; len];
        // One match straddling the first chunk's end, one inside the
        // second chunk's overlap, one at the very end.
        let at = [CHUNK as usize - 3, CHUNK as usize + 10, len - 6];
        for a in at {
            bytes[a..a + 6].copy_from_slice(b"needle");
        }
        let base = 0x40_0000;
        let (_t, d) = images(&bytes, base);
        let found = d
            .search_memory(7, &Pattern::Text(b"needle".to_vec()), 2, 100)
            .unwrap();
        let addrs: Vec<u64> = found.iter().map(|m| m.address).collect();
        assert_eq!(addrs, at.map(|a| base + a as u64).to_vec());
        assert!(found.iter().all(|m| m.matched == b"needle"));
        assert_eq!(found[0].before, b"..");
        assert_eq!(found[2].after, b"");
        let re = regex::bytes::Regex::new("ne+dle").unwrap();
        let by_re = d.search_memory(7, &Pattern::Regex(re), 2, 100).unwrap();
        assert_eq!(by_re, found);
        // The limit stops the search.
        assert_eq!(
            d.search_memory(7, &Pattern::Text(b"needle".to_vec()), 0, 2)
                .unwrap()
                .len(),
            2
        );
        // The dump sees every byte once, in order.
        let mut seen = Vec::new();
        d.dump_memory(7, |a, b| {
            assert_eq!(a, base + seen.len() as u64);
            seen.extend_from_slice(b);
            true
        })
        .unwrap();
        assert_eq!(seen, bytes);
    }
}
