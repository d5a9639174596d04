//! The WAL scanner on WAL a real server wrote: the blocks, new relations, truncations and
//! databases of a known workload are found in the range it ran in, a table it did not touch
//! is absent, and the blocks agree exactly with what `pg_waldump` (PostgreSQL's own decoder)
//! reports for the same range.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::BufReader;
use std::process::Command;

use pgward::postgres::wal::{Lsn, SegmentName, TimelineId, WalSegSize};
use pgward::postgres::wal_records::{RelFileLocator, WalScanner};

use crate::common::{keep_wal, pg_bin_dir, Cluster, Pgward, BOOT};

/// `pg_default`'s fixed oid.
const DEFAULT_TABLESPACE: u32 = 1663;

async fn lsn(client: &tokio_postgres::Client, sql: &str) -> Lsn {
    let text: String = client.query_one(sql, &[]).await.unwrap().get(0);
    text.parse().unwrap()
}

async fn locator(client: &tokio_postgres::Client, db: u32, table: &str) -> RelFileLocator {
    let rel: u32 = client
        .query_one("SELECT pg_relation_filenode($1::text::regclass)", &[&table])
        .await
        .unwrap()
        .get(0);
    RelFileLocator {
        spc: DEFAULT_TABLESPACE,
        db,
        rel,
    }
}

/// What `pg_waldump` reports for the range: main-fork blocks by relation, relations with
/// blocks of other forks, and the number of records.
struct Dumped {
    main_blocks: HashMap<RelFileLocator, BTreeSet<u32>>,
    other_forks: HashSet<RelFileLocator>,
    records: u64,
}

fn waldump(cluster: &Cluster, timeline: TimelineId, start: Lsn, end: Lsn) -> Dumped {
    let out = Command::new(pg_bin_dir().join("pg_waldump"))
        .arg("--path")
        .arg(cluster.data_dir().join("pg_wal"))
        .args(["--timeline", &timeline.to_string()])
        .args(["--start", &start.to_string(), "--end", &end.to_string()])
        .output()
        .expect("run pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_waldump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dumped = Dumped {
        main_blocks: HashMap::new(),
        other_forks: HashSet::new(),
        records: 0,
    };
    for line in stdout.lines().filter(|l| l.starts_with("rmgr:")) {
        dumped.records += 1;
        // "..., blkref #0: rel 1663/5/16384 [fork vm] blk 5 [FPW]"
        for blkref in line.split("blkref #").skip(1) {
            let words: Vec<&str> = blkref
                .split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .collect();
            let ids: Vec<u32> = words[2].split('/').map(|n| n.parse().unwrap()).collect();
            let rel = RelFileLocator {
                spc: ids[0],
                db: ids[1],
                rel: ids[2],
            };
            let (fork, at) = if words[3] == "fork" {
                (words[4], 5)
            } else {
                ("main", 3)
            };
            assert_eq!(words[at], "blk", "{line}");
            let block: u32 = words[at + 1].parse().unwrap();
            if fork == "main" {
                dumped.main_blocks.entry(rel).or_default().insert(block);
            } else {
                dumped.other_forks.insert(rel);
            }
        }
    }
    dumped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_records_of_a_real_workload_name_what_it_changed() {
    let cluster = Cluster::new();
    let config = cluster.config("password: pw", "");
    // Keep the segments in pg_wal to read them there; compress full-page images so the scan
    // meets the compressed-image layout too.
    keep_wal(&config);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "  parameters:\n",
        "  parameters:\n    wal_compression: \"on\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;

    // Autovacuum off: it would otherwise touch the tables inside the scanned range.
    client
        .batch_execute(
            "CREATE TABLE t (id int, v int, pad text) WITH (autovacuum_enabled = off);
             INSERT INTO t SELECT i, 0, repeat('x', 200) FROM generate_series(1, 1000) i;
             CREATE TABLE untouched (id int, pad text) WITH (autovacuum_enabled = off);
             INSERT INTO untouched SELECT i, repeat('y', 200) FROM generate_series(1, 1000) i;
             CREATE TABLE shrink (id int, pad text) WITH (autovacuum_enabled = off);
             INSERT INTO shrink SELECT i, repeat('z', 200) FROM generate_series(1, 1000) i;",
        )
        .await
        .unwrap();
    // Hint bits and the visibility map of `untouched` settled before the range starts.
    client
        .batch_execute("VACUUM (FREEZE) untouched")
        .await
        .unwrap();
    client.batch_execute("CHECKPOINT").await.unwrap();

    let start = lsn(&client, "SELECT pg_current_wal_insert_lsn()::text").await;
    for ctid in ["(5,1)", "(9,2)"] {
        let updated = client
            .execute(
                &format!("UPDATE t SET v = v + 1 WHERE ctid = '{ctid}'"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(updated, 1, "no row at {ctid}");
    }
    client
        .batch_execute("CREATE TABLE created_t (i int)")
        .await
        .unwrap();
    client.batch_execute("DELETE FROM shrink").await.unwrap();
    client.batch_execute("VACUUM shrink").await.unwrap();
    let shrunk: i64 = client
        .query_one("SELECT pg_relation_size('shrink')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shrunk, 0, "VACUUM did not truncate shrink");
    client.batch_execute("CREATE DATABASE newdb").await.unwrap();
    let end = lsn(&client, "SELECT pg_current_wal_insert_lsn()::text").await;
    // Flushes everything before `end` to the segment files.
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();

    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    let pg_major = version.parse::<u32>().unwrap() / 10_000;
    let seg_bytes: i64 = client
        .query_one(
            "SELECT pg_size_bytes(current_setting('wal_segment_size'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let seg_size = WalSegSize::new(u32::try_from(seg_bytes).unwrap()).unwrap();
    let first_segment: String = client
        .query_one(
            "SELECT pg_walfile_name($1::text::pg_lsn)",
            &[&start.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let timeline = SegmentName::parse(&first_segment).unwrap().tli();
    let db: u32 = client
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let newdb: u32 = client
        .query_one("SELECT oid FROM pg_database WHERE datname = 'newdb'", &[])
        .await
        .unwrap()
        .get(0);
    let t = locator(&client, db, "t").await;
    let untouched = locator(&client, db, "untouched").await;
    let created = locator(&client, db, "created_t").await;
    let shrink = locator(&client, db, "shrink").await;

    let mut scanner = WalScanner::new(pg_major, timeline, seg_size, start, end).unwrap();
    let segments = scanner.segments();
    assert_eq!(segments[0].to_string(), first_segment);
    for segment in segments {
        let path = cluster.data_dir().join("pg_wal").join(segment.to_string());
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        scanner
            .feed_segment(segment, BufReader::new(file))
            .unwrap_or_else(|e| panic!("scan {start} to {end}: {e}"));
    }
    let changes = scanner.finish().unwrap();

    let t_blocks = &changes.main_blocks[&t];
    assert!(
        t_blocks.contains(&5) && t_blocks.contains(&9),
        "blocks of t: {t_blocks:?}"
    );
    assert!(
        !changes.main_blocks.contains_key(&untouched)
            && !changes.other_forks.contains(&untouched)
            && !changes.created.contains(&untouched)
            && !changes.truncated.contains_key(&untouched),
        "the untouched table appears: {changes:?}"
    );
    assert!(changes.created.contains(&created), "{:?}", changes.created);
    assert_eq!(
        changes.truncated.get(&shrink),
        Some(&0),
        "{:?}",
        changes.truncated
    );
    assert!(
        changes.databases.contains(&newdb),
        "{:?}",
        changes.databases
    );
    assert!(changes.records > 0 && changes.wal_bytes > 0);

    let dumped = waldump(&cluster, timeline, start, end);
    assert_eq!(changes.records, dumped.records);
    assert_eq!(changes.main_blocks, dumped.main_blocks);
    assert!(
        dumped.other_forks.is_subset(&changes.other_forks),
        "pg_waldump: {:?}, scan: {:?}",
        dumped.other_forks,
        changes.other_forks
    );
}
