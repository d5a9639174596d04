//! Which relation blocks a range of WAL changed: the scan behind block-level incremental
//! backups, which read only the blocks changed since their parent's start LSN.
//!
//! Owns the reading of WAL *records*: page headers (`XLogPageHeaderData`), record reassembly
//! across page and segment boundaries, the record CRC, and the block references and main data
//! of `XLogRecord` (`src/include/access/xlogrecord.h`, `xlog_internal.h`, decoded the way
//! `xlogreader.c`'s `XLogDecodeNextRecord` and `DecodeXLogRecord` do). Knows nothing of
//! storage or of backups: the caller feeds segment contents, in order, from wherever they are
//! (`pg_wal`, the repository) and decides what to copy from the result.
//!
//! A missed block means a silently corrupt restore, so the scan refuses what it does not
//! understand instead of guessing: every page header is checked (magic of the given major,
//! `xlp_pageaddr`, timeline), every record's CRC-32C and `xl_prev` link, every length against
//! `xl_tot_len`; a record that changes relation files in a way block references do not
//! describe (`XLR_SPECIAL_REL_UPDATE` from a resource manager handled nowhere here), or WAL
//! written under `wal_level=minimal` (which skips logging some changes), is
//! [`ScanError::Unsupported`], and the caller falls back to copying changed files whole.
//!
//! Memory: one WAL page plus the record being reassembled (records are bounded by
//! PostgreSQL's own 1 GiB allocation limit, ordinarily a few KiB), plus the result. Segment
//! contents are streamed through [`std::io::Read`].
//!
//! Byte order: native, like `wal_header` (PostgreSQL writes its structs as they are in memory,
//! and pgward runs beside the server that wrote them).
//!
//! Not handled: a range that crosses a timeline switch (the segments of the older timeline
//! carry its name); the caller scans each timeline's part separately or copies whole files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};

use thiserror::Error;

use super::wal::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegSize};
use super::wal_header::{KNOWN_PAGE_MAGICS, LONG_HEADER_SIZE, XLP_LONG_HEADER};

/// `XLOG_BLCKSZ`: the size of a WAL page. Configurable when building PostgreSQL, but 8 KiB in
/// every build we know of; the long header of each segment says, and anything else is refused.
const XLOG_BLCKSZ: u64 = 8192;
/// `SizeOfXLogShortPHD`: the header of every page but a segment's first.
const SHORT_HEADER_SIZE: u64 = 24;
/// `SizeOfXLogRecord`.
const RECORD_HEADER_SIZE: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers.
const RECORD_CRC_OFFSET: usize = 20;
/// `MAXALIGN`: records start on 8-byte boundaries.
const MAXALIGN: u64 = 8;
/// `MaxAllocSize`: no version reads a record larger than this (16+ write at most
/// `XLogRecordMaxSize`, 1020 MiB). Checked before a length read from disk sizes anything.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

// xlp_info bits (`xlog_internal.h`). The overwrite flag is 0x0008 in 13 to 18 (back-patched
// to 13.4 and 14.0); the development branch after 18 renumbered it with a new page magic,
// which this module then refuses along with the version.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: the above, `XLP_LONG_HEADER` and the unused `XLP_BKP_REMOVABLE` 0x0004.
const XLP_ALL_FLAGS: u16 = 0x000F;

// xl_info bits (`xlogrecord.h`).
const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;

// Block ids and block header flags (`xlogrecord.h`).
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;

// Forks (`common/relpath.h`): main, FSM, visibility map, init.
const MAIN_FORKNUM: u8 = 0;
const MAX_FORKNUM: u8 = 3;

// Resource managers (`access/rmgrlist.h`) and the record kinds read here.
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
// `xl_smgr_truncate.flags` (`catalog/storage_xlog.h`).
const SMGR_TRUNCATE_HEAP: i32 = 0x1;
const SMGR_TRUNCATE_VM: i32 = 0x2;
const SMGR_TRUNCATE_FSM: i32 = 0x4;
/// Offset of `wal_level` in `xl_parameter_change` (five `int`s before it since 12).
const PARAMETER_CHANGE_WAL_LEVEL_OFFSET: usize = 20;
const WAL_LEVEL_MINIMAL: i32 = 0;

/// Names of the built-in resource managers, by id (the same list in 13 to 18).
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// A resource manager's name for messages.
fn rmgr_name(rmid: u8) -> &'static str {
    match RMGR_NAMES.get(usize::from(rmid)) {
        Some(name) => name,
        // `RM_MIN_CUSTOM_ID`: extensions register their own from 128 (15+).
        None if rmid >= 128 => "custom",
        None => "unknown",
    }
}

/// A relation's files, PostgreSQL's `RelFileLocator` (`RelFileNode` before 16): tablespace,
/// database and relation file number, as WAL names them. Displayed `spc/db/rel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileLocator {
    /// `spcOid`: 1663 is `pg_default`, 1664 `pg_global`.
    pub spc: u32,
    /// `dbOid`: 0 for shared relations.
    pub db: u32,
    /// `relNumber`: the file name's number (`pg_relation_filenode`).
    pub rel: u32,
}

impl fmt::Display for RelFileLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

/// Which relation blocks and files a WAL range changed.
///
/// Block numbers count from the start of the relation's fork, across its segment files
/// (`RELSEG_SIZE` blocks, 1 GiB, each).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangedBlocks {
    /// Blocks of the main fork (fork 0) referenced by records, by relation, each set sorted
    /// (the order a backup reads them in).
    pub main_blocks: HashMap<RelFileLocator, BTreeSet<u32>>,
    /// Relations with a fork other than main changed: a block reference to the free space
    /// map, visibility map or init fork, or a truncation of the free space map or visibility
    /// map. The free space map is not fully WAL-logged, so those forks' files must be copied
    /// whole.
    pub other_forks: HashSet<RelFileLocator>,
    /// Relations whose main or other fork was (re)created (`XLOG_SMGR_CREATE`): their files
    /// must be copied whole.
    pub created: HashSet<RelFileLocator>,
    /// Relations whose main fork was truncated (`XLOG_SMGR_TRUNCATE` with
    /// `SMGR_TRUNCATE_HEAP`), with the smallest new length in blocks seen: blocks at or past
    /// it must be read again (a relation re-extended after truncation has unlogged zero
    /// pages).
    pub truncated: HashMap<RelFileLocator, u32>,
    /// Databases with any `RM_DBASE` record (created by copy, dropped, moved): their files
    /// must be copied whole. The database oid is the first 4 bytes of main data in every
    /// dbase record of every supported version.
    pub databases: HashSet<u32>,
    /// Records scanned.
    pub records: u64,
    /// Bytes of those records (`xl_tot_len` summed: no page headers, alignment or the padding
    /// after a WAL switch).
    pub wal_bytes: u64,
}

/// Why a WAL range could not be scanned. Every message says where: the LSN (`X/X`), the
/// segment holding it, and what was wrong. Callers branch on [`ScanError::Unsupported`]
/// (copy changed files whole instead); everything else means the WAL or the range is not
/// what the caller thought.
#[derive(Debug, Error)]
pub enum ScanError {
    /// A major version whose WAL format this module was not written against.
    #[error("the WAL scanner reads PostgreSQL 13 to 18, not {pg_major}")]
    UnsupportedVersion { pg_major: u32 },
    /// `start` or `end` cannot bound a scan.
    #[error("cannot scan WAL from {start} to {end}: {reason}")]
    InvalidRange {
        start: Lsn,
        end: Lsn,
        reason: &'static str,
    },
    /// A segment other than the next one [`WalScanner::segments`] listed.
    #[error(
        "WAL segment {got} fed out of order: {}",
        expected.map_or_else(
            || "every segment of the range was already fed".to_string(),
            |e| format!("expected {e}")
        )
    )]
    UnexpectedSegment {
        got: SegmentName,
        expected: Option<SegmentName>,
    },
    /// The reader failed.
    #[error("read WAL segment {segment} at offset {offset}: {source}")]
    Read {
        segment: SegmentName,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The reader ended before a page the scan needs.
    #[error("WAL segment {segment} ends inside the page at offset {offset}, which the scan needs")]
    Truncated { segment: SegmentName, offset: u64 },
    /// A page header that is not this cluster's page at this position: often a recycled
    /// segment not yet overwritten, or a file from another cluster or version.
    #[error("invalid WAL page at {lsn} in segment {segment}: {reason}")]
    BadPage {
        segment: SegmentName,
        lsn: Lsn,
        reason: String,
    },
    /// A record that fails its CRC or whose lengths or headers do not add up.
    #[error("invalid WAL record at {lsn} in segment {segment}: {reason}")]
    BadRecord {
        segment: SegmentName,
        lsn: Lsn,
        reason: String,
    },
    /// No record where one must start, before `end`: the WAL stops early (a segment not
    /// completely written yet, or the wrong file).
    #[error(
        "WAL ends at {lsn} in segment {segment}, before the end of the scanned range at {end}: \
         no record starts there"
    )]
    EndsEarly {
        segment: SegmentName,
        lsn: Lsn,
        end: Lsn,
    },
    /// A record that starts before `end` but ends after it: `end` is not a record boundary.
    #[error(
        "WAL record at {lsn} in segment {segment} continues past the end of the scanned range \
         at {end}: the end must be a record boundary, like pg_current_wal_insert_lsn()"
    )]
    EndInsideRecord {
        segment: SegmentName,
        lsn: Lsn,
        end: Lsn,
    },
    /// A record this module cannot turn into changed blocks.
    #[error(
        "WAL record at {lsn} in segment {segment} (resource manager {} {rmid}, xl_info \
         {info:#04X}) {reason}",
        rmgr_name(*rmid)
    )]
    Unsupported {
        segment: SegmentName,
        lsn: Lsn,
        rmid: u8,
        info: u8,
        reason: &'static str,
    },
    /// [`WalScanner::finish`] before the scan reached `end`.
    #[error(
        "the WAL scan stopped at {reached}, before the end of the range at {end}{}",
        next.map_or_else(String::new, |s| format!(": segment {s} was not fed"))
    )]
    Incomplete {
        reached: Lsn,
        end: Lsn,
        next: Option<SegmentName>,
    },
}

/// How `bimg_info` spells "has a hole" and "is compressed": 15 replaced the one compression
/// bit with one per method and moved `BKPIMAGE_APPLY`.
#[derive(Debug, Clone, Copy)]
enum ImageFlags {
    /// 13, 14: `HAS_HOLE` 0x01, `IS_COMPRESSED` 0x02, `APPLY` 0x04.
    Pg13,
    /// 15+: `HAS_HOLE` 0x01, `APPLY` 0x02, `COMPRESS_PGLZ` 0x04, `COMPRESS_LZ4` 0x08,
    /// `COMPRESS_ZSTD` 0x10.
    Pg15,
}

impl ImageFlags {
    /// (has a hole, is compressed), or `None` for bits this version does not define.
    fn decode(self, bimg_info: u8) -> Option<(bool, bool)> {
        let has_hole = bimg_info & 0x01 != 0;
        match self {
            ImageFlags::Pg13 => {
                (bimg_info & !0x07 == 0).then_some((has_hole, bimg_info & 0x02 != 0))
            }
            ImageFlags::Pg15 => {
                let methods = bimg_info & 0x1C;
                // One method at most: PostgreSQL sets one, and two would be a misread.
                (bimg_info & !0x1F == 0 && methods.count_ones() <= 1)
                    .then_some((has_hole, methods != 0))
            }
        }
    }
}

/// Where the scan is between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next record starts here (a page start means just after that page's header).
    Between(u64),
    /// Reassembling the record at `start`, `total` bytes long; `header_checked` once its
    /// header (which may itself be split) was validated.
    InRecord {
        start: u64,
        total: u32,
        header_checked: bool,
    },
    /// The next record starts at or after `end`.
    Done,
}

/// What a record's content asks of the reader.
enum After {
    Next,
    /// `XLOG_SWITCH`: the rest of the segment is padding.
    Switch,
}

/// A record problem before the scanner adds where it is.
enum Problem {
    Bad(String),
    Unsupported {
        rmid: u8,
        info: u8,
        reason: &'static str,
    },
}

fn bad(reason: impl Into<String>) -> Problem {
    Problem::Bad(reason.into())
}

/// Scans a WAL range segment by segment; see the module doc.
pub struct WalScanner {
    pg_major: u32,
    magic: u16,
    timeline: TimelineId,
    seg_size: WalSegSize,
    /// The range, both past any page header they pointed at.
    start: u64,
    end: u64,
    system_id: Option<u64>,
    /// The next segment to feed and the last one of the range (`next > last` once all were).
    next_segno: u64,
    last_segno: u64,
    state: State,
    /// Newest page timeline seen: timelines never go backwards along the WAL.
    latest_tli: u32,
    /// One WAL page.
    page: Vec<u8>,
    /// The record being reassembled across pages.
    record: Vec<u8>,
    records: Records,
}

/// The record-level half of the scan: decoding and the result.
struct Records {
    images: ImageFlags,
    /// Start of the last record read whole: the next one's `xl_prev`.
    prev_record: Option<u64>,
    /// A record abandoned at an `XLP_FIRST_IS_OVERWRITE_CONTRECORD` page: the next record
    /// must be the `XLOG_OVERWRITE_CONTRECORD` naming it.
    aborted: Option<u64>,
    /// The last main-fork block inserted: consecutive records mostly touch the same block.
    last_block: Option<(RelFileLocator, u32)>,
    result: ChangedBlocks,
}

impl WalScanner {
    /// Scans records starting at `start` (a record boundary: a backup's start LSN / checkpoint
    /// redo pointer) up to, not including, records starting at or after `end`. `pg_major`
    /// selects version-dependent flag values (13..=18 supported; others → error).
    ///
    /// Either bound may be a page start, meaning just after that page's header: PostgreSQL
    /// reports insert positions past the header, but write and flush positions can sit on the
    /// boundary. `end` must not fall inside a record: a record starting before it is read
    /// whole, and one running past it is an error.
    pub fn new(
        pg_major: u32,
        timeline: TimelineId,
        seg_size: WalSegSize,
        start: Lsn,
        end: Lsn,
    ) -> Result<WalScanner, ScanError> {
        if !(13..=18).contains(&pg_major) {
            return Err(ScanError::UnsupportedVersion { pg_major });
        }
        let magic = KNOWN_PAGE_MAGICS
            .iter()
            .find(|(major, _)| *major == pg_major)
            .map(|(_, magic)| *magic)
            .ok_or(ScanError::UnsupportedVersion { pg_major })?;
        let invalid = |reason| ScanError::InvalidRange { start, end, reason };
        if timeline.0 == 0 {
            return Err(invalid("timeline 0 does not exist"));
        }
        if start == Lsn::INVALID {
            return Err(invalid("the start is the invalid LSN 0/0"));
        }
        // Keeps every page and segment position below computable without overflow.
        if end.0 > u64::MAX - 2 * u64::from(seg_size.bytes()) {
            return Err(invalid("the end lies at the end of the WAL address space"));
        }
        if start.0 % MAXALIGN != 0 {
            return Err(invalid(
                "the start is not 8-byte aligned, so no record starts there",
            ));
        }
        let mut scanner = WalScanner {
            pg_major,
            magic,
            timeline,
            seg_size,
            start: 0,
            end: 0,
            system_id: None,
            next_segno: 1,
            last_segno: 0,
            state: State::Done,
            latest_tli: 0,
            page: vec![0; XLOG_BLCKSZ as usize],
            record: Vec::new(),
            records: Records {
                images: if pg_major >= 15 {
                    ImageFlags::Pg15
                } else {
                    ImageFlags::Pg13
                },
                prev_record: None,
                aborted: None,
                last_block: None,
                result: ChangedBlocks::default(),
            },
        };
        for lsn in [start.0, end.0] {
            let in_page = lsn % XLOG_BLCKSZ;
            if in_page != 0 && in_page < scanner.header_len(lsn - in_page) {
                return Err(invalid("a bound lies inside a page header"));
            }
        }
        scanner.start = scanner.past_header(start.0);
        scanner.end = scanner.past_header(end.0);
        if scanner.start > scanner.end {
            return Err(invalid("the start is after the end"));
        }
        if scanner.start < scanner.end {
            // The last byte a record before `end` can occupy: a record ending at a page
            // boundary leaves the next page (maybe not written yet) out of the range.
            let in_page = scanner.end % XLOG_BLCKSZ;
            let data_end = if in_page == scanner.header_len(scanner.end - in_page) {
                scanner.end - in_page
            } else {
                scanner.end
            };
            scanner.next_segno = scanner.segno(scanner.start);
            scanner.last_segno = scanner.segno(data_end - 1);
            scanner.state = State::Between(scanner.start);
        }
        Ok(scanner)
    }

    /// Also checks each segment's system identifier (`xlp_sysid`) against `pg_control`'s.
    pub fn expect_system_id(&mut self, system_id: u64) {
        self.system_id = Some(system_id);
    }

    /// The segments to feed, in order (from the one holding `start` through the one holding
    /// the last byte before `end`). Empty when `start == end`.
    pub fn segments(&self) -> Vec<SegmentName> {
        (self.next_segno..=self.last_segno)
            .map(|segno| self.segment_name(segno))
            .collect()
    }

    /// Feeds the next segment's whole content (a reader over the segment file; blocking).
    /// Validates every page header it reads (magic for `pg_major`, `xlp_pageaddr` equal to the
    /// page's LSN, `xlp_tli`) so a recycled or foreign file is refused, reassembles records
    /// across page and segment boundaries, checks each record's CRC-32C.
    ///
    /// Reads only as far as the scan needs: nothing past the page holding `end` (the last
    /// segment may still be being written) or past an `XLOG_SWITCH` record's padding. After
    /// an error the scan cannot go on.
    pub fn feed_segment(
        &mut self,
        segment: SegmentName,
        mut content: impl Read,
    ) -> Result<(), ScanError> {
        let expected =
            (self.next_segno <= self.last_segno).then(|| self.segment_name(self.next_segno));
        if expected != Some(segment) {
            return Err(ScanError::UnexpectedSegment {
                got: segment,
                expected,
            });
        }
        let seg_bytes = u64::from(self.seg_size.bytes());
        let seg_start = self.next_segno * seg_bytes;
        let seg_end = seg_start + seg_bytes;
        self.next_segno += 1;
        let mut page_lsn = seg_start;
        while page_lsn < seg_end {
            let needed = match self.state {
                State::Done => break,
                // After a switch: the rest of the segment holds no records.
                State::Between(at) if at >= seg_end => break,
                State::Between(at) => self.past_header(at) < page_lsn + XLOG_BLCKSZ,
                State::InRecord { start, .. } => {
                    if page_lsn + self.header_len(page_lsn) >= self.end {
                        // Its rest lies beyond `end`, perhaps not even written yet.
                        return Err(ScanError::EndInsideRecord {
                            segment: self.segment_of(start),
                            lsn: Lsn(start),
                            end: Lsn(self.end),
                        });
                    }
                    true
                }
            };
            let offset = page_lsn - seg_start;
            content.read_exact(&mut self.page).map_err(|source| {
                if source.kind() == io::ErrorKind::UnexpectedEof {
                    ScanError::Truncated { segment, offset }
                } else {
                    ScanError::Read {
                        segment,
                        offset,
                        source,
                    }
                }
            })?;
            // A segment's first page identifies the file even where its records are not
            // needed (before `start`).
            if needed || page_lsn == seg_start {
                let header = self.check_page(segment, page_lsn)?;
                if needed {
                    self.read_page(page_lsn, header)?;
                }
            }
            page_lsn += XLOG_BLCKSZ;
        }
        if self.state == State::Done {
            // Nothing more to feed, whatever `segments()` listed.
            self.next_segno = self.last_segno + 1;
        }
        Ok(())
    }

    /// After the last segment: the changed blocks, or an error if the scan did not reach
    /// `end`.
    pub fn finish(self) -> Result<ChangedBlocks, ScanError> {
        let reached = match self.state {
            State::Done => return Ok(self.records.result),
            State::Between(at) => self.past_header(at),
            State::InRecord { start, .. } => start,
        };
        Err(ScanError::Incomplete {
            reached: Lsn(reached),
            end: Lsn(self.end),
            next: (self.next_segno <= self.last_segno).then(|| self.segment_name(self.next_segno)),
        })
    }

    /// `XLogPageHeaderSize` of the page at `page_lsn`, which has the long header exactly when
    /// it starts a segment (checked by [`WalScanner::check_page`]).
    fn header_len(&self, page_lsn: u64) -> u64 {
        if page_lsn % u64::from(self.seg_size.bytes()) == 0 {
            LONG_HEADER_SIZE as u64
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// Where a record that "starts" at `lsn` really starts: a page start means after the
    /// page's header, as in `XLogDecodeNextRecord`.
    fn past_header(&self, lsn: u64) -> u64 {
        if lsn % XLOG_BLCKSZ == 0 {
            lsn + self.header_len(lsn)
        } else {
            lsn
        }
    }

    fn segno(&self, lsn: u64) -> u64 {
        Lsn(lsn).segment_number(self.seg_size).0
    }

    fn segment_name(&self, segno: u64) -> SegmentName {
        SegmentName::new(self.timeline, SegmentNo(segno), self.seg_size)
            .expect("segment numbers of a u64 LSN have 32-bit log ids")
    }

    fn segment_of(&self, lsn: u64) -> SegmentName {
        self.segment_name(self.segno(lsn))
    }

    /// `XLogReaderValidatePageHeader` on the page in `self.page`, at `page_lsn`.
    fn check_page(&mut self, segment: SegmentName, page_lsn: u64) -> Result<PageHeader, ScanError> {
        let page = &self.page;
        let bad = |reason: String| ScanError::BadPage {
            segment,
            lsn: Lsn(page_lsn),
            reason,
        };
        let header = PageHeader {
            magic: u16_at(page, 0),
            info: u16_at(page, 2),
            tli: u32_at(page, 4),
            pageaddr: u64_at(page, 8),
            rem_len: u32_at(page, 16),
        };
        if header.magic != self.magic {
            let other = KNOWN_PAGE_MAGICS
                .iter()
                .find(|(_, m)| *m == header.magic)
                .map_or_else(String::new, |(major, _)| {
                    format!(" (PostgreSQL {major} writes that)")
                });
            return Err(bad(format!(
                "page magic {:#06X}{other}, but PostgreSQL {} writes {:#06X}",
                header.magic, self.pg_major, self.magic
            )));
        }
        if header.info & !XLP_ALL_FLAGS != 0 {
            return Err(bad(format!("unknown xlp_info bits {:#06X}", header.info)));
        }
        let seg_offset = page_lsn % u64::from(self.seg_size.bytes());
        let long = header.info & XLP_LONG_HEADER != 0;
        if long != (seg_offset == 0) {
            return Err(bad(if long {
                "a long header (XLP_LONG_HEADER) on a page that does not start a segment".into()
            } else {
                "the segment's first page lacks the long header (XLP_LONG_HEADER)".into()
            }));
        }
        if header.pageaddr != page_lsn {
            return Err(bad(format!(
                "xlp_pageaddr says {}: the file is a recycled segment not yet overwritten, or \
                 not this segment",
                Lsn(header.pageaddr)
            )));
        }
        if header.tli == 0 || header.tli > self.timeline.0 {
            return Err(bad(format!(
                "page of timeline {}, which cannot appear on timeline {}",
                header.tli, self.timeline
            )));
        }
        if header.tli < self.latest_tli {
            return Err(bad(format!(
                "page of timeline {} after a page of timeline {}",
                header.tli, self.latest_tli
            )));
        }
        if long {
            let system_id = u64_at(page, 24);
            let seg_size = u32_at(page, 32);
            let blcksz = u32_at(page, 36);
            if let Some(expected) = self.system_id.filter(|id| *id != system_id) {
                return Err(bad(format!(
                    "system identifier {system_id}, but this cluster's is {expected}"
                )));
            }
            if seg_size != self.seg_size.bytes() {
                return Err(bad(format!(
                    "written with a segment size of {seg_size} bytes, not {}",
                    self.seg_size.bytes()
                )));
            }
            if u64::from(blcksz) != XLOG_BLCKSZ {
                return Err(bad(format!(
                    "written with XLOG_BLCKSZ {blcksz}, not {XLOG_BLCKSZ}"
                )));
            }
        }
        self.latest_tli = header.tli;
        Ok(header)
    }

    /// Reads the records of the (checked) page in `self.page`: the rest of the record being
    /// reassembled, then each record starting on the page.
    fn read_page(&mut self, page_lsn: u64, header: PageHeader) -> Result<(), ScanError> {
        let header_len = self.header_len(page_lsn);
        let page_end = page_lsn + XLOG_BLCKSZ;
        if let State::InRecord {
            start,
            total,
            header_checked,
        } = self.state
        {
            if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                // The rest of this record was lost (a crash mid-record, then recovery wrote
                // new WAL here): it was never replayed, so it changed nothing. Scanning goes
                // on at this page, whose first record must say so (`XLogDecodeNextRecord`'s
                // "goto restart").
                self.records.aborted = Some(start);
                self.record.clear();
                self.state = State::Between(page_lsn);
            } else {
                let record_error = |reason: String| ScanError::BadRecord {
                    segment: self.segment_of(start),
                    lsn: Lsn(start),
                    reason,
                };
                if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
                    return Err(record_error(format!(
                        "it continues on the page at {}, which lacks XLP_FIRST_IS_CONTRECORD",
                        Lsn(page_lsn)
                    )));
                }
                let left = total - len_u32(&self.record);
                if header.rem_len != left {
                    return Err(record_error(format!(
                        "the page at {} continues it with xlp_rem_len {}, but {left} of its \
                         {total} bytes are left",
                        Lsn(page_lsn),
                        header.rem_len
                    )));
                }
                let take = u64::from(left).min(XLOG_BLCKSZ - header_len);
                let from = header_len as usize;
                self.record
                    .extend_from_slice(&self.page[from..from + take as usize]);
                let mut header_checked = header_checked;
                if !header_checked && self.record.len() >= RECORD_HEADER_SIZE {
                    self.records
                        .check_header(start, &self.record)
                        .map_err(|p| self.problem(start, p))?;
                    header_checked = true;
                }
                if self.record.len() < total as usize {
                    self.state = State::InRecord {
                        start,
                        total,
                        header_checked,
                    };
                    return Ok(());
                }
                let record_end = page_lsn + header_len + take;
                if record_end > self.end {
                    return Err(ScanError::EndInsideRecord {
                        segment: self.segment_of(start),
                        lsn: Lsn(start),
                        end: Lsn(self.end),
                    });
                }
                let record = std::mem::take(&mut self.record);
                let after = self.records.decode(&record);
                self.record = record;
                self.record.clear();
                // A rare huge record should not pin its memory for the rest of the scan.
                if self.record.capacity() > 4 * XLOG_BLCKSZ as usize {
                    self.record = Vec::new();
                }
                let after = after.map_err(|p| self.problem(start, p))?;
                self.records.prev_record = Some(start);
                self.state = State::Between(self.next_record(record_end, after));
            }
        }
        loop {
            let State::Between(at) = self.state else {
                return Ok(());
            };
            let at = self.past_header(at);
            if at >= self.end {
                self.state = State::Done;
                return Ok(());
            }
            if at >= page_end {
                self.state = State::Between(at);
                return Ok(());
            }
            let offset = (at - page_lsn) as usize;
            if header.info & XLP_FIRST_IS_CONTRECORD != 0 {
                let continued_to = header_len + align(u64::from(header.rem_len));
                if at < page_lsn + continued_to {
                    return Err(self.problem(
                        at,
                        bad(format!(
                            "the page continues a record from the previous page up to {}, \
                             so none starts here",
                            Lsn(page_lsn + continued_to)
                        )),
                    ));
                }
            }
            // Records are 8-aligned, so their first 4 bytes (`xl_tot_len`) are on this page.
            let total = u32_at(&self.page, offset);
            if total == 0 {
                return Err(ScanError::EndsEarly {
                    segment: self.segment_of(at),
                    lsn: Lsn(at),
                    end: Lsn(self.end),
                });
            }
            if (total as usize) < RECORD_HEADER_SIZE || total > MAX_RECORD_LEN {
                return Err(self.problem(at, bad(format!("invalid xl_tot_len {total}"))));
            }
            let on_page = XLOG_BLCKSZ as usize - offset;
            if on_page < total as usize {
                self.record.clear();
                self.record.extend_from_slice(&self.page[offset..]);
                let header_checked = on_page >= RECORD_HEADER_SIZE;
                if header_checked {
                    self.records
                        .check_header(at, &self.record)
                        .map_err(|p| self.problem(at, p))?;
                }
                self.state = State::InRecord {
                    start: at,
                    total,
                    header_checked,
                };
                return Ok(());
            }
            let record_end = at + u64::from(total);
            if record_end > self.end {
                return Err(ScanError::EndInsideRecord {
                    segment: self.segment_of(at),
                    lsn: Lsn(at),
                    end: Lsn(self.end),
                });
            }
            let record = &self.page[offset..offset + total as usize];
            let checked = self.records.check_header(at, record);
            let after = checked
                .and_then(|()| self.records.decode(record))
                .map_err(|p| self.problem(at, p))?;
            self.records.prev_record = Some(at);
            self.state = State::Between(self.next_record(record_end, after));
        }
    }

    /// Where the record after one ending at `record_end` starts.
    fn next_record(&self, record_end: u64, after: After) -> u64 {
        match after {
            After::Next => align(record_end),
            // PostgreSQL pads the segment after a switch; the next record opens the next one.
            After::Switch => {
                let seg = u64::from(self.seg_size.bytes());
                record_end.div_ceil(seg) * seg
            }
        }
    }

    /// A record problem with where it happened.
    fn problem(&self, lsn: u64, problem: Problem) -> ScanError {
        let segment = self.segment_of(lsn);
        match problem {
            Problem::Bad(reason) => ScanError::BadRecord {
                segment,
                lsn: Lsn(lsn),
                reason,
            },
            Problem::Unsupported { rmid, info, reason } => ScanError::Unsupported {
                segment,
                lsn: Lsn(lsn),
                rmid,
                info,
                reason,
            },
        }
    }
}

/// The fields of `XLogPageHeaderData` the scan uses.
#[derive(Debug, Clone, Copy)]
struct PageHeader {
    magic: u16,
    info: u16,
    tli: u32,
    pageaddr: u64,
    rem_len: u32,
}

impl Records {
    /// `ValidXLogRecordHeader`'s link check, on the first [`RECORD_HEADER_SIZE`] bytes: a
    /// stale record left on a torn or recycled page does not point at the one before it.
    fn check_header(&self, lsn: u64, header: &[u8]) -> Result<(), Problem> {
        let prev = u64_at(header, 8);
        match self.prev_record {
            Some(expected) if prev != expected => Err(bad(format!(
                "xl_prev is {}, but the previous record starts at {}",
                Lsn(prev),
                Lsn(expected)
            ))),
            // The first record: its predecessor is unknown, but must come before it.
            None if prev >= lsn => Err(bad(format!(
                "xl_prev {} does not point before the record",
                Lsn(prev)
            ))),
            _ => Ok(()),
        }
    }

    /// Checks one whole record (`ValidXLogRecord`, `DecodeXLogRecord`) and adds what it
    /// changed to the result.
    fn decode(&mut self, record: &[u8]) -> Result<After, Problem> {
        let stored = u32_at(record, RECORD_CRC_OFFSET);
        // The payload first, then the header up to the CRC field, as `ValidXLogRecord` does.
        let computed = crc32c::crc32c_append(
            crc32c::crc32c(&record[RECORD_HEADER_SIZE..]),
            &record[..RECORD_CRC_OFFSET],
        );
        if stored != computed {
            return Err(bad(format!(
                "CRC-32C mismatch: the record says {stored:#010X}, its bytes give {computed:#010X}"
            )));
        }
        let info = record[16];
        let rmid = record[17];

        let mut cursor = Cursor {
            bytes: record,
            pos: RECORD_HEADER_SIZE,
        };
        // Bytes of block images, block data and main data the headers announce.
        let mut data_total: u64 = 0;
        let mut main_len: u64 = 0;
        let mut last_block_id: Option<u8> = None;
        let mut last_rel: Option<RelFileLocator> = None;
        // Headers end at the main data header, or where only announced data is left.
        while cursor.left() > data_total {
            let block_id = cursor.u8()?;
            match block_id {
                XLR_BLOCK_ID_DATA_SHORT => {
                    main_len = u64::from(cursor.u8()?);
                    data_total += main_len;
                    break;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    main_len = u64::from(cursor.u32()?);
                    data_total += main_len;
                    break;
                }
                XLR_BLOCK_ID_ORIGIN => cursor.skip(2)?,
                XLR_BLOCK_ID_TOPLEVEL_XID => cursor.skip(4)?,
                0..=XLR_MAX_BLOCK_ID => {
                    if last_block_id.is_some_and(|last| block_id <= last) {
                        return Err(bad(format!("block reference {block_id} out of order")));
                    }
                    last_block_id = Some(block_id);
                    let fork_flags = cursor.u8()?;
                    let data_len = cursor.u16()?;
                    if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len > 0) {
                        return Err(bad(format!(
                            "block reference {block_id}: BKPBLOCK_HAS_DATA disagrees with its \
                             data length {data_len}"
                        )));
                    }
                    data_total += u64::from(data_len);
                    if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                        data_total += u64::from(self.image_header(block_id, &mut cursor)?);
                    }
                    let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                        last_rel.ok_or_else(|| {
                            bad(format!(
                                "block reference {block_id} has BKPBLOCK_SAME_REL but no \
                                 relation precedes it"
                            ))
                        })?
                    } else {
                        cursor.rel()?
                    };
                    last_rel = Some(rel);
                    let block = cursor.u32()?;
                    let fork = fork_flags & BKPBLOCK_FORK_MASK;
                    if fork > MAX_FORKNUM {
                        return Err(bad(format!("block reference {block_id} names fork {fork}")));
                    }
                    self.touch(rel, fork, block);
                }
                _ => return Err(bad(format!("invalid block id {block_id}"))),
            }
        }
        if cursor.left() != data_total {
            return Err(bad(format!(
                "its headers announce {data_total} bytes of block and main data, but {} follow \
                 them within xl_tot_len {}",
                cursor.left(),
                record.len()
            )));
        }
        let main = &record[record.len() - main_len as usize..];
        self.result.records += 1;
        self.result.wal_bytes += record.len() as u64;
        self.contents(rmid, info, main)
    }

    /// Reads an `XLogRecordBlockImageHeader` (and the hole length of a compressed image with
    /// a hole); returns the image's length in the record.
    fn image_header(&self, block_id: u8, cursor: &mut Cursor<'_>) -> Result<u16, Problem> {
        let length = cursor.u16()?;
        let hole_offset = cursor.u16()?;
        let bimg_info = cursor.u8()?;
        let (has_hole, compressed) = self.images.decode(bimg_info).ok_or_else(|| {
            bad(format!(
                "block reference {block_id}: image flags {bimg_info:#04X} are not ones this \
                 version writes"
            ))
        })?;
        if has_hole && compressed {
            let hole_length = cursor.u16()?;
            if hole_offset == 0 || hole_length == 0 {
                return Err(bad(format!(
                    "block reference {block_id}: compressed image with a hole at offset \
                     {hole_offset} of length {hole_length}"
                )));
            }
        } else if !has_hole && hole_offset != 0 {
            return Err(bad(format!(
                "block reference {block_id}: image without a hole has hole offset {hole_offset}"
            )));
        }
        Ok(length)
    }

    fn touch(&mut self, rel: RelFileLocator, fork: u8, block: u32) {
        if fork != MAIN_FORKNUM {
            self.result.other_forks.insert(rel);
        } else if self.last_block != Some((rel, block)) {
            self.last_block = Some((rel, block));
            self.result
                .main_blocks
                .entry(rel)
                .or_default()
                .insert(block);
        }
    }

    /// What the record's main data says, for the resource managers whose records change
    /// relation files beyond their block references.
    fn contents(&mut self, rmid: u8, info: u8, main: &[u8]) -> Result<After, Problem> {
        let kind = info & XLR_RMGR_INFO_MASK;
        let short = |what: &str, need: usize| {
            bad(format!(
                "{what} with {} bytes of main data, fewer than {need}",
                main.len()
            ))
        };
        if let Some(aborted) = self.aborted.take() {
            if rmid != RM_XLOG_ID || kind != XLOG_OVERWRITE_CONTRECORD {
                return Err(bad(format!(
                    "the record at {} was cut off (XLP_FIRST_IS_OVERWRITE_CONTRECORD), but \
                     what follows is not XLOG_OVERWRITE_CONTRECORD",
                    Lsn(aborted)
                )));
            }
            if main.len() < 8 {
                return Err(short("XLOG_OVERWRITE_CONTRECORD", 8));
            }
            let overwritten = u64_at(main, 0);
            if overwritten != aborted {
                return Err(bad(format!(
                    "XLOG_OVERWRITE_CONTRECORD names {} as cut off, but the record cut off was \
                     at {}",
                    Lsn(overwritten),
                    Lsn(aborted)
                )));
            }
        }
        let mut understood = false;
        match rmid {
            RM_XLOG_ID if kind == XLOG_SWITCH => return Ok(After::Switch),
            RM_XLOG_ID if kind == XLOG_PARAMETER_CHANGE => {
                let at = PARAMETER_CHANGE_WAL_LEVEL_OFFSET;
                if main.len() < at + 4 {
                    return Err(short("XLOG_PARAMETER_CHANGE", at + 4));
                }
                if u32_at(main, at) as i32 == WAL_LEVEL_MINIMAL {
                    return Err(Problem::Unsupported {
                        rmid,
                        info,
                        reason: "sets wal_level=minimal, under which some relation changes \
                                 are not WAL-logged",
                    });
                }
            }
            // Commit and abort records that drop relations: a dropped relation's files are
            // gone, nothing to back up.
            RM_XACT_ID => understood = true,
            RM_SMGR_ID => {
                understood = true;
                match kind {
                    XLOG_SMGR_CREATE => {
                        // xl_smgr_create { RelFileLocator; ForkNumber }
                        if main.len() < 16 {
                            return Err(short("XLOG_SMGR_CREATE", 16));
                        }
                        let fork = u32_at(main, 12) as i32;
                        if !(0..=i32::from(MAX_FORKNUM)).contains(&fork) {
                            return Err(bad(format!("XLOG_SMGR_CREATE of fork {fork}")));
                        }
                        self.result.created.insert(rel_at(main, 0));
                    }
                    XLOG_SMGR_TRUNCATE => {
                        // xl_smgr_truncate { BlockNumber; RelFileLocator; int flags }
                        if main.len() < 20 {
                            return Err(short("XLOG_SMGR_TRUNCATE", 20));
                        }
                        let blocks = u32_at(main, 0);
                        let rel = rel_at(main, 4);
                        let flags = u32_at(main, 16) as i32;
                        let known = SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM;
                        if flags & !known != 0 {
                            return Err(Problem::Unsupported {
                                rmid,
                                info,
                                reason: "truncates with flags this scanner does not know",
                            });
                        }
                        if flags & SMGR_TRUNCATE_HEAP != 0 {
                            self.result
                                .truncated
                                .entry(rel)
                                .and_modify(|b| *b = (*b).min(blocks))
                                .or_insert(blocks);
                        }
                        if flags & (SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM) != 0 {
                            self.result.other_forks.insert(rel);
                        }
                    }
                    _ => {
                        return Err(Problem::Unsupported {
                            rmid,
                            info,
                            reason: "is a storage record this scanner does not know",
                        })
                    }
                }
            }
            RM_DBASE_ID => {
                understood = true;
                if main.len() < 4 {
                    return Err(short("database record", 4));
                }
                self.result.databases.insert(u32_at(main, 0));
            }
            _ => {}
        }
        if info & XLR_SPECIAL_REL_UPDATE != 0 && !understood {
            return Err(Problem::Unsupported {
                rmid,
                info,
                reason: "changes relation files in a way its block references do not \
                         describe (XLR_SPECIAL_REL_UPDATE)",
            });
        }
        Ok(After::Next)
    }
}

/// Bounds-checked reads through a record's headers.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Problem> {
        let end = self.pos + n;
        let taken = self.bytes.get(self.pos..end).ok_or_else(|| {
            bad(format!(
                "its headers run past xl_tot_len {}",
                self.bytes.len()
            ))
        })?;
        self.pos = end;
        Ok(taken)
    }

    fn skip(&mut self, n: usize) -> Result<(), Problem> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, Problem> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Problem> {
        Ok(u16_at(self.take(2)?, 0))
    }

    fn u32(&mut self) -> Result<u32, Problem> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn rel(&mut self) -> Result<RelFileLocator, Problem> {
        Ok(rel_at(self.take(12)?, 0))
    }
}

/// Rounds up to `MAXALIGN`.
fn align(n: u64) -> u64 {
    n.div_ceil(MAXALIGN) * MAXALIGN
}

/// A record buffer's length, which [`MAX_RECORD_LEN`] bounds.
fn len_u32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("a record buffer holds at most MAX_RECORD_LEN bytes")
}

// Fixed-offset reads. Callers check lengths first; the slices are of exact size.
fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn rel_at(bytes: &[u8], at: usize) -> RelFileLocator {
    RelFileLocator {
        spc: u32_at(bytes, at),
        db: u32_at(bytes, at + 4),
        rel: u32_at(bytes, at + 8),
    }
}

#[cfg(test)]
mod tests;
