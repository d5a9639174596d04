//! Shared ground of the scanner's tests: a small writer that lays out WAL the way
//! `XLogInsert` does (records with correct CRCs and `xl_prev` links placed into pages and
//! 1 MiB segments), and the helpers that scan it. The tests themselves are in the submodules,
//! by subject: block references and record integrity (`block_refs`), resource managers'
//! main data (`resource_managers`), pages and records across them (`pages`), the range and
//! the feeding of segments (`range`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};

use super::reader::*;
use super::record::*;
use super::rmgr::*;
use super::*;
use crate::postgres::wal::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegSize};
use crate::postgres::wal_header::{KNOWN_PAGE_MAGICS, LONG_HEADER_SIZE, XLP_LONG_HEADER};

mod block_refs;
mod pages;
mod range;
mod resource_managers;

const TLI: TimelineId = TimelineId(1);
const SYSID: u64 = 7_400_000_000_000_000_001;
const SEG: u64 = 1 << 20;
const PAGE: u64 = XLOG_BLCKSZ;
/// The first record of most tests: segment 3, just past its long header.
const START: u64 = 3 * SEG + 40;

const A: RelFileLocator = RelFileLocator {
    spc: 1663,
    db: 5,
    rel: 16384,
};
const B: RelFileLocator = RelFileLocator {
    spc: 1663,
    db: 5,
    rel: 16390,
};
const C: RelFileLocator = RelFileLocator {
    spc: 16500,
    db: 5,
    rel: 16400,
};

const RM_HEAP_ID: u8 = 10;

fn magic(major: u32) -> u16 {
    KNOWN_PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == major)
        .expect("a known major")
        .1
}

fn header_len(page: u64) -> u64 {
    if page % SEG == 0 {
        LONG_HEADER_SIZE as u64
    } else {
        SHORT_HEADER_SIZE
    }
}

/// One block reference of a test record.
#[derive(Clone)]
struct Blk {
    id: u8,
    fork: u8,
    /// `None`: `BKPBLOCK_SAME_REL`.
    rel: Option<RelFileLocator>,
    block: u32,
    data: Vec<u8>,
    image: Option<Img>,
}

/// A full-page image: its stored bytes and header fields.
#[derive(Clone)]
struct Img {
    bytes: Vec<u8>,
    hole_offset: u16,
    info: u8,
    /// Written after the image header (compressed images with a hole).
    hole_length: Option<u16>,
}

fn blk(id: u8, rel: Option<RelFileLocator>, block: u32) -> Blk {
    Blk {
        id,
        fork: 0,
        rel,
        block,
        data: vec![0xAB; 5],
        image: None,
    }
}

#[derive(Clone, Default)]
struct Rec {
    rmid: u8,
    info: u8,
    blocks: Vec<Blk>,
    origin: Option<u16>,
    toplevel_xid: Option<u32>,
    main: Vec<u8>,
    /// `XLR_BLOCK_ID_DATA_LONG` even for short main data (the padding records need it).
    long_main: bool,
}

impl Rec {
    fn new(rmid: u8, info: u8) -> Rec {
        Rec {
            rmid,
            info,
            ..Rec::default()
        }
    }

    fn block(mut self, b: Blk) -> Rec {
        self.blocks.push(b);
        self
    }

    fn main(mut self, main: impl Into<Vec<u8>>) -> Rec {
        self.main = main.into();
        self
    }

    /// Laid out as `XLogRecordAssemble` does, with `xl_prev` and the CRC filled in.
    fn encode(&self, prev: u64) -> Vec<u8> {
        let mut headers: Vec<u8> = Vec::new();
        let mut payload: Vec<u8> = Vec::new();
        for b in &self.blocks {
            let mut flags = b.fork;
            if b.image.is_some() {
                flags |= BKPBLOCK_HAS_IMAGE;
            }
            if !b.data.is_empty() {
                flags |= BKPBLOCK_HAS_DATA;
            }
            if b.rel.is_none() {
                flags |= BKPBLOCK_SAME_REL;
            }
            headers.push(b.id);
            headers.push(flags);
            headers.extend((b.data.len() as u16).to_ne_bytes());
            if let Some(img) = &b.image {
                headers.extend((img.bytes.len() as u16).to_ne_bytes());
                headers.extend(img.hole_offset.to_ne_bytes());
                headers.push(img.info);
                if let Some(hole) = img.hole_length {
                    headers.extend(hole.to_ne_bytes());
                }
                payload.extend(&img.bytes);
            }
            if let Some(rel) = b.rel {
                headers.extend(rel_bytes(rel));
            }
            headers.extend(b.block.to_ne_bytes());
            payload.extend(&b.data);
        }
        if let Some(origin) = self.origin {
            headers.push(XLR_BLOCK_ID_ORIGIN);
            headers.extend(origin.to_ne_bytes());
        }
        if let Some(xid) = self.toplevel_xid {
            headers.push(XLR_BLOCK_ID_TOPLEVEL_XID);
            headers.extend(xid.to_ne_bytes());
        }
        if self.main.len() < 256 && !self.long_main {
            if !self.main.is_empty() {
                headers.push(XLR_BLOCK_ID_DATA_SHORT);
                headers.push(self.main.len() as u8);
            }
        } else {
            headers.push(XLR_BLOCK_ID_DATA_LONG);
            headers.extend((self.main.len() as u32).to_ne_bytes());
        }
        payload.extend(&self.main);

        let total = RECORD_HEADER_SIZE + headers.len() + payload.len();
        let mut rec = Vec::with_capacity(total);
        rec.extend((total as u32).to_ne_bytes());
        rec.extend(742_u32.to_ne_bytes()); // xl_xid
        rec.extend(prev.to_ne_bytes());
        rec.push(self.info);
        rec.push(self.rmid);
        rec.extend([0; 2]);
        rec.extend([0; 4]); // xl_crc, below
        rec.extend(headers);
        rec.extend(payload);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&rec[RECORD_HEADER_SIZE..]),
            &rec[..RECORD_CRC_OFFSET],
        );
        rec[20..24].copy_from_slice(&crc.to_ne_bytes());
        rec
    }
}

fn rel_bytes(rel: RelFileLocator) -> Vec<u8> {
    [rel.spc, rel.db, rel.rel]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// A heap record touching `block` of `rel`.
fn heap(rel: RelFileLocator, block: u32) -> Rec {
    Rec::new(RM_HEAP_ID, 0x00)
        .block(blk(0, Some(rel), block))
        .main([1, 2, 3])
}

/// `XLOG_NOOP` of exactly `len` bytes (at least 26).
fn noop(len: usize) -> Rec {
    assert!(len >= 26, "a padding record of {len} bytes is too short");
    let (main_len, long_main) = if len - 26 <= 255 {
        (len - 26, false)
    } else {
        (len - 29, true)
    };
    Rec {
        long_main,
        ..Rec::new(RM_XLOG_ID, 0x20).main(vec![0x5A; main_len])
    }
}

/// WAL as the server writes it: page headers, continuation flags, 8-byte aligned records.
struct TestWal {
    magic: u16,
    segs: BTreeMap<u64, Vec<u8>>,
    /// The end of the last record (where the next goes, once aligned).
    pos: u64,
    /// The last record's start: the next one's `xl_prev`.
    prev: u64,
}

impl TestWal {
    /// Empty WAL of `major` whose first record goes at `start`.
    fn new(major: u32, start: u64) -> TestWal {
        let mut wal = TestWal {
            magic: magic(major),
            segs: BTreeMap::new(),
            pos: start,
            prev: start - 0x100,
        };
        wal.page_header(start - start % SEG, 0, 0);
        wal.page_header(start - start % PAGE, 0, 0);
        wal
    }

    fn bytes_mut(&mut self, lsn: u64, len: usize) -> &mut [u8] {
        let offset = (lsn % SEG) as usize;
        assert!(offset + len <= SEG as usize, "a write across segments");
        let seg = self
            .segs
            .entry(lsn / SEG)
            .or_insert_with(|| vec![0; SEG as usize]);
        &mut seg[offset..offset + len]
    }

    fn page_header(&mut self, page: u64, info: u16, rem_len: u32) {
        let long = page % SEG == 0;
        let mut h = Vec::new();
        h.extend(self.magic.to_ne_bytes());
        h.extend((info | if long { XLP_LONG_HEADER } else { 0 }).to_ne_bytes());
        h.extend(TLI.0.to_ne_bytes());
        h.extend(page.to_ne_bytes());
        h.extend(rem_len.to_ne_bytes());
        h.extend([0; 4]);
        if long {
            h.extend(SYSID.to_ne_bytes());
            h.extend((SEG as u32).to_ne_bytes());
            h.extend((PAGE as u32).to_ne_bytes());
        }
        self.bytes_mut(page, h.len()).copy_from_slice(&h);
    }

    /// ORs `flags` into the `xlp_info` of the page at `page`.
    fn add_page_flags(&mut self, page: u64, flags: u16) {
        let field = self.bytes_mut(page + 2, 2);
        let info = u16::from_ne_bytes([field[0], field[1]]) | flags;
        field.copy_from_slice(&info.to_ne_bytes());
    }

    /// Where the next record will start.
    fn next_lsn(&self) -> u64 {
        let at = align(self.pos);
        if at % PAGE == 0 {
            at + header_len(at)
        } else {
            at
        }
    }

    /// Places encoded record bytes at the next position; returns that position.
    fn append(&mut self, record: &[u8]) -> u64 {
        let mut at = align(self.pos);
        if at % PAGE == 0 {
            self.page_header(at, 0, 0);
            at += header_len(at);
        }
        let start = at;
        let mut rest = record;
        loop {
            let room = (PAGE - at % PAGE) as usize;
            let n = room.min(rest.len());
            self.bytes_mut(at, n).copy_from_slice(&rest[..n]);
            at += n as u64;
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            self.page_header(at, XLP_FIRST_IS_CONTRECORD, rest.len() as u32);
            at += header_len(at);
        }
        self.pos = at;
        self.prev = start;
        start
    }

    fn add(&mut self, rec: &Rec) -> u64 {
        let bytes = rec.encode(self.prev);
        self.append(&bytes)
    }

    /// Pads with one `XLOG_NOOP` so that the next record starts at `target`.
    fn pad_to(&mut self, target: u64) {
        let mut at = self.next_lsn();
        assert!(at <= target);
        let mut len = 0;
        while at < target {
            let page_end = (at / PAGE + 1) * PAGE;
            let stop = page_end.min(target);
            len += stop - at;
            at = stop;
            if at == page_end && at < target {
                at += header_len(at);
            }
        }
        if len > 0 {
            self.add(&noop(len as usize));
        }
        assert_eq!(self.next_lsn(), target);
    }

    /// `XLOG_SWITCH`; the next record opens the next segment. Returns the switch's LSN.
    fn switch(&mut self) -> u64 {
        let lsn = self.add(&Rec::new(RM_XLOG_ID, XLOG_SWITCH));
        self.pos = (lsn / SEG + 1) * SEG;
        lsn
    }

    fn segment(&self, segno: u64) -> Vec<u8> {
        self.segs
            .get(&segno)
            .cloned()
            .unwrap_or_else(|| vec![0; SEG as usize])
    }
}

fn scanner(major: u32, start: u64, end: u64) -> WalScanner {
    WalScanner::new(major, TLI, WalSegSize::MIN, Lsn(start), Lsn(end)).expect("a valid range")
}

/// Feeds every listed segment whole, then finishes.
fn scan(wal: &TestWal, major: u32, start: u64, end: u64) -> Result<ChangedBlocks, ScanError> {
    let mut scanner = WalScanner::new(major, TLI, WalSegSize::MIN, Lsn(start), Lsn(end))?;
    for name in scanner.segments() {
        let segno = name.segno(WalSegSize::MIN).expect("valid name").0;
        scanner.feed_segment(name, wal.segment(segno).as_slice())?;
    }
    scanner.finish()
}

fn name(segno: u64) -> SegmentName {
    SegmentName::new(TLI, SegmentNo(segno), WalSegSize::MIN).expect("valid segment")
}

fn blocks(rel: RelFileLocator, result: &ChangedBlocks) -> Vec<u32> {
    result
        .main_blocks
        .get(&rel)
        .map(|b| b.iter().copied().collect())
        .unwrap_or_default()
}

fn clone(wal: &TestWal) -> TestWal {
    TestWal {
        magic: wal.magic,
        segs: wal.segs.clone(),
        pos: wal.pos,
        prev: wal.prev,
    }
}

fn scanner_for_sysid(end: u64) -> WalScanner {
    let mut scanner = scanner(16, START, end);
    scanner.expect_system_id(SYSID);
    scanner
}
