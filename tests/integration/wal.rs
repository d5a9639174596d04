//! WAL archiving and fetching against real postgres and real storage: the `file://` default
//! and a real S3-compatible server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{
    self, archived_marks_dir, archiving_config, file_storage, files_under, pgbench, pgward_bin,
    start_archiving, switch_and_wait_archived, Cluster, Pgward, BOOT,
};
use crate::storage_servers::{TestAzurite, TestS3};

fn wal_fetch(config: &Path, name: &str, dest: &Path) -> (i32, String) {
    let out = Command::new(pgward_bin())
        .args([
            "--config",
            config.to_str().unwrap(),
            "wal-fetch",
            name,
            dest.to_str().unwrap(),
        ])
        .output()
        .expect("run wal-fetch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wal_push(config: &Path, path: &Path) -> (i32, String) {
    let out = Command::new(pgward_bin())
        .args([
            "--config",
            config.to_str().unwrap(),
            "wal-push",
            path.to_str().unwrap(),
        ])
        .output()
        .expect("run wal-push");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every archived segment (and history file) in `pg_wal` fetched back byte for byte.
fn assert_archive_matches_pg_wal(cluster: &Cluster, config: &Path, upto: &str) -> usize {
    let out_dir = cluster.dir.join("fetched");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut checked = 0;
    let mut names: Vec<String> = std::fs::read_dir(cluster.data_dir().join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.as_str() <= upto)
        .collect();
    names.sort();
    for name in names {
        let dest = out_dir.join(&name);
        let (code, err) = wal_fetch(config, &name, &dest);
        assert_eq!(code, 0, "wal-fetch {name}: {err}");
        let original = std::fs::read(cluster.data_dir().join("pg_wal").join(&name)).unwrap();
        let fetched = std::fs::read(&dest).unwrap();
        assert!(original == fetched, "{name} differs after the round trip");
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_every_segment_under_pgbench_and_fetches_them_back_identical() {
    let cluster = Cluster::new();
    let (config, pgward, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    pgbench(&cluster, &["-i", "-s", "5", "-q"]);
    pgbench(&cluster, &["-T", "5", "-c", "4", "-j", "2"]);
    let last = switch_and_wait_archived(&client).await;

    let checked = assert_archive_matches_pg_wal(&cluster, &config, &last);
    assert!(checked >= 5, "only {checked} segments archived");
    let status = Pgward::status(&config);
    let archiver = &status["archiver"];
    assert!(
        archiver["archived_total"].as_u64().unwrap() >= checked as u64 - 1,
        "{status}"
    );
    assert_eq!(archiver["failed_total"], 0, "{status}");
    // Look-ahead and postgres's own requests never upload a file twice.
    assert_eq!(archiver["already_archived_total"], 0, "{status}");
    // Segments filled under load were staged as they were written (the first one after the
    // start has no predecessor archived to follow, switched segments may finish at once, and
    // on a machine busy with other clusters the stager may fall behind on one more, which
    // then goes up whole).
    assert!(
        archiver["staged_total"].as_u64().unwrap() >= 1,
        "{status}\n{}",
        pgward.output()
    );
    assert_eq!(archiver["stage_discarded_total"], 0, "{status}");

    // Not in the archive: exit 1, the end of the archived WAL for postgres.
    let (code, _) = wal_fetch(
        &config,
        "0000000100000000000000FF",
        &cluster.dir.join("nope"),
    );
    assert_eq!(code, 1);
    assert!(!cluster.dir.join("nope").exists());
}

/// A cluster archiving to `storage` (WAL kept), after `pgbench -i -s 2`.
async fn archiving_after_pgbench_init(
    storage: &str,
) -> (Cluster, PathBuf, Pgward, tokio_postgres::Client) {
    let cluster = Cluster::new();
    let (config, pgward, client) = start_archiving(&cluster, storage).await;
    pgbench(&cluster, &["-i", "-s", "2", "-q"]);
    (cluster, config, pgward, client)
}

/// A cluster archiving to its own file:// repository, with one segment of real data archived.
async fn one_archived_segment() -> (Cluster, PathBuf, Pgward, tokio_postgres::Client, String) {
    let cluster = Cluster::new();
    let (config, pgward, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
        .await
        .unwrap();
    let name = switch_and_wait_archived(&client).await;
    (cluster, config, pgward, client, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_pushes_and_a_foreign_cluster_are_handled_loudly() {
    let (cluster, config, pgward, _client, name) = one_archived_segment().await;
    pgward.expect_error(
        "already exists with different content",
        "the test pushes different content under an archived segment's name",
    );
    let segment = cluster.data_dir().join("pg_wal").join(&name);

    // The same content again (a retry after a lost acknowledgement): success, counted.
    let (code, err) = wal_push(&config, &segment);
    assert_eq!(code, 0, "{err}");
    let status = Pgward::status(&config);
    assert!(
        status["archiver"]["already_archived_total"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );

    // A partial segment (what a promoted standby leaves of its old timeline) round-trips.
    let partial_dir = cluster.dir.join("partial");
    std::fs::create_dir_all(&partial_dir).unwrap();
    let partial = partial_dir.join(format!("{name}.partial"));
    std::fs::copy(&segment, &partial).unwrap();
    let (code, err) = wal_push(&config, &partial);
    assert_eq!(code, 0, "{err}");
    let fetched = cluster.dir.join("partial-fetched");
    let (code, err) = wal_fetch(&config, &format!("{name}.partial"), &fetched);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&segment).unwrap());

    // Different content under the same name: refused, naming both checksums.
    let forged_dir = cluster.dir.join("forged");
    std::fs::create_dir_all(&forged_dir).unwrap();
    let forged = forged_dir.join(&name);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&forged, &bytes).unwrap();
    let (code, err) = wal_push(&config, &forged);
    assert_ne!(code, 0);
    assert!(
        err.contains(&name) && err.to_lowercase().contains("checksum"),
        "{err}"
    );

    // A second cluster pointed at the same repository fails on its first segment.
    let other = Cluster::new();
    let other_config = archiving_config(&other, &file_storage(&cluster));
    let other_pgward = Pgward::start(&["--config", other_config.to_str().unwrap(), "run"], &[]);
    for refusal in ["system identifier", "the WAL repository is not open yet"] {
        other_pgward.expect_error(
            refusal,
            "the test points a second cluster at the first one's repository",
        );
    }
    let other_client = other.wait_connect("postgres", "pw", "postgres", BOOT).await;
    other_client
        .batch_execute(
            "CREATE TABLE t AS SELECT generate_series(1, 1000) AS i; SELECT pg_switch_wal()",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (failed, archived) = loop {
        let row = other_client
            .query_one(
                "SELECT failed_count, archived_count FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let (failed, archived): (i64, i64) = (row.get(0), row.get(1));
        if failed >= 1 || std::time::Instant::now() > deadline {
            break (failed, archived);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        other_pgward.output().contains("system identifier"),
        "{}",
        other_pgward.output()
    );
    assert!(
        failed >= 1 && archived == 0,
        "failed {failed}, archived {archived}"
    );
    drop(pgward);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_object_is_detected_on_fetch() {
    let (cluster, config, _pgward, _client, name) = one_archived_segment().await;

    let stored = find_object(&cluster.dir.join("repo"), &name).expect("archived object on disk");
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();

    let dest = cluster.dir.join("restored-seg");
    let (code, err) = wal_fetch(&config, &name, &dest);
    assert_eq!(code, 255, "{err}");
    assert!(
        err.contains(&name) && err.to_lowercase().contains("corrupt"),
        "{err}"
    );
    assert!(!dest.exists(), "no partial file is left at the destination");
}

/// The stored file of WAL file `name` under a file:// repository root.
fn find_object(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in files_under(root) {
        if entry.file_name()?.to_str()?.starts_with(name) {
            return Some(entry);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_replays_archived_wal_to_the_same_lsn() {
    let primary = Cluster::new();
    let config = archiving_config(&primary, &file_storage(&primary));
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = primary
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("CREATE TABLE marker (step int)")
        .await
        .unwrap();

    // A base backup without WAL: everything after it must come from the archive.
    let restored = Cluster::new();
    let backup_dir = restored.data_dir();
    // Bounded: pg_basebackup waits for the backup's WAL to be archived.
    let mut basebackup = Command::new("timeout");
    basebackup
        .arg("120")
        .arg(common::pg_bin_dir().join("pg_basebackup"))
        .args([
            "-h",
            primary.socket_dir().to_str().unwrap(),
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-D",
            backup_dir.to_str().unwrap(),
            "-X",
            "none",
            "-c",
            "fast",
        ]);
    if common::is_root() {
        // The server's user must own the copy; pg_basebackup writes as whoever runs it.
        std::fs::create_dir_all(&backup_dir).unwrap();
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&backup_dir, Some(postgres.uid), Some(postgres.gid)).unwrap();
        basebackup = {
            let mut runuser = Command::new("runuser");
            runuser
                .args(["-u", "postgres", "--"])
                .arg(basebackup.get_program())
                .args(basebackup.get_args());
            runuser
        };
    }
    let out = basebackup.output().unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for step in 1..=3 {
        client
            .batch_execute(&format!(
                "INSERT INTO marker SELECT {step} FROM generate_series(1, 20000)"
            ))
            .await
            .unwrap();
        switch_and_wait_archived(&client).await;
    }
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    switch_and_wait_archived(&client).await;

    // The copy recovers from the archive only, through pgward wal-fetch, then promotes.
    std::fs::write(backup_dir.join("recovery.signal"), "").unwrap();
    let restored_config = restored.config("password: pw", &file_storage(&primary));
    let text = std::fs::read_to_string(&restored_config).unwrap();
    let restore_command = format!(
        "{} --config {} wal-fetch %f %p",
        pgward_bin(),
        restored_config.display()
    );
    let text = text.replacen(
        "  parameters:\n",
        &format!("  parameters:\n    restore_command: \"{restore_command}\"\n    recovery_target_action: promote\n"),
        1,
    );
    std::fs::write(&restored_config, text).unwrap();
    let restored_pgward =
        Pgward::start(&["--config", restored_config.to_str().unwrap(), "run"], &[]);
    let restored_client = restored
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    common::eventually(
        "the restored cluster is promoted",
        Duration::from_secs(60),
        || {
            restored_pgward
                .output()
                .contains("database system is ready to accept connections")
                && restored_pgward
                    .output()
                    .contains("archive recovery complete")
        },
    );
    let replayed_past: bool = restored_client
        .query_one(
            &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replayed_past, "replay stopped before {target}");
    let counts: Vec<i64> = restored_client
        .query(
            "SELECT count(*) FROM marker GROUP BY step ORDER BY step",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(counts, vec![20000, 20000, 20000]);
    assert!(
        restored_pgward.output().contains("restored log file"),
        "postgres fetched through restore_command"
    );
    // The promoted copy archives into the same repository (same system identifier), starting
    // with its new timeline's history file.
    let repo = primary.dir.join("repo");
    common::eventually(
        "the timeline 2 history file is archived",
        Duration::from_secs(30),
        || {
            let files: Vec<String> = files_under(&repo)
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect();
            files.iter().any(|f| f.starts_with("00000002.history"))
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_to_s3_and_loses_nothing_across_a_storage_outage() {
    let mut s3 = TestS3::start();
    let (cluster, config, pgward, client) =
        archiving_after_pgbench_init(&s3.config_yaml("wal-test")).await;
    pgward.expect_error(
        "failed to archive",
        "the test stops the storage server while WAL is archived",
    );
    let before = switch_and_wait_archived(&client).await;

    // Storage goes away: WAL keeps coming, nothing may be acknowledged.
    s3.stop();
    pgbench(&cluster, &["-T", "3", "-c", "2"]);
    let during: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    common::eventually("archiving fails visibly", Duration::from_secs(30), || {
        let status = Pgward::status(&config);
        status["archiver"]["failed_total"].as_u64().unwrap_or(0) > 0
            && status["archiver"]["last_error"].is_string()
            && status["archiver"]["backlog"].as_u64().unwrap_or(0) > 0
    });
    let last: String = client
        .query_one(
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        last.as_str() < during.as_str(),
        "{last} acknowledged while storage was down"
    );

    // Storage is back: the archive catches up by itself.
    s3.restart();
    let after = switch_and_wait_archived(&client).await;
    assert!(after > before);
    let checked = assert_archive_matches_pg_wal(&cluster, &config, &after);
    assert!(checked >= 3, "only {checked} segments checked");
    common::eventually("the error clears", Duration::from_secs(10), || {
        Pgward::status(&config)["archiver"]["last_error"].is_null()
    });
    assert!(pgward.output().contains("archiving works again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_server_user_archives_into_the_local_repository() {
    let (cluster, config, mut pgward, client, name) = one_archived_segment().await;
    drop(client);
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(pgward.wait_exit(Duration::from_secs(30)).code(), Some(0));

    // What postgres's archive_command would do with no daemon around: push alone, as the
    // server's user (the daemon ran as root and created the repository).
    let partial = cluster
        .data_dir()
        .join("pg_wal")
        .join(format!("{name}.partial"));
    std::fs::copy(cluster.data_dir().join("pg_wal").join(&name), &partial).unwrap();
    if common::is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&partial, Some(postgres.uid), Some(postgres.gid)).unwrap();
    }
    let mut push = if common::is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(pgward_bin());
        cmd
    } else {
        Command::new(pgward_bin())
    };
    let out = push
        .args([
            "--config",
            config.to_str().unwrap(),
            "wal-push",
            partial.to_str().unwrap(),
        ])
        .env_remove(pgward::control::SOCKET_ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "standalone wal-push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = cluster.dir.join("partial-back");
    let (code, err) = wal_fetch(&config, &format!("{name}.partial"), &fetched);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&partial).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_to_azure_blob_and_fetches_back_identical() {
    let azurite = TestAzurite::start();
    let (cluster, config, _pgward, client) =
        archiving_after_pgbench_init(&azurite.config_yaml("wal-test")).await;
    let last = switch_and_wait_archived(&client).await;
    let checked = assert_archive_matches_pg_wal(&cluster, &config, &last);
    assert!(checked >= 2, "only {checked} segments checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_segments_is_answered_from_the_look_ahead() {
    let (cluster, config, _pgward, client, _) = one_archived_segment().await;
    // Twenty segments at once: postgres archives them one by one, the look-ahead in parallel.
    for i in 0..20 {
        client
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({i}); SELECT pg_switch_wal()"
            ))
            .await
            .unwrap();
    }
    switch_and_wait_archived(&client).await;
    let status = Pgward::status(&config);
    let archiver = &status["archiver"];
    assert!(
        archiver["archived_total"].as_u64().unwrap() >= 21,
        "{status}"
    );
    assert!(
        archiver["answered_ahead_total"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(archiver["already_archived_total"], 0, "{status}");
    assert_eq!(archiver["failed_total"], 0, "{status}");
    // Every mark the daemon left for wal-push was taken or withdrawn. A mark the shell's
    // `test -f` found is withdrawn by the look-ahead's next scan after postgres moved on, a
    // moment after pg_stat_archiver reports the segment.
    let marks = archived_marks_dir(&cluster, &client).await;
    let marks_left = || -> Vec<_> {
        std::fs::read_dir(&marks)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = marks_left();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = marks_left();
    }
    assert!(left.is_empty(), "marks left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_left_by_an_earlier_run_is_never_trusted() {
    let (cluster, config, mut pgward, client, _) = one_archived_segment().await;
    let current: String = client
        // The insert position is past the page header, so this names the segment being
        // written even right after a switch.
        .query_one("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    pgward.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(pgward.wait_exit(Duration::from_secs(30)).code(), Some(0));

    // A mark from an earlier run (its repository may not be this one) for the segment postgres
    // writes next: archive_command must not take it for "archived".
    let marks = cluster.data_dir().join("pg_wal/pgward.archived");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join(&current), "").unwrap();
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    assert!(
        !marks.join(&current).exists(),
        "the earlier run's mark is still there while postgres runs"
    );
    let switched = switch_and_wait_archived(&client).await;
    assert!(switched >= current, "{switched} < {current}");
    let dest = cluster.dir.join("fetched-current");
    let (code, err) = wal_fetch(&config, &current, &dest);
    assert_eq!(code, 0, "{current} is not in the archive: {err}");
}

/// `pgward switch-wal <args>`: exit code, stdout, stderr.
fn switch_wal(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["switch-wal"];
    all.extend_from_slice(args);
    common::pgward_with(config, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_wal_wait_returns_once_the_closed_segment_is_archived() {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, _pgward, client) = common::start_archiving_quietly(&cluster, &storage).await;
    client
        .batch_execute("CREATE TABLE switched AS SELECT generate_series(1, 100) AS n")
        .await
        .unwrap();
    let (code, out, err) = switch_wal(&config, &["--wait"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let segment = out
        .split_whitespace()
        .find(|w| w.len() == 24 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no segment named: {out}"))
        .to_owned();
    assert!(out.contains(&format!("{segment} is archived in")), "{out}");
    // In the repository by the time the command returned, not merely acknowledged.
    assert!(
        find_object(&cluster.dir.join("repo/wal"), &segment).is_some(),
        "{segment} is not in the repository"
    );
    // The server's own view agrees, and the next write goes to a later segment.
    let current: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    assert!(current > segment, "{current} after {segment}");

    // With nothing written since, the segment that switch closed is the one named again.
    let (code, again, err) = switch_wal(&config, &[]);
    assert_eq!(code, 0, "{again}\n{err}");
    assert!(again.contains(&segment), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_wal_wait_fails_naming_the_segment_when_nothing_archives_it() {
    let cluster = Cluster::new();
    let config = cluster.config(
        "password: pw",
        &format!(
            "{}wal:\n  archive: false\nbackup:\n  wal_wait: 2s\n",
            file_storage(&cluster)
        ),
    );
    let (config, _pgward, client) = common::run_and_connect(&cluster, config).await;
    client
        .batch_execute("CREATE TABLE unarchived AS SELECT generate_series(1, 100) AS n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = switch_wal(&config, &["--wait"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let segment = out.split_whitespace().nth(2).unwrap_or_default().to_owned();
    assert_eq!(segment.len(), 24, "{out}");
    assert!(
        err.contains(&format!("WAL segment {segment} did not reach"))
            && err.contains("within 2s")
            && err.contains("archive_mode off")
            && err.contains("HINT: set wal.archive: true"),
        "{err}"
    );
}
