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
//!
//! Layout: `reader` is the streaming page reader ([`WalScanner`]: the range, segments fed in
//! order, page header checks); `assembly` puts records together across page and segment
//! boundaries; `record` checks one whole record (CRC, `xl_prev`) and decodes its block
//! references; `rmgr` reads the main data of the resource managers whose records change
//! relation files beyond their block references.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;

use thiserror::Error;

use super::wal::{Lsn, SegmentName};

mod assembly;
mod reader;
mod record;
mod rmgr;

pub use reader::WalScanner;

/// `XLOG_BLCKSZ`: the size of a WAL page. Configurable when building PostgreSQL, but 8 KiB in
/// every build we know of; the long header of each segment says, and anything else is refused.
const XLOG_BLCKSZ: u64 = 8192;
/// `SizeOfXLogRecord`.
const RECORD_HEADER_SIZE: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers.
const RECORD_CRC_OFFSET: usize = 20;
/// `MAXALIGN`: records start on 8-byte boundaries.
const MAXALIGN: u64 = 8;
/// `MaxAllocSize`: no version reads a record larger than this (16+ write at most
/// `XLogRecordMaxSize`, 1020 MiB). Checked before a length read from disk sizes anything.
const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

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
    /// Relations whose block numbers were dropped to keep the map under its memory ceiling
    /// ([`WalScanner::limit_memory`]): their changed files must be copied whole.
    pub whole: HashSet<RelFileLocator>,
    /// Block numbers held in `main_blocks`.
    pub blocks: u64,
    /// Records scanned.
    pub records: u64,
    /// Bytes of those records (`xl_tot_len` summed: no page headers, alignment or the padding
    /// after a WAL switch).
    pub wal_bytes: u64,
}

/// Heap bytes one block number is reckoned to cost in [`ChangedBlocks::main_blocks`]: a
/// `BTreeSet<u32>` leaf holds 5 to 11 of them in 56 bytes plus the allocator's overhead, and
/// internal nodes add about a sixth.
pub const BYTES_PER_BLOCK: u64 = 16;
/// Heap bytes one relation is reckoned to cost (a hash entry and an empty set).
pub const BYTES_PER_RELATION: u64 = 64;

impl ChangedBlocks {
    /// What the map is reckoned to hold in memory (see [`BYTES_PER_BLOCK`]).
    pub fn estimated_bytes(&self) -> u64 {
        let relations = self.main_blocks.len() + self.whole.len() + self.other_forks.len();
        self.blocks * BYTES_PER_BLOCK + relations as u64 * BYTES_PER_RELATION
    }

    /// Records that block `block` of `rel`'s main fork changed, keeping the map under `ceiling`
    /// bytes: past it, the relations with the most blocks are moved to [`ChangedBlocks::whole`]
    /// (their files copied whole) until the map is at three quarters of it.
    pub(crate) fn touch_main(&mut self, rel: RelFileLocator, block: u32, ceiling: Option<u64>) {
        if self.whole.contains(&rel) {
            return;
        }
        if self.main_blocks.entry(rel).or_default().insert(block) {
            self.blocks += 1;
        }
        let Some(ceiling) = ceiling else { return };
        if self.estimated_bytes() <= ceiling {
            return;
        }
        let target = ceiling / 4 * 3;
        while self.estimated_bytes() > target {
            let Some(largest) = (self.main_blocks.iter())
                .max_by_key(|(rel, blocks)| (blocks.len(), std::cmp::Reverse(**rel)))
                .map(|(rel, _)| *rel)
            else {
                break;
            };
            if let Some(blocks) = self.main_blocks.remove(&largest) {
                self.blocks -= blocks.len() as u64;
            }
            self.whole.insert(largest);
        }
    }
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
        rmgr::rmgr_name(*rmid)
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
