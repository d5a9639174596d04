//! `pgward restore-test` against a real cluster and a `file://` repository: a good backup
//! passes and leaves nothing behind, a query returning false fails, a corrupt object fails
//! naming it, `--target latest` replays the WAL archived after the backup (and a corrupt
//! segment of it fails the recovery, naming it), a stop signal ends the test cleaning up, and
//! the throwaway server never archives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{backed_up_cluster, files_under, switch_and_wait_archived, BackedUp, Pgward};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

/// `restore-test --json` with `args`: (exit code, report, stderr).
fn restore_test_json(config: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["restore-test", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = pgward(config, &all);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("restore-test --json printed no JSON ({e}):\n{out}\n{err}"));
    (code, report, err)
}

/// What `dir` holds (nothing when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Flips a byte in the middle of the stored file at `path`.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, &bytes).unwrap();
}

/// Pids of the processes whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<i32> {
    let needle = path.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn seconds(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_test_passes_a_good_backup_and_fails_a_false_query_or_a_corrupt_object() {
    let BackedUp {
        cluster,
        config,
        pgward: _pgward_run,
        id,
        ..
    } = backed_up_cluster(
        "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 50000) AS i",
    )
    .await;
    let scratch = cluster.dir.join("scratch");
    let scratch_arg = scratch.to_str().unwrap();

    // Good: restored, recovered, the query true; the durations; nothing left behind.
    let (code, report, err) = restore_test_json(
        &config,
        &[
            "--sql",
            "SELECT count(*) = 50000 FROM t",
            "--scratch-dir",
            scratch_arg,
        ],
    );
    assert_eq!(code, 0, "{report}\n{err}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["backup"], id.as_str());
    assert_eq!(report["target"], "consistent");
    assert_eq!(report["sql_result"], true);
    assert_eq!(report["reason"], serde_json::Value::Null);
    let (restore, recovery, total) = (
        seconds(&report, "restore_secs"),
        seconds(&report, "recovery_secs"),
        seconds(&report, "total_secs"),
    );
    assert!(restore > 0.0 && recovery > 0.0, "{report}");
    assert!(total >= restore + recovery, "{report}");
    let lsn = report["recovered_to_lsn"].as_str().unwrap();
    assert!(lsn.contains('/'), "{report}");
    let run_dir = PathBuf::from(report["scratch_dir"].as_str().unwrap());
    assert!(run_dir.starts_with(&scratch), "{report}");
    assert!(!run_dir.exists(), "the scratch directory is still there");
    assert_eq!(entries(&scratch), Vec::<String>::new());
    // The throwaway server's output is relayed under its own name.
    assert!(err.contains("[restore-test]"), "{err}");

    // A query that returns false, in the default scratch directory (beside the data
    // directory, made and removed by the test), as text.
    let (code, out, err) = pgward(
        &config,
        &[
            "restore-test",
            "latest",
            "--sql",
            "SELECT count(*) = 1 FROM t",
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("restore test of backup {id} (target consistent): FAILED").as_str()),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some("query: \"SELECT count(*) = 1 FROM t\" returned false"),
        "{out}"
    );
    assert!(!cluster.dir.join("pgward-restore-test").exists());

    // A query that is not a test.
    let (code, report, err) = restore_test_json(
        &config,
        &[
            "--sql",
            "SELECT count(*) FROM t",
            "--scratch-dir",
            scratch_arg,
        ],
    );
    assert_eq!(code, 1, "{report}\n{err}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("query: ") && reason.contains("not boolean"),
        "{reason}"
    );
    // The clean-up's failure is appended to the reason ("; then clean up: ...").
    assert!(!reason.contains("clean up"), "{reason}\n{err}");
    assert_eq!(entries(&scratch), Vec::<String>::new(), "{report}\n{err}");

    // Refused before anything is done: a scratch directory inside the data directory.
    let inside = cluster.data_dir().join("scratch");
    let (code, _, err) = pgward(
        &config,
        &["restore-test", "--scratch-dir", inside.to_str().unwrap()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is inside the data directory"), "{err}");
    assert!(!inside.exists());

    // A corrupt object: the restore fails, naming it.
    let stored_data = cluster.dir.join("repo/backups").join(&id).join("data");
    let stored = files_under(&stored_data.join("base"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("stored objects under base/");
    corrupt(&stored);
    let rel = stored
        .strip_prefix(&stored_data)
        .unwrap()
        .to_str()
        .unwrap()
        .strip_suffix(".zst")
        .expect("stored objects end in .zst")
        .to_owned();
    let (code, report, err) = restore_test_json(&config, &["--scratch-dir", scratch_arg]);
    assert_eq!(code, 1, "{report}\n{err}");
    assert_eq!(report["ok"], false);
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "restore: restore {rel}: object backups/{id}/data/{rel} is corrupt: "
        )),
        "{reason}"
    );
    assert!(report["restore_secs"].is_f64(), "{report}");
    assert_eq!(report["recovery_secs"], serde_json::Value::Null);
    assert_eq!(entries(&scratch), Vec::<String>::new(), "{report}\n{err}");

    // The throwaway servers, promoted onto timeline 2, never archived anything.
    let timeline_2: Vec<PathBuf> = files_under(&cluster.dir.join("repo/wal"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("00000002")
        })
        .collect();
    assert!(
        timeline_2.is_empty(),
        "archived by a restore test: {timeline_2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_test_to_latest_replays_the_wal_archived_after_the_backup() {
    let BackedUp {
        cluster,
        config,
        pgward: _pgward_run,
        client,
        ..
    } = backed_up_cluster("CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await;
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1001, 1500)")
        .await
        .unwrap();
    let after_backup = switch_and_wait_archived(&client).await;
    let scratch = cluster.dir.join("scratch");
    let scratch_arg = scratch.to_str().unwrap();

    let (code, report, err) = restore_test_json(
        &config,
        &[
            "--target",
            "latest",
            "--sql",
            "SELECT count(*) = 1500 FROM t",
            "--scratch-dir",
            scratch_arg,
        ],
    );
    assert_eq!(code, 0, "{report}\n{err}");
    assert_eq!(report["target"], "latest");
    assert_eq!(report["sql_result"], true);

    // Consistent: the backup's end, without the rows inserted after it.
    let (code, report, err) = restore_test_json(
        &config,
        &[
            "--sql",
            "SELECT count(*) = 1000 FROM t",
            "--scratch-dir",
            scratch_arg,
        ],
    );
    assert_eq!(code, 0, "{report}\n{err}");

    // Stopped while the query runs: the server is stopped and the directory removed.
    let mut stopped = Pgward::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "restore-test",
            "--sql",
            "SELECT true FROM pg_sleep(120)",
            "--scratch-dir",
            scratch_arg,
        ],
        &[],
    );
    stopped.wait_for_output("and promoted", Duration::from_secs(60));
    let run_dir = scratch.join(&entries(&scratch)[0]);
    stopped.signal(nix::sys::signal::Signal::SIGTERM);
    let status = stopped.wait_exit(Duration::from_secs(30));
    let output = stopped.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("query: cancelled"), "{output}");
    assert_eq!(entries(&scratch), Vec::<String>::new());
    assert_eq!(processes_mentioning(&run_dir), Vec::<i32>::new());

    // A corrupt segment after the backup: recovery to the latest fails, naming it.
    let stored = files_under(&cluster.dir.join("repo/wal"))
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{after_backup}."))
        })
        .expect("the archived segment");
    corrupt(&stored);
    let (code, report, err) = restore_test_json(
        &config,
        &["--target", "latest", "--scratch-dir", scratch_arg],
    );
    assert_eq!(code, 1, "{report}\n{err}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("recovery: postgres exited (")
            && reason.contains(&format!("object wal/00000001/{after_backup} is corrupt"))
            && reason.contains("FATAL:  could not restore file"),
        "{reason}"
    );
    assert!(report["recovery_secs"].is_f64(), "{report}");
    assert_eq!(entries(&scratch), Vec::<String>::new());
    // Recovery waits for the end of recovery without knocking: no connection was refused.
    assert!(!err.contains("not accepting connections"), "{err}");
}
