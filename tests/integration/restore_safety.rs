//! A restore never harms a live or half-done cluster: `--force` and `--delta` onto a cluster
//! running in another PID namespace are refused with its data intact; a restore killed at any
//! of its points (and a first start from a backup killed at any of them) is finished by the
//! next start, or by `pgward restore --delta`, with every row; and a restore keeps a bounded
//! number of files open however many the backup holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::{
    assert_killed_at, backup_ok, children_of, file_storage, is_root, listed, pgward_armed,
    pgward_bin, pgward_with, start_archiving, switch_and_wait_archived, wait_promoted, Cluster,
    Pgward, BOOT,
};

const MARKER: &str = "pgward.init-incomplete";

async fn count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_or_delta_onto_a_cluster_running_in_another_pid_namespace_is_refused() {
    assert!(
        is_root(),
        "needs root for unshare --pid; run as root (make test does)"
    );
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let config = crate::common::archiving_config(&cluster, &storage);
    // As in a container: pgward is PID 1 of its own PID namespace, postgres its child there.
    let mut unshare = Pgward::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc"],
        &["--config", config.to_str().unwrap(), "run"],
        &[],
    );
    let client = cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();
    backup_ok(&config);

    let data = cluster.data_dir();
    let pid = cluster.postmaster_pid().expect("postmaster.pid");
    // The pid in postmaster.pid is the namespace's: here it is no process working in the data
    // directory, so the pid alone would not tell the server runs.
    let data_real = data.canonicalize().unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        Some(data_real),
        "the postmaster's pid is the same in both namespaces"
    );
    let socket = cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port));
    for flag in ["--force", "--delta"] {
        let (code, out, err) = pgward_with(&config, &["restore", "latest", flag]);
        assert_ne!(
            code, 0,
            "restore {flag} onto a running cluster:\n{out}\n{err}"
        );
        for needle in [
            format!("postgres runs on data directory {}", data.display()),
            format!("pid {pid} in its postmaster.pid"),
            format!("its socket {} answers", socket.display()),
            "nothing was changed".to_owned(),
            "HINT: stop that server".to_owned(),
        ] {
            assert!(
                err.contains(&needle),
                "restore {flag}: no {needle:?} in:\n{err}"
            );
        }
        // Intact, and still serving.
        assert!(
            !data.join(MARKER).exists(),
            "restore {flag} marked the directory"
        );
        assert_eq!(count(&client).await, 1000, "after restore {flag}");
    }
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1001, 1100)")
        .await
        .unwrap();
    assert_eq!(count(&client).await, 1100);
    drop(client);

    // unshare forwards no signal: stop PID 1 of the namespace, as a container runtime does.
    let pgward_pid = children_of(unshare.pid())
        .first()
        .expect("unshare's child")
        .0;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pgward_pid), Signal::SIGTERM).unwrap();
    let exit = unshare.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(0), "{}", unshare.output());
    assert_eq!(cluster.controldata_state(), "shut down");
}

/// A cluster archiving into its own repository, its files larger than 1 MiB stored in parts
/// (so restores assemble parted files), after `before` rows of `t` were backed up and
/// `after` more archived; what the restored copies must show.
struct Source {
    _cluster: Cluster,
    _pgward: Pgward,
    config: PathBuf,
    storage: String,
    rows: i64,
}

async fn source(before: i64, after: i64, extra_sql: &str) -> Source {
    let cluster = Cluster::new();
    let storage = file_storage(&cluster);
    let (config, pgward, client) =
        start_archiving(&cluster, &format!("{storage}backup:\n  slice_size: 1MiB\n")).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t AS SELECT generate_series(1, {before}) AS i; {extra_sql}"
        ))
        .await
        .unwrap();
    backup_ok(&config);
    assert_eq!(listed(&config).len(), 1);
    client
        .batch_execute(&format!(
            "INSERT INTO t SELECT generate_series({}, {})",
            before + 1,
            before + after
        ))
        .await
        .unwrap();
    switch_and_wait_archived(&client).await;
    Source {
        _cluster: cluster,
        _pgward: pgward,
        config,
        storage,
        rows: before + after,
    }
}

/// A host that starts from the source's latest backup (and archives nothing: it is a copy).
fn host(source: &Source) -> (Cluster, PathBuf) {
    let host = Cluster::new();
    let config = host.config(
        "password: pw\nfrom_backup: latest",
        &format!("{}wal:\n  archive: false\n", source.storage),
    );
    (host, config)
}

/// `pgward run` on `config` comes up, ends recovery and shows every row; then stops.
async fn comes_up_with_every_row(host: &Cluster, config: &Path, rows: i64, what: &str) {
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    let client = host.wait_connect("postgres", "pw", "postgres", BOOT).await;
    wait_promoted(&client, BOOT).await;
    assert_eq!(count(&client).await, rows, "{what}");
    assert!(
        !host.data_dir().join(MARKER).exists(),
        "{what}: marker left"
    );
    drop(client);
    drop(pgward);
}

/// `pgward --config <config> <args>` with `point` armed to kill; asserts it died there.
fn killed_at(config: &Path, point: &str, args: &[&str]) {
    let out = pgward_armed(config, &format!("{point}=return(kill)"), args);
    assert_killed_at(&out, point);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_at_any_point_is_finished_by_the_next_start_with_every_row() {
    // `t` takes more than 1 MiB: parted, as large relations are.
    let source = source(40_000, 500, "").await;
    let rows = source.rows;

    // A first start from a backup, killed at each point: the next start finishes it.
    for point in [
        "restore-after-marker",
        "restore-mid-download",
        "restore-before-recovery-settings",
        "restore-before-sync",
        "from-backup-before-start",
    ] {
        let (host, config) = host(&source);
        killed_at(&config, point, &["run"]);
        let marked = host.data_dir().join(MARKER).exists();
        assert_eq!(
            marked,
            point != "from-backup-before-start",
            "{point}: marker"
        );
        comes_up_with_every_row(&host, &config, rows, point).await;
    }

    // A resumed first start killed while it clears what the first attempt left.
    let (host, config) = host(&source);
    killed_at(&config, "restore-mid-download", &["run"]);
    // What a download under way leaves when killed: its temp file beside its place.
    std::fs::write(host.data_dir().join("base/.tmpKILLED"), "partial").unwrap();
    killed_at(&config, "restore-mid-delete", &["run"]);
    assert!(host.data_dir().join(MARKER).exists());
    comes_up_with_every_row(&host, &config, rows, "resumed after restore-mid-delete").await;

    // `pgward restore --force` over that (stopped) cluster, killed while it empties it.
    let data = host.data_dir();
    let data_arg = data.to_str().unwrap();
    killed_at(
        &config,
        "restore-mid-delete",
        &["restore", "latest", "--data-dir", data_arg, "--force"],
    );
    let id = listed(&source.config)[0]["id"].as_str().unwrap().to_owned();
    let (code, _, err) = pgward_with(&config, &["run"]);
    assert_ne!(code, 0, "started on a half-emptied directory:\n{err}");
    assert!(
        err.contains(&format!(
            "`pgward restore` of backup {id} into data directory {} did not complete",
            data.display()
        )) && err.contains(&format!(
            "HINT: run `pgward restore {id} --data-dir {} --delta` to finish it",
            data.display()
        )),
        "{err}"
    );
    let (code, _, err) = pgward_with(&config, &["restore", "latest", "--data-dir", data_arg]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "{} holds a restore (of backup {id}) that did not complete\nHINT: pass --delta to \
             finish it",
            data.display()
        )),
        "{err}"
    );
    // Killed again while finishing it; then finished.
    killed_at(
        &config,
        "restore-mid-download",
        &["restore", "latest", "--data-dir", data_arg, "--delta"],
    );
    let (code, out, err) = pgward_with(
        &config,
        &["restore", "latest", "--data-dir", data_arg, "--delta"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    comes_up_with_every_row(&host, &config, rows, "after restore --delta").await;
}

/// The most files a restore may have open at once here: its own baseline (standard streams,
/// the runtime, the log) and 2 × `backup.concurrency` (2) files of the data directory, with
/// the stored objects the downloads read (it passes at 20); fewer than the parted files of
/// the backup, which a restore that opened them all at once could not.
const OPEN_FILES_LIMIT: u32 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_a_bounded_number_of_files_open() {
    // 32 relations of more than 1 MiB, each a parted file.
    let tables = "DO $$ BEGIN FOR n IN 1..32 LOOP EXECUTE format(\
                  'CREATE TABLE p%s AS SELECT generate_series(1, 40000) AS i', n); \
                  END LOOP; END $$;";
    let source = source(1000, 0, tables).await;
    let config = &source.config;
    let restored = Cluster::new();
    let out = Command::new("prlimit")
        .arg(format!("--nofile={OPEN_FILES_LIMIT}"))
        .arg(pgward_bin())
        .args(["--config", config.to_str().unwrap(), "restore", "latest"])
        .args(["--data-dir", restored.data_dir().to_str().unwrap()])
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "restore under {OPEN_FILES_LIMIT} open files failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_config = restored.config(
        "password: pw",
        &format!("{}wal:\n  archive: false\n", source.storage),
    );
    let pgward = Pgward::start(&["--config", restored_config.to_str().unwrap(), "run"], &[]);
    let client = restored
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;
    wait_promoted(&client, BOOT).await;
    let parted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname ~ '^p[0-9]+$' AND relkind = 'r' \
             AND pg_relation_size(oid) > 1048576",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parted, 32);
    assert_eq!(count(&client).await, 1000);
    drop(client);
    drop(pgward);
}
