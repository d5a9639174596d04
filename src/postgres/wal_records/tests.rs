//! The scanner against WAL laid out by a small writer below: records with correct CRCs and
//! `xl_prev` links placed into pages and 1 MiB segments the way `XLogInsert` places them.

use std::collections::BTreeMap;

use super::*;

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

#[test]
fn block_references_of_every_shape() {
    let mut wal = TestWal::new(16, START);
    let image = Img {
        bytes: vec![0xCD; 6000],
        hole_offset: 100,
        info: 0x01 | 0x02, // HAS_HOLE | APPLY
        hole_length: None,
    };
    let full = Img {
        bytes: vec![0xEF; 8192],
        hole_offset: 0,
        info: 0x02,
        hole_length: None,
    };
    let rec = Rec {
        origin: Some(3),
        toplevel_xid: Some(900),
        ..Rec::new(RM_HEAP_ID, 0x20)
            .block(blk(0, Some(A), 5))
            .block(Blk {
                image: Some(image),
                data: Vec::new(),
                ..blk(1, None, 6)
            })
            .block(Blk {
                fork: 2, // visibility map
                ..blk(2, Some(B), 0)
            })
            .block(Blk {
                image: Some(full),
                ..blk(7, Some(C), 1_000_000)
            })
            .main(vec![9; 40])
    };
    let first = rec.encode(wal.prev).len() as u64;
    wal.add(&rec);
    // Long main data; a block repeated by the next record is stored once.
    wal.add(&heap(A, 5).main(vec![1; 300]));
    let second = heap(A, 5).main(vec![1; 300]).encode(0).len() as u64;
    let end = wal.next_lsn();

    let result = scan(&wal, 16, START, end).unwrap();
    assert_eq!(blocks(A, &result), [5, 6]);
    assert_eq!(blocks(C, &result), [1_000_000]);
    assert_eq!(result.main_blocks.len(), 2, "{result:?}");
    assert_eq!(result.other_forks, HashSet::from([B]));
    assert!(result.created.is_empty() && result.truncated.is_empty());
    assert_eq!(result.records, 2);
    assert_eq!(result.wal_bytes, first + second);
}

#[test]
fn compressed_images_follow_the_version_flag_layout() {
    // A compressed image with a hole carries its hole length after the image header. Which
    // bits say "compressed" changed in 15.
    let with_image = |info: u8, hole_length: Option<u16>| {
        heap(A, 1).block(Blk {
            image: Some(Img {
                bytes: vec![0x11; 700],
                hole_offset: 64,
                info,
                hole_length,
            }),
            ..blk(1, Some(B), 2)
        })
    };
    // 14: HAS_HOLE | IS_COMPRESSED. 16: HAS_HOLE | COMPRESS_PGLZ, and lz4, and zstd.
    let cases: [(u32, u8); 5] = [(14, 0x03), (13, 0x07), (16, 0x05), (16, 0x09), (15, 0x13)];
    for (major, info) in cases {
        let mut wal = TestWal::new(major, START);
        wal.add(&with_image(info, Some(3000)));
        wal.add(&heap(C, 8));
        let result = scan(&wal, major, START, wal.next_lsn())
            .unwrap_or_else(|e| panic!("PG {major}, bimg_info {info:#04X}: {e}"));
        assert_eq!(blocks(B, &result), [2], "PG {major} {info:#04X}");
        assert_eq!(blocks(C, &result), [8], "PG {major} {info:#04X}");
    }

    // The same bytes read with the other version's meaning misplace everything after the
    // image header, which the length checks catch.
    for (written, read, info) in [(14, 16, 0x03), (16, 14, 0x05)] {
        let mut wal = TestWal::new(read, START);
        wal.add(&with_image(info, Some(3000)));
        let err = scan(&wal, read, START, wal.next_lsn()).unwrap_err();
        assert!(
            matches!(err, ScanError::BadRecord { .. }),
            "written by {written}, read as {read}: {err}"
        );
    }

    // Without compression there is no hole length, in either layout (16: HAS_HOLE | APPLY,
    // 14: HAS_HOLE | APPLY).
    for (major, info) in [(16, 0x03), (14, 0x05)] {
        let mut wal = TestWal::new(major, START);
        wal.add(&with_image(info, None));
        let result = scan(&wal, major, START, wal.next_lsn()).unwrap();
        assert_eq!(blocks(B, &result), [2]);
    }
}

#[test]
fn image_flags_a_version_does_not_write_are_refused() {
    for (major, info) in [(14, 0x08), (16, 0x20), (16, 0x0C)] {
        let mut wal = TestWal::new(major, START);
        wal.add(&heap(A, 1).block(Blk {
            image: Some(Img {
                bytes: vec![0; 500],
                hole_offset: 0,
                info,
                hole_length: None,
            }),
            ..blk(1, None, 2)
        }));
        let err = scan(&wal, major, START, wal.next_lsn()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid WAL record at 0/300028 in segment 000000010000000000000003: block \
                 reference 1: image flags {info:#04X} are not ones this version writes"
            )
        );
    }
}

#[test]
fn malformed_block_headers_are_refused() {
    let cases: Vec<(Rec, &str)> = vec![
        (
            Rec::new(RM_HEAP_ID, 0).block(blk(0, None, 1)),
            "has BKPBLOCK_SAME_REL but no relation precedes it",
        ),
        (
            heap(A, 1).block(blk(0, None, 2)),
            "block reference 0 out of order",
        ),
        (
            heap(A, 1).block(Blk {
                fork: 4,
                ..blk(1, None, 2)
            }),
            "block reference 1 names fork 4",
        ),
        (heap(A, 1).block(blk(33, None, 2)), "invalid block id 33"),
    ];
    for (rec, expected) in cases {
        let mut wal = TestWal::new(16, START);
        wal.add(&rec);
        let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
        assert!(err.to_string().ends_with(expected), "{err}");
    }

    // Lengths that do not add up: a block announcing data it does not have.
    let mut wal = TestWal::new(16, START);
    let mut bytes = heap(A, 1).encode(wal.prev);
    // The block's data_length field, just after its id and fork_flags.
    bytes[RECORD_HEADER_SIZE + 2] += 1;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[RECORD_HEADER_SIZE..]),
        &bytes[..RECORD_CRC_OFFSET],
    );
    bytes[20..24].copy_from_slice(&crc.to_ne_bytes());
    wal.append(&bytes);
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("its headers announce 9 bytes of block and main data, but 8 follow them within xl_tot_len 54"),
        "{err}"
    );
}

#[test]
fn records_split_across_pages_and_headers_split_between_them() {
    let mut wal = TestWal::new(16, START);
    // Three pages' worth of main data.
    let big = wal.add(&heap(A, 1).main(vec![0x77; 20_000]));
    assert!(wal.pos - big > 2 * PAGE);
    // Only xl_tot_len and xl_xid fit before the page boundary.
    let boundary = (wal.next_lsn() / PAGE + 2) * PAGE;
    wal.pad_to(boundary - 8);
    let split = wal.add(&heap(A, 2));
    assert_eq!(split, boundary - 8);
    // A record ending exactly at a page boundary, then one after the next header.
    let boundary = (wal.next_lsn() / PAGE + 1) * PAGE;
    wal.pad_to(boundary - 64);
    wal.add(&noop(64));
    assert_eq!(wal.next_lsn(), boundary + SHORT_HEADER_SIZE);
    wal.add(&heap(A, 3));

    let result = scan(&wal, 16, START, wal.next_lsn()).unwrap();
    assert_eq!(blocks(A, &result), [1, 2, 3]);

    // Scanning from a record that starts at a page start, given as the page start.
    let from = boundary;
    let result = scan(&wal, 16, from, wal.next_lsn()).unwrap();
    assert_eq!(blocks(A, &result), [3]);
}

#[test]
fn records_split_across_segments() {
    for before_boundary in [8, 16, 48, 2000] {
        let mut wal = TestWal::new(16, START);
        wal.pad_to(4 * SEG - before_boundary);
        let split = wal.add(&heap(A, 1).main(vec![0x42; 9000]));
        assert_eq!(split, 4 * SEG - before_boundary);
        wal.add(&heap(B, 2));

        let mut scanner = scanner(16, START, wal.next_lsn());
        assert_eq!(scanner.segments(), [name(3), name(4)]);
        scanner
            .feed_segment(name(3), wal.segment(3).as_slice())
            .unwrap();
        scanner
            .feed_segment(name(4), wal.segment(4).as_slice())
            .unwrap();
        let result = scanner.finish().unwrap();
        assert_eq!(blocks(A, &result), [1], "{before_boundary} bytes before");
        assert_eq!(blocks(B, &result), [2]);
    }
}

#[test]
fn storage_records_create_and_truncate() {
    let create = |rel: RelFileLocator, fork: i32| {
        let mut main = rel_bytes(rel);
        main.extend(fork.to_ne_bytes());
        Rec::new(RM_SMGR_ID, XLOG_SMGR_CREATE | XLR_SPECIAL_REL_UPDATE).main(main)
    };
    let truncate = |rel: RelFileLocator, blocks: u32, flags: i32| {
        let mut main = blocks.to_ne_bytes().to_vec();
        main.extend(rel_bytes(rel));
        main.extend(flags.to_ne_bytes());
        Rec::new(RM_SMGR_ID, XLOG_SMGR_TRUNCATE | XLR_SPECIAL_REL_UPDATE).main(main)
    };
    let mut wal = TestWal::new(16, START);
    wal.add(&create(A, 0));
    wal.add(&create(B, 3)); // an unlogged table's init fork
    wal.add(&truncate(C, 10, 0x7));
    wal.add(&truncate(C, 4, 0x1));
    wal.add(&truncate(C, 7, 0x1));
    // Only the visibility map and free space map: the main fork keeps its length.
    wal.add(&truncate(A, 2, 0x6));
    let result = scan(&wal, 16, START, wal.next_lsn()).unwrap();
    assert_eq!(result.created, HashSet::from([A, B]));
    assert_eq!(result.truncated, HashMap::from([(C, 4)]));
    assert_eq!(result.other_forks, HashSet::from([A, C]));

    for (rec, expected) in [
        (
            truncate(C, 1, 0x9),
            "(resource manager Storage 2, xl_info 0x21) truncates with flags this scanner does \
             not know",
        ),
        (
            Rec::new(RM_SMGR_ID, 0x30 | XLR_SPECIAL_REL_UPDATE).main([0; 16]),
            "(resource manager Storage 2, xl_info 0x31) is a storage record this scanner does \
             not know",
        ),
    ] {
        let mut wal = TestWal::new(16, START);
        wal.add(&rec);
        let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
        assert!(matches!(err, ScanError::Unsupported { .. }), "{err}");
        assert!(err.to_string().ends_with(expected), "{err}");
    }

    let mut wal = TestWal::new(16, START);
    wal.add(&create(A, 0).main(rel_bytes(A)));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("XLOG_SMGR_CREATE with 12 bytes of main data, fewer than 16"),
        "{err}"
    );
}

#[test]
fn database_records_name_the_database() {
    let mut wal = TestWal::new(14, START);
    // 14's XLOG_DBASE_CREATE { db_id, tablespace_id, src_db_id, src_tablespace_id } and
    // XLOG_DBASE_DROP { db_id, ntablespaces, tablespace_ids[] }.
    let create: Vec<u8> = [16_401_u32, 1663, 1, 1663]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    // (XLOG_DBASE_CREATE is 0x00.)
    wal.add(&Rec::new(RM_DBASE_ID, XLR_SPECIAL_REL_UPDATE).main(create));
    let drop: Vec<u8> = [16_300_u32, 1, 1663]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    wal.add(&Rec::new(RM_DBASE_ID, 0x10 | XLR_SPECIAL_REL_UPDATE).main(drop));
    let result = scan(&wal, 14, START, wal.next_lsn()).unwrap();
    assert_eq!(result.databases, HashSet::from([16_401, 16_300]));
}

#[test]
fn special_records_of_other_resource_managers_are_unsupported() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    // Transaction records dropping relations are understood: the files are gone.
    wal.add(&Rec::new(RM_XACT_ID, XLR_SPECIAL_REL_UPDATE).main([0; 12]));
    let special = wal.add(&Rec::new(RM_HEAP_ID, 0x30 | XLR_SPECIAL_REL_UPDATE).main([0; 8]));
    wal.add(&heap(A, 2));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    let ScanError::Unsupported {
        lsn, rmid, info, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((*lsn, *rmid, *info), (Lsn(special), RM_HEAP_ID, 0x31));
    assert_eq!(
        err.to_string(),
        format!(
            "WAL record at {} in segment 000000010000000000000003 (resource manager Heap 10, \
             xl_info 0x31) changes relation files in a way its block references do not \
             describe (XLR_SPECIAL_REL_UPDATE)",
            Lsn(special)
        )
    );

    // An extension's resource manager.
    let mut wal = TestWal::new(16, START);
    wal.add(&Rec::new(130, XLR_SPECIAL_REL_UPDATE).main([0; 8]));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string()
            .contains("(resource manager custom 130, xl_info 0x01)"),
        "{err}"
    );
}

#[test]
fn wal_level_minimal_is_unsupported() {
    let parameter_change = |wal_level: i32| {
        let mut main: Vec<u8> = [100_i32, 8, 10, 0, 64, wal_level]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        main.extend([0, 0, 0, 0]); // wal_log_hints, track_commit_timestamp, padding
        Rec::new(RM_XLOG_ID, XLOG_PARAMETER_CHANGE).main(main)
    };
    let mut wal = TestWal::new(16, START);
    wal.add(&parameter_change(1)); // replica
    let result = scan(&wal, 16, START, wal.next_lsn()).unwrap();
    assert_eq!(result.records, 1);

    wal.add(&parameter_change(0));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "(resource manager XLOG 0, xl_info 0x60) sets wal_level=minimal, under which some \
             relation changes are not WAL-logged"
        ),
        "{err}"
    );
}

#[test]
fn crc_mismatch_is_refused() {
    // In a record within one page, and in the last page of one split across three.
    let mut wal = TestWal::new(16, START);
    let small = wal.add(&heap(A, 1));
    let big = wal.add(&heap(A, 2).main(vec![3; 20_000]));
    let end = wal.next_lsn();

    let mut damaged = clone(&wal);
    damaged.bytes_mut(small + 30, 1)[0] ^= 0x10;
    let err = scan(&damaged, 16, START, end).unwrap_err();
    let ScanError::BadRecord { lsn, reason, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*lsn, Lsn(small));
    assert!(
        reason.starts_with("CRC-32C mismatch: the record says 0x"),
        "{err}"
    );

    let mut damaged = clone(&wal);
    damaged.bytes_mut(end - 16, 1)[0] ^= 0x01;
    let err = scan(&damaged, 16, START, end).unwrap_err();
    assert!(
        matches!(&err, ScanError::BadRecord { lsn, reason, .. } if *lsn == Lsn(big) && reason.starts_with("CRC-32C mismatch")),
        "{err}"
    );
}

fn clone(wal: &TestWal) -> TestWal {
    TestWal {
        magic: wal.magic,
        segs: wal.segs.clone(),
        pos: wal.pos,
        prev: wal.prev,
    }
}

#[test]
fn a_broken_prev_link_is_refused() {
    let mut wal = TestWal::new(16, START);
    let first = wal.add(&heap(A, 1));
    wal.prev = first + 8; // as if a stale record from a torn page followed
    let second = wal.add(&heap(A, 2));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid WAL record at {} in segment 000000010000000000000003: xl_prev is {}, but \
             the previous record starts at {}",
            Lsn(second),
            Lsn(first + 8),
            Lsn(first)
        )
    );

    // The first record's predecessor is unknown but must lie before it.
    let mut wal = TestWal::new(16, START);
    wal.prev = START;
    wal.add(&heap(A, 1));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("xl_prev 0/300028 does not point before the record"),
        "{err}"
    );
}

#[test]
fn recycled_or_foreign_pages_are_refused() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1).main(vec![0; 30_000]));
    wal.add(&heap(A, 2));
    let end = wal.next_lsn();
    let second_page = 3 * SEG + PAGE;

    // A page left from the segment this file was before being recycled.
    let mut recycled = clone(&wal);
    recycled
        .bytes_mut(second_page + 8, 8)
        .copy_from_slice(&(SEG + PAGE).to_ne_bytes());
    let err = scan(&recycled, 16, START, end).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid WAL page at 0/302000 in segment 000000010000000000000003: xlp_pageaddr says \
         0/102000: the file is a recycled segment not yet overwritten, or not this segment"
    );

    let mut newer_timeline = clone(&wal);
    newer_timeline
        .bytes_mut(second_page + 4, 4)
        .copy_from_slice(&2_u32.to_ne_bytes());
    let err = scan(&newer_timeline, 16, START, end).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("page of timeline 2, which cannot appear on timeline 1"),
        "{err}"
    );

    // Another version's WAL.
    let err = scan(&wal, 15, START, end).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid WAL page at 0/300000 in segment 000000010000000000000003: page magic 0xD113 \
         (PostgreSQL 16 writes that), but PostgreSQL 15 writes 0xD110"
    );

    let mut unknown_flag = clone(&wal);
    unknown_flag.add_page_flags(second_page, 0x0010);
    let err = scan(&unknown_flag, 16, START, end).unwrap_err();
    assert!(
        err.to_string().ends_with("unknown xlp_info bits 0x0011"),
        "{err}"
    );

    let mut long_inside = clone(&wal);
    long_inside.add_page_flags(second_page, XLP_LONG_HEADER);
    let err = scan(&long_inside, 16, START, end).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("a long header (XLP_LONG_HEADER) on a page that does not start a segment"),
        "{err}"
    );

    // Another cluster, when the caller knows this one's identifier.
    let mut scanner = scanner(16, START, end);
    scanner.expect_system_id(SYSID + 1);
    let err = scanner
        .feed_segment(name(3), wal.segment(3).as_slice())
        .unwrap_err();
    assert!(
        err.to_string().ends_with(&format!(
            "system identifier {SYSID}, but this cluster's is {}",
            SYSID + 1
        )),
        "{err}"
    );
    let mut scanner = scanner_for_sysid(end);
    scanner
        .feed_segment(name(3), wal.segment(3).as_slice())
        .unwrap();
    assert_eq!(blocks(A, &scanner.finish().unwrap()), [1, 2]);

    // A zero-filled (pre-allocated) segment.
    let err = scan(&TestWal::new(16, START), 16, START, end).unwrap_err();
    assert!(matches!(err, ScanError::EndsEarly { .. }), "{err}");
    let mut zeros = clone(&wal);
    zeros.segs.clear();
    let err = scan(&zeros, 16, START, end).unwrap_err();
    assert!(
        err.to_string()
            .contains("page magic 0x0000, but PostgreSQL 16"),
        "{err}"
    );
}

fn scanner_for_sysid(end: u64) -> WalScanner {
    let mut scanner = scanner(16, START, end);
    scanner.expect_system_id(SYSID);
    scanner
}

#[test]
fn the_scan_stops_at_end_and_reads_no_further() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    wal.add(&heap(A, 2).main(vec![0; 10_000]));
    let end = wal.next_lsn();
    // Records at and after `end` are not part of the range...
    wal.add(&heap(A, 3));
    wal.add(&heap(B, 4).main(vec![0; 20_000]));
    // ...nor are pages after the one holding it, which may not be written yet.
    let end_page_end = (end / PAGE + 1) * PAGE;
    for page in (end_page_end..4 * SEG).step_by(PAGE as usize) {
        wal.bytes_mut(page, 24).fill(0xFF);
    }
    let segment = wal.segment(3);

    let mut scanner = scanner(16, START, end);
    assert_eq!(scanner.segments(), [name(3)]);
    let written = (end_page_end - 3 * SEG) as usize;
    scanner.feed_segment(name(3), &segment[..written]).unwrap();
    let result = scanner.finish().unwrap();
    assert_eq!(blocks(A, &result), [1, 2]);
    assert!(!result.main_blocks.contains_key(&B));
    assert_eq!(result.records, 2);
}

#[test]
fn an_end_just_past_a_page_header_needs_no_page_there() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    let page = (wal.next_lsn() / PAGE + 3) * PAGE;
    wal.pad_to(page + SHORT_HEADER_SIZE);
    // What pg_current_wal_insert_lsn() reports when the last record filled its page.
    let end = wal.next_lsn();
    let segment = wal.segment(3);
    for given in [end, page] {
        let mut scanner = scanner(16, START, given);
        scanner
            .feed_segment(name(3), &segment[..(page - 3 * SEG) as usize])
            .unwrap();
        assert_eq!(blocks(A, &scanner.finish().unwrap()), [1]);
    }

    // At a segment's start: that segment is not needed at all.
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    wal.pad_to(4 * SEG + 40);
    for end in [4 * SEG + 40, 4 * SEG] {
        let scanner = scanner(16, START, end);
        assert_eq!(scanner.segments(), [name(3)]);
        assert_eq!(blocks(A, &scan(&wal, 16, START, end).unwrap()), [1]);
    }
}

#[test]
fn wal_ending_early_is_an_error() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    let last = wal.next_lsn();
    let err = scan(&wal, 16, START, last + 4096).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "WAL ends at {} in segment 000000010000000000000003, before the end of the scanned \
             range at {}: no record starts there",
            Lsn(last),
            Lsn(last + 4096)
        )
    );

    // A segment file shorter than the pages the scan needs.
    let segment = wal.segment(3);
    let mut scanner = scanner(16, START, last);
    let err = scanner.feed_segment(name(3), &segment[..100]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "WAL segment 000000010000000000000003 ends inside the page at offset 0, which the scan \
         needs"
    );
}

#[test]
fn a_record_crossing_the_end_is_an_error() {
    let mut wal = TestWal::new(16, START);
    let big = wal.add(&heap(A, 1).main(vec![0; 20_000]));
    let small = wal.add(&heap(A, 2));
    // Inside the big record: before the page its end is on...
    for end in [big + 64, (big / PAGE + 1) * PAGE + 24, small - 8] {
        // Only the pages up to the one holding `end` exist: the scan must say why it stops
        // rather than read on.
        let written = ((end - 24) / PAGE + 1) * PAGE - 3 * SEG;
        let mut scanner = scanner(16, START, end);
        let err = scanner
            .feed_segment(name(3), &wal.segment(3)[..written as usize])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "WAL record at {} in segment 000000010000000000000003 continues past the end \
                 of the scanned range at {}: the end must be a record boundary, like \
                 pg_current_wal_insert_lsn()",
                Lsn(big),
                Lsn(end)
            ),
            "end {}",
            Lsn(end)
        );
    }
    let err = scan(&wal, 16, START, small + 8).unwrap_err();
    assert!(
        matches!(err, ScanError::EndInsideRecord { lsn, .. } if lsn == Lsn(small)),
        "{err}"
    );
}

#[test]
fn a_switch_skips_the_rest_of_its_segment() {
    let mut wal = TestWal::new(16, START);
    wal.add(&heap(A, 1));
    let switch = wal.switch();
    let next = wal.add(&heap(A, 2));
    assert_eq!(next, 4 * SEG + 40);
    // The padding pages were never written: all zeros, which no page check would pass.
    let result = scan(&wal, 16, START, wal.next_lsn()).unwrap();
    assert_eq!(blocks(A, &result), [1, 2]);
    assert_eq!(result.records, 3);

    // An end in the padding (what pg_switch_wal() returns) needs only the first segment.
    for end in [switch + 24, switch + 24 + 3 * PAGE] {
        let scanner = scanner(16, START, end);
        assert_eq!(scanner.segments(), [name(3)]);
        assert_eq!(blocks(A, &scan(&wal, 16, START, end).unwrap()), [1]);
    }
}

#[test]
fn an_overwritten_contrecord_abandons_the_partial_record() {
    // A crash cut a record off after its first page; recovery wrote new WAL from the next
    // page on, flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD and opened by the record saying so.
    let build = |overwrite: Option<Rec>, named: Option<u64>| {
        let mut wal = TestWal::new(16, START);
        wal.add(&heap(A, 1));
        let boundary = (wal.next_lsn() / PAGE + 2) * PAGE;
        wal.pad_to(boundary - 64);
        let cut = wal.next_lsn();
        let partial = heap(B, 99).main(vec![0; 500]).encode(wal.prev);
        wal.bytes_mut(cut, 64).copy_from_slice(&partial[..64]);
        wal.pos = boundary;
        let mut main = named.unwrap_or(cut).to_ne_bytes().to_vec();
        main.extend(0_i64.to_ne_bytes()); // overwrite_time
        let over = overwrite.unwrap_or(Rec::new(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD).main(main));
        assert_eq!(wal.add(&over), boundary + SHORT_HEADER_SIZE);
        wal.add_page_flags(boundary, XLP_FIRST_IS_OVERWRITE_CONTRECORD);
        wal.add(&heap(A, 2));
        (wal, cut)
    };

    let (wal, _) = build(None, None);
    let result = scan(&wal, 16, START, wal.next_lsn()).unwrap();
    assert_eq!(blocks(A, &result), [1, 2]);
    assert!(!result.main_blocks.contains_key(&B), "{result:?}");

    let (wal, cut) = build(Some(heap(C, 1)), None);
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string().ends_with(&format!(
            "the record at {} was cut off (XLP_FIRST_IS_OVERWRITE_CONTRECORD), but what follows \
             is not XLOG_OVERWRITE_CONTRECORD",
            Lsn(cut)
        )),
        "{err}"
    );

    let (wal, cut) = build(None, Some(START));
    let err = scan(&wal, 16, START, wal.next_lsn()).unwrap_err();
    assert!(
        err.to_string().ends_with(&format!(
            "XLOG_OVERWRITE_CONTRECORD names 0/300028 as cut off, but the record cut off was at {}",
            Lsn(cut)
        )),
        "{err}"
    );
}

#[test]
fn a_continuation_page_must_say_so() {
    let mut wal = TestWal::new(16, START);
    let big = wal.add(&heap(A, 1).main(vec![0; 10_000]));
    wal.add(&heap(A, 2));
    let end = wal.next_lsn();
    let second_page = 3 * SEG + PAGE;

    let mut unflagged = clone(&wal);
    unflagged.bytes_mut(second_page + 2, 2).fill(0);
    let err = scan(&unflagged, 16, START, end).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("it continues on the page at 0/302000, which lacks XLP_FIRST_IS_CONTRECORD"),
        "{err}"
    );

    let mut wrong_length = clone(&wal);
    wrong_length
        .bytes_mut(second_page + 16, 4)
        .copy_from_slice(&5_u32.to_ne_bytes());
    let err = scan(&wrong_length, 16, START, end).unwrap_err();
    assert!(
        matches!(&err, ScanError::BadRecord { lsn, reason, .. } if *lsn == Lsn(big) && reason.contains("xlp_rem_len 5")),
        "{err}"
    );

    // A start inside the continued part is not a record boundary.
    let err = scan(&wal, 16, second_page + 24, end).unwrap_err();
    assert!(
        err.to_string()
            .contains("the page continues a record from the previous page up to"),
        "{err}"
    );
}

#[test]
fn segments_are_fed_in_order_and_all_of_them() {
    let mut wal = TestWal::new(16, START);
    wal.pad_to(5 * SEG + 40);
    wal.add(&heap(A, 1));
    let end = wal.next_lsn();
    assert_eq!(end, 5 * SEG + 0x60);

    let mut scanner = scanner(16, START, end);
    assert_eq!(scanner.segments(), [name(3), name(4), name(5)]);
    let err = scanner
        .feed_segment(name(4), wal.segment(4).as_slice())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "WAL segment 000000010000000000000004 fed out of order: expected \
         000000010000000000000003"
    );

    let mut scanner = self::scanner(16, START, end);
    for segno in [3, 4] {
        scanner
            .feed_segment(name(segno), wal.segment(segno).as_slice())
            .unwrap();
    }
    assert_eq!(scanner.segments(), [name(5)]);
    let err = scanner.finish().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the WAL scan stopped at 0/500028, before the end of the range at 0/500060: segment \
         000000010000000000000005 was not fed"
    );

    let mut scanner = self::scanner(16, START, end);
    for segno in [3, 4, 5] {
        scanner
            .feed_segment(name(segno), wal.segment(segno).as_slice())
            .unwrap();
    }
    let err = scanner
        .feed_segment(name(6), wal.segment(6).as_slice())
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("fed out of order: every segment of the range was already fed"),
        "{err}"
    );
    assert_eq!(blocks(A, &scanner.finish().unwrap()), [1]);

    // Another timeline's name for the right segment.
    let mut scanner = self::scanner(16, START, end);
    let other = SegmentName::new(TimelineId(2), SegmentNo(3), WalSegSize::MIN).unwrap();
    assert!(matches!(
        scanner.feed_segment(other, wal.segment(3).as_slice()),
        Err(ScanError::UnexpectedSegment { .. })
    ));
}

#[test]
fn a_reader_error_names_the_segment_and_offset() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let mut scanner = scanner(16, START, START + 64);
    let err = scanner.feed_segment(name(3), Failing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "read WAL segment 000000010000000000000003 at offset 0: disk on fire"
    );
}

#[test]
fn versions_and_ranges_are_checked() {
    for major in [12, 19] {
        let err = WalScanner::new(major, TLI, WalSegSize::MIN, Lsn(START), Lsn(START + 64))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!("the WAL scanner reads PostgreSQL 13 to 18, not {major}")
        );
    }
    let range = |start: u64, end: u64| {
        WalScanner::new(16, TLI, WalSegSize::MIN, Lsn(start), Lsn(end))
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        range(START + 64, START),
        Some("cannot scan WAL from 0/300068 to 0/300028: the start is after the end".into())
    );
    assert_eq!(
        range(START + 4, START + 64),
        Some(
            "cannot scan WAL from 0/30002C to 0/300068: the start is not 8-byte aligned, so no \
             record starts there"
                .into()
        )
    );
    assert_eq!(
        range(3 * SEG + 16, START + 64),
        Some("cannot scan WAL from 0/300010 to 0/300068: a bound lies inside a page header".into())
    );
    assert_eq!(
        range(START, 3 * SEG + PAGE + 8),
        Some("cannot scan WAL from 0/300028 to 0/302008: a bound lies inside a page header".into())
    );
    assert!(range(0, START).is_some());
    assert!(range(START, u64::MAX).is_some());
    assert!(WalScanner::new(
        16,
        TimelineId(0),
        WalSegSize::MIN,
        Lsn(START),
        Lsn(START + 8)
    )
    .is_err());

    // An empty range needs nothing; a page start means past its header.
    let scanner = scanner(16, START, START);
    assert!(scanner.segments().is_empty());
    assert_eq!(scanner.finish().unwrap(), ChangedBlocks::default());
    let scanner = self::scanner(16, 3 * SEG, START);
    assert!(scanner.segments().is_empty());
    let scanner = self::scanner(16, 3 * SEG + PAGE, 3 * SEG + PAGE + 24);
    assert!(scanner.segments().is_empty());
}

#[test]
fn a_scan_can_start_mid_segment() {
    let mut wal = TestWal::new(13, START);
    wal.add(&heap(A, 1));
    wal.add(&heap(A, 2).main(vec![0; 9000]));
    let from = wal.add(&heap(A, 3));
    wal.add(&heap(B, 4));
    let result = scan(&wal, 13, from, wal.next_lsn()).unwrap();
    assert_eq!(blocks(A, &result), [3]);
    assert_eq!(blocks(B, &result), [4]);
    assert_eq!(result.records, 2);
}
