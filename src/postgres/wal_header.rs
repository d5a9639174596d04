//! The long page header at the start of every WAL segment file (`XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`), and the checks to run on it before a segment
//! leaves the machine: is it WAL at all, from this cluster, for the segment its name says?
//!
//! Knows nothing of storage or processes; [`read_segment_header`] is the one blocking read
//! (callers on the runtime use `spawn_blocking`).
//!
//! Byte order: PostgreSQL writes the header in the server's native byte order (it is a C
//! struct copied to disk), so it is read in native order here. pgward runs beside the server
//! that wrote the file, so the orders agree; on x86_64 and aarch64 both are little-endian.

use std::fmt;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use thiserror::Error;

use super::wal::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegSize};

/// `SizeOfXLogLongPHD`: the long header is 40 bytes (already MAXALIGNed).
pub const LONG_HEADER_SIZE: usize = 40;

/// `XLP_LONG_HEADER`: the page starts with the long header (the first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC` of each major version: it changes whenever the WAL format does, so it
/// names the major that wrote a segment.
pub const KNOWN_PAGE_MAGICS: &[(u32, u16)] = &[
    (10, 0xD097),
    (11, 0xD098),
    (12, 0xD101),
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The PostgreSQL major version whose WAL pages carry `magic`, if known.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    KNOWN_PAGE_MAGICS
        .iter()
        .find(|(_, m)| *m == magic)
        .map(|(major, _)| *major)
}

/// The fields of `XLogLongPageHeaderData`, as read from a segment's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`: the WAL format version.
    pub magic: u16,
    /// `xlp_info`: flag bits (`XLP_LONG_HEADER`, ...).
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub tli: TimelineId,
    /// `xlp_pageaddr`: LSN of the page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from the previous segment.
    pub rem_len: u32,
    /// `xlp_sysid`: the system identifier of the cluster that wrote it.
    pub system_id: u64,
    /// `xlp_seg_size`: the cluster's `wal_segment_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size (`XLOG_BLCKSZ`).
    pub xlog_blcksz: u32,
}

impl SegmentHeader {
    /// Decodes the first [`LONG_HEADER_SIZE`] bytes; only their length is checked here.
    pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < LONG_HEADER_SIZE {
            return Err(HeaderError::TooShort { len: bytes.len() });
        }
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let u32_at =
            |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"));
        let u64_at =
            |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"));
        // Offsets of XLogPageHeaderData (0..20, padded to 24) then the long fields.
        Ok(SegmentHeader {
            magic: u16_at(0),
            info: u16_at(2),
            tli: TimelineId(u32_at(4)),
            pageaddr: Lsn(u64_at(8)),
            rem_len: u32_at(16),
            system_id: u64_at(24),
            seg_size: u32_at(32),
            xlog_blcksz: u32_at(36),
        })
    }

    /// The major version that wrote the segment, if its magic is known.
    pub fn major(&self) -> Option<u32> {
        major_for_magic(self.magic)
    }

    /// Checks the header against what the segment must be; the first mismatch wins, in the
    /// order: magic, long header flag, system identifier, segment size, page address,
    /// timeline.
    ///
    /// The page's timeline may be an ancestor of the segment's: when a timeline starts in the
    /// middle of a segment, PostgreSQL copies the old timeline's segment up to the switch
    /// point into the new timeline's file, so the first page still carries the old timeline
    /// (`xlp_tli` is the timeline of the first record on the page). A newer one, or 0, is
    /// wrong.
    pub fn check(&self, expected: &ExpectedHeader) -> Result<(), HeaderError> {
        let segment = expected.segment_label();
        if self.major().is_none() {
            return Err(HeaderError::BadMagic {
                segment,
                found: self.magic,
            });
        }
        if self.info & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NotLongHeader {
                segment,
                info: self.info,
            });
        }
        if self.system_id != expected.system_id {
            return Err(HeaderError::SystemIdMismatch {
                segment,
                found: self.system_id,
                expected: expected.system_id,
            });
        }
        if self.seg_size != expected.seg_size.bytes() {
            return Err(HeaderError::SegSizeMismatch {
                segment,
                found: self.seg_size,
                expected: expected.seg_size.bytes(),
            });
        }
        let start = expected.segno.start_lsn(expected.seg_size);
        if start != Some(self.pageaddr) {
            return Err(HeaderError::PageAddrMismatch {
                segment,
                found: self.pageaddr,
                expected: start,
            });
        }
        if self.tli.0 == 0 || self.tli > expected.tli {
            return Err(HeaderError::TimelineMismatch {
                segment,
                found: self.tli,
                expected: expected.tli,
            });
        }
        Ok(())
    }
}

/// What a segment's header must say: the cluster's identity and the segment's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedHeader {
    /// The cluster's system identifier (from `pg_control`).
    pub system_id: u64,
    /// The timeline in the segment's name.
    pub tli: TimelineId,
    /// The segment number in the segment's name.
    pub segno: SegmentNo,
    /// The cluster's `wal_segment_size`.
    pub seg_size: WalSegSize,
}

impl ExpectedHeader {
    /// The segment's file name for messages, or its number if it has none.
    fn segment_label(&self) -> String {
        SegmentName::new(self.tli, self.segno, self.seg_size)
            .map(|name| name.to_string())
            .unwrap_or_else(|_| format!("number {} on timeline {}", self.segno, self.tli))
    }
}

/// Why a segment's first page is not what it must be. Callers branch: a foreign system
/// identifier means two clusters share a repository; a bad magic or page address usually
/// means an unused (pre-allocated or recycled) file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// Fewer bytes than a long page header.
    #[error("WAL file is {len} bytes, shorter than the {LONG_HEADER_SIZE}-byte segment header")]
    TooShort { len: usize },
    /// Not a WAL page from a known major version (a zero-filled file reads as 0x0000).
    #[error(
        "WAL segment {segment} starts with page magic {found:#06X}, which no known \
         PostgreSQL version writes ({})",
        KnownMagics
    )]
    BadMagic { segment: String, found: u16 },
    /// The first page lacks `XLP_LONG_HEADER`.
    #[error(
        "WAL segment {segment} does not start with a long page header \
         (xlp_info {info:#06X} lacks XLP_LONG_HEADER 0x0002)"
    )]
    NotLongHeader { segment: String, info: u16 },
    /// Written by another cluster.
    #[error(
        "WAL segment {segment} has system identifier {found}, but this cluster's is \
         {expected}\nHINT: do two clusters share storage.url?"
    )]
    SystemIdMismatch {
        segment: String,
        found: u64,
        expected: u64,
    },
    /// Written with another `wal_segment_size`.
    #[error(
        "WAL segment {segment} was written with a segment size of {found} bytes, \
         but the cluster's is {expected} bytes"
    )]
    SegSizeMismatch {
        segment: String,
        found: u32,
        expected: u32,
    },
    /// The page is not the one at the start of this segment (a recycled file not yet
    /// overwritten, or a misnamed one).
    #[error(
        "WAL segment {segment} starts with the page at {found}, not {}",
        expected.map_or_else(|| "a representable LSN".to_string(), |l| l.to_string())
    )]
    PageAddrMismatch {
        segment: String,
        found: Lsn,
        expected: Option<Lsn>,
    },
    /// The page's timeline is 0 or newer than the segment's.
    #[error(
        "WAL segment {segment} starts with a page of timeline {found}, which cannot appear \
         in a segment of timeline {expected}"
    )]
    TimelineMismatch {
        segment: String,
        found: TimelineId,
        expected: TimelineId,
    },
}

/// Renders [`KNOWN_PAGE_MAGICS`] for messages.
struct KnownMagics;

impl fmt::Display for KnownMagics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("known:")?;
        for (i, (major, magic)) in KNOWN_PAGE_MAGICS.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{magic:#06X} PostgreSQL {major}")?;
        }
        Ok(())
    }
}

/// Parses the header at the start of `bytes` and checks it (see [`SegmentHeader::check`]).
pub fn check_segment_header(
    bytes: &[u8],
    expected: &ExpectedHeader,
) -> Result<SegmentHeader, HeaderError> {
    let header = SegmentHeader::parse(bytes)?;
    header.check(expected)?;
    Ok(header)
}

/// Reads and decodes the long page header of the WAL file at `path` (the first
/// [`LONG_HEADER_SIZE`] bytes only). Blocking.
pub fn read_segment_header(path: &Path) -> Result<SegmentHeader> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    read_segment_header_of(&file, path)
}

/// [`read_segment_header`] of a file already open (named `path` in messages), by positioned
/// reads: the file's offset is left as it was.
pub fn read_segment_header_of(file: &File, path: &Path) -> Result<SegmentHeader> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; LONG_HEADER_SIZE];
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| format!("read the header of {}", path.display()))
            }
        }
    }
    buf.truncate(read);
    SegmentHeader::parse(&buf).with_context(|| format!("decode the header of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: u64 = 7_312_345_678_901_234_567;

    fn expected() -> ExpectedHeader {
        ExpectedHeader {
            system_id: SYSID,
            tli: TimelineId(2),
            segno: SegmentNo(0x1_03),
            seg_size: WalSegSize::DEFAULT,
        }
    }

    /// A header as PostgreSQL 16 writes it for segment 000000020000000100000003.
    fn good() -> SegmentHeader {
        SegmentHeader {
            magic: 0xD113,
            info: XLP_LONG_HEADER,
            tli: TimelineId(2),
            pageaddr: Lsn(0x1_0300_0000),
            rem_len: 0,
            system_id: SYSID,
            seg_size: 16 << 20,
            xlog_blcksz: 8192,
        }
    }

    fn encode(h: &SegmentHeader) -> Vec<u8> {
        let mut b = Vec::with_capacity(8192);
        b.extend_from_slice(&h.magic.to_ne_bytes());
        b.extend_from_slice(&h.info.to_ne_bytes());
        b.extend_from_slice(&h.tli.0.to_ne_bytes());
        b.extend_from_slice(&h.pageaddr.0.to_ne_bytes());
        b.extend_from_slice(&h.rem_len.to_ne_bytes());
        b.extend_from_slice(&[0xEE; 4]); // padding: never read
        b.extend_from_slice(&h.system_id.to_ne_bytes());
        b.extend_from_slice(&h.seg_size.to_ne_bytes());
        b.extend_from_slice(&h.xlog_blcksz.to_ne_bytes());
        b.resize(8192, 0);
        b
    }

    fn check_with(edit: impl FnOnce(&mut SegmentHeader)) -> Result<SegmentHeader, HeaderError> {
        let mut h = good();
        edit(&mut h);
        check_segment_header(&encode(&h), &expected())
    }

    const NAME: &str = "000000020000000100000003";

    #[test]
    fn decodes_every_field_at_its_offset() {
        let h = SegmentHeader {
            rem_len: 0x1234,
            info: XLP_LONG_HEADER | 0x0001,
            ..good()
        };
        assert_eq!(SegmentHeader::parse(&encode(&h)), Ok(h));
        assert_eq!(SegmentHeader::parse(&encode(&h)[..LONG_HEADER_SIZE]), Ok(h));
    }

    #[test]
    fn accepts_a_matching_header() {
        assert_eq!(check_with(|_| {}), Ok(good()));
        assert_eq!(good().major(), Some(16));
    }

    #[test]
    fn accepts_an_ancestor_timeline_on_the_first_page() {
        // The first segment of timeline 2 begins with timeline 1's copied pages.
        assert!(check_with(|h| h.tli = TimelineId(1)).is_ok());
    }

    #[test]
    fn accepts_every_known_major() {
        for (major, magic) in KNOWN_PAGE_MAGICS {
            let h = check_with(|h| h.magic = *magic).unwrap();
            assert_eq!(h.major(), Some(*major));
        }
        assert_eq!(major_for_magic(0xD110), Some(15));
        assert_eq!(major_for_magic(0xD116), Some(17));
        assert_eq!(major_for_magic(0xD118), Some(18));
    }

    #[test]
    fn too_short() {
        let bytes = encode(&good());
        assert_eq!(
            check_segment_header(&bytes[..39], &expected()),
            Err(HeaderError::TooShort { len: 39 })
        );
        assert_eq!(
            HeaderError::TooShort { len: 0 }.to_string(),
            "WAL file is 0 bytes, shorter than the 40-byte segment header"
        );
    }

    #[test]
    fn bad_magic_names_the_known_ones() {
        let err = check_segment_header(&[0; 8192], &expected()).unwrap_err();
        assert_eq!(
            err,
            HeaderError::BadMagic {
                segment: NAME.into(),
                found: 0
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 starts with page magic 0x0000, which no \
             known PostgreSQL version writes (known: 0xD097 PostgreSQL 10, 0xD098 PostgreSQL \
             11, 0xD101 PostgreSQL 12, 0xD106 PostgreSQL 13, 0xD10D PostgreSQL 14, 0xD110 \
             PostgreSQL 15, 0xD113 PostgreSQL 16, 0xD116 PostgreSQL 17, 0xD118 PostgreSQL 18)"
        );
        assert!(matches!(
            check_with(|h| h.magic = 0xD120),
            Err(HeaderError::BadMagic { found: 0xD120, .. })
        ));
    }

    #[test]
    fn short_page_header() {
        let err = check_with(|h| h.info = 0x0001).unwrap_err();
        assert_eq!(
            err,
            HeaderError::NotLongHeader {
                segment: NAME.into(),
                info: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 does not start with a long page header \
             (xlp_info 0x0001 lacks XLP_LONG_HEADER 0x0002)"
        );
    }

    #[test]
    fn foreign_system_identifier() {
        let err = check_with(|h| h.system_id = 7_299_000_000_000_000_001).unwrap_err();
        assert_eq!(
            err,
            HeaderError::SystemIdMismatch {
                segment: NAME.into(),
                found: 7_299_000_000_000_000_001,
                expected: SYSID
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 has system identifier 7299000000000000001, \
             but this cluster's is 7312345678901234567\nHINT: do two clusters share storage.url?"
        );
    }

    #[test]
    fn other_segment_size() {
        let err = check_with(|h| h.seg_size = 1 << 20).unwrap_err();
        assert_eq!(
            err,
            HeaderError::SegSizeMismatch {
                segment: NAME.into(),
                found: 1 << 20,
                expected: 16 << 20
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 was written with a segment size of 1048576 \
             bytes, but the cluster's is 16777216 bytes"
        );
    }

    #[test]
    fn recycled_segment_has_an_old_page_address() {
        let err = check_with(|h| h.pageaddr = Lsn(0x0200_0000)).unwrap_err();
        assert_eq!(
            err,
            HeaderError::PageAddrMismatch {
                segment: NAME.into(),
                found: Lsn(0x0200_0000),
                expected: Some(Lsn(0x1_0300_0000))
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 starts with the page at 0/2000000, not 1/3000000"
        );
    }

    #[test]
    fn page_address_of_an_unrepresentable_segment() {
        let expected = ExpectedHeader {
            segno: SegmentNo(u64::MAX),
            ..expected()
        };
        let err = check_segment_header(&encode(&good()), &expected).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "WAL segment number {} on timeline 2 starts with the page at 1/3000000, not a \
                 representable LSN",
                u64::MAX
            )
        );
    }

    #[test]
    fn newer_or_zero_timeline() {
        let err = check_with(|h| h.tli = TimelineId(3)).unwrap_err();
        assert_eq!(
            err,
            HeaderError::TimelineMismatch {
                segment: NAME.into(),
                found: TimelineId(3),
                expected: TimelineId(2)
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment 000000020000000100000003 starts with a page of timeline 3, which \
             cannot appear in a segment of timeline 2"
        );
        assert!(matches!(
            check_with(|h| h.tli = TimelineId(0)),
            Err(HeaderError::TimelineMismatch { .. })
        ));
    }

    #[test]
    fn checks_run_in_order() {
        // Everything wrong: the magic is reported first, then the flag, and so on.
        let all_wrong = |h: &mut SegmentHeader| {
            h.info = 0;
            h.system_id = 1;
            h.seg_size = 1 << 20;
            h.pageaddr = Lsn(0);
            h.tli = TimelineId(9);
        };
        assert!(matches!(
            check_with(|h| {
                all_wrong(h);
                h.magic = 0;
            }),
            Err(HeaderError::BadMagic { .. })
        ));
        assert!(matches!(
            check_with(all_wrong),
            Err(HeaderError::NotLongHeader { .. })
        ));
    }

    #[test]
    fn reads_only_the_header_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        std::fs::write(&path, encode(&good())).unwrap();
        assert_eq!(read_segment_header(&path).unwrap(), good());

        std::fs::write(&path, [0xD1; 10]).unwrap();
        let err = read_segment_header(&path).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("decode the header of "),
            "{err:#}"
        );
        assert!(format!("{err:#}")
            .ends_with(": WAL file is 10 bytes, shorter than the 40-byte segment header"));

        let missing = read_segment_header(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{missing:#}").starts_with("open "), "{missing:#}");
    }
}
