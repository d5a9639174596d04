//! Base backups and restores with a real postgres and a `file://` repository: a backup taken
//! under pgward, restored into another directory and recovered by postgres from the archive,
//! to the end and to a point in time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{pgward_bin, Cluster, Pgward};
use crate::wal::{file_storage, start_archiving, switch_and_wait_archived, BOOT};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(pgward_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run pgward");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts pgward on a restored data directory (no archiving: its WAL must not mix with the
/// original's) and counts the rows of `t` once recovery has ended.
async fn recover_and_count(restored: &Cluster, storage: &str) -> (Pgward, i64) {
    let config = restored.config(
        "password: pw",
        &format!("{storage}wal:\n  archive: false\n"),
    );
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = restored
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        if !in_recovery {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "recovery did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    (pgward, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backup_restores_to_the_end_of_the_archive_and_to_a_point_in_time() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    client
        .batch_execute(
            "CREATE TABLE t (i int, at timestamptz DEFAULT clock_timestamp());
             INSERT INTO t (i) SELECT generate_series(1, 1000);",
        )
        .await
        .unwrap();

    let (code, out, err) = pgward(&config, &["backup", "--annotate", "why=test"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(out.contains("complete"), "{out}");

    client
        .batch_execute("INSERT INTO t (i) SELECT generate_series(1001, 2000)")
        .await
        .unwrap();
    let between: String = client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .batch_execute("INSERT INTO t (i) SELECT generate_series(2001, 3000)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;

    let (code, out, err) = pgward(&config, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let backups = list.as_array().unwrap();
    assert_eq!(backups.len(), 1, "{out}");
    assert_eq!(backups[0]["kind"], "full");
    assert_eq!(backups[0]["annotations"]["why"], "test");

    // Into a directory that is not empty: refused, nothing touched.
    let latest = Cluster::new();
    std::fs::create_dir_all(latest.data_dir()).unwrap();
    std::fs::write(latest.data_dir().join("keep.me"), "x").unwrap();
    let data = latest.data_dir();
    let (code, _, err) = pgward(&config, &["restore", "--data-dir", data.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    assert!(data.join("keep.me").exists());

    // Latest, to the end of the archive.
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            "latest",
            "--data-dir",
            data.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(!data.join("keep.me").exists());
    let (_restored, rows) = recover_and_count(&latest, &storage).await;
    assert_eq!(rows, 3000);

    // To a time between the second and the third insert.
    let pitr = Cluster::new();
    let data = pitr.data_dir();
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--target-time",
            &between,
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    let (_restored, rows) = recover_and_count(&pitr, &storage).await;
    assert_eq!(rows, 2000);
}
