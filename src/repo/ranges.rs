//! Byte ranges of a local file as one stream, both ways: the content of a backup part (a
//! slice of a large file, or the changed blocks of a relation) is the concatenation of its
//! ranges. Blocking; positioned reads and writes, so several parts of one file can be read or
//! written at once from different threads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One range: offset and length in bytes.
pub type Range = (u64, u64);

/// Reads `ranges` of a file in order, as one stream. A range cut short by the end of the
/// file ends the stream there (the ranges after it are not read even if the file grew
/// meanwhile), so what was read is always a prefix of the ranges: [`read_prefix`] names it.
pub struct RangesReader {
    file: File,
    ranges: Vec<Range>,
    at: Position,
    ended: bool,
    total: Arc<AtomicU64>,
}

/// Where a stream over ranges stands: the range it is in, and how far into it.
#[derive(Debug, Default)]
struct Position {
    index: usize,
    /// Bytes of `ranges[index]` already read or written.
    done: u64,
}

impl Position {
    /// The file offset of the stream's next byte, and how many of `want` bytes fit before
    /// the end of its range; `None` past the last range. Steps over finished (or empty)
    /// ranges.
    fn next(&mut self, ranges: &[Range], want: usize) -> Option<(u64, usize)> {
        while let Some(&(offset, len)) = ranges.get(self.index) {
            let left = len - self.done;
            if left > 0 {
                let n = want.min(usize::try_from(left).unwrap_or(usize::MAX));
                return Some((offset + self.done, n));
            }
            self.index += 1;
            self.done = 0;
        }
        None
    }

    fn advance(&mut self, n: usize) {
        self.done += n as u64;
    }
}

impl RangesReader {
    /// A reader of `ranges` (ascending, not overlapping) of `file`; `total` counts the bytes
    /// it yields.
    pub fn new(file: File, ranges: Vec<Range>, total: Arc<AtomicU64>) -> RangesReader {
        RangesReader {
            file,
            ranges,
            at: Position::default(),
            ended: false,
            total,
        }
    }
}

impl Read for RangesReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let Some((offset, want)) = self.at.next(&self.ranges, buf.len()) else {
            return Ok(0);
        };
        let n = self.file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            self.ended = true;
            return Ok(0);
        }
        self.at.advance(n);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The ranges a stream of `len` bytes over `ranges` covered: the prefix of that length.
pub fn read_prefix(ranges: &[Range], mut len: u64) -> Vec<Range> {
    let mut out = Vec::new();
    for &(offset, range_len) in ranges {
        if len == 0 {
            break;
        }
        let take = range_len.min(len);
        out.push((offset, take));
        len -= take;
    }
    out
}

/// Writes a stream into `ranges` of a file, in order. Writing more than the ranges hold is
/// an error; [`RangesWriter::finish`] checks that they were filled.
pub struct RangesWriter<'a> {
    file: &'a File,
    ranges: &'a [Range],
    at: Position,
}

impl<'a> RangesWriter<'a> {
    pub fn new(file: &'a File, ranges: &'a [Range]) -> RangesWriter<'a> {
        RangesWriter {
            file,
            ranges,
            at: Position::default(),
        }
    }

    /// Errors unless every range was written whole.
    pub fn finish(self) -> io::Result<()> {
        let rest: u64 = self.ranges[self.at.index.min(self.ranges.len())..]
            .iter()
            .map(|r| r.1)
            .sum::<u64>()
            - self.at.done;
        if rest != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the content is {rest} bytes shorter than its ranges"),
            ));
        }
        Ok(())
    }
}

impl Write for RangesWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some((offset, n)) = self.at.next(self.ranges, buf.len()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the content is longer than its ranges",
            ));
        };
        self.file.write_all_at(&buf[..n], offset)?;
        self.at.advance(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// BLAKE3 of `ranges` of `file` read in order, and whether they were all there.
pub fn hash_ranges(file: File, ranges: &[Range]) -> io::Result<(blake3::Hash, bool)> {
    let total = Arc::new(AtomicU64::new(0));
    let mut reader = RangesReader::new(file, ranges.to_vec(), total.clone());
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let whole = total.load(Ordering::Relaxed) == ranges.iter().map(|r| r.1).sum::<u64>();
    Ok((hasher.finalize(), whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
        tmp.write_all(content).expect("write");
        let file = tmp.reopen().expect("reopen");
        (tmp, file)
    }

    #[test]
    fn ranges_read_back_in_order_and_write_to_their_places() {
        let content: Vec<u8> = (0..100u8).collect();
        let (_tmp, file) = file_with(&content);
        let ranges = vec![(10, 5), (50, 3), (90, 10)];
        let total = Arc::new(AtomicU64::new(0));
        let mut read = Vec::new();
        RangesReader::new(file, ranges.clone(), total.clone())
            .read_to_end(&mut read)
            .unwrap();
        let expected: Vec<u8> = [&content[10..15], &content[50..53], &content[90..100]].concat();
        assert_eq!(read, expected);
        assert_eq!(total.load(Ordering::Relaxed), 18);

        let (_out_tmp, out) = file_with(&[0u8; 100]);
        let mut writer = RangesWriter::new(&out, &ranges);
        writer.write_all(&read).unwrap();
        writer.finish().unwrap();
        let mut written = vec![0u8; 100];
        out.read_exact_at(&mut written, 0).unwrap();
        for (offset, len) in &ranges {
            let (o, l) = (*offset as usize, *len as usize);
            assert_eq!(&written[o..o + l], &content[o..o + l]);
        }
        assert_eq!(written[20], 0);
    }

    #[test]
    fn a_short_file_ends_the_stream_at_a_prefix() {
        let (_tmp, file) = file_with(&[7u8; 60]);
        let ranges = vec![(10, 5), (50, 20), (80, 10)];
        let total = Arc::new(AtomicU64::new(0));
        let mut read = Vec::new();
        RangesReader::new(file, ranges.clone(), total.clone())
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read.len(), 15);
        assert_eq!(read_prefix(&ranges, 15), vec![(10, 5), (50, 10)]);
        assert_eq!(read_prefix(&ranges, 0), vec![]);
    }

    #[test]
    fn writes_that_miss_or_overrun_the_ranges_fail() {
        let (_tmp, out) = file_with(&[0u8; 10]);
        let ranges = [(0, 4), (6, 2)];
        let mut writer = RangesWriter::new(&out, &ranges);
        writer.write_all(&[1; 5]).unwrap();
        assert!(writer.finish().is_err());
        let mut writer = RangesWriter::new(&out, &ranges);
        assert!(writer.write_all(&[1; 7]).is_err());
    }
}
