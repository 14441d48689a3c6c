//! Framed messages on the migration channel.
//!
//! Every frame starts with a fixed 16-byte header, all integers big-endian:
//!
//! ```text
//!  0      4        6       8          12         16
//!  +------+--------+-------+----------+----------+----------------
//!  | FMIG | version| type  |  length  |  CRC32   | payload (length bytes)
//!  +------+--------+-------+----------+----------+----------------
//! ```
//!
//! `CRC32` is the IEEE CRC-32 of the payload. A reader checks, in this
//! order: the magic, the version, the type, the length against
//! [`MAX_PAYLOAD`], and after reading the payload its checksum. Each
//! failure is its own [`WireError`] variant, and an end of stream inside a
//! frame ([`WireError::Truncated`]) is told apart from one between frames
//! ([`WireError::Closed`]).
//!
//! Frame types: [`FrameType::Control`] carries one JSON-encoded control
//! message; [`FrameType::Data`] and [`FrameType::DataZstd`] carry a chunk
//! of a byte stream (raw or zstd-compressed); [`FrameType::End`] closes a
//! byte stream.
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FMIG";
/// The wire format version this build speaks.
pub const VERSION: u16 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// Largest payload a frame may carry (after decompression, too).
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// Bytes of file content per data frame.
pub const CHUNK: usize = 256 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameType {
    /// One JSON control message.
    Control = 1,
    /// A chunk of a byte stream.
    Data = 2,
    /// A zstd-compressed chunk of a byte stream.
    DataZstd = 3,
    /// End of a byte stream; empty payload.
    End = 4,
}

impl FrameType {
    fn from_u16(v: u16) -> Option<FrameType> {
        Some(match v {
            1 => FrameType::Control,
            2 => FrameType::Data,
            3 => FrameType::DataZstd,
            4 => FrameType::End,
            _ => return None,
        })
    }
}

/// Everything that can be wrong with a frame or the stream carrying it.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {found:02x?} (expected {MAGIC:02x?}): the peer does not speak the ferry migration protocol{hint}")]
    BadMagic { found: [u8; 4], hint: &'static str },
    #[error("unsupported protocol version {found} (this side speaks version {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("unknown frame type {0}")]
    UnknownType(u16),
    #[error("frame of {len} bytes exceeds the limit of {MAX_PAYLOAD} bytes")]
    TooLarge { len: u64 },
    #[error("frame checksum mismatch: header says {expected:08x}, payload has {computed:08x}")]
    BadChecksum { expected: u32, computed: u32 },
    #[error("connection ended inside a frame ({got} of {expected} bytes of the {part})")]
    Truncated {
        part: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("connection closed by the peer")]
    Closed,
    #[error("expected a {expected} frame, got a {got:?} frame")]
    UnexpectedFrame {
        expected: &'static str,
        got: FrameType,
    },
    #[error("malformed control message: {0}")]
    BadMessage(#[source] serde_json::Error),
    #[error("corrupt compressed data frame: {0}")]
    BadCompression(#[source] io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One frame as read from the wire (decompressed if it was compressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub payload: Vec<u8>,
}

/// Encodes a header for `payload`.
pub fn encode_header(kind: FrameType, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_be_bytes());
    h[6..8].copy_from_slice(&(kind as u16).to_be_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    h[12..16].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
    h
}

/// Writes one frame as a single write (header and payload together), so
/// small frames never wait on Nagle's algorithm.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    kind: FrameType,
    payload: &[u8],
) -> Result<(), WireError> {
    if payload.len() as u64 > MAX_PAYLOAD as u64 {
        return Err(WireError::TooLarge {
            len: payload.len() as u64,
        });
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&encode_header(kind, payload));
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads until `buf` is full; returns how many bytes arrived before EOF.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A TLS record header (handshake or alert, TLS 1.x) where our magic
/// should be: the peer speaks TLS and this side does not.
fn looks_like_tls(b: &[u8; 4]) -> bool {
    matches!(b[0], 0x15 | 0x16) && b[1] == 0x03
}

/// Reads and checks one frame.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Frame, WireError> {
    let mut h = [0u8; HEADER_LEN];
    let got = read_full(r, &mut h)?;
    if got == 0 {
        return Err(WireError::Closed);
    }
    // Check the magic as soon as it is there, so a peer speaking another
    // protocol gets that error rather than a short read.
    if got >= 4 && h[0..4] != MAGIC {
        let found = [h[0], h[1], h[2], h[3]];
        let hint = if looks_like_tls(&found) {
            " (it is speaking TLS: was this side started in insecure mode?)"
        } else {
            ""
        };
        return Err(WireError::BadMagic { found, hint });
    }
    if got < HEADER_LEN {
        return Err(WireError::Truncated {
            part: "header",
            expected: HEADER_LEN,
            got,
        });
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    let raw_type = u16::from_be_bytes([h[6], h[7]]);
    let kind = FrameType::from_u16(raw_type).ok_or(WireError::UnknownType(raw_type))?;
    let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge { len: len as u64 });
    }
    let expected = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let mut payload = vec![0u8; len as usize];
    let got = read_full(r, &mut payload)?;
    if got < payload.len() {
        return Err(WireError::Truncated {
            part: "payload",
            expected: payload.len(),
            got,
        });
    }
    let computed = crc32fast::hash(&payload);
    if computed != expected {
        return Err(WireError::BadChecksum { expected, computed });
    }
    if kind == FrameType::DataZstd {
        payload = decompress_bounded(&payload)?;
    }
    Ok(Frame { kind, payload })
}

/// Decompresses one data frame, refusing more than [`MAX_PAYLOAD`] bytes
/// of output (a small frame must not expand into gigabytes).
fn decompress_bounded(input: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut dec = zstd::stream::read::Decoder::new(input).map_err(WireError::BadCompression)?;
    // A frame header may declare a window of up to 128 MiB, which the
    // decoder allocates up front; a payload never needs more than itself.
    dec.window_log_max(MAX_PAYLOAD.ilog2())
        .map_err(WireError::BadCompression)?;
    let mut out = Vec::new();
    let n = dec
        .take(MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut out)
        .map_err(WireError::BadCompression)?;
    if n as u64 > MAX_PAYLOAD as u64 {
        return Err(WireError::TooLarge { len: n as u64 });
    }
    Ok(out)
}

/// Encodes a control message as a frame payload.
pub fn encode_control<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own message types cannot fail (no maps with
    // non-string keys, no failing Serialize impls).
    serde_json::to_vec(msg).expect("control messages serialize")
}

/// Decodes a control frame's payload.
pub fn decode_control<T: DeserializeOwned>(frame: &Frame) -> Result<T, WireError> {
    if frame.kind != FrameType::Control {
        return Err(WireError::UnexpectedFrame {
            expected: "control",
            got: frame.kind,
        });
    }
    serde_json::from_slice(&frame.payload).map_err(WireError::BadMessage)
}

/// Whether and how data frames are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression {s:?} (none or zstd)")),
        }
    }
}

/// Writes one chunk of a byte stream, compressing it when asked and when
/// that makes it smaller. Returns the bytes put on the wire.
pub fn write_data<W: Write + ?Sized>(
    w: &mut W,
    chunk: &[u8],
    compression: Compression,
) -> Result<usize, WireError> {
    if compression == Compression::Zstd {
        let packed = zstd::bulk::compress(chunk, 1)?;
        if packed.len() < chunk.len() {
            write_frame(w, FrameType::DataZstd, &packed)?;
            return Ok(HEADER_LEN + packed.len());
        }
    }
    write_frame(w, FrameType::Data, chunk)?;
    Ok(HEADER_LEN + chunk.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frame_bytes(kind: FrameType, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, kind, payload).unwrap();
        v
    }

    #[test]
    fn round_trip() {
        let mut v = frame_bytes(FrameType::Control, br#"{"a":1}"#);
        v.extend(frame_bytes(FrameType::End, b""));
        let mut r = Cursor::new(v);
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.kind, FrameType::Control);
        assert_eq!(f.payload, br#"{"a":1}"#);
        assert_eq!(read_frame(&mut r).unwrap().kind, FrameType::End);
        assert!(matches!(read_frame(&mut r), Err(WireError::Closed)));
    }

    #[test]
    fn compressed_data_round_trip() {
        let chunk = vec![7u8; CHUNK];
        let mut v = Vec::new();
        let sent = write_data(&mut v, &chunk, Compression::Zstd).unwrap();
        assert!(sent < 4096, "compressible chunk sent as {sent} bytes");
        let f = read_frame(&mut Cursor::new(v)).unwrap();
        assert_eq!(f.kind, FrameType::DataZstd);
        assert_eq!(f.payload, chunk);
    }

    #[test]
    fn bad_magic() {
        let mut v = frame_bytes(FrameType::Control, b"{}");
        v[0] = b'X';
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::BadMagic { .. }), "{e:?}");
        assert!(e.to_string().contains("does not speak"), "{e}");
    }

    #[test]
    fn tls_where_magic_should_be_is_named() {
        let v = vec![
            0x16, 0x03, 0x01, 0x00, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(e.to_string().contains("speaking TLS"), "{e}");
    }

    #[test]
    fn unknown_version() {
        let mut v = frame_bytes(FrameType::Control, b"{}");
        v[4..6].copy_from_slice(&2u16.to_be_bytes());
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(
            matches!(e, WireError::UnsupportedVersion { found: 2 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn unknown_type() {
        let mut v = frame_bytes(FrameType::Control, b"{}");
        v[6..8].copy_from_slice(&99u16.to_be_bytes());
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::UnknownType(99)), "{e:?}");
    }

    #[test]
    fn bad_checksum() {
        let mut v = frame_bytes(FrameType::Data, b"hello world");
        let last = v.len() - 1;
        v[last] ^= 0x01;
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::BadChecksum { .. }), "{e:?}");
    }

    #[test]
    fn short_read_in_header_and_payload() {
        let v = frame_bytes(FrameType::Data, b"hello world");
        let e = read_frame(&mut Cursor::new(v[..10].to_vec())).unwrap_err();
        assert!(
            matches!(
                e,
                WireError::Truncated {
                    part: "header",
                    got: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = read_frame(&mut Cursor::new(v[..HEADER_LEN + 3].to_vec())).unwrap_err();
        assert!(
            matches!(
                e,
                WireError::Truncated {
                    part: "payload",
                    expected: 11,
                    got: 3
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let mut v = frame_bytes(FrameType::Data, b"x");
        v[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { .. }), "{e:?}");
        let big = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), FrameType::Data, &big),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn compression_bomb_is_refused() {
        let huge = vec![0u8; MAX_PAYLOAD as usize + 4096];
        let packed = zstd::bulk::compress(&huge, 1).unwrap();
        let v = frame_bytes(FrameType::DataZstd, &packed);
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { .. }), "{e:?}");
    }

    #[test]
    fn control_decoding_checks_type_and_json() {
        let f = Frame {
            kind: FrameType::Data,
            payload: b"{}".to_vec(),
        };
        assert!(matches!(
            decode_control::<serde_json::Value>(&f),
            Err(WireError::UnexpectedFrame { .. })
        ));
        let f = Frame {
            kind: FrameType::Control,
            payload: b"{not json".to_vec(),
        };
        assert!(matches!(
            decode_control::<serde_json::Value>(&f),
            Err(WireError::BadMessage(_))
        ));
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use crate::files::TreeMsg;
    use crate::proto::Msg;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn frame(kind: FrameType, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, kind, payload).unwrap();
        v
    }

    /// Reads frames until an error; every frame read consumed at least a
    /// header, so this ends.
    fn drain(bytes: &[u8]) -> (usize, WireError) {
        let mut r = Cursor::new(bytes);
        let mut n = 0;
        loop {
            match read_frame(&mut r) {
                Ok(f) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD as usize);
                    let _ = decode_control::<Msg>(&f);
                    let _ = decode_control::<TreeMsg>(&f);
                    n += 1;
                    assert!(n * HEADER_LEN <= bytes.len());
                }
                Err(e) => return (n, e),
            }
        }
    }

    fn kind() -> impl Strategy<Value = FrameType> {
        prop_oneof![
            Just(FrameType::Control),
            Just(FrameType::Data),
            Just(FrameType::DataZstd),
            Just(FrameType::End),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            drain(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            drain(&framed);
        }

        /// Valid frames, then damage: an error, never a panic, and a
        /// declared length is checked before anything is allocated for it.
        #[test]
        fn damaged_frames_are_errors(
            frames in proptest::collection::vec(
                (kind(), proptest::collection::vec(any::<u8>(), 0..64)), 1..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = Vec::new();
            for (k, p) in &frames {
                let p = if *k == FrameType::DataZstd {
                    zstd::bulk::compress(p, 1).unwrap()
                } else {
                    p.clone()
                };
                bytes.extend(frame(*k, &p));
            }
            let (n, e) = drain(&bytes);
            prop_assert_eq!(n, frames.len());
            prop_assert!(matches!(e, WireError::Closed), "{}", e);

            let mut cut_bytes = bytes.clone();
            cut_bytes.truncate(cut.index(bytes.len()));
            let (n, e) = drain(&cut_bytes);
            prop_assert!(n < frames.len());
            prop_assert!(matches!(e, WireError::Closed | WireError::Truncated { .. }), "{}", e);

            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            drain(&flipped);
        }

        #[test]
        fn huge_declared_length_with_little_data(
            len in prop_oneof![Just(u32::MAX), Just(MAX_PAYLOAD), Just(MAX_PAYLOAD + 1), any::<u32>()],
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assume!(len as usize > data.len());
            let mut v = frame(FrameType::Data, b"");
            v[8..12].copy_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&data);
            let e = read_frame(&mut Cursor::new(v)).unwrap_err();
            prop_assert!(matches!(e, WireError::TooLarge { .. } | WireError::Truncated { .. }), "{}", e);
        }

        /// Control messages from the peer: any JSON shape, any nesting.
        #[test]
        fn control_payloads_decode_or_fail(
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256),
                "\\PC{0,200}".prop_map(String::into_bytes),
                (1usize..5000, prop_oneof![Just("["), Just("{\"a\":"), Just("{\"msg\":")])
                    .prop_map(|(n, open)| open.repeat(n).into_bytes()),
            ],
        ) {
            let f = Frame { kind: FrameType::Control, payload };
            let _ = decode_control::<Msg>(&f);
            let _ = decode_control::<TreeMsg>(&f);
            let _ = decode_control::<serde_json::Value>(&f);
        }
    }

    /// Deep nesting is refused by serde_json's recursion limit, not by
    /// overflowing the stack.
    #[test]
    fn deeply_nested_control_message_is_an_error() {
        let payload = format!(
            "{{\"msg\":\"hello\",\"software\":{}",
            "[".repeat(MAX_PAYLOAD as usize / 2)
        );
        let f = Frame {
            kind: FrameType::Control,
            payload: payload.into_bytes(),
        };
        assert!(matches!(
            decode_control::<Msg>(&f),
            Err(WireError::BadMessage(_))
        ));
    }

    /// A frame declaring a 128 MiB window made the decoder allocate it for
    /// a payload of a few bytes.
    #[test]
    fn large_zstd_window_is_refused() {
        let mut c = zstd::stream::raw::Encoder::new(1).unwrap();
        use zstd::stream::raw::CParameter;
        c.set_parameter(CParameter::WindowLog(27)).unwrap();
        let mut enc = zstd::stream::write::Encoder::with_encoder(Vec::new(), c);
        std::io::Write::write_all(&mut enc, b"small").unwrap();
        let packed = enc.finish().unwrap();
        let v = frame(FrameType::DataZstd, &packed);
        let e = read_frame(&mut Cursor::new(v)).unwrap_err();
        assert!(matches!(e, WireError::BadCompression(_)), "{e:?}");
    }
}
