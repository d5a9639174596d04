//! The range and the feeding of segments: where the scan stops, what it refuses to read,
//! segments fed in order, reader errors, versions and bounds.

use super::*;

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
