//! Base backups and restores with a real postgres and a `file://` repository: a backup taken
//! under pgward, restored into another directory and recovered by postgres from the archive,
//! to the end and to a point in time; a backup killed midway, and a damaged stored object.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    assert_killed_at, backed_up_cluster, backup_ok, file_storage, files_under, is_root, listed,
    pgbench, pgward_armed, start_archiving, start_recovered, switch_and_wait_archived,
    wait_promoted, BackedUp, Cluster, Pgward, BOOT,
};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

/// [`start_recovered`], then the rows of `t`.
async fn recover_and_count(restored: &Cluster, storage: &str) -> (Pgward, i64) {
    let (pgward, client) = start_recovered(restored, storage).await;
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
    let lsn_after_2000: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .batch_execute("INSERT INTO t (i) SELECT generate_series(2001, 3000)")
        .await
        .unwrap();
    // A second backup, after the target time below: a restore to that time must pick the
    // first one without being told.
    backup_ok(&config);
    client
        .batch_execute("INSERT INTO t (i) SELECT generate_series(3001, 3010)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;

    let backups = listed(&config);
    assert_eq!(backups.len(), 2, "{backups:?}");
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
    assert_eq!(rows, 3010);

    // To a time between the second and the third insert, no backup named: the first backup
    // (the newest that ended before that time) is restored.
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

    // To the LSN right after the second insert, from the first backup by id.
    let first = listed(&config)[0]["id"].as_str().unwrap().to_owned();
    let by_lsn = Cluster::new();
    let data = by_lsn.data_dir();
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            &first,
            "--data-dir",
            data.to_str().unwrap(),
            "--target-lsn",
            &lsn_after_2000,
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    let (_restored, rows) = recover_and_count(&by_lsn, &storage).await;
    assert_eq!(rows, 2000);
}

/// The backup ids that have a directory in the `file://` repository at `repo`, complete or not.
fn backup_dirs(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_killed_midway_is_never_listed_and_the_next_one_succeeds() {
    let cluster = Cluster::new();
    // The killed backup's lease expires soon: the next backup takes it over.
    let storage = format!("{}backup:\n  lease_ttl: 2s\n", file_storage(&cluster));
    let (config, pgward_run, client) = start_archiving(&cluster, &storage).await;
    // About 170 MiB, most of it in two files, which are copied first: something appears under
    // the backup's data/ (a stored object or its temp file) long before the copy ends.
    pgbench(&cluster, &["-i", "-s", "10", "-q"]);
    let repo = cluster.dir.join("repo");

    let mut killed = Pgward::start(&["--config", config.to_str().unwrap(), "backup"], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let [id] = &backup_dirs(&repo)[..] {
            if !files_under(&repo.join("backups").join(id).join("data")).is_empty() {
                break id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no backup object stored; output:\n{}",
            killed.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // The session that holds backup mode: its last statement read the start timeline.
    let session: i32 = client
        .query_one(
            "SELECT pid FROM pg_stat_activity \
             WHERE query LIKE '%pg_control_checkpoint()%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    killed.signal(nix::sys::signal::Signal::SIGKILL);
    let status = killed.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "the backup ended before it was killed; output:\n{}",
        killed.output()
    );
    assert!(
        !repo
            .join(format!("backups/{id}/manifest.json.zst"))
            .exists(),
        "the killed backup wrote its manifest"
    );

    // Objects without a manifest: not a backup, for list and restore alike.
    assert_eq!(listed(&config), Vec::<serde_json::Value>::new());
    let restored = Cluster::new();
    let data = restored.data_dir();
    let (code, out, err) = pgward(
        &config,
        &["restore", "latest", "--data-dir", data.to_str().unwrap()],
    );
    assert_ne!(code, 0, "restored an interrupted backup:\n{out}\n{err}");
    assert!(err.contains("there is no complete backup in"), "{err}");
    assert!(
        files_under(&data).is_empty(),
        "the failed restore wrote files"
    );

    // Postgres ended the session, and with it backup mode, and carries on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone: bool = client
            .query_one(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)",
                &[&session],
            )
            .await
            .unwrap()
            .get(0);
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed backup's session {session} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pgward_run.wait_for_output(
        "aborting backup due to backend exiting",
        Duration::from_secs(10),
    );
    client
        .batch_execute("CREATE TABLE after_kill AS SELECT 1 AS i")
        .await
        .unwrap();
    let accounts: i64 = client
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, 1_000_000);

    // The killed backup's objects stay under its id (ids name the start second): the next
    // backup, once the killed one's lease expired, gets an id of its own and says what it
    // found.
    std::thread::sleep(Duration::from_secs(3));
    let (code, out, err) = pgward(&config, &["backup"]);
    assert_eq!(code, 0, "backup after the killed one failed:\n{out}\n{err}");
    assert!(
        err.contains("never completed") && err.contains(&id),
        "{err}"
    );
    let backups = listed(&config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let new_id = backups[0]["id"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert!(out.contains(&format!("backup {new_id} complete")), "{out}");
}

/// The last moment before a backup exists: everything stored but the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_killed_just_before_its_manifest_is_not_listed() {
    let backed = backed_up_cluster("CREATE TABLE t AS SELECT generate_series(1, 100) AS i").await;
    let out = pgward_armed(
        &backed.config,
        "backup-before-manifest=return(kill)",
        &["backup"],
    );
    assert_killed_at(&out, "backup-before-manifest");
    let backups = listed(&backed.config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["id"], backed.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_object_fails_the_restore_naming_it() {
    let BackedUp {
        cluster,
        config,
        pgward: _pgward,
        ..
    } = backed_up_cluster(
        "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 50000) AS i",
    )
    .await;
    let backups = listed(&config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let id = backups[0]["id"].as_str().unwrap().to_owned();

    // The largest stored object of a relation (`t`): its middle is compressed table data.
    let stored_data = cluster.dir.join("repo/backups").join(&id).join("data");
    let stored = files_under(&stored_data.join("base"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("stored objects under base/");
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();
    let rel = stored
        .strip_prefix(&stored_data)
        .unwrap()
        .to_str()
        .unwrap()
        .strip_suffix(".zst")
        .expect("stored objects end in .zst")
        .to_owned();

    let restored = Cluster::new();
    let data = restored.data_dir();
    let (code, out, err) = pgward(&config, &["restore", "--data-dir", data.to_str().unwrap()]);
    assert_ne!(code, 0, "restored a corrupt backup:\n{out}\n{err}");
    // `restore base/5/16384: object backups/<id>/data/base/5/16384 is corrupt: checksum
    // mismatch: ...` (or a decompression or length failure, depending on the byte).
    assert!(
        err.contains(&format!(
            "restore {rel}: object backups/{id}/data/{rel} is corrupt: "
        )),
        "{err}"
    );
    assert!(!data.join(&rel).exists(), "the corrupt file was written");
    let temp_files: Vec<PathBuf> = files_under(&data)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(temp_files.is_empty(), "temp files left: {temp_files:?}");
    assert!(
        !data.join("recovery.signal").exists(),
        "a failed restore left a directory that recovers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_directory_can_start_from_the_latest_backup() {
    let BackedUp {
        cluster: _cluster,
        storage,
        mut pgward,
        client,
        ..
    } = backed_up_cluster("CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 500)")
        .await;
    client
        .batch_execute("INSERT INTO t SELECT generate_series(501, 800)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    // The original is gone (a successor never starts beside it).
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    pgward.wait_exit(BOOT);

    // A disaster-recovery host: same repository, nothing in its data directory, archiving on
    // (after promotion it archives its own timeline beside the original's).
    let host = Cluster::new();
    let host_config = host.config(
        "password: pw\nfrom_backup: latest\nrestore_as: successor",
        &format!("{storage}wal:\n  archive: true\n"),
    );
    let host_pgward = Pgward::start(&["--config", host_config.to_str().unwrap(), "run"], &[]);
    let host_client = host.wait_connect("postgres", "pw", "postgres", BOOT).await;
    wait_promoted(&host_client, BOOT).await;
    let rows: i64 = host_client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 800);
    assert!(!host.data_dir().join("pgward.init-incomplete").exists());
    let output = host_pgward.output();
    assert!(
        output.contains("restoring from the repository instead of initdb"),
        "{output}"
    );
}

/// Every regular file under `root` with its content, by relative path.
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_restore_over_a_changed_directory_gives_an_exact_copy() {
    let BackedUp {
        cluster: _cluster,
        config,
        pgward: _pgward,
        ..
    } = backed_up_cluster("CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 5000)")
        .await;

    let fresh = Cluster::new();
    let changed = Cluster::new();
    for dir in [fresh.data_dir(), changed.data_dir()] {
        let (code, out, err) = pgward(&config, &["restore", "--data-dir", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    }
    // Damage the second copy: a changed file, a missing one, a stray one, stale WAL.
    let data = changed.data_dir();
    let pg_control = data.join("global/pg_control");
    let mut bytes = std::fs::read(&pg_control).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&pg_control, bytes).unwrap();
    std::fs::remove_file(data.join("PG_VERSION")).unwrap();
    std::fs::write(data.join("base/stray"), "x").unwrap();
    std::fs::write(data.join("pg_wal/000000010000000000000042"), "old").unwrap();
    assert_ne!(tree(&fresh.data_dir()), tree(&data));

    let (code, out, err) = pgward(
        &config,
        &["restore", "--data-dir", data.to_str().unwrap(), "--delta"],
    );
    assert_eq!(code, 0, "delta restore failed:\n{out}\n{err}");
    let (want, got) = (tree(&fresh.data_dir()), tree(&data));
    let differ: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|k| want.get(*k) != got.get(*k))
        .collect();
    assert!(differ.is_empty(), "differ after --delta: {differ:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_paused_at_its_target_says_so_in_status_and_promote_ends_it() {
    let BackedUp {
        cluster: _cluster,
        storage,
        config,
        pgward: _pgward,
        client,
        ..
    } = backed_up_cluster("CREATE TABLE t (i int); INSERT INTO t VALUES (1)").await;
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_create_restore_point('before-3')")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;

    let restored = Cluster::new();
    let data = restored.data_dir();
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--target-name",
            "before-3",
            "--target-action",
            "pause",
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    let restored_config = restored.config(
        "password: pw",
        &format!("{storage}wal:\n  archive: false\n"),
    );
    let _restored_pgward =
        Pgward::start(&["--config", restored_config.to_str().unwrap(), "run"], &[]);
    let restored_client = restored
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    let deadline = std::time::Instant::now() + BOOT;
    let status = loop {
        let status = Pgward::status(&restored_config);
        if status["recovery"]["paused"] == true {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let hint = status["recovery"]["hint"].as_str().unwrap();
    assert!(hint.contains("pg_wal_replay_resume"), "{hint}");
    let rows: i64 = restored_client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);

    // `pgward promote` ends the paused recovery: a primary on a new timeline, with the rows
    // it had, writable; on a primary it is refused.
    let (code, out, err) = pgward(&restored_config, &["promote"]);
    assert_eq!(code, 0, "promote failed:\n{out}\n{err}");
    assert!(out.contains("a primary, writing on timeline 2"), "{out}");
    let in_recovery: bool = restored_client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery);
    restored_client
        .batch_execute("INSERT INTO t VALUES (4)")
        .await
        .unwrap();
    let (code, out, err) = pgward(&restored_config, &["promote"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("not in recovery: it is already a primary"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_data_checksums_a_damaged_page_is_reported_by_the_backup() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let config = cluster.config(
        "password: pw\ninitdb_args: [--data-checksums]",
        &format!("{storage}wal:\n  archive: true\n"),
    );
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute(
            "CREATE TABLE t AS SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 3000) i;
             CHECKPOINT;",
        )
        .await
        .unwrap();
    // Every page of a healthy cluster checks out: the checksums are computed as postgres does.
    let (code, out, err) = pgward(&config, &["backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    let (_, show, _) = pgward(&config, &["show", "latest", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["data_checksums"], true);
    assert_eq!(show["bad_blocks"], 0, "{err}");

    // Damage block 1 of the table on disk (its buffer is clean: postgres will not rewrite it).
    let relpath: String = client
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .await
        .unwrap()
        .get(0);
    let file = cluster.data_dir().join(&relpath);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8192 + 4000] ^= 0x5A;
    std::fs::write(&file, bytes).unwrap();

    let (code, out, err) = pgward(&config, &["backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(
        err.contains("data page checksum failures") && err.contains(&relpath),
        "{err}"
    );
    let (_, show, _) = pgward(&config, &["show", "latest", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["bad_blocks"], 1, "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablespace_is_backed_up_and_restored_where_it_is_mapped() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    let location = cluster.dir.join("ts");
    std::fs::create_dir_all(&location).unwrap();
    if is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&location, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    client
        .batch_execute(&format!(
            "CREATE TABLESPACE ts LOCATION '{}'",
            location.display()
        ))
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (i int) TABLESPACE ts; INSERT INTO t SELECT generate_series(1, 1000);",
        )
        .await
        .unwrap();
    let oid: u32 = client
        .query_one("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'", &[])
        .await
        .unwrap()
        .get(0);
    backup_ok(&config);
    client
        .batch_execute("INSERT INTO t VALUES (1001)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;

    let restored = Cluster::new();
    let data = restored.data_dir();
    // The original location is in use: refused, even with --force, and left alone.
    let (code, _, err) = pgward(
        &config,
        &["restore", "--data-dir", data.to_str().unwrap(), "--force"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("--tablespace-map {oid}=DIR")),
        "{err}"
    );
    let moved = restored.dir.join("ts-restored");
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--force",
            "--tablespace-map",
            &format!("{oid}={}", moved.display()),
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    // Again over it with --delta: the relocated tablespace is kept and compared, not refused.
    let (code, out, err) = pgward(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--delta",
            "--tablespace-map",
            &format!("{oid}={}", moved.display()),
        ],
    );
    assert_eq!(code, 0, "delta restore failed:\n{out}\n{err}");
    let (_restored, rows) = recover_and_count(&restored, &storage).await;
    assert_eq!(rows, 1001);
    let link = std::fs::read_link(data.join(format!("pg_tblspc/{oid}"))).unwrap();
    assert_eq!(link, moved);
}
