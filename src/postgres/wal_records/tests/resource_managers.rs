//! The main data of the resource managers read: storage and database records, special
//! records of any other, and `wal_level=minimal`.

use super::*;

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
