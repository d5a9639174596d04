//! The object format: every object pgward writes describes and checks itself.
//!
//! ```text
//! header   8 bytes   "PGWARD", format version (1), codec id (0 none, 1 zstd, 2 lz4)
//! payload  n bytes   the content, compressed by the codec
//! trailer 48 bytes   uncompressed length (u64, little endian), BLAKE3 of the uncompressed
//!                    content (32 bytes), "PGWARDTR"
//! ```
//!
//! The trailer sits at a fixed distance from the end, so a range read of the last
//! [`TRAILER_LEN`] bytes tells an object's checksum without downloading it. Encoding and
//! decoding are blocking, streaming and bounded (a few buffers, plus the codec's window);
//! storage and threads are the caller's business.

use std::fmt;
use std::io::{self, Read, Write};

use super::codec::{Codec, Compressor, Decompressor};

const MAGIC: &[u8; 6] = b"PGWARD";
const TRAILER_MAGIC: &[u8; 8] = b"PGWARDTR";
/// Format version written, and the newest one read.
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes of the trailer: a range read of this many bytes from the end gets it.
pub const TRAILER_LEN: usize = 48;
/// Read and write granularity of the blocking loops.
const BUF_LEN: usize = 256 * 1024;

/// BLAKE3 hash of an object's uncompressed content. Displays as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The checksum of `content`, as an object holding it would carry.
    pub fn of(content: &[u8]) -> Checksum {
        Checksum(*blake3::hash(content).as_bytes())
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

/// What an encode or decode produced or found: uncompressed length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    pub len: u64,
    pub checksum: Checksum,
}

/// Why a decode failed.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The object is not what it claims to be.
    Corrupt(String),
    /// Reading the object failed (storage, or cancellation of the feeding side).
    Read(io::Error),
    /// Writing the decoded content failed.
    Write(io::Error),
}

pub(crate) fn header(codec: Codec) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6] = VERSION;
    h[7] = codec.id();
    h
}

pub(crate) fn trailer(digest: Digest) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(&digest.len.to_le_bytes());
    t[8..40].copy_from_slice(&digest.checksum.0);
    t[40..].copy_from_slice(TRAILER_MAGIC);
    t
}

/// Reads a trailer (the last [`TRAILER_LEN`] bytes of an object).
pub(crate) fn parse_trailer(bytes: &[u8]) -> Result<Digest, String> {
    if bytes.len() != TRAILER_LEN {
        return Err(format!(
            "object too short for a trailer ({} bytes)",
            bytes.len()
        ));
    }
    if &bytes[40..] != TRAILER_MAGIC {
        return Err("no pgward trailer at the end (truncated or not written by pgward)".into());
    }
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let checksum = Checksum(bytes[8..40].try_into().expect("32 bytes"));
    Ok(Digest { len, checksum })
}

pub(crate) fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<Codec, String> {
    if &bytes[..6] != MAGIC {
        return Err("no pgward header (not written by pgward)".into());
    }
    if bytes[6] > VERSION {
        return Err(format!(
            "object format version {} is newer than this pgward reads ({VERSION})",
            bytes[6]
        ));
    }
    Codec::from_id(bytes[7]).ok_or_else(|| format!("unknown codec id {}", bytes[7]))
}

/// Hashes and counts the content of `src` without encoding it.
#[cfg(test)]
pub(crate) fn digest(src: impl Read) -> io::Result<Digest> {
    hash_chunks(src, |_| Ok(()))
}

/// Encodes all of `src` into `sink`: header, compressed payload, trailer. Errors reading
/// `src` and writing `sink` are told apart by the caller's wrappers.
pub(crate) fn encode<W: Write>(
    src: impl Read,
    codec: Codec,
    level: i32,
    sink: W,
) -> io::Result<(Digest, W)> {
    encode_with(src, &mut Compressor::new(codec, level)?, sink)
}

/// [`encode`] with `compressor`'s codec and context, for one object after another.
pub(crate) fn encode_with<W: Write>(
    src: impl Read,
    compressor: &mut Compressor,
    mut sink: W,
) -> io::Result<(Digest, W)> {
    sink.write_all(&header(compressor.codec()))?;
    let mut enc = compressor.encoder(sink);
    let digest = hash_chunks(src, |chunk| enc.write_all(chunk))?;
    let mut sink = enc.finish()?;
    sink.write_all(&trailer(digest))?;
    sink.flush()?;
    Ok((digest, sink))
}

/// Reads `src` to the end in chunks, hashing and counting them and handing each to `each`.
fn hash_chunks(
    mut src: impl Read,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF_LEN];
    let mut len = 0u64;
    loop {
        let n = read_some(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        each(&buf[..n])?;
    }
    Ok(Digest {
        len,
        checksum: Checksum(*hasher.finalize().as_bytes()),
    })
}

/// Encodes an in-memory buffer into a new one.
pub(crate) fn encode_bytes(
    content: &[u8],
    codec: Codec,
    level: i32,
) -> io::Result<(Digest, Vec<u8>)> {
    encode(
        content,
        codec,
        level,
        Vec::with_capacity(content.len() / 2 + 64),
    )
}

/// Decodes `src` into `sink`, verifying header, decompression, length and checksum.
pub(crate) fn decode(src: impl Read, sink: impl Write) -> Result<Digest, DecodeError> {
    decode_with(src, &mut Decompressor::default(), sink)
}

/// [`decode`] with `decompressor`'s context, for one object after another.
pub(crate) fn decode_with(
    src: impl Read,
    decompressor: &mut Decompressor,
    mut sink: impl Write,
) -> Result<Digest, DecodeError> {
    let mut src = Tracked::new(src);
    let mut head = [0u8; HEADER_LEN];
    if let Err(e) = src.read_exact(&mut head) {
        return Err(match src.failed.take() {
            Some(e) => DecodeError::Read(e),
            None if e.kind() == io::ErrorKind::UnexpectedEof => {
                DecodeError::Corrupt("object too short for a header".into())
            }
            None => DecodeError::Read(e),
        });
    }
    let codec = parse_header(&head).map_err(DecodeError::Corrupt)?;
    let mut body = HoldBack::new(&mut src);
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let failure = {
        let mut dec = decompressor
            .decoder(codec, &mut body)
            .map_err(DecodeError::Read)?;
        let mut buf = vec![0u8; BUF_LEN];
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(e),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
            sink.write_all(&buf[..n]).map_err(DecodeError::Write)?;
        }
    };
    if let Some(e) = failure {
        return Err(read_failure(&mut body, codec, e));
    }
    // A codec may stop at the end of its frame; anything between it and the trailer is not
    // part of a well-formed object.
    let mut extra = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => extra += n as u64,
            Err(e) => return Err(read_failure(&mut body, codec, e)),
        }
    }
    if extra > 0 {
        return Err(DecodeError::Corrupt(format!(
            "{extra} unexpected bytes after the compressed data"
        )));
    }
    let expected = parse_trailer(body.held()).map_err(DecodeError::Corrupt)?;
    sink.flush().map_err(DecodeError::Write)?;
    let actual = Digest {
        len,
        checksum: Checksum(*hasher.finalize().as_bytes()),
    };
    if actual.len != expected.len {
        return Err(DecodeError::Corrupt(format!(
            "length mismatch: trailer says {} bytes, content has {}",
            expected.len, actual.len
        )));
    }
    if actual.checksum != expected.checksum {
        return Err(DecodeError::Corrupt(format!(
            "checksum mismatch: expected {}, actual {}",
            expected.checksum, actual.checksum
        )));
    }
    Ok(actual)
}

/// A failed read through the decompressor is the source's fault when the source recorded an
/// error, else the data's.
fn read_failure<R: Read>(
    body: &mut HoldBack<&mut Tracked<R>>,
    codec: Codec,
    e: io::Error,
) -> DecodeError {
    match body.inner.failed.take() {
        Some(source) => DecodeError::Read(source),
        None => DecodeError::Corrupt(format!("{} decompression failed: {e}", codec.name())),
    }
}

/// Remembers the error of the underlying reader, so a decompressor's wrapped error can be
/// traced back to storage rather than blamed on the data.
pub(crate) struct Tracked<R> {
    inner: R,
    pub(crate) failed: Option<io::Error>,
}

impl<R> Tracked<R> {
    pub(crate) fn new(inner: R) -> Self {
        Tracked {
            inner,
            failed: None,
        }
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// Yields everything but the last [`TRAILER_LEN`] bytes of `inner`, which it keeps for
/// [`HoldBack::held`]. Buffers at most one read's worth plus the trailer.
struct HoldBack<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl<R: Read> HoldBack<R> {
    fn new(inner: R) -> Self {
        HoldBack {
            inner,
            buf: Vec::with_capacity(BUF_LEN + TRAILER_LEN),
            start: 0,
            eof: false,
        }
    }

    /// The held-back tail; the trailer once the reader returned 0 (shorter if the object was).
    fn held(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl<R: Read> Read for HoldBack<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let avail = self.buf.len() - self.start;
            if avail > TRAILER_LEN {
                let n = out.len().min(avail - TRAILER_LEN);
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            // At most TRAILER_LEN bytes move.
            self.buf.drain(..self.start);
            self.start = 0;
            let old = self.buf.len();
            self.buf.resize(old + BUF_LEN, 0);
            let n = loop {
                match self.inner.read(&mut self.buf[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// `read` that retries on `Interrupted`.
fn read_some(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like runs with a pseudo-random walk.
        let mut rng = fastrand::Rng::with_seed(7);
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    rng.u8(..)
                } else {
                    b'a' + (i % 13) as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trip_every_codec_and_size() {
        for codec in Codec::ALL {
            for len in [0, 1, 47, 48, 49, BUF_LEN - 1, BUF_LEN + 100, 3 * BUF_LEN] {
                let content = sample(len);
                let (digest, encoded) = encode_bytes(&content, codec, 3).expect("encode");
                assert_eq!(digest.len, len as u64);
                assert_eq!(&encoded[..6], MAGIC);
                assert_eq!(
                    parse_trailer(&encoded[encoded.len() - TRAILER_LEN..]),
                    Ok(digest)
                );
                let mut out = Vec::new();
                let got = decode(&encoded[..], &mut out).expect("decode");
                assert_eq!(got, digest);
                assert_eq!(out, content, "{codec:?} {len}");
                assert_eq!(digest, super::digest(&content[..]).expect("digest"));
            }
        }
    }

    #[test]
    fn one_codec_context_serves_objects_one_after_another() {
        for codec in Codec::ALL {
            let mut compressor = Compressor::new(codec, 3).expect("compressor");
            let mut decompressor = Decompressor::default();
            // A large object first: nothing of it may leak into the small ones after it.
            for len in [3 * BUF_LEN, 0, 1, 8192, 49] {
                let content = sample(len);
                let (digest, reused) =
                    encode_with(&content[..], &mut compressor, Vec::new()).expect("encode");
                let (_, fresh) = encode_bytes(&content, codec, 3).expect("encode");
                assert_eq!(reused, fresh, "{codec:?} {len}");
                let mut out = Vec::new();
                let decoded = decode_with(&reused[..], &mut decompressor, &mut out);
                assert_eq!(decoded.expect("decode"), digest);
                assert_eq!(out, content, "{codec:?} {len}");
            }
            // A corrupt object leaves nothing behind for the next one.
            let mut broken = encode_bytes(&sample(8192), codec, 3).expect("encode").1;
            let middle = broken.len() / 2;
            broken[middle] ^= 0xff;
            assert!(decode_with(&broken[..], &mut decompressor, io::sink()).is_err());
            let content = sample(4096);
            let (digest, encoded) = encode_bytes(&content, codec, 3).expect("encode");
            let mut out = Vec::new();
            let decoded = decode_with(&encoded[..], &mut decompressor, &mut out);
            assert_eq!(decoded.expect("decode after a corrupt object"), digest);
            assert_eq!(out, content);
        }
    }

    fn corrupt(encoded: &[u8]) -> String {
        match decode(encoded, io::sink()) {
            Err(DecodeError::Corrupt(reason)) => reason,
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        for codec in Codec::ALL {
            let (_, good) = encode_bytes(&sample(100_000), codec, 3).expect("encode");
            // Truncated anywhere: in the header, the payload or the trailer.
            for cut in [0, 3, HEADER_LEN + 10, good.len() / 2, good.len() - 1] {
                corrupt(&good[..cut]);
            }
            // One flipped bit in the payload.
            let mut bad = good.clone();
            bad[HEADER_LEN + 20] ^= 1;
            corrupt(&bad);
            // In the stored checksum.
            let mut bad = good.clone();
            let at = bad.len() - 20;
            bad[at] ^= 1;
            assert!(corrupt(&bad).starts_with("checksum mismatch"), "{codec:?}");
            // In the stored length.
            let mut bad = good.clone();
            let at = bad.len() - TRAILER_LEN;
            bad[at] ^= 1;
            assert!(corrupt(&bad).starts_with("length mismatch"), "{codec:?}");
        }
        let (_, good) = encode_bytes(b"x", Codec::None, 3).expect("encode");
        let mut newer = good.clone();
        newer[6] = 9;
        assert_eq!(
            corrupt(&newer),
            "object format version 9 is newer than this pgward reads (1)"
        );
        let mut unknown = good;
        unknown[7] = 200;
        assert_eq!(corrupt(&unknown), "unknown codec id 200");
        assert_eq!(
            corrupt(b"not an object at all, but long enough to look like one......"),
            "no pgward header (not written by pgward)"
        );
    }

    #[test]
    fn read_errors_are_not_blamed_on_the_data() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let (_, good) = encode_bytes(&sample(10_000), Codec::Zstd, 3).expect("encode");
        let src = (&good[..good.len() / 2]).chain(Failing);
        match decode(src, io::sink()) {
            Err(DecodeError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
