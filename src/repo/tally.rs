//! Counting and hashing (BLAKE3) the bytes that pass through a reader or a writer: the length
//! and checksum of a frame's content, or of a whole bundle, without a second pass.

use std::io::{self, Read, Write};

use super::frame::{Checksum, Digest};

/// Length and running BLAKE3 of bytes seen.
pub(super) struct Tally {
    pub(super) len: u64,
    hasher: blake3::Hasher,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            len: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    pub(super) fn add(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(super) fn digest(&self) -> Digest {
        Digest {
            len: self.len,
            checksum: Checksum(*self.hasher.finalize().as_bytes()),
        }
    }
}

/// A writer that counts and hashes what passes through it, and does not pass flushes on: a
/// bundle member's encoder flushes at its end, which would cut the upload into small chunks.
pub(super) struct Counted<W> {
    pub(super) inner: W,
    pub(super) tally: Tally,
}

impl<W: Write> Counted<W> {
    pub(super) fn new(inner: W) -> Self {
        Counted {
            inner,
            tally: Tally::new(),
        }
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.tally.add(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that counts and hashes what it yields.
pub(super) struct Hashed<R> {
    pub(super) inner: R,
    pub(super) tally: Tally,
}

impl<R: Read> Hashed<R> {
    pub(super) fn new(inner: R) -> Self {
        Hashed {
            inner,
            tally: Tally::new(),
        }
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }
}
