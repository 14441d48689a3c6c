//! The byte stream under an archive's tar: compression found by magic,
//! stream errors told as archive errors, and what may follow the tar.
use std::io::{self, Cursor, Read};

use super::tar_guard::{read_up_to, Refused, MAX_EXTENSION_BYTES, MAX_SPARSE_BLOCKS};
use super::{Compression, Error, Result};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// End-of-archive zero blocks and record padding allowed after the last entry.
const MAX_TRAILER: u64 = 1 << 20;

pub(super) fn stream_err(e: io::Error) -> Error {
    if let Some(r) = Refused::from_io(&e) {
        return match r {
            Refused::ExtensionTooLarge { .. } => Error::Limit {
                what: "bytes in a tar long-name or PAX header",
                limit: MAX_EXTENSION_BYTES,
            },
            Refused::Sparse { path } => Error::UnsafeEntry {
                path,
                reason: format!(
                    "a GNU sparse file with more than {} extension blocks of holes",
                    MAX_SPARSE_BLOCKS
                ),
            },
        };
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated(e.to_string())
    } else {
        Error::Corrupt(e.to_string())
    }
}

fn is_tar_header(b: &[u8]) -> bool {
    b.len() >= 512 && &b[257..262] == b"ustar"
}

/// Peeks at one 512-byte block and gives it back in front of the stream.
fn peek_block<'a>(mut r: Box<dyn Read + 'a>) -> Result<(Vec<u8>, Box<dyn Read + 'a>)> {
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut r, &mut head).map_err(stream_err)?;
    head.truncate(n);
    let back: Box<dyn Read + 'a> = Box::new(Cursor::new(head.clone()).chain(r));
    Ok((head, back))
}

/// Detects the compression by magic and returns the tar stream.
pub(super) fn open_stream<'a>(input: impl Read + 'a) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let (head, stream) = peek_block(Box::new(input))?;
    let (compression, tar): (Compression, Box<dyn Read + 'a>) = if head.starts_with(&ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::new(stream).map_err(stream_err)?;
        (Compression::Zstd, Box::new(d))
    } else if head.starts_with(&GZIP_MAGIC) {
        (
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(stream)),
        )
    } else if is_tar_header(&head) {
        return Ok((Compression::None, stream));
    } else {
        return Err(Error::NotAnArchive);
    };
    let (head, tar) = peek_block(tar)?;
    if !is_tar_header(&head) {
        return Err(if head.len() < 512 && !head.is_empty() {
            Error::Truncated(format!(
                "the {compression} stream ends inside the first tar header"
            ))
        } else {
            Error::NotTar(compression)
        });
    }
    Ok((compression, tar))
}

/// Reads the rest of the stream after the tar's last entry, so the
/// decompressor checks the frame's end and checksum: a compressed archive
/// cut short after its last entry is still truncated. Only end-of-archive
/// padding may follow.
pub(super) fn check_trailer(rest: impl Read) -> Result<()> {
    let mut rest = rest.take(MAX_TRAILER + 1);
    let mut trailer = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if buf[..n].iter().any(|b| *b != 0) {
                    return Err(Error::Corrupt(
                        "data after the end of the tar archive".into(),
                    ));
                }
                trailer += n as u64;
                if trailer > MAX_TRAILER {
                    return Err(Error::Corrupt(
                        "too much padding after the end of the tar archive".into(),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e)),
        }
    }
}
