//! A reader under the tar parser that bounds what the parser holds in
//! memory.
//!
//! The `tar` crate reads GNU long-name and long-link entries and PAX
//! extended headers into memory whole, whatever size their header declares,
//! and collects the extra header blocks of a GNU sparse entry without limit.
//! A small compressed archive can declare gigabytes of either. [`TarGuard`]
//! follows the tar block structure as the bytes pass (the same header
//! fields, checksum rule and PAX size override the crate uses) and fails the
//! stream with a [`Refused`] error before the crate reads such an entry:
//! extension entries may hold at most [`MAX_EXTENSION_BYTES`], and a sparse
//! entry at most [`MAX_SPARSE_BLOCKS`] extension blocks (GNU tar and the
//! tar crate write sparse entries for files with holes).
use std::io::{self, Read};

/// Largest GNU long-name/long-link or PAX extended header accepted: far
/// above a 4096-byte path, a link target and a few extended attributes.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// Most extension blocks of one GNU sparse entry (21 holes each): the
/// same 1 MiB as other extensions.
pub const MAX_SPARSE_BLOCKS: u64 = MAX_EXTENSION_BYTES / BLOCK as u64;

const BLOCK: usize = 512;

/// Why the guard stopped the stream (carried inside the `io::Error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("tar {kind} entry of {size} bytes exceeds the limit of {MAX_EXTENSION_BYTES} bytes")]
    ExtensionTooLarge { kind: &'static str, size: u64 },
    #[error(
        "tar entry {path:?} is a GNU sparse file of more than {MAX_SPARSE_BLOCKS} extension blocks"
    )]
    Sparse { path: String },
}

impl Refused {
    /// The guard's verdict inside an error from the tar parser, if any.
    pub fn from_io(e: &io::Error) -> Option<Refused> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Refused>())
            .cloned()
    }
}

enum State {
    /// At the start of a header block.
    Header,
    /// Inside an entry's data and padding; the first `keep` bytes are a
    /// PAX header's records, collected to learn its size override.
    Data {
        left: u64,
        keep: u64,
    },
    /// Extension blocks of a GNU sparse entry (`blocks` read so far), then
    /// `data` bytes of the entry.
    SparseExt {
        path: String,
        blocks: u64,
        data: u64,
    },
    /// After the end-of-archive block, or after a header the tar crate
    /// refuses itself: the bytes pass unchecked.
    Pass,
    Failed(Refused),
}

/// See the module documentation.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    /// Bytes of `block` filled and handed out.
    filled: usize,
    served: usize,
    /// Records of the PAX header being read.
    pax: Option<Vec<u8>>,
    /// The PAX header that applies to the next entry.
    pending_pax: Option<Vec<u8>>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            served: 0,
            pax: None,
            pending_pax: None,
        }
    }

    /// Decides what follows the header in `self.block`.
    fn inspect(&mut self) -> Result<State, Refused> {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&self.block);
        if self.block.iter().all(|b| *b == 0) {
            return Ok(State::Pass);
        }
        // The crate refuses a header with a bad checksum or size field and
        // reads nothing further.
        let sum = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .fold(8 * 32u32, |a, b| a + u32::from(*b));
        if h.cksum().ok() != Some(sum) {
            return Ok(State::Pass);
        }
        let Ok(mut size) = h.entry_size() else {
            return Ok(State::Pass);
        };
        let kind = h.entry_type();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let collected = recognized
            && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        let mut keep = 0;
        if collected {
            let name = if kind.is_gnu_longname() {
                "GNU long name"
            } else if kind.is_gnu_longlink() {
                "GNU long link"
            } else {
                "PAX extended header"
            };
            if size > MAX_EXTENSION_BYTES {
                return Err(Refused::ExtensionTooLarge { kind: name, size });
            }
            if kind.is_pax_local_extensions() {
                if self.pending_pax.is_some() {
                    // Two PAX headers for one entry: the crate refuses.
                    return Ok(State::Pass);
                }
                keep = size;
                self.pax = Some(Vec::with_capacity(size as usize));
            }
        } else {
            // An entry the crate hands out, with the PAX header before it.
            let pax = self.pending_pax.take();
            let extension = kind.is_gnu_longname()
                || kind.is_gnu_longlink()
                || kind.is_pax_local_extensions()
                || kind.is_pax_global_extensions();
            if !extension {
                if let Some(s) = pax.as_deref().and_then(pax_size) {
                    size = s;
                }
            }
            if kind.is_gnu_sparse() && h.as_gnu().is_some_and(|g| g.is_extended()) {
                return Ok(State::SparseExt {
                    path: String::from_utf8_lossy(&h.path_bytes()).into_owned(),
                    blocks: 0,
                    data: size,
                });
            }
        }
        match size.checked_add(BLOCK as u64 - 1) {
            Some(s) => Ok(State::Data {
                left: s & !(BLOCK as u64 - 1),
                keep,
            }),
            None => Ok(State::Pass),
        }
    }
}

/// The `size` record of PAX headers, read as the tar crate reads it.
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

fn refused(r: Refused) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, r)
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.served < self.filled {
                let n = (self.filled - self.served).min(out.len());
                out[..n].copy_from_slice(&self.block[self.served..self.served + n]);
                self.served += n;
                return Ok(n);
            }
            match &mut self.state {
                State::Failed(r) => return Err(refused(r.clone())),
                State::Pass => return self.inner.read(out),
                State::Data { left: 0, .. } => {
                    if let Some(records) = self.pax.take() {
                        self.pending_pax = Some(records);
                    }
                    self.state = State::Header;
                }
                State::Data { left, keep } => {
                    let want = (*left).min(out.len() as u64) as usize;
                    let n = self.inner.read(&mut out[..want])?;
                    if n == 0 {
                        return Ok(0);
                    }
                    let k = (*keep).min(n as u64) as usize;
                    if let Some(pax) = self.pax.as_mut() {
                        pax.extend_from_slice(&out[..k]);
                    }
                    *keep -= k as u64;
                    *left -= n as u64;
                    return Ok(n);
                }
                State::SparseExt { path, blocks, data } => {
                    let (path, blocks, data) = (std::mem::take(path), *blocks + 1, *data);
                    self.filled = read_up_to(&mut self.inner, &mut self.block)?;
                    self.served = 0;
                    if self.filled < BLOCK {
                        self.state = State::Pass;
                        continue;
                    }
                    if blocks > MAX_SPARSE_BLOCKS {
                        let r = Refused::Sparse { path };
                        self.filled = 0;
                        self.state = State::Failed(r.clone());
                        return Err(refused(r));
                    }
                    // struct sparse_header: 21 entries, then isextended.
                    self.state = if self.block[504] != 0 {
                        State::SparseExt { path, blocks, data }
                    } else {
                        State::Data {
                            left: data.saturating_add(BLOCK as u64 - 1) & !(BLOCK as u64 - 1),
                            keep: 0,
                        }
                    };
                }
                State::Header => {
                    self.filled = read_up_to(&mut self.inner, &mut self.block)?;
                    self.served = 0;
                    if self.filled == 0 {
                        return Ok(0);
                    }
                    self.state = if self.filled < BLOCK {
                        State::Pass
                    } else {
                        match self.inspect() {
                            Ok(s) => s,
                            Err(r) => {
                                self.filled = 0;
                                self.state = State::Failed(r.clone());
                                return Err(refused(r));
                            }
                        }
                    };
                }
            }
        }
    }
}

/// Reads until `buf` is full or the input ends.
pub(super) fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header of `kind` declaring `size` bytes, followed by `data`.
    fn entry(name: &str, kind: tar::EntryType, size: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(BLOCK), 0);
        v
    }

    fn names(bytes: &[u8]) -> io::Result<Vec<String>> {
        let mut a = tar::Archive::new(TarGuard::new(bytes));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            out.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            io::copy(&mut e, &mut io::sink())?;
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        for (name, len) in [("a", 10usize), (long.as_str(), 1000), ("c", 0)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(len as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &vec![1u8; len][..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        h.set_mode(0o644);
        let pax = [("path", "pax/named".as_bytes()), ("size", b"3")];
        b.append_pax_extensions(pax).unwrap();
        b.append_data(&mut h, "short", &b"xyz"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        assert_eq!(
            names(&bytes).unwrap(),
            ["a", long.as_str(), "c", "pax/named"]
        );
    }

    /// A PAX `size` record decides where the next header is; the guard
    /// follows it (a header size of 0 with 2000 bytes of data).
    #[test]
    fn pax_size_override_is_followed() {
        let mut v = entry("pax", tar::EntryType::XHeader, 13, b"13 size=2000\n");
        let data = vec![b'x'; 2000];
        let mut h = entry("big", tar::EntryType::Regular, 0, &[]);
        h.extend_from_slice(&data);
        h.resize(h.len().next_multiple_of(BLOCK), 0);
        v.extend_from_slice(&h);
        v.extend_from_slice(&entry("after", tar::EntryType::Regular, 1, b"z"));
        assert_eq!(names(&v).unwrap(), ["big", "after"]);
    }

    /// These made the tar crate allocate the declared size (4 GiB here)
    /// from a few bytes of input.
    #[test]
    fn huge_extension_entries_are_refused_before_reading() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
        ] {
            let mut v = entry("ext", kind, 4 << 30, b"x");
            v.extend_from_slice(&entry("f", tar::EntryType::Regular, 0, &[]));
            let err = names(&v).unwrap_err();
            let r = Refused::from_io(&err).unwrap_or_else(|| panic!("{kind:?}: {err}"));
            assert!(
                matches!(r, Refused::ExtensionTooLarge { size, .. } if size == 4 << 30),
                "{r}"
            );
        }
        let v = entry(
            "ext",
            tar::EntryType::GNULongName,
            MAX_EXTENSION_BYTES,
            b"n",
        );
        assert!(Refused::from_io(&names(&v).unwrap_err()).is_none());
    }

    #[test]
    fn sparse_entries_pass_and_endless_extension_blocks_are_refused() {
        // A GNU sparse header flagged "extended", then `n` extension blocks
        // (each flagged extended but the last), then the end of the archive.
        let sparse = |n: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_path("holes").unwrap();
            h.set_entry_type(tar::EntryType::GNUSparse);
            h.set_size(0);
            h.as_mut_bytes()[482] = 1;
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            for i in 0..n {
                let mut b = [0u8; BLOCK];
                b[504] = u8::from(i + 1 < n);
                v.extend_from_slice(&b);
            }
            v.extend_from_slice(&[0u8; 2 * BLOCK]);
            v
        };
        let few = sparse(3);
        let mut out = Vec::new();
        TarGuard::new(&few[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, few, "the guard passes a sparse entry unchanged");
        let endless = sparse(MAX_SPARSE_BLOCKS + 2);
        let err = TarGuard::new(&endless[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            Refused::from_io(&err),
            Some(Refused::Sparse {
                path: "holes".into()
            })
        );
    }
}
