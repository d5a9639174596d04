//! The small paths: an incomplete object a crash left at a WAL segment's key, an
//! `archive_status` that cannot be scanned, what a backup cannot restore exactly (symbolic
//! links, names that are not UTF-8), and an incremental whose map of changed blocks reaches
//! its memory ceiling. Each is handled loudly and without losing a row, also behind a store
//! that hangs up instead of refusing a conditional put.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::fault_proxy::{Fault, FaultProxy, Rule};
use crate::common::{
    self, archiving_config, file_storage, listed, pgbench, pgward_with, start_archiving,
    start_archiving_quietly, start_recovered, switch_and_wait_archived, Cluster, Pgward, BOOT,
};
use crate::storage_servers::TestS3;

/// The segment after `name` (16 MiB segments: 256 per logical file).
fn next_segment(name: &str) -> String {
    let tli = &name[..8];
    let hi = u32::from_str_radix(&name[8..16], 16).unwrap();
    let lo = u32::from_str_radix(&name[16..24], 16).unwrap();
    let (hi, lo) = if lo == 0xFF {
        (hi + 1, 0)
    } else {
        (hi, lo + 1)
    };
    format!("{tli}{hi:08X}{lo:08X}")
}

/// Leaves `content` at `path` the way a crashed writer would, unless an object is there
/// already (then the segment went up before the test got to it). True when it was left.
fn leave(path: &Path, content: &[u8]) -> bool {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(content).unwrap();
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => panic!("leave {}: {e}", path.display()),
    }
}

/// Leaves an empty object and a header-only one at the keys of the next two segments, then
/// archives them: both are replaced by what postgres wrote, and archiving goes on.
async fn incomplete_wal_objects_are_replaced(storage: &str, object_path: impl Fn(&str) -> PathBuf) {
    let cluster = Cluster::new();
    let (config, pgward, client) = start_archiving_quietly(&cluster, storage).await;
    let current: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    let names = [current.clone(), next_segment(&current)];
    // What a writer killed mid-way (or a power loss before its fsync) leaves.
    let leftovers: [&[u8]; 2] = [b"", b"PGWARD\x01\x01(zstd data, cut short"];
    let mut left = Vec::new();
    for (name, content) in names.iter().zip(leftovers) {
        let key = format!("wal/{}/{name}.zst", &name[..8]);
        if leave(&object_path(&key), content) {
            left.push(name.clone());
        }
    }
    assert!(
        !left.is_empty(),
        "both segments were archived before the test"
    );
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();
    let first = switch_and_wait_archived(&client).await;
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let second = switch_and_wait_archived(&client).await;
    assert!(
        second >= names[1],
        "{second} archived, {} expected",
        names[1]
    );
    assert_eq!(first, names[0]);
    for name in &left {
        let fetched = cluster.dir.join(&format!("fetched-{name}"));
        let (code, out, err) =
            pgward_with(&config, &["wal-fetch", name, fetched.to_str().unwrap()]);
        assert_eq!(code, 0, "wal-fetch {name}: {out}\n{err}");
        assert!(
            std::fs::read(&fetched).unwrap()
                == std::fs::read(cluster.data_dir().join("pg_wal").join(name)).unwrap(),
            "{name}: the archived copy differs from pg_wal's"
        );
        assert!(
            pgward.output().lines().any(|l| l.contains("WARN")
                && l.contains("replacing the incomplete object")
                && l.contains(name.as_str())),
            "no warning names {name}:\n{}",
            pgward.output()
        );
    }
    // Archiving goes on.
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let third = switch_and_wait_archived(&client).await;
    assert!(third > second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_wal_object_in_a_file_repository_is_replaced_by_the_next_push() {
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    let storage = format!("storage:\n  url: file://{}\n", repo.display());
    incomplete_wal_objects_are_replaced(&storage, |key| repo.join(key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_wal_object_on_s3_is_replaced_by_the_next_push() {
    let s3 = TestS3::start();
    let storage = s3.config_yaml("small");
    incomplete_wal_objects_are_replaced(&storage, |key| s3.object_path(&format!("small/{key}")))
        .await;
}

/// A store may refuse a conditional put before reading its body and hang up: the client
/// sees a broken request, never the refusal. The object found there is incomplete, so it is
/// not this put's (an object store's put is whole or absent): it is replaced just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_wal_object_behind_a_store_that_hangs_up_on_refusal_is_replaced() {
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.port());
    proxy.set(Rule::all(Fault::HideRefusal).method("PUT"));
    let storage = s3
        .config_yaml("hangs-up")
        .replace(&s3.endpoint, &proxy.endpoint());
    incomplete_wal_objects_are_replaced(&storage, |key| s3.object_path(&format!("hangs-up/{key}")))
        .await;
    assert!(proxy.counts().faulted > 0, "no refusal was hidden");
}

/// The value of the first sample of `name` (no labels).
fn sample(body: &str, name: &str) -> Option<String> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_status_scan_shows_in_status_and_metrics_not_as_an_empty_backlog() {
    let cluster = Cluster::new();
    let config = archiving_config(&cluster, &file_storage(&cluster));
    let armed = common::failpoints("archiver-scan=return(error)");
    let _pgward = Pgward::start(
        &["--config", config.to_str().unwrap(), "run"],
        &[(armed.0, armed.1.as_str())],
    );
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    // Postgres's own requests still archive: the daemon answers them without the scan.
    switch_and_wait_archived(&client).await;

    common::eventually("the scan failure is in the status", BOOT, || {
        Pgward::status(&config)["archiver"]["scan_error"].is_string()
    });
    let status = Pgward::status(&config);
    let archiver = &status["archiver"];
    assert!(archiver["backlog"].is_null(), "{archiver}");
    assert!(
        archiver["scan_errors_total"].as_u64().unwrap() > 0,
        "{archiver}"
    );
    assert!(
        archiver["scan_error"]
            .as_str()
            .unwrap()
            .contains("failpoint archiver-scan armed to fail"),
        "{archiver}"
    );
    let (code, text, err) = pgward_with(&config, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("backlog UNKNOWN"), "{text}");
    assert!(text.contains("archiver: failed to scan"), "{text}");

    let get = |path: &'static str| {
        let url = format!("http://127.0.0.1:{}{path}", cluster.metrics_port);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let metrics = get("/metrics").await;
    assert_eq!(
        sample(&metrics, "pgward_wal_ready_scan_failing").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "pgward_wal_ready_backlog").as_deref(),
        Some("NaN"),
        "{metrics}"
    );
    let errors: f64 = sample(&metrics, "pgward_wal_ready_scan_errors_total")
        .expect("the error counter")
        .parse()
        .unwrap();
    assert!(errors > 0.0, "{metrics}");
    let served: serde_json::Value = serde_json::from_str(&get("/status").await).unwrap();
    assert!(served["archiver"]["backlog"].is_null(), "{served}");
    assert!(served["archiver"]["scan_error"].is_string(), "{served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_symlink_or_a_non_utf8_name_fails_naming_it_and_lists_nothing() {
    use std::os::unix::ffi::OsStrExt;

    let cluster = Cluster::new();
    let (config, _pgward, _client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    let data = cluster.data_dir();
    let outside = cluster.dir.write("elsewhere.conf", "work_mem = 8MB\n");
    let link = data.join("conf.d.link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let (code, out, err) = pgward_with(&config, &["backup"]);
    assert_ne!(
        code,
        0,
        "a backup that would leave out {}: {out}",
        link.display()
    );
    assert!(
        err.contains(&format!(
            "{}: a symbolic link (to {})",
            link.display(),
            outside.display()
        )) && err.contains("HINT: "),
        "{err}"
    );
    assert!(listed(&config).is_empty());
    std::fs::remove_file(&link).unwrap();

    let odd = data
        .join("base")
        .join(std::ffi::OsStr::from_bytes(b"notes-caf\xe9"));
    std::fs::write(&odd, b"x").unwrap();
    let (code, out, err) = pgward_with(&config, &["backup"]);
    assert_ne!(
        code, 0,
        "a backup that would leave out a non-UTF-8 name: {out}"
    );
    assert!(
        err.contains(&format!(
            "{}/notes-caf\u{fffd}: not a UTF-8 name",
            data.join("base").display()
        )),
        "{err}"
    );
    assert!(listed(&config).is_empty());
    std::fs::remove_file(&odd).unwrap();

    let (code, out, err) = pgward_with(&config, &["backup"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(listed(&config).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_past_its_memory_ceiling_copies_whole_files_and_restores_exactly() {
    let cluster = Cluster::new();
    // Room for a few changed blocks only.
    let storage = format!(
        "{}backup:\n  incremental_memory: 1kB\n",
        file_storage(&cluster)
    );
    let (config, _pgward, client) = start_archiving(&cluster, &storage).await;
    pgbench(&cluster, &["-i", "-s", "2", "-q"]);
    let (code, out, err) = pgward_with(&config, &["backup"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Files written around a backup's start are always copied again by the next.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .batch_execute(
            "UPDATE pgbench_accounts SET abalance = abalance + aid WHERE aid % 500 = 0;
             UPDATE pgbench_branches SET bbalance = bbalance + 3;",
        )
        .await
        .unwrap();
    let (code, out, err) = pgward_with(&config, &["backup", "--incremental"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("reached backup.incremental_memory")),
        "the fallback to whole files is not said:\n{err}"
    );
    let (code, show, err) = pgward_with(&config, &["show", "latest", "--json"]);
    assert_eq!(code, 0, "{err}");
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["kind"], "incremental", "{show}");

    let expected: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::int8,
                        (SELECT sum(bbalance) FROM pgbench_branches)::int8",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let restored = Cluster::new();
    let (code, out, err) = pgward_with(
        &config,
        &[
            "restore",
            "--data-dir",
            restored.data_dir().to_str().unwrap(),
            "--target-immediate",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (_restored_pgward, restored_client) =
        start_recovered(&restored, &file_storage(&cluster)).await;
    let row = restored_client
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::int8,
                    (SELECT sum(bbalance) FROM pgbench_branches)::int8",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), expected);
}
