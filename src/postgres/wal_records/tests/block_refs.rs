//! Block references of every shape and their images, and the checks that refuse a record
//! whose headers, CRC-32C or `xl_prev` link do not add up.

use super::*;

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
