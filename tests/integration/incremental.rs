//! Incremental backups: they store only what changed since the backup they build on, and a
//! restore through the chain is exact.

use std::path::Path;

use crate::common::{
    file_storage, pgbench, pgward_with, start_archiving, start_recovered, Cluster,
};

fn pgward_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let (code, out, err) = pgward_with(config, args);
    assert_eq!(code, 0, "pgward {args:?}: {out}\n{err}");
    if args.contains(&"--json") {
        serde_json::from_str(&out).expect("JSON")
    } else {
        serde_json::Value::Null
    }
}

/// (files copied by this backup, files in it)
fn copied(show: &serde_json::Value) -> (u64, u64) {
    (
        show["files_copied"].as_u64().unwrap(),
        show["file_count"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backups_store_what_changed_and_restore_exactly() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    pgbench(&cluster, &["-i", "-s", "2", "-q"]);

    // The first "incremental" has nothing to build on: it is full.
    pgward_json(&config, &["backup", "--incremental"]);
    let first = pgward_json(&config, &["show", "latest", "--json"]);
    assert_eq!(first["kind"], "full", "{first}");
    // Settle: files written around a backup's start are always copied again by the next.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    pgward_json(&config, &["backup", "--incremental"]);
    let second = pgward_json(&config, &["show", "latest", "--json"]);
    assert_eq!(second["kind"], "incremental");
    assert_eq!(second["parent"], first["id"]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    client
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 7 WHERE bid = 1")
        .await
        .unwrap();
    pgward_json(&config, &["backup", "--incremental"]);
    let third = pgward_json(&config, &["show", "latest", "--json"]);
    assert_eq!(third["parent"], second["id"]);
    let (copied_files, files) = copied(&third);
    assert!(
        copied_files * 5 < files,
        "an incremental after one small update copied {copied_files} of {files} files"
    );
    assert!(
        third["stored_size"].as_u64().unwrap() * 5 < first["stored_size"].as_u64().unwrap(),
        "{third}\n{first}"
    );

    let expected: i64 = client
        .query_one("SELECT sum(bbalance)::int8 FROM pgbench_branches", &[])
        .await
        .unwrap()
        .get(0);

    // Restore the newest backup, to its consistency point only (its WAL is archived by the
    // time the backup completes): the data comes from three backups' objects.
    let restored = Cluster::new();
    let data = restored.data_dir();
    pgward_json(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--target-immediate",
            "--target-action",
            "promote",
        ],
    );
    let (_restored_pgward, restored_client) = start_recovered(&restored, &storage).await;
    let got: i64 = restored_client
        .query_one("SELECT sum(bbalance)::int8 FROM pgbench_branches", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, expected);
    let accounts: i64 = restored_client
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 200_000);
    // The restored indexes are structurally sound and agree with their tables.
    restored_client
        .batch_execute(
            "CREATE EXTENSION amcheck;
             SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'btree' AND c.relpersistence = 'p';",
        )
        .await
        .expect("amcheck on the restored cluster");
}

/// Bytes of the file at `path` (relative to `data`).
fn read(data: &Path, path: &str) -> Vec<u8> {
    std::fs::read(data.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_stored_in_slices_and_restored_exactly() {
    let cluster = Cluster::new();
    let storage = format!("{}backup:\n  slice_size: 1MiB\n", file_storage(&cluster));
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    pgbench(&cluster, &["-i", "-s", "2", "-q"]);
    let accounts: String = client
        .query_one("SELECT pg_relation_filepath('pgbench_accounts')", &[])
        .await
        .unwrap()
        .get(0);

    pgward_json(&config, &["backup"]);
    let full = pgward_json(&config, &["show", "latest", "--json"]);
    assert!(full["parted_files"].as_u64().unwrap() >= 2, "{full}");
    assert_eq!(full["read_size"], full["size"]);
    let id = full["id"].as_str().unwrap().to_owned();
    let (code, out, err) = pgward_with(&config, &["verify", &id]);
    assert_eq!(code, 0, "verify: {out}\n{err}");

    // A plain restore, and a delta restore over a copy with one damaged slice: identical.
    let plain = Cluster::new();
    let damaged = Cluster::new();
    for dir in [plain.data_dir(), damaged.data_dir()] {
        pgward_json(
            &config,
            &["restore", &id, "--data-dir", dir.to_str().unwrap()],
        );
    }
    let original = read(&plain.data_dir(), &accounts);
    assert!(original.len() > 20 << 20, "{}", original.len());
    let mut bytes = original.clone();
    bytes[(5 << 20) + 100] ^= 0xFF;
    std::fs::write(damaged.data_dir().join(&accounts), &bytes).unwrap();
    std::fs::remove_file(damaged.data_dir().join("recovery.signal")).unwrap();
    pgward_json(
        &config,
        &[
            "restore",
            &id,
            "--delta",
            "--data-dir",
            damaged.data_dir().to_str().unwrap(),
        ],
    );
    assert!(read(&damaged.data_dir(), &accounts) == original);

    // And the slices hold what the cluster holds.
    let (_restored, restored_client) = start_recovered(&plain, &storage).await;
    let count: i64 = restored_client
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 200_000);
}

/// A fingerprint of every row of the tables the block-level test changes.
async fn fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a",
        "SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM shrinking s",
        "SELECT md5(string_agg(n::text, ',' ORDER BY id)) FROM fresh n",
    ] {
        let row = client.query_one(sql, &[]).await.unwrap();
        out.push(row.get::<_, Option<String>>(0).unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_after_a_small_update_reads_only_the_changed_blocks() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    pgbench(&cluster, &["-i", "-s", "2", "-q"]);
    client
        .batch_execute(
            "CREATE TABLE shrinking (id int PRIMARY KEY, pad text);
             INSERT INTO shrinking SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i;
             CHECKPOINT;",
        )
        .await
        .unwrap();
    pgward_json(&config, &["backup"]);
    let full = pgward_json(&config, &["show", "latest", "--json"]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // 1% of the accounts: the incremental reads the blocks that changed, not the files.
    client
        .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000")
        .await
        .unwrap();
    pgward_json(&config, &["backup", "--incremental"]);
    let first = pgward_json(&config, &["show", "latest", "--json"]);
    assert_eq!(first["kind"], "incremental", "{first}");
    let (read, full_read) = (
        first["read_size"].as_u64().unwrap(),
        full["read_size"].as_u64().unwrap(),
    );
    assert!(
        read * 10 < full_read,
        "the incremental read {read} bytes, the full backup {full_read}"
    );
    assert!(first["parted_files"].as_u64().unwrap() >= 1, "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // A second layer of changed blocks over the first, a truncation and regrowth, a new
    // table, a new database. (One statement at a time: VACUUM and CREATE DATABASE refuse a
    // transaction block.)
    for sql in [
        "UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid BETWEEN 1500 AND 2500",
        "UPDATE pgbench_accounts SET filler = 'late' WHERE aid = 199999",
        "DELETE FROM shrinking WHERE id > 5000",
        "VACUUM shrinking",
        "INSERT INTO shrinking SELECT i, repeat('y', 200) FROM generate_series(5001, 8000) i",
        "CREATE TABLE fresh AS SELECT i AS id, i * 2 AS v FROM generate_series(1, 1000) i",
        "CREATE DATABASE copied",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    pgward_json(&config, &["backup", "--incremental"]);
    let second = pgward_json(&config, &["show", "latest", "--json"]);
    assert_eq!(second["parent"], first["id"]);
    let expected = fingerprint(&client).await;
    let id = second["id"].as_str().unwrap().to_owned();
    let (code, out, err) = pgward_with(&config, &["verify", &id]);
    assert_eq!(code, 0, "verify: {out}\n{err}");

    let restored = Cluster::new();
    let data = restored.data_dir();
    pgward_json(
        &config,
        &[
            "restore",
            &id,
            "--data-dir",
            data.to_str().unwrap(),
            "--target-immediate",
            "--target-action",
            "promote",
        ],
    );
    let (_restored_pgward, restored_client) = start_recovered(&restored, &storage).await;
    assert_eq!(fingerprint(&restored_client).await, expected);
    let databases: i64 = restored_client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'copied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(databases, 1);
    restored_client
        .batch_execute(
            "CREATE EXTENSION amcheck;
             SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'btree' AND c.relpersistence = 'p';",
        )
        .await
        .expect("amcheck on the restored cluster");
    for table in ["pgbench_accounts", "shrinking", "fresh"] {
        let damaged: i64 = restored_client
            .query_one(
                &format!("SELECT count(*) FROM verify_heapam('{table}')"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(damaged, 0, "verify_heapam({table})");
    }
}
