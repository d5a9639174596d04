//! PostgreSQL's WAL vocabulary behind small types: timelines, LSNs, segment numbers, the
//! segment size, and the names of the files that `archive_command` and `restore_command`
//! see (segments, `.partial` segments, timeline history and backup history files).
//!
//! Pure logic: no I/O, no knowledge of storage or processes. The rules mirror
//! `src/include/access/xlog_internal.h` (`XLogFileName`, `XLogFromFileName`,
//! `IsXLogFileName`, `IsPartialXLogFileName`, `IsTLHistoryFileName`,
//! `IsBackupHistoryFileName`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Length of a segment file name: `%08X%08X%08X` (timeline, log id, segment in log id).
const XLOG_FNAME_LEN: usize = 24;
const PARTIAL_SUFFIX: &str = ".partial";
const HISTORY_SUFFIX: &str = ".history";
const BACKUP_SUFFIX: &str = ".backup";

/// A timeline, PostgreSQL's `TimeLineID`. Displayed in decimal, as `pg_controldata` does;
/// file names carry it as 8 uppercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in the WAL, PostgreSQL's `XLogRecPtr`. Written `X/X` (the high and low 32 bits
/// in hex), like `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// The segment holding this position (`XLByteToSeg`).
    pub fn segment_number(self, seg_size: WalSegSize) -> SegmentNo {
        SegmentNo(self.0 / u64::from(seg_size.bytes()))
    }

    /// Offset of this position inside its segment (`XLogSegmentOffset`).
    pub fn segment_offset(self, seg_size: WalSegSize) -> u64 {
        self.0 & (u64::from(seg_size.bytes()) - 1)
    }

    /// This position moved `bytes` forward, or `None` past the end of the WAL address space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Bytes from `earlier` to this position, or `None` if `earlier` is after it.
    pub fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// An LSN that is not `X/X` with 1 to 8 hex digits on each side.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of up to 8 digits separated by a slash, like 16/B374D848")]
pub struct LsnParseError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Accepts what the `pg_lsn` type accepts: hex digits of either case, 1 to 8 each side.
    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((u64::from(hi) << 32) | u64::from(lo))),
            _ => Err(err()),
        }
    }
}

/// A WAL segment's number, PostgreSQL's `XLogSegNo`: LSN / segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The LSN of the segment's first byte (`XLogSegNoOffsetToRecPtr` with offset 0), or
    /// `None` if it lies past the WAL address space.
    pub fn start_lsn(self, seg_size: WalSegSize) -> Option<Lsn> {
        self.0.checked_mul(u64::from(seg_size.bytes())).map(Lsn)
    }
}

impl fmt::Display for SegmentNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A valid `wal_segment_size`: a power of two from 1 MiB to 1 GiB (`IsValidWalSegSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalSegSize(u32);

impl WalSegSize {
    /// Smallest segment size PostgreSQL accepts (`WalSegMinSize`).
    pub const MIN: WalSegSize = WalSegSize(1 << 20);
    /// Largest segment size PostgreSQL accepts (`WalSegMaxSize`).
    pub const MAX: WalSegSize = WalSegSize(1 << 30);
    /// The default chosen by initdb: 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 << 20);

    /// Checks `bytes` the way PostgreSQL's `IsValidWalSegSize` does.
    pub fn new(bytes: u32) -> Result<WalSegSize, NameError> {
        if bytes.is_power_of_two() && (Self::MIN.0..=Self::MAX.0).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(NameError::InvalidSegSize { bytes })
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// `XLogSegmentsPerXLogId`: how many segments one "log id" (the middle 8 hex digits of a
    /// segment name) spans.
    pub fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }
}

impl fmt::Display for WalSegSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0 >> 20)
    }
}

/// Why a file name or a number is not a valid piece of WAL vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// None of the shapes `archive_command` or `restore_command` can be given.
    #[error(
        "{name:?} is not a WAL file name: expected a segment (24 uppercase hex digits, \
         like 000000010000000000000003), a partial segment (…0003.partial), a timeline \
         history file (00000002.history) or a backup history file (…0003.00000028.backup)"
    )]
    NotWalFileName { name: String },
    /// The segment part of a name is beyond what one log id holds at this segment size.
    #[error(
        "WAL segment name {name} does not fit a segment size of {seg_size}: its last 8 hex \
         digits must be below {per_xlog_id:X}"
    )]
    SegmentOutOfRange {
        name: String,
        seg_size: WalSegSize,
        per_xlog_id: u64,
    },
    /// A segment number whose name would need a log id beyond 32 bits.
    #[error("WAL segment number {segno} is past the end of the WAL address space at a segment size of {seg_size}")]
    SegmentNoOutOfRange {
        segno: SegmentNo,
        seg_size: WalSegSize,
    },
    /// Not a power of two between 1 MiB and 1 GiB.
    #[error("invalid WAL segment size {bytes} bytes: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSegSize { bytes: u32 },
}

/// The name of one WAL segment file: timeline, log id and segment-in-log-id, exactly as the
/// 24 hex digits say. Which segment number that is depends on the segment size, so the
/// name is kept as written and converted with [`SegmentName::segno`].
///
/// Ordering follows (timeline, log id, segment), which for names valid at one segment size
/// is (timeline, segment number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    tli: TimelineId,
    log: u32,
    seg: u32,
}

impl SegmentName {
    /// `XLogFileName`: the name of segment `segno` on timeline `tli`.
    pub fn new(
        tli: TimelineId,
        segno: SegmentNo,
        seg_size: WalSegSize,
    ) -> Result<SegmentName, NameError> {
        let per_id = seg_size.segments_per_xlog_id();
        let log = u32::try_from(segno.0 / per_id)
            .map_err(|_| NameError::SegmentNoOutOfRange { segno, seg_size })?;
        let seg = u32::try_from(segno.0 % per_id).expect("remainder of a divisor <= 2^12 fits");
        Ok(SegmentName { tli, log, seg })
    }

    /// The segment `pg_walfile_name` names for `lsn` on `tli`: the one holding the byte just
    /// before it (`XLByteToPrevSeg`), so that a position at a segment boundary belongs to the
    /// segment it ends. Computed here because the server refuses `pg_walfile_name` during
    /// recovery (on a standby).
    pub fn ending_at(
        tli: TimelineId,
        lsn: Lsn,
        seg_size: WalSegSize,
    ) -> Result<SegmentName, NameError> {
        let segno = SegmentNo(lsn.0.saturating_sub(1) / u64::from(seg_size.bytes()));
        SegmentName::new(tli, segno, seg_size)
    }

    /// Parses exactly 24 uppercase hex digits (`IsXLogFileName`).
    pub fn parse(name: &str) -> Result<SegmentName, NameError> {
        parse_segment_digits(name).ok_or_else(|| NameError::NotWalFileName {
            name: name.to_string(),
        })
    }

    /// The timeline the name is on.
    pub fn tli(self) -> TimelineId {
        self.tli
    }

    /// The log id and segment-in-log-id: where the segment sits in the WAL, whatever the
    /// timeline. Orders like the segments' start LSNs.
    pub fn position(self) -> (u32, u32) {
        (self.log, self.seg)
    }

    /// `XLogFromFileName`: the segment number, checking that the last 8 digits fit the
    /// segment size (PostgreSQL's `sscanf` would silently fold them into the next log id).
    pub fn segno(self, seg_size: WalSegSize) -> Result<SegmentNo, NameError> {
        let per_id = seg_size.segments_per_xlog_id();
        if u64::from(self.seg) >= per_id {
            return Err(NameError::SegmentOutOfRange {
                name: self.to_string(),
                seg_size,
                per_xlog_id: per_id,
            });
        }
        Ok(SegmentNo(
            u64::from(self.log) * per_id + u64::from(self.seg),
        ))
    }

    /// The following segment on the same timeline.
    pub fn next_segment(self, seg_size: WalSegSize) -> Result<SegmentName, NameError> {
        let segno = self.segno(seg_size)?;
        let next = segno
            .0
            .checked_add(1)
            .ok_or(NameError::SegmentNoOutOfRange { segno, seg_size })?;
        SegmentName::new(self.tli, SegmentNo(next), seg_size)
    }

    /// The LSN of the segment's first byte.
    pub fn start_lsn(self, seg_size: WalSegSize) -> Result<Lsn, NameError> {
        let segno = self.segno(seg_size)?;
        segno
            .start_lsn(seg_size)
            .ok_or(NameError::SegmentNoOutOfRange { segno, seg_size })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli.0, self.log, self.seg)
    }
}

/// A file name `archive_command` or `restore_command` can be given, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// `000000010000000000000003` (`IsXLogFileName`).
    Segment(SegmentName),
    /// `000000010000000000000003.partial` (`IsPartialXLogFileName`): the last, incomplete
    /// segment of a timeline, archived at promotion or by pg_receivewal.
    Partial(SegmentName),
    /// `00000002.history` (`IsTLHistoryFileName`): how timeline 2 branched off.
    History { tli: TimelineId },
    /// `000000010000000000000002.00000028.backup` (`IsBackupHistoryFileName`): written at
    /// the end of a base backup that started in that segment at that offset.
    BackupHistory { segment: SegmentName, offset: u32 },
}

impl WalFileName {
    /// Recognises one of the four shapes, uppercase hex only, like PostgreSQL.
    ///
    /// Backup history names must be exactly `<segment>.<8 hex digits>.backup`, the only
    /// form PostgreSQL writes; its own `IsBackupHistoryFileName` is looser (any text between
    /// the segment and `.backup`), which a name we must print back cannot be.
    pub fn parse(name: &str) -> Result<WalFileName, NameError> {
        Self::parse_inner(name).ok_or_else(|| NameError::NotWalFileName {
            name: name.to_string(),
        })
    }

    fn parse_inner(name: &str) -> Option<WalFileName> {
        if name.len() == XLOG_FNAME_LEN {
            return parse_segment_digits(name).map(WalFileName::Segment);
        }
        if let Some(digits) = name.strip_suffix(PARTIAL_SUFFIX) {
            return parse_segment_digits(digits).map(WalFileName::Partial);
        }
        if let Some(digits) = name.strip_suffix(HISTORY_SUFFIX) {
            return parse_hex8(digits).map(|tli| WalFileName::History {
                tli: TimelineId(tli),
            });
        }
        let rest = name.strip_suffix(BACKUP_SUFFIX)?;
        let (segment, offset) = rest.split_once('.')?;
        Some(WalFileName::BackupHistory {
            segment: parse_segment_digits(segment)?,
            offset: parse_hex8(offset)?,
        })
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.tli,
            WalFileName::BackupHistory { segment, .. } => segment.tli,
            WalFileName::History { tli } => *tli,
        }
    }

    /// The segment a segment, partial segment or backup history file is about.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            WalFileName::BackupHistory { segment, .. } => Some(*segment),
            WalFileName::History { .. } => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}{PARTIAL_SUFFIX}"),
            WalFileName::History { tli } => write!(f, "{:08X}{HISTORY_SUFFIX}", tli.0),
            WalFileName::BackupHistory { segment, offset } => {
                write!(f, "{segment}.{offset:08X}{BACKUP_SUFFIX}")
            }
        }
    }
}

impl FromStr for WalFileName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<WalFileName, NameError> {
        WalFileName::parse(s)
    }
}

/// `XLogFileName` for callers that want the string.
pub fn segment_name(
    tli: TimelineId,
    segno: SegmentNo,
    seg_size: WalSegSize,
) -> Result<String, NameError> {
    SegmentName::new(tli, segno, seg_size).map(|s| s.to_string())
}

/// `XLogFromFileName` on a plain segment name: its timeline and segment number.
pub fn parse_segment_name(
    name: &str,
    seg_size: WalSegSize,
) -> Result<(TimelineId, SegmentNo), NameError> {
    let segment = SegmentName::parse(name)?;
    Ok((segment.tli, segment.segno(seg_size)?))
}

/// Exactly 8 uppercase hex digits.
fn parse_hex8(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(is_upper_hex) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Exactly 24 uppercase hex digits, split 8+8+8.
fn parse_segment_digits(s: &str) -> Option<SegmentName> {
    if s.len() != XLOG_FNAME_LEN || !s.is_ascii() {
        return None;
    }
    Some(SegmentName {
        tli: TimelineId(parse_hex8(&s[0..8])?),
        log: parse_hex8(&s[8..16])?,
        seg: parse_hex8(&s[16..24])?,
    })
}

/// The character set of PostgreSQL's `strspn(fname, "0123456789ABCDEF")`.
fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_position_at_a_segment_boundary_belongs_to_the_segment_it_ends() {
        let size = WalSegSize::new(16 << 20).unwrap();
        let name = |lsn: u64| SegmentName::ending_at(TimelineId(2), Lsn(lsn), size).unwrap();
        assert_eq!(name(0x3_000_028).to_string(), "000000020000000000000003");
        assert_eq!(name(0x3_000_000).to_string(), "000000020000000000000002");
        assert_eq!(name(0x1_0000_0000).to_string(), "0000000200000000000000FF");
    }
    use super::*;
    use proptest::prelude::*;

    fn mib(n: u32) -> WalSegSize {
        WalSegSize::new(n << 20).expect("valid test size")
    }

    #[test]
    fn lsn_text_matches_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0100_0028).to_string(), "0/1000028");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!("0/1000028".parse::<Lsn>().unwrap(), Lsn(0x0100_0028));
        assert_eq!("a/bc".parse::<Lsn>().unwrap(), Lsn(0xA_0000_00BC));
        assert_eq!("00000000/00000001".parse::<Lsn>().unwrap(), Lsn(1));
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "16B374D848",
            "1/2/3",
            "123456789/0",
            "0/123456789",
            "G/0",
            "+1/0",
            " 1/0",
            "1/0 ",
            "-1/0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(err.input, bad);
        }
        assert_eq!(
            "x".parse::<Lsn>().unwrap_err().to_string(),
            "invalid LSN \"x\": expected two hexadecimal numbers of up to 8 digits \
             separated by a slash, like 16/B374D848"
        );
    }

    #[test]
    fn lsn_segment_arithmetic() {
        let size = WalSegSize::DEFAULT;
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.segment_number(size), SegmentNo(0x16_B3));
        assert_eq!(lsn.segment_offset(size), 0x74_D848);
        assert_eq!(
            SegmentNo(0x16_B3).start_lsn(size),
            Some("16/B3000000".parse().unwrap())
        );
        assert_eq!(SegmentNo(u64::MAX).start_lsn(size), None);
        assert_eq!(lsn.checked_add(0x28), Some(Lsn(0x16_B374_D870)));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(10).checked_sub(Lsn(4)), Some(6));
        assert_eq!(Lsn(4).checked_sub(Lsn(10)), None);
        assert!(Lsn(1) < Lsn(2));
    }

    #[test]
    fn segment_sizes_follow_is_valid_wal_seg_size() {
        for mib in [1, 2, 4, 16, 64, 1024] {
            assert!(WalSegSize::new(mib << 20).is_ok(), "{mib} MiB");
        }
        for bytes in [0, 1, 512 << 10, 3 << 20, (16 << 20) + 1, 2 << 30, u32::MAX] {
            assert_eq!(
                WalSegSize::new(bytes),
                Err(NameError::InvalidSegSize { bytes })
            );
        }
        assert_eq!(
            WalSegSize::new(3 << 20).unwrap_err().to_string(),
            "invalid WAL segment size 3145728 bytes: must be a power of two from 1 MiB to 1 GiB"
        );
        assert_eq!(WalSegSize::DEFAULT.segments_per_xlog_id(), 256);
        assert_eq!(WalSegSize::MIN.segments_per_xlog_id(), 4096);
        assert_eq!(WalSegSize::MAX.segments_per_xlog_id(), 4);
        assert_eq!(WalSegSize::DEFAULT.to_string(), "16 MiB");
    }

    #[test]
    fn segment_names_split_by_segment_size() {
        let tli = TimelineId(1);
        // 16 MiB: 256 segments per log id.
        assert_eq!(
            segment_name(tli, SegmentNo(0x1_02), WalSegSize::DEFAULT).unwrap(),
            "000000010000000100000002"
        );
        // 1 MiB: 4096 per log id, so the same number is in log id 0.
        assert_eq!(
            segment_name(tli, SegmentNo(0x1_02), mib(1)).unwrap(),
            "000000010000000000000102"
        );
        // 1 GiB: 4 per log id.
        assert_eq!(
            segment_name(TimelineId(0xA), SegmentNo(9), mib(1024)).unwrap(),
            "0000000A0000000200000001"
        );
        assert_eq!(
            parse_segment_name("000000010000000100000002", WalSegSize::DEFAULT).unwrap(),
            (tli, SegmentNo(0x1_02))
        );
        assert_eq!(
            parse_segment_name("0000000A0000000200000001", mib(1024)).unwrap(),
            (TimelineId(10), SegmentNo(9))
        );
    }

    #[test]
    fn segment_part_must_fit_the_size() {
        let name = SegmentName::parse("000000010000000000000100").unwrap();
        assert_eq!(name.segno(mib(1)), Ok(SegmentNo(0x100)));
        let err = name.segno(WalSegSize::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            NameError::SegmentOutOfRange {
                name: "000000010000000000000100".into(),
                seg_size: WalSegSize::DEFAULT,
                per_xlog_id: 256,
            }
        );
        assert_eq!(
            err.to_string(),
            "WAL segment name 000000010000000000000100 does not fit a segment size of \
             16 MiB: its last 8 hex digits must be below 100"
        );
    }

    #[test]
    fn segment_numbers_past_the_address_space_have_no_name() {
        let size = WalSegSize::DEFAULT;
        let last = SegmentNo(u64::MAX / u64::from(size.bytes()));
        let name = SegmentName::new(TimelineId(1), last, size).unwrap();
        assert_eq!(name.to_string(), "00000001FFFFFFFF000000FF");
        let err = name.next_segment(size).unwrap_err();
        assert_eq!(
            err,
            NameError::SegmentNoOutOfRange {
                segno: SegmentNo(last.0 + 1),
                seg_size: size
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "WAL segment number {} is past the end of the WAL address space at a \
                 segment size of 16 MiB",
                last.0 + 1
            )
        );
        assert!(SegmentName::new(TimelineId(1), SegmentNo(u64::MAX), size).is_err());
    }

    #[test]
    fn next_segment_crosses_log_ids() {
        let size = WalSegSize::DEFAULT;
        let name = SegmentName::parse("0000000100000001000000FF").unwrap();
        let next = name.next_segment(size).unwrap();
        assert_eq!(next.to_string(), "000000010000000200000000");
        assert_eq!(next.tli(), TimelineId(1));
        assert_eq!(next.start_lsn(size).unwrap(), "2/0".parse::<Lsn>().unwrap());
        assert!(name < next);
    }

    #[test]
    fn parses_each_kind_and_prints_it_back() {
        let cases = [
            (
                "000000010000000000000003",
                WalFileName::Segment(SegmentName {
                    tli: TimelineId(1),
                    log: 0,
                    seg: 3,
                }),
            ),
            (
                "0000000200000000000000A1.partial",
                WalFileName::Partial(SegmentName {
                    tli: TimelineId(2),
                    log: 0,
                    seg: 0xA1,
                }),
            ),
            (
                "00000002.history",
                WalFileName::History { tli: TimelineId(2) },
            ),
            (
                "000000010000000000000002.00000028.backup",
                WalFileName::BackupHistory {
                    segment: SegmentName {
                        tli: TimelineId(1),
                        log: 0,
                        seg: 2,
                    },
                    offset: 0x28,
                },
            ),
        ];
        for (text, want) in cases {
            let got = WalFileName::parse(text).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
            assert_eq!(text.parse::<WalFileName>().unwrap(), want);
        }
        let backup = WalFileName::parse("0000000300000000000000020.00000028.backup");
        assert!(backup.is_err(), "25 digits before the offset");
    }

    #[test]
    fn timeline_and_segment_of_each_kind() {
        let seg = WalFileName::parse("000000050000000000000003").unwrap();
        assert_eq!(seg.timeline(), TimelineId(5));
        assert_eq!(
            seg.segment().unwrap().segno(WalSegSize::DEFAULT),
            Ok(SegmentNo(3))
        );
        let history = WalFileName::parse("0000000A.history").unwrap();
        assert_eq!(history.timeline(), TimelineId(10));
        assert_eq!(history.segment(), None);
        let backup = WalFileName::parse("000000070000000000000002.00000028.backup").unwrap();
        assert_eq!(backup.timeline(), TimelineId(7));
        assert_eq!(
            backup.segment().unwrap().to_string(),
            "000000070000000000000002"
        );
        let partial = WalFileName::parse("000000070000000000000002.partial").unwrap();
        assert_eq!(partial.timeline(), TimelineId(7));
    }

    #[test]
    fn rejects_what_postgres_would_not_call_a_wal_file() {
        for bad in [
            "",
            "00000001000000000000000",                   // 23 digits
            "0000000100000000000000031",                 // 25 digits
            "00000001000000000000000a",                  // lowercase
            "00000001000000000000000G",                  // not hex
            "000000010000000000000003.PARTIAL",          // suffix case
            "000000010000000000000003.partial.partial",  //
            "000000010000000000000003.ready",            // archive_status
            "0000002.history",                           // 7 digits
            "000000002.history",                         // 9 digits
            "0000000a.history",                          // lowercase
            "000000010000000000000002.backup",           // no offset
            "000000010000000000000002.0000028.backup",   // 7-digit offset
            "000000010000000000000002.0000002g.backup",  // bad offset
            "000000010000000000000002.00000028.backupx", // suffix
            "0000000100000000000000é",                   // non-ASCII, 24 bytes
            "RECOVERYHISTORY",
            "backup_label",
        ] {
            assert_eq!(
                WalFileName::parse(bad),
                Err(NameError::NotWalFileName { name: bad.into() }),
                "{bad:?}"
            );
        }
        assert_eq!(
            WalFileName::parse("pg_control").unwrap_err().to_string(),
            "\"pg_control\" is not a WAL file name: expected a segment (24 uppercase hex \
             digits, like 000000010000000000000003), a partial segment (…0003.partial), a \
             timeline history file (00000002.history) or a backup history file \
             (…0003.00000028.backup)"
        );
    }

    fn seg_size() -> impl Strategy<Value = WalSegSize> {
        (20u32..=30).prop_map(|shift| WalSegSize::new(1 << shift).expect("power of two in range"))
    }

    proptest! {
        #[test]
        fn lsn_display_parses_back(raw in any::<u64>()) {
            let lsn = Lsn(raw);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }

        #[test]
        fn lsn_lowercase_parses_too(raw in any::<u64>()) {
            let lsn = Lsn(raw);
            prop_assert_eq!(lsn.to_string().to_lowercase().parse::<Lsn>(), Ok(lsn));
        }

        #[test]
        fn lsn_splits_into_segment_and_offset(raw in any::<u64>(), size in seg_size()) {
            let lsn = Lsn(raw);
            let segno = lsn.segment_number(size);
            let start = segno.start_lsn(size).expect("segment of a real LSN has a start");
            prop_assert_eq!(start.checked_add(lsn.segment_offset(size)), Some(lsn));
        }

        #[test]
        fn segment_names_round_trip(tli in any::<u32>(), raw in any::<u64>(), size in seg_size()) {
            // Every segment of a real LSN has a name.
            let segno = Lsn(raw).segment_number(size);
            let name = SegmentName::new(TimelineId(tli), segno, size).expect("in range");
            let text = name.to_string();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(parse_segment_name(&text, size), Ok((TimelineId(tli), segno)));
            prop_assert_eq!(
                WalFileName::parse(&text),
                Ok(WalFileName::Segment(name))
            );
        }

        #[test]
        fn name_order_is_segment_order(
            tli in any::<u32>(), a in any::<u64>(), b in any::<u64>(), size in seg_size()
        ) {
            let (a, b) = (Lsn(a).segment_number(size), Lsn(b).segment_number(size));
            let na = SegmentName::new(TimelineId(tli), a, size).expect("in range");
            let nb = SegmentName::new(TimelineId(tli), b, size).expect("in range");
            prop_assert_eq!(a.cmp(&b), na.cmp(&nb));
            prop_assert_eq!(a.cmp(&b), na.to_string().cmp(&nb.to_string()));
        }

        #[test]
        fn next_segment_is_segno_plus_one(tli in any::<u32>(), raw in 0u64..u64::MAX / 2, size in seg_size()) {
            let segno = Lsn(raw).segment_number(size);
            let name = SegmentName::new(TimelineId(tli), segno, size).expect("in range");
            let next = name.next_segment(size).expect("not the last segment");
            prop_assert_eq!(next.segno(size), Ok(SegmentNo(segno.0 + 1)));
        }

        #[test]
        fn every_kind_round_trips(
            tli in any::<u32>(), log in any::<u32>(), seg in any::<u32>(),
            offset in any::<u32>(), kind in 0u8..4
        ) {
            let segment = SegmentName { tli: TimelineId(tli), log, seg };
            let name = match kind {
                0 => WalFileName::Segment(segment),
                1 => WalFileName::Partial(segment),
                2 => WalFileName::History { tli: TimelineId(tli) },
                _ => WalFileName::BackupHistory { segment, offset },
            };
            let text = name.to_string();
            prop_assert_eq!(WalFileName::parse(&text), Ok(name));
            prop_assert_eq!(name.timeline(), TimelineId(tli));
        }
    }
}
