//! A hot standby made from the repository (`postgres.standby` with `init.from_backup`): it
//! streams from its primary with a password that never reaches postgres's settings, falls
//! back to the archive when streaming is refused and streams again once it is allowed, rides
//! out a stop of its primary, and `pgward promote` makes it a primary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    backup_ok, file_storage, run_and_connect, switch_and_wait_archived, Cluster, Pgward, BOOT,
};

/// The replication user's password: a `:` and a `\`, which a password file must escape.
const REPLICATION_PASSWORD: &str = "rep:pw\\1";

/// Adds `keys` (lines of the `postgres:` section, indented two spaces) to `config`.
fn with_postgres_keys(config: PathBuf, keys: &str) -> PathBuf {
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("  init:\n", &format!("{keys}  init:\n"), 1),
    )
    .unwrap();
    config
}

/// The config of a standby of `primary` made from `storage`, streaming as `replicator`
/// through slot `standby_1`; `wal.archive: false` (a copy that only reads).
fn standby_config(standby: &Cluster, primary: &Cluster, storage: &str) -> PathBuf {
    let config = standby.config(
        "password: pw\nfrom_backup: latest",
        &format!("{storage}wal:\n  archive: false\n"),
    );
    let block = format!(
        "  standby:\n    primary_conninfo: host=127.0.0.1 port={} user=replicator \
         application_name=standby_1\n    password: '{}'\n    slot: standby_1\n",
        primary.port,
        REPLICATION_PASSWORD.replace('\'', "''")
    );
    with_postgres_keys(config, &block)
}

/// Polls `sql` (one row, one text column) on `client` until it returns `want`.
async fn wait_for(client: &tokio_postgres::Client, sql: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got: Option<String> = client
            .query_opt(sql, &[])
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get(0));
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} gave {got:?}, not {want:?}, within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pgward status --json`'s `recovery`, once its source is `source`.
async fn wait_recovery_source(config: &Path, source: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recovery = Pgward::status(config)["recovery"].clone();
        if recovery["source"] == source {
            return recovery;
        }
        assert!(Instant::now() < deadline, "{recovery}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the unlabelled series `name` on the daemon's `/metrics`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
    let found = body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once("} ")?.1,
            None => rest.strip_prefix(' ')?,
        };
        value.trim().parse().ok()
    });
    if found.is_none() {
        let related: Vec<&str> = body.lines().filter(|l| l.contains("standby")).collect();
        eprintln!("no {name} in the scrape; lines about standbys: {related:#?}");
    }
    found
}

const ROWS: &str = "SELECT string_agg(i::text, ',' ORDER BY i) FROM t";
const RECEIVER: &str = "SELECT status FROM pg_stat_wal_receiver";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_from_the_repository_streams_falls_back_to_the_archive_and_promotes() {
    // A primary whose TCP connections (replication included) need a password.
    let primary = Cluster::new();
    let storage = file_storage(&primary);
    let primary_config = primary.config(
        "password: pw\ninitdb_args: [--auth-host=scram-sha-256]",
        &format!("{storage}wal:\n  archive: true\n  archive_timeout: 1s\n"),
    );
    let (primary_config, mut primary_pgward, client) =
        run_and_connect(&primary, primary_config).await;
    client
        .batch_execute(&format!(
            "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{}';
             SELECT pg_create_physical_replication_slot('standby_1');
             CREATE TABLE t (i int); INSERT INTO t VALUES (1);",
            REPLICATION_PASSWORD.replace('\'', "''")
        ))
        .await
        .unwrap();
    backup_ok(&primary_config);

    // The standby fills its empty data directory from the repository and streams.
    let standby = Cluster::new();
    let config = standby_config(&standby, &primary, &storage);
    let (code, out, err) = crate::common::pgward_with(&config, &["config", "check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The server's user may write into the socket directory: a symlink planted where the
    // password file goes is replaced, and what it points at is left alone.
    let victim = standby.dir.join("victim");
    std::fs::write(&victim, "root's file").unwrap();
    std::fs::create_dir_all(standby.socket_dir()).unwrap();
    std::os::unix::fs::symlink(&victim, standby.socket_dir().join("pgward-primary.pgpass"))
        .unwrap();
    let _standby_pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let replica = standby
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file");
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby is in recovery");
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    wait_for(&replica, ROWS, "1,2", Duration::from_secs(20)).await;
    wait_for(&replica, RECEIVER, "streaming", Duration::from_secs(20)).await;
    let slot: String = client
        .query_one(
            "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'standby_1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot, "true", "the standby streams through its slot");
    let recovery = wait_recovery_source(&config, "streaming").await;
    assert_eq!(recovery["role"], "standby", "{recovery}");
    assert!(recovery["lag_bytes"].as_f64().is_some(), "{recovery}");
    assert_eq!(
        metric(standby.metrics_port, "pgward_standby_streaming").await,
        Some(1.0)
    );
    // `check` on the standby leaves the archiving to its primary (this one archives nothing:
    // wal.archive is off), and everything else passes.
    let (code, out, err) = crate::common::pgward_with(&config, &["check", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let checks: serde_json::Value = serde_json::from_str(&out).unwrap();
    let detail = |name: &str| {
        checks["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["detail"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        detail("archive_mode").as_deref(),
        Some("a standby: its primary archives the WAL"),
        "{out}"
    );

    // The password is in a private file of the socket directory, never in the settings
    // postgres shows or in the data directory.
    let data = standby.data_dir();
    assert!(data.join("standby.signal").exists());
    assert!(!data.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("rep:pw"), "{auto}");
    assert!(auto.contains("primary_slot_name = 'standby_1'"), "{auto}");
    let passfile = standby.socket_dir().join("pgward-primary.pgpass");
    assert!(!passfile.is_symlink());
    assert_eq!(mode(&passfile), 0o600);
    if nix::unistd::geteuid().is_root() {
        // Owned by the server's user, which libpq runs as in the walreceiver.
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&passfile).unwrap());
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(owner, postgres.uid.as_raw());
    }
    let shown: String = replica
        .query_one("SHOW primary_conninfo", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        shown.contains("passfile=") && !shown.contains("rep:pw"),
        "{shown}"
    );

    // Streaming refused: the standby follows from the archive what the primary archives.
    client
        .batch_execute(
            "ALTER ROLE replicator NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_replication;
             INSERT INTO t VALUES (3);",
        )
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    wait_for(&replica, ROWS, "1,2,3", Duration::from_secs(30)).await;
    let streaming: Option<String> = replica
        .query_opt(RECEIVER, &[])
        .await
        .unwrap()
        .map(|row| row.get(0));
    assert_ne!(streaming.as_deref(), Some("streaming"));
    let recovery = wait_recovery_source(&config, "archive").await;
    assert!(
        recovery["hint"].as_str().unwrap().contains("not streaming"),
        "{recovery}"
    );
    assert_eq!(
        metric(standby.metrics_port, "pgward_standby_streaming").await,
        Some(0.0)
    );
    // Allowed again, it streams again.
    client
        .batch_execute("ALTER ROLE replicator LOGIN; INSERT INTO t VALUES (4)")
        .await
        .unwrap();
    wait_for(&replica, RECEIVER, "streaming", Duration::from_secs(30)).await;
    wait_for(&replica, ROWS, "1,2,3,4", Duration::from_secs(20)).await;

    // The primary stops and comes back: the standby stays up, readable, and streams again.
    drop(client);
    primary_pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(primary_pgward.wait_exit(Duration::from_secs(60)).success());
    let rows: String = replica.query_one(ROWS, &[]).await.unwrap().get(0);
    assert_eq!(rows, "1,2,3,4");
    let _primary_again = Pgward::start(&["--config", primary_config.to_str().unwrap(), "run"], &[]);
    let client = primary
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("INSERT INTO t VALUES (5)")
        .await
        .unwrap();
    wait_for(&replica, ROWS, "1,2,3,4,5", Duration::from_secs(30)).await;
    wait_for(&replica, RECEIVER, "streaming", Duration::from_secs(30)).await;

    // Promoted, it is a primary of its own with every row.
    let (code, out, err) = crate::common::pgward_with(&config, &["promote"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("a primary, writing on timeline 2"), "{out}");
    replica
        .batch_execute("INSERT INTO t VALUES (6)")
        .await
        .unwrap();
    let rows: String = replica.query_one(ROWS, &[]).await.unwrap().get(0);
    assert_eq!(rows, "1,2,3,4,5,6");
}

/// The repository's heartbeat object, parsed.
fn heartbeat(repo: &Path) -> serde_json::Value {
    let dir = repo.join("heartbeat");
    let file = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .next()
        .expect("a heartbeat object")
        .path();
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_standby_beats_nothing_in_recovery_and_archives_its_timeline_once_promoted() {
    let primary = Cluster::new();
    let storage = file_storage(&primary);
    let (primary_config, primary_pgward, client) =
        crate::common::start_archiving(&primary, &storage).await;
    client
        .batch_execute("CREATE TABLE t (i int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    backup_ok(&primary_config);
    let repo = primary.dir.join("repo");
    assert_eq!(heartbeat(&repo)["pid"], primary_pgward.pid());

    // A standby that archives once promoted (initdb's pg_hba trusts replication from
    // 127.0.0.1): it starts beside its running primary, and leaves the heartbeat alone.
    let standby = Cluster::new();
    let config = successor_standby_config(&standby, &primary, &storage, "");
    let mut standby_pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let replica = standby
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_for(&replica, RECEIVER, "streaming", Duration::from_secs(20)).await;
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    wait_for(&replica, ROWS, "1,2", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        heartbeat(&repo)["pid"],
        primary_pgward.pid(),
        "the standby wrote the heartbeat"
    );

    // Promoted, it archives its new timeline into the repository.
    let (code, out, err) = crate::common::pgward_with(&config, &["promote"]);
    assert_eq!(code, 0, "{out}\n{err}");
    replica
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    let segment = switch_and_wait_archived(&replica).await;
    assert!(segment.starts_with("00000002"), "{segment}");
    let timeline_two = repo.join("wal/00000002");
    let names: Vec<String> = std::fs::read_dir(&timeline_two)
        .unwrap_or_else(|e| panic!("{}: {e}", timeline_two.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("00000002.history"))
            && names.iter().any(|n| n.starts_with(&segment)),
        "{names:?}"
    );
    drop(replica);
    standby_pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(standby_pgward.wait_exit(Duration::from_secs(60)).success());
}

/// The config of a standby of `primary` that archives and backs up as the repository's
/// successor once promoted, streaming as `postgres` (initdb's pg_hba trusts replication from
/// 127.0.0.1), with the `extra` top-level keys.
fn successor_standby_config(
    standby: &Cluster,
    primary: &Cluster,
    storage: &str,
    extra: &str,
) -> PathBuf {
    let config = standby.config(
        "password: pw\nfrom_backup: latest\nrestore_as: successor",
        &format!("{storage}wal:\n  archive: true\n  archive_timeout: 1s\n{extra}"),
    );
    let block = format!(
        "  standby:\n    primary_conninfo: host=127.0.0.1 port={} user=postgres\n",
        primary.port
    );
    with_postgres_keys(config, &block)
}

const COUNT: &str = "SELECT count(*)::text || ':' || sum(i)::text FROM t";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_on_a_standby_restore_exactly_and_jobs_follow_backup_on() {
    let primary = Cluster::new();
    let storage = file_storage(&primary);
    // The primary's own backup job runs on standbys only: on the primary it skips.
    let jobs = "jobs:\n  - name: nightly\n    schedule: \"0 1 * * *\"\n    action: backup\n";
    let (primary_config, _primary_pgward, client) = crate::common::start_archiving(
        &primary,
        &format!("{storage}backup:\n  on: standby\n{jobs}"),
    )
    .await;
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();
    backup_ok(&primary_config);

    let standby = Cluster::new();
    let config = successor_standby_config(&standby, &primary, &storage, jobs);
    let _standby_pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let replica = standby
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_for(&replica, RECEIVER, "streaming", Duration::from_secs(20)).await;

    // A full backup on the standby, then an incremental one after more rows.
    let backup = |args: &[&str]| {
        let mut all = vec!["backup"];
        all.extend_from_slice(args);
        let (code, out, err) = crate::common::pgward_with(&config, &all);
        assert_eq!(code, 0, "backup {args:?} on the standby:\n{out}\n{err}");
        let shown: serde_json::Value = serde_json::from_str(
            &crate::common::pgward_with(&config, &["show", "latest", "--json"]).1,
        )
        .unwrap();
        shown
    };
    let full = backup(&["--full"]);
    assert_eq!(full["kind"], "full", "{full}");
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1001, 1500)")
        .await
        .unwrap();
    let expected: String = client.query_one(COUNT, &[]).await.unwrap().get(0);
    wait_for(&replica, COUNT, &expected, Duration::from_secs(20)).await;
    let incremental = backup(&["--incremental"]);
    assert_eq!(incremental["kind"], "incremental", "{incremental}");
    assert_eq!(incremental["parent"], full["id"], "{incremental}");
    switch_and_wait_archived(&client).await;

    // Each restores to the end of the archive with every row.
    for shown in [&full, &incremental] {
        let id = shown["id"].as_str().unwrap();
        let restored = Cluster::new();
        let data = restored.data_dir();
        let (code, out, err) = crate::common::pgward_with(
            &primary_config,
            &["restore", id, "--data-dir", data.to_str().unwrap()],
        );
        assert_eq!(code, 0, "restore {id}:\n{out}\n{err}");
        let (_pgward, restored_client) = crate::common::start_recovered(&restored, &storage).await;
        let got: String = restored_client.query_one(COUNT, &[]).await.unwrap().get(0);
        assert_eq!(got, expected, "backup {id} taken on the standby");
    }

    // The scheduler's backup job (backup.on: primary, the default) skips on the standby.
    let (code, out, err) = crate::common::pgward_with(&config, &["jobs", "run", "nightly"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("skipped: this server is a standby (backup.on: primary)"),
        "{out}\n{err}"
    );
    let (code, out, err) = crate::common::pgward_with(&primary_config, &["jobs", "run", "nightly"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("skipped: this server is no standby (backup.on: standby)"),
        "{out}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_allow_writes_the_primary_side_of_pg_hba_at_bootstrap() {
    let primary = Cluster::new();
    let config = with_postgres_keys(
        primary.config("password: pw", "wal:\n  archive: false\n"),
        "  replication:\n    allow: [10.1.0.0/16, 127.0.0.2]\n",
    );
    let (_config, _pgward, client) = run_and_connect(&primary, config).await;
    let rules: Vec<String> = client
        .query(
            "SELECT address || ' ' || netmask || ' ' || auth_method FROM pg_hba_file_rules \
             WHERE database = '{replication}' AND address IN ('10.1.0.0', '127.0.0.2') \
             ORDER BY line_number",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        rules,
        [
            "10.1.0.0 255.255.0.0 scram-sha-256",
            "127.0.0.2 255.255.255.255 scram-sha-256"
        ]
    );
    let errors: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(errors, 0);
}
