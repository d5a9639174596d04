//! Lineage with a real postgres and a `file://` repository: a copy restored from a repository
//! may not write to it; a successor starts only once its original stopped archiving, then
//! continues its lineage, and the original, started again, cannot archive a diverging branch;
//! after a point-in-time restore, `latest`, incrementals and restores follow the new timeline.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::{
    backed_up_cluster, backup_ok, pgward_with, start_recovered, switch_and_wait_archived,
    wait_promoted, BackedUp, Cluster, Pgward, BOOT,
};

/// The rows of `t` as `who:i` (or `note`), sorted.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    out.sort();
    out
}

/// Restores `latest` as the cluster of `config` sees it into a new directory, recovers it
/// (without archiving) and returns the rows `sql` gives there.
async fn restore_latest_rows(config: &Path, storage: &str, sql: &str) -> Vec<String> {
    let scratch = Cluster::new();
    let data = scratch.data_dir();
    let (code, out, err) = pgward_with(config, &["restore", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    let (_pgward, client) = start_recovered(&scratch, storage).await;
    rows(&client, sql).await
}

fn stop(pgward: &mut Pgward) {
    pgward.signal(Signal::SIGTERM);
    pgward.wait_exit(BOOT);
}

#[test]
fn a_copy_from_the_same_repository_is_refused_at_config_check() {
    let copy = Cluster::new();
    let config = copy.config(
        "password: pw\nfrom_backup: latest",
        "wal:\n  archive: true\njobs:\n  - name: nightly\n    schedule: \"0 1 * * *\"\n    \
         action: backup\n",
    );
    let (code, out, err) = pgward_with(&config, &["config", "check"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(
            "postgres.init.from_backup: a cluster restored with from_backup is a copy \
             (postgres.init.restore_as: copy, the default) and must never write to the \
             repository it came from, but wal.archive: true and jobs[0] (\"nightly\", action: \
             backup) would write into storage.url"
        ),
        "{err}"
    );
    assert!(
        err.contains("HINT: for a copy, set wal.archive: false"),
        "{err}"
    );
    assert!(
        err.contains("set postgres.init.restore_as: successor"),
        "{err}"
    );
    // `pgward run` checks the same before it touches anything.
    let (code, _, err) = pgward_with(&config, &["run"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a copy"), "{err}");
    assert!(!copy.data_dir().join("global").exists());

    // A copy that only reads, and a successor, pass.
    let reader = copy.config(
        "password: pw\nfrom_backup: latest",
        "wal:\n  archive: false\n",
    );
    let (code, out, err) = pgward_with(&reader, &["config", "check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // ... but the writes it has no job for are refused when run by hand too.
    for args in [
        &["backup"][..],
        &["expire"],
        &["wal-push", "pg_wal/000000010000000000000001"],
    ] {
        let (code, out, err) = pgward_with(&reader, args);
        assert_ne!(code, 0, "{args:?} on a copy:\n{out}\n{err}");
        assert!(
            err.contains("refused: this cluster was restored from ")
                && err.contains("is a copy (postgres.init.restore_as: copy, the default)"),
            "{args:?}: {err}"
        );
    }
    let (code, out, err) = pgward_with(&reader, &["expire", "--dry-run"]);
    assert!(!err.contains("is a copy"), "{code}\n{out}\n{err}");
    let successor = copy.config(
        "password: pw\nfrom_backup: latest\nrestore_as: successor",
        "wal:\n  archive: true\n",
    );
    let (code, out, err) = pgward_with(&successor, &["config", "check"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_waits_for_its_original_continues_its_lineage_and_the_original_cannot_diverge()
{
    let BackedUp {
        cluster: production,
        storage,
        mut pgward,
        client,
        config,
        ..
    } = backed_up_cluster(
        "CREATE TABLE t (who text, i int); INSERT INTO t SELECT 'production', generate_series(1, 3)",
    )
    .await;
    client
        .batch_execute("INSERT INTO t VALUES ('production', 4)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    let count_sql = "SELECT who || ':' || i FROM t";

    // While production archives, a successor refuses to start, and restores nothing.
    let replacement = Cluster::new();
    let successor_config = replacement.config(
        "password: pw\nfrom_backup: latest\nrestore_as: successor",
        &format!("{storage}wal:\n  archive: true\n  archive_timeout: 1s\n"),
    );
    let (code, out, err) = pgward_with(&successor_config, &["run"]);
    assert_ne!(code, 0, "{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(
        said.contains(
            "refusing to start as successor: the original still archives into this repository"
        ),
        "{said}"
    );
    assert!(said.contains("pgward run --force"), "{said}");
    assert!(!replacement.data_dir().join("PG_VERSION").exists());

    // Production stops in order; its last heartbeat says so, and the successor starts.
    drop(client);
    stop(&mut pgward);
    let mut successor = Pgward::start(
        &["--config", successor_config.to_str().unwrap(), "run"],
        &[],
    );
    let client = replacement
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_promoted(&client, BOOT).await;
    let timeline: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("CHECKPOINT; INSERT INTO t VALUES ('successor', 1), ('successor', 2)")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    let timeline_now: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        timeline_now >= 2,
        "promoted on timeline {timeline}, now {timeline_now}"
    );

    // Latest, as the successor sees it: production's rows and the successor's.
    let want = [
        "production:1",
        "production:2",
        "production:3",
        "production:4",
        "successor:1",
        "successor:2",
    ];
    assert_eq!(
        restore_latest_rows(&successor_config, &storage, count_sql).await,
        want
    );

    // The original started again writes on its old timeline: refused at push, naming both.
    let mut original = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    original.expect_error(
        "diverging branch",
        "the original, started again beside its successor, archives WAL of its old timeline",
    );
    let client = production
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("INSERT INTO t VALUES ('stray', 1); SELECT pg_switch_wal()")
        .await
        .unwrap();
    original.wait_for_output("diverging branch", Duration::from_secs(60));
    let output = original.output();
    let refusal = output
        .lines()
        .find(|l| l.contains("diverging branch"))
        .expect("a refusal");
    assert!(
        refusal.contains("of timeline 1: this repository's history left timeline 1 at")
            && refusal.contains(&format!(
                "for timeline {timeline_now} (0000000{timeline_now}.history)"
            )),
        "{refusal}"
    );
    drop(client);
    stop(&mut original);
    stop(&mut successor);
    // Nothing of the stray branch reached the archive: the successor's view is unchanged.
    assert_eq!(
        restore_latest_rows(&successor_config, &storage, count_sql).await,
        want
    );
    // And the original's own view follows its timeline, not the successor's newer one.
    assert_eq!(
        restore_latest_rows(&config, &storage, count_sql).await,
        want[..4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_after_a_point_in_time_restore_chains_on_the_new_timeline() {
    let BackedUp {
        cluster,
        storage,
        mut pgward,
        client,
        config,
        id: first,
    } = backed_up_cluster("CREATE TABLE t (note text); INSERT INTO t VALUES ('before')").await;
    client
        .batch_execute("INSERT INTO t VALUES ('kept')")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target: String = client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .batch_execute("INSERT INTO t VALUES ('undone')")
        .await
        .unwrap();
    // A backup of what the restore below undoes: on the branch left behind.
    backup_ok(&config);
    switch_and_wait_archived(&client).await;
    let abandoned = crate::common::listed(&config)[1]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Back to the target, in place: the new primary is on timeline 2.
    drop(client);
    stop(&mut pgward);
    let data = cluster.data_dir();
    let (code, out, err) = pgward_with(
        &config,
        &[
            "restore",
            "--data-dir",
            data.to_str().unwrap(),
            "--target-time",
            &target,
            "--target-action",
            "promote",
            "--force",
        ],
    );
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    let _pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_promoted(&client, BOOT).await;
    let notes = "SELECT note FROM t";
    assert_eq!(rows(&client, notes).await, ["before", "kept"]);
    client
        .batch_execute("INSERT INTO t VALUES ('after')")
        .await
        .unwrap();

    // An incremental now builds on the first backup, not on the newer one of the old branch.
    let (code, out, err) = pgward_with(&config, &["backup", "--incremental"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    let (code, out, err) = pgward_with(&config, &["show", "latest", "--json"]);
    assert_eq!(code, 0, "{err}");
    let latest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(latest["parent"], first.as_str(), "{latest}");
    assert_ne!(latest["id"], abandoned.as_str());
    assert_eq!(latest["timeline"], 2, "{latest}");
    client
        .batch_execute("INSERT INTO t VALUES ('later')")
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;

    // Latest, as the restored cluster sees it: its own rows, not the old branch's.
    assert_eq!(
        restore_latest_rows(&config, &storage, notes).await,
        ["after", "before", "kept", "later"]
    );
}
