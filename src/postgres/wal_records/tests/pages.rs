//! Page headers and records across them: splits over pages and segments, recycled or
//! foreign pages, continuation flags, `XLOG_SWITCH` padding and an overwritten continuation
//! record.

use super::*;

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
