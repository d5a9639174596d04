//! `expire` and WAL archiving killed at their failpoints, with a real postgres and a `file://`
//! repository: what the next run finds is finished, and nothing listed or acknowledged is
//! lost. (Backups killed mid-way are in `races`, restores in `restore_safety`.)

use std::path::Path;
use std::time::Duration;

use crate::common::{
    assert_killed_at, backup_ok, eventually, failpoints, file_storage, files_under, listed,
    pgward_armed, quiet_archiving_config, reached, Cluster, Pgward, BOOT,
};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

/// Whether the repository at `repo` holds any object of backup `id`.
fn has_objects(repo: &Path, id: &str) -> bool {
    !files_under(&repo.join("backups").join(id)).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expire_killed_after_unlisting_a_backup_is_finished_by_the_next_expire() {
    let cluster = Cluster::new();
    let storage = format!(
        "{}backup:\n  retention:\n    full: 1\n",
        file_storage(&cluster)
    );
    let (config, _daemon, client) = crate::common::start_archiving(&cluster, &storage).await;
    let repo = cluster.dir.join("repo");
    let mut ids = Vec::new();
    for i in 0..2 {
        client
            .batch_execute(&format!(
                "CREATE TABLE t{i} AS SELECT generate_series(1, 1000)"
            ))
            .await
            .unwrap();
        backup_ok(&config);
        ids.push(
            listed(&config).last().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (old, kept) = (&ids[0], &ids[1]);

    // Killed right after the old backup's manifest went: it is no longer listed, its other
    // objects are still there, and the kept backup is whole.
    let out = pgward_armed(&config, "expire-after-manifest=return(kill)", &["expire"]);
    assert_killed_at(&out, "expire-after-manifest");
    let listed_ids: Vec<String> = listed(&config)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&listed_ids, std::slice::from_ref(kept));
    assert!(has_objects(&repo, old), "the kill left nothing to finish");
    let (code, out, err) = pgward(&config, &["verify", kept]);
    assert_eq!(code, 0, "verify {kept} after the kill:\n{out}\n{err}");

    // The next expire takes what is left for an unfinished backup (no lease names it) and
    // deletes it; the kept backup still verifies.
    let (code, out, err) = pgward(&config, &["expire"]);
    assert_eq!(code, 0, "expire failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("delete unfinished backup {old}")),
        "{out}"
    );
    assert!(!repo.join("backups").join(old).exists());
    let (code, out, err) = pgward(&config, &["verify", kept]);
    assert_eq!(code, 0, "verify {kept} after expire:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_between_storing_a_segment_and_acknowledging_it_archives_it_at_the_next_start(
) {
    if !crate::common::is_root() {
        eprintln!("needs root for unshare --pid; run as root (make test does)");
    }
    let cluster = Cluster::new();
    // No switch of postgres's own before the test's: the first push is the test's segment.
    let config = quiet_archiving_config(&cluster, &file_storage(&cluster));
    let (name, value) = failpoints("push-after-upload=return(kill)");
    // PID 1 of its own namespace, as in a container: its death takes postgres with it.
    let mut container = Pgward::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc"],
        &["--config", config.to_str().unwrap(), "run"],
        &[(name, value.as_str())],
    );
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    container.wait_exit(Duration::from_secs(60));
    assert!(
        reached(&container.output(), "push-after-upload"),
        "{}",
        container.output()
    );
    drop(client);

    // Stored but never acknowledged: postgres still has it to archive.
    let status = cluster.data_dir().join("pg_wal/archive_status");
    assert!(status.join(format!("{segment}.ready")).exists());
    let stored = || {
        files_under(&cluster.dir.join("repo/wal")).iter().any(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&segment)
        })
    };
    assert!(
        stored(),
        "{segment} did not reach the repository before the kill"
    );

    // The next start: postgres asks again, the identical object counts as archived.
    let daemon = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    eventually(
        &format!("{segment} acknowledged"),
        Duration::from_secs(60),
        || status.join(format!("{segment}.done")).exists(),
    );
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM t), failed_count FROM pg_stat_archiver",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1000, 0));
    assert!(
        !daemon.output().contains("different content"),
        "{}",
        daemon.output()
    );
    backup_ok(&config);
    let (code, out, err) = pgward(&config, &["verify", "latest"]);
    assert_eq!(code, 0, "verify after the restart:\n{out}\n{err}");
}
