//! Streaming, bounded reading of one image file's entries.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::cost::{estimate, fits_in_memory};
use super::{
    head_magic_for, image_name, ErrorKind, ImageError, Result, MAX_DECODED_BYTES, MAX_ENTRY_BYTES,
    MAX_FILE_DECODED_BYTES, MAX_IMAGE_BYTES,
};

/// Sequential reader of one image file's entries.
pub struct EntryReader<R> {
    path: PathBuf,
    input: R,
    offset: u64,
    len: u64,
    /// Estimated memory of the entries decoded so far.
    decoded: u64,
}

impl EntryReader<BufReader<File>> {
    /// Opens `path` and checks its magics.
    pub fn open(path: &Path, magic: u32) -> Result<Self> {
        EntryReader::open_within(path, magic, u64::MAX)
    }

    /// Like [`EntryReader::open`], refusing a file over `max_bytes` before
    /// reading any of it.
    pub fn open_within(path: &Path, magic: u32, max_bytes: u64) -> Result<Self> {
        let io = |e| ImageError::new(path, 0, ErrorKind::Io(e));
        let f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len > max_bytes {
            let kind = ErrorKind::FileTooLarge { max: max_bytes };
            return Err(ImageError::new(path, max_bytes, kind));
        }
        EntryReader::new(path, BufReader::new(f), len, magic)
    }
}

impl<R: Read> EntryReader<R> {
    /// Reads the magics of an image of `len` bytes from `input`.
    pub fn new(path: &Path, input: R, len: u64, magic: u32) -> Result<Self> {
        let mut r = EntryReader {
            path: path.to_path_buf(),
            input,
            offset: 0,
            len,
            decoded: 0,
        };
        if let Some(expected) = head_magic_for(magic) {
            let found = r.read_u32("head magic")?;
            if found != expected {
                return Err(r.err_at(0, ErrorKind::BadHeadMagic { found, expected }));
            }
        }
        let at = r.offset;
        let found = r.read_u32("magic")?;
        if found != magic {
            return Err(r.err_at(
                at,
                ErrorKind::BadMagic {
                    found,
                    expected: magic,
                    image: image_name(magic),
                },
            ));
        }
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err_at(&self, offset: u64, kind: ErrorKind) -> ImageError {
        ImageError::new(&self.path, offset, kind)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let at = self.offset;
        let available = self.len.saturating_sub(at);
        if (buf.len() as u64) > available {
            return Err(self.err_at(
                at,
                ErrorKind::Truncated {
                    what,
                    needed: buf.len() as u64,
                    available,
                },
            ));
        }
        self.input.read_exact(buf).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ErrorKind::Truncated {
                    what,
                    needed: buf.len() as u64,
                    available,
                }
            } else {
                ErrorKind::Io(e)
            };
            self.err_at(at, kind)
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_u32(&mut self, what: &'static str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The next raw entry and the offset of its length word, or `None` at
    /// the end of the file.
    pub fn next_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let at = self.offset;
        let len = self.read_u32("entry length")?;
        if len > MAX_ENTRY_BYTES {
            return Err(self.err_at(
                at,
                ErrorKind::EntryTooLarge {
                    len,
                    max: MAX_ENTRY_BYTES,
                },
            ));
        }
        let available = self.len - self.offset;
        if u64::from(len) > available {
            return Err(self.err_at(
                at,
                ErrorKind::Truncated {
                    what: "entry",
                    needed: len.into(),
                    available,
                },
            ));
        }
        let mut buf = vec![0u8; len as usize];
        // Offsets in errors point at the entry's length word.
        self.read_exact(&mut buf, "entry")
            .map_err(|e| ImageError { offset: at, ..e })?;
        Ok(Some((at, buf)))
    }

    /// Offset of the next entry's length word.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decodes the next entry as `M`. The entries one reader decodes may
    /// take [`MAX_FILE_DECODED_BYTES`] together (the callers keep them).
    pub fn next<M: protobuf::MessageFull>(&mut self, what: &'static str) -> Result<Option<M>> {
        let Some((at, bytes)) = self.next_raw()? else {
            return Ok(None);
        };
        let cost = estimate::<M>(&bytes);
        self.decoded = self.decoded.saturating_add(cost);
        // One entry too large is told as such (by decode).
        if cost <= MAX_DECODED_BYTES && self.decoded > MAX_FILE_DECODED_BYTES {
            return Err(self.err_at(
                at,
                ErrorKind::FileDecodedTooLarge {
                    what,
                    max: MAX_FILE_DECODED_BYTES,
                },
            ));
        }
        decode(&self.path, at, &bytes, what).map(Some)
    }

    /// Decodes every remaining entry as `M`.
    pub fn collect<M: protobuf::MessageFull>(&mut self, what: &'static str) -> Result<Vec<M>> {
        let mut out = Vec::new();
        while let Some(m) = self.next(what)? {
            out.push(m);
        }
        Ok(out)
    }
}

fn decode<M: protobuf::MessageFull>(
    path: &Path,
    at: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<M> {
    if !fits_in_memory::<M>(bytes) {
        return Err(ImageError::new(
            path,
            at,
            ErrorKind::DecodedTooLarge {
                what,
                max: MAX_DECODED_BYTES,
            },
        ));
    }
    M::parse_from_bytes(bytes)
        .map_err(|source| ImageError::new(path, at, ErrorKind::Decode { what, source }))
}

/// Every entry of the image at `path`.
pub fn read_all<M: protobuf::MessageFull>(
    path: &Path,
    magic: u32,
    what: &'static str,
) -> Result<Vec<M>> {
    EntryReader::open(path, magic)?.collect(what)
}

/// The single entry of the image at `path`.
pub fn read_one<M: protobuf::MessageFull>(
    path: &Path,
    magic: u32,
    what: &'static str,
) -> Result<M> {
    EntryReader::open(path, magic)?.single(what)
}

/// The single entry of one of the small files CRIU leaves for its caller
/// (inventory, stats): a file over [`MAX_IMAGE_BYTES`] is refused unread.
pub fn read_single<M: protobuf::MessageFull>(path: &Path, magic: u32) -> Result<M> {
    EntryReader::open_within(path, magic, MAX_IMAGE_BYTES)?.single("entry")
}

impl<R: Read> EntryReader<R> {
    /// Decodes the only entry left, failing when there is none or more.
    fn single<M: protobuf::MessageFull>(mut self, what: &'static str) -> Result<M> {
        let count_error = |r: &Self, at, found| {
            let kind = ErrorKind::EntryCount {
                what,
                expected: "one",
                found,
            };
            r.err_at(at, kind)
        };
        let at = self.offset;
        let Some(first) = self.next::<M>(what)? else {
            return Err(count_error(&self, at, 0));
        };
        let extra_at = self.offset;
        if self.next_raw()?.is_some() {
            return Err(count_error(&self, extra_at, 2));
        }
        Ok(first)
    }
}

/// Encodes entries in CRIU's layout (for tests and tools writing images).
pub fn encode<M: protobuf::Message>(magic: u32, entries: &[&M]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(head) = head_magic_for(magic) {
        out.extend_from_slice(&head.to_le_bytes());
    }
    out.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        let body = e.write_to_bytes().expect("encodable message");
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    out
}
