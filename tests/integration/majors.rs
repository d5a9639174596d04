//! What differs between PostgreSQL majors, on the major under test (`PGWARD_TEST_PG_MAJOR`,
//! see `common::majors`; `make test` runs these with the rest of the data-path suite on 14 to
//! 18): the exporter's families of that major, and block-level incremental backups of WAL
//! written by every resource manager a workload reaches, restored exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::{
    file_storage, is_root, pgbench, pgward_with, server_major, start_archiving, start_recovered,
    switch_and_wait_archived, Cluster, Pgward, BOOT,
};

/// The server's major, from the server itself: the tests run on the one they asked for.
async fn major_of(client: &tokio_postgres::Client) -> u32 {
    let num: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    num.parse::<u32>().unwrap() / 10_000
}

/// The families of a scrape, with their `# TYPE`, and each unlabelled sample's value.
fn scrape_parts(body: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut values = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            // `name{server="..."} value`: the checkpoint families have no other label.
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            values.insert(name.to_owned(), value.parse().unwrap_or(f64::NAN));
        }
    }
    (types, values)
}

async fn scrape(cluster: &Cluster) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", cluster.metrics_port);
    let response = reqwest::get(&url).await.expect("GET /metrics");
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.unwrap()
}

/// The columns `pg_stat_bgwriter` kept in 17.
const BGWRITER_KEPT: [&str; 4] = [
    "buffers_clean",
    "maxwritten_clean",
    "buffers_alloc",
    "stats_reset",
];
/// The columns 17 moved to `pg_stat_checkpointer` (under other names) or dropped.
const BGWRITER_BEFORE_17: [&str; 7] = [
    "checkpoints_timed",
    "checkpoints_req",
    "checkpoint_write_time",
    "checkpoint_sync_time",
    "buffers_checkpoint",
    "buffers_backend",
    "buffers_backend_fsync",
];
const CHECKPOINTER: [&str; 9] = [
    "num_timed",
    "num_requested",
    "restartpoints_timed",
    "restartpoints_req",
    "restartpoints_done",
    "write_time",
    "sync_time",
    "buffers_written",
    "stats_reset",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_serves_the_checkpoint_and_other_families_of_the_major() {
    let cluster = Cluster::new();
    let config = cluster.config("password: pw", "");
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let major = major_of(&client).await;
    assert_eq!(major, server_major(), "the server under test");

    let body = scrape(&cluster).await;
    let (types, before) = scrape_parts(&body);
    assert_eq!(before.get("pg_up"), Some(&1.0), "{body}");
    let failed: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("pg_scrape_collector_success{") && l.ends_with(" 0"))
        .collect();
    assert!(
        failed.is_empty(),
        "collectors failed on {major}: {failed:?}"
    );
    // The families every major has.
    for family in [
        "pg_static",
        "pg_database_size_bytes",
        "pg_stat_database_xact_commit",
        "pg_stat_database_conflicts_confl_lock",
        "pg_locks_count",
        "pg_stat_activity_count",
        "pg_stat_archiver_archived_count",
        "pg_replication_is_replica",
        "pg_postmaster_start_time_seconds",
        "pg_settings_max_connections",
        "pg_settings_checkpoint_timeout_seconds",
    ] {
        assert!(types.contains_key(family), "{family} missing on {major}");
    }
    let counter = |family: &str| types.get(family).map(String::as_str) == Some("counter");
    for column in BGWRITER_KEPT {
        let family = format!("pg_stat_bgwriter_{column}_total");
        assert!(
            counter(&family),
            "{family} on {major}: {:?}",
            types.get(&family)
        );
    }
    for column in BGWRITER_BEFORE_17 {
        let family = format!("pg_stat_bgwriter_{column}_total");
        assert_eq!(counter(&family), major < 17, "{family} on {major}");
    }
    for column in CHECKPOINTER {
        let family = format!("pg_stat_checkpointer_{column}_total");
        assert_eq!(counter(&family), major >= 17, "{family} on {major}");
    }

    // A CHECKPOINT is counted under the major's name for it.
    let requested = if major >= 17 {
        "pg_stat_checkpointer_num_requested_total"
    } else {
        "pg_stat_bgwriter_checkpoints_req_total"
    };
    client.batch_execute("CHECKPOINT").await.unwrap();
    // The counters are flushed to shared statistics when the checkpoint ends; a later
    // scrape sees them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, after) = scrape_parts(&scrape(&cluster).await);
        if after[requested] > before[requested] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{requested} stays {} after a CHECKPOINT",
            after[requested]
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn pgward_ok(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = pgward_with(config, args);
    assert_eq!(code, 0, "pgward {args:?}: {out}\n{err}");
    out
}

/// The databases of the workload and, in each, a fingerprint of every user table's rows and
/// of what its indexes return (read with sequential scans off, so through an index).
const CHECKS: &[(&str, &str)] = &[
    ("postgres", "SELECT md5(string_agg(h::text, ',' ORDER BY id)) FROM h"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE v = 42"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE tag = 'tag-7'"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE arr @> ARRAY[3]"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE pt <@ box '((0,0),(50,50))'"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE t >= 'x-5' AND t < 'x-6'"),
    ("postgres", "SELECT md5(string_agg(id::text, ',' ORDER BY id)) FROM h WHERE n BETWEEN 1000 AND 1200"),
    ("postgres", "SELECT last_value::text FROM s"),
    ("postgres", "SELECT md5(string_agg(tr::text, ',' ORDER BY id)) FROM tr"),
    ("postgres", "SELECT md5(string_agg(shrunk::text, ',' ORDER BY id)) FROM shrunk"),
    ("postgres", "SELECT md5(string_agg(moved::text, ',' ORDER BY id)) FROM moved"),
    ("postgres", "SELECT md5(string_agg(packed::text, ',' ORDER BY id)) FROM packed"),
    ("postgres", "SELECT sum(abalance)::text FROM pgbench_accounts"),
    ("db_wal_log", "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM c"),
    ("db_file_copy", "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM c"),
];

async fn fingerprints(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for (db, sql) in CHECKS {
        let client = cluster.connect("postgres", "pw", db).await.unwrap();
        // Index scans where an index applies, so a damaged index shows as different rows.
        client
            .batch_execute("SET enable_seqscan = off")
            .await
            .unwrap();
        let row = client.query_one(*sql, &[]).await.unwrap();
        out.push(format!(
            "{db}: {sql}: {:?}",
            row.get::<_, Option<String>>(0)
        ));
    }
    out
}

/// Statements run one at a time (VACUUM, CREATE DATABASE and TABLESPACE refuse a transaction
/// block).
async fn run_all(client: &tokio_postgres::Client, statements: &[String]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_over_every_resource_manager_restores_exactly() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    let major = major_of(&client).await;
    assert_eq!(major, server_major(), "the server under test");
    let location = cluster.dir.join("ts");
    std::fs::create_dir_all(&location).unwrap();
    if is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&location, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    pgbench(&cluster, &["-i", "-s", "1", "-q"]);
    let s = |sql: &str| sql.to_owned();
    run_all(
        &client,
        &[
            s("CREATE TABLE h (id int PRIMARY KEY, v int, tag text, arr int[], pt point, t text, n int)"),
            s("INSERT INTO h SELECT i, i % 500, 'tag-' || (i % 13), ARRAY[i % 10, i % 7], \
               point(i % 100, i / 100), 'x-' || i, i FROM generate_series(1, 20000) i"),
            s("CREATE INDEX h_v ON h USING hash (v)"),
            s("CREATE INDEX h_tag ON h (tag)"),
            s("CREATE INDEX h_arr ON h USING gin (arr)"),
            s("CREATE INDEX h_pt ON h USING gist (pt)"),
            s("CREATE INDEX h_n ON h USING brin (n) WITH (pages_per_range = 4)"),
            s("CREATE INDEX h_t ON h USING spgist (t)"),
            s("CREATE SEQUENCE s"),
            s("CREATE TABLE tr (id int PRIMARY KEY, pad text)"),
            s("INSERT INTO tr SELECT i, repeat('t', 100) FROM generate_series(1, 5000) i"),
            s("CREATE TABLE shrunk (id int, pad text)"),
            s("INSERT INTO shrunk SELECT i, repeat('s', 200) FROM generate_series(1, 10000) i"),
            s("CREATE TABLE moved (id int PRIMARY KEY, pad text)"),
            s("INSERT INTO moved SELECT i, repeat('m', 100) FROM generate_series(1, 5000) i"),
            s("CREATE TABLE packed (id int PRIMARY KEY, pad text)"),
            s("INSERT INTO packed SELECT i, repeat('p', 100) FROM generate_series(1, 5000) i"),
            format!("CREATE TABLESPACE ts LOCATION '{}'", location.display()),
            // Frozen and all-visible before the full backup: the changes below then touch a
            // few pages of each relation, which the incremental reads block by block (a file
            // mostly changed is copied whole, and would not test the scan).
            s("VACUUM (FREEZE) h"),
            s("VACUUM (FREEZE) shrunk"),
            s("CHECKPOINT"),
        ],
    )
    .await;
    pgward_ok(&config, &["backup"]);
    let full: serde_json::Value =
        serde_json::from_str(&pgward_ok(&config, &["show", "latest", "--json"])).unwrap();
    // Files written around a backup's start are always copied again by the next: settle.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // Every resource manager the incremental must follow: heap and heap2 (updates, deletes,
    // pruning, freezing), each index access method's inserts and vacuums, sequences, smgr
    // truncation, TRUNCATE's new relfilenode, databases created by both strategies,
    // relations moved to a tablespace and rewritten.
    let (wal_log, file_copy) = if major >= 15 {
        (" STRATEGY wal_log", " STRATEGY file_copy")
    } else {
        ("", "")
    };
    run_all(
        &client,
        &[
            s(
                "UPDATE h SET v = v + 1, arr = arr || id, pt = point(id % 50, 1), t = t || '-u' \
               WHERE id % 400 = 0",
            ),
            s(
                "INSERT INTO h SELECT i, i % 500, 'tag-' || (i % 13), ARRAY[i % 10], \
               point(i % 100, i / 100), 'x-' || i, i FROM generate_series(20001, 24000) i",
            ),
            s("DELETE FROM h WHERE id BETWEEN 5000 AND 5400"),
            s("VACUUM (FREEZE) h"),
            s("SELECT nextval('s') FROM generate_series(1, 100)"),
            s("TRUNCATE tr"),
            s("INSERT INTO tr SELECT i, repeat('u', 50) FROM generate_series(1, 700) i"),
            s("DELETE FROM shrunk WHERE id > 2000"),
            s("VACUUM shrunk"),
            s("ALTER TABLE moved SET TABLESPACE ts"),
            s("UPDATE moved SET pad = 'moved' WHERE id % 10 = 0"),
            s("DELETE FROM packed WHERE id % 3 = 0"),
            s("VACUUM FULL packed"),
            format!("CREATE DATABASE db_wal_log{wal_log}"),
            format!("CREATE DATABASE db_file_copy{file_copy}"),
        ],
    )
    .await;
    for db in ["db_wal_log", "db_file_copy"] {
        let other = cluster.connect("postgres", "pw", db).await.unwrap();
        other
            .batch_execute(
                "CREATE TABLE c (id int PRIMARY KEY, v text);
                 INSERT INTO c SELECT i, md5(i::text) FROM generate_series(1, 3000) i;",
            )
            .await
            .unwrap();
    }
    pgbench(&cluster, &["-t", "200", "-c", "2", "-n"]);
    let (code, out, err) = pgward_with(&config, &["backup", "--incremental"]);
    assert_eq!(code, 0, "pgward backup --incremental: {out}\n{err}");
    // Block by block from the scanned WAL, not the whole-file fallback of a scan that failed.
    let log = format!("{out}{err}");
    assert!(
        log.contains("changed relation files are read block by block")
            && !log.contains("no block-level incremental"),
        "the WAL scan of PostgreSQL {major} failed:\n{log}"
    );
    let incremental: serde_json::Value =
        serde_json::from_str(&pgward_ok(&config, &["show", "latest", "--json"])).unwrap();
    assert_eq!(incremental["kind"], "incremental", "{incremental}");
    assert_eq!(incremental["parent"], full["id"]);
    assert!(
        incremental["parted_files"].as_u64().unwrap() >= 1,
        "{incremental}"
    );
    assert!(
        incremental["read_size"].as_u64().unwrap() < full["read_size"].as_u64().unwrap(),
        "the incremental read no less than the full backup: {incremental}\n{full}"
    );
    let expected = fingerprints(&cluster).await;
    let oid: u32 = client
        .query_one("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'", &[])
        .await
        .unwrap()
        .get(0);
    switch_and_wait_archived(&client).await;

    // Restored to the incremental's consistency point only: what the WAL after it would
    // repair cannot hide a block the incremental missed.
    let restored = Cluster::new();
    let data = restored.data_dir();
    let moved = restored.dir.join("ts-restored");
    pgward_ok(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--target-immediate",
            "--target-action",
            "promote",
            "--tablespace-map",
            &format!("{oid}={}", moved.display()),
        ],
    );
    let (_restored_pgward, restored_client) = start_recovered(&restored, &storage).await;
    assert_eq!(fingerprints(&restored).await, expected);
    // The restored heap and btree indexes pass amcheck in every database.
    for db in ["postgres", "db_wal_log", "db_file_copy"] {
        let c = restored.connect("postgres", "pw", db).await.unwrap();
        c.batch_execute(
            "CREATE EXTENSION amcheck;
             SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'btree' AND c.relpersistence = 'p';",
        )
        .await
        .unwrap_or_else(|e| panic!("amcheck in {db} of the restored cluster: {e}"));
        let corrupt: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) \
                 WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(corrupt, 0, "verify_heapam in {db} of the restored cluster");
    }
    let databases: BTreeSet<String> = restored_client
        .query("SELECT datname FROM pg_database", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(databases.contains("db_wal_log") && databases.contains("db_file_copy"));
}
