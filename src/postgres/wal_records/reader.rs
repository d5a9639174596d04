//! The streaming page reader: [`WalScanner`]'s range, the segments it is fed in order, and
//! the check of every page header (`XLogReaderValidatePageHeader`) before any record on the
//! page is believed. Putting records together from the pages is `assembly`'s; what a record
//! says is `record`'s and `rmgr`'s.

use std::io::{self, Read};

use super::record::Records;
use super::{u16_at, u32_at, u64_at, ChangedBlocks, ScanError, MAXALIGN, XLOG_BLCKSZ};
use crate::postgres::wal::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegSize};
use crate::postgres::wal_header::{KNOWN_PAGE_MAGICS, LONG_HEADER_SIZE, XLP_LONG_HEADER};

/// `SizeOfXLogShortPHD`: the header of every page but a segment's first.
pub(super) const SHORT_HEADER_SIZE: u64 = 24;

// xlp_info bits (`xlog_internal.h`). The overwrite flag is 0x0008 in 13 to 18 (back-patched
// to 13.4 and 14.0); the development branch after 18 renumbered it with a new page magic,
// which this module then refuses along with the version.
pub(super) const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub(super) const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: the above, `XLP_LONG_HEADER` and the unused `XLP_BKP_REMOVABLE` 0x0004.
const XLP_ALL_FLAGS: u16 = 0x000F;

/// Where the scan is between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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

/// Scans a WAL range segment by segment; see the module doc.
pub struct WalScanner {
    pg_major: u32,
    magic: u16,
    timeline: TimelineId,
    pub(super) seg_size: WalSegSize,
    /// The range, both past any page header they pointed at.
    start: u64,
    pub(super) end: u64,
    system_id: Option<u64>,
    /// The next segment to feed and the last one of the range (`next > last` once all were).
    next_segno: u64,
    last_segno: u64,
    pub(super) state: State,
    /// Newest page timeline seen: timelines never go backwards along the WAL.
    latest_tli: u32,
    /// One WAL page.
    pub(super) page: Vec<u8>,
    /// The record being reassembled across pages.
    pub(super) record: Vec<u8>,
    pub(super) records: Records,
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
            records: Records::new(pg_major),
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

    /// Keeps the changed-block map under `bytes` (reckoned as [`ChangedBlocks::estimated_bytes`]
    /// does): past it, the relations with the most changed blocks are listed in
    /// [`ChangedBlocks::whole`] instead, block numbers dropped.
    ///
    /// [`ChangedBlocks::estimated_bytes`]: super::ChangedBlocks::estimated_bytes
    /// [`ChangedBlocks::whole`]: super::ChangedBlocks::whole
    pub fn limit_memory(&mut self, bytes: u64) {
        self.records.memory_ceiling = Some(bytes);
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
                        return Err(self.end_inside_record(start));
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
    pub(super) fn header_len(&self, page_lsn: u64) -> u64 {
        if page_lsn % u64::from(self.seg_size.bytes()) == 0 {
            LONG_HEADER_SIZE as u64
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// Where a record that "starts" at `lsn` really starts: a page start means after the
    /// page's header, as in `XLogDecodeNextRecord`.
    pub(super) fn past_header(&self, lsn: u64) -> u64 {
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

    pub(super) fn segment_of(&self, lsn: u64) -> SegmentName {
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
}

/// The fields of `XLogPageHeaderData` the scan uses.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageHeader {
    magic: u16,
    pub(super) info: u16,
    tli: u32,
    pageaddr: u64,
    pub(super) rem_len: u32,
}
