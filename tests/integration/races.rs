//! Backups and `expire` that overlap or are interrupted, with a real postgres and a `file://`
//! repository: one backup of a repository at a time (the backup lease), `expire` leaving a
//! running backup's objects alone and cleaning an abandoned one's once its lease expired, and
//! a backup that is complete only with every WAL segment from its start to its stop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::{
    assert_killed_at, backup_ok, eventually, failpoints, file_storage, files_under, listed,
    pgward_armed, reached, start_archiving, switch_and_wait_archived, Cluster, Pgward,
};

fn pgward(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::pgward_with(config, args)
}

/// `pgward <args>` with `spec` armed, running: the test waits for the point, then looks.
fn start_armed(config: &Path, spec: &str, args: &[&str]) -> Pgward {
    let (name, value) = failpoints(spec);
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    Pgward::start(&all, &[(name, value.as_str())])
}

/// Waits until the process stopped itself at failpoint `name` (state `T` in /proc).
fn wait_stopped_at(held: &Pgward, name: &str) {
    eventually(
        "the backup reaches the failpoint",
        Duration::from_secs(120),
        || reached(&held.output(), name),
    );
    eventually("the backup stops itself", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/stat", held.pid()))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, r)| r.trim().starts_with('T'))
            })
            .unwrap_or(false)
    });
}

/// Ids of the backups with objects in the repository at `repo`, complete or not.
fn backup_dirs(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The stored files of backup `id` (sorted).
fn backup_files(repo: &Path, id: &str) -> Vec<PathBuf> {
    let mut files = files_under(&repo.join("backups").join(id));
    files.sort();
    files
}

/// Deletes the archived copy of WAL segment `name` (any codec) from the repository at `repo`.
fn delete_archived(repo: &Path, name: &str) {
    let dir = repo.join("wal").join(&name[..8]);
    let stored: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(name))
                .is_some_and(|ext| matches!(ext, ".zst" | ".lz4" | ".raw"))
        })
        .collect();
    assert_eq!(stored.len(), 1, "archived copies of {name}: {stored:?}");
    std::fs::remove_file(&stored[0]).unwrap();
}

/// Writes a little and switches WAL, three times; the three segments, archived.
async fn three_segments(client: &tokio_postgres::Client) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..3 {
        client
            .batch_execute("INSERT INTO t SELECT generate_series(1, 100)")
            .await
            .unwrap();
        names.push(switch_and_wait_archived(client).await);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_refuses_a_second_one_and_expire_leaves_it_whole() {
    let cluster = Cluster::new();
    // The held backup is stopped (no renewal) for some seconds: well within the TTL, even on
    // a loaded machine.
    let storage = format!(
        "{}backup:\n  lease_ttl: 120s\n  retention:\n    full: 1\n",
        file_storage(&cluster)
    );
    let (config, _daemon, client) = start_archiving(&cluster, &storage).await;
    let repo = cluster.dir.join("repo");
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
        .await
        .unwrap();
    backup_ok(&config);
    let first = listed(&config)[0]["id"].as_str().unwrap().to_owned();

    // A full backup held after copying its files, before it stops: no manifest yet.
    let mut held = start_armed(
        &config,
        "backup-after-copy=return(stop)",
        &["backup", "--full"],
    );
    wait_stopped_at(&held, "backup-after-copy");
    let running = backup_dirs(&repo)
        .into_iter()
        .find(|id| *id != first)
        .expect("the held backup's objects");
    let stored = backup_files(&repo, &running);
    assert!(!stored.is_empty());

    // A second backup is refused, naming the one that runs.
    let (code, out, err) = pgward(&config, &["backup", "--incremental"]);
    assert_ne!(code, 0, "a second backup ran alongside:\n{out}\n{err}");
    assert!(
        err.contains(&format!(
            "another backup of this repository is running: backup {running} by host "
        )) && err.contains("HINT: wait for it to end"),
        "{err}"
    );

    // `list` shows it running, apart from the complete ones.
    let (code, out, _) = pgward(&config, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("running: backup {running} by host ")),
        "{out}"
    );

    // Expire leaves the running backup alone.
    let (code, out, err) = pgward(&config, &["expire"]);
    assert_eq!(code, 0, "expire failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("leave running backup {running} by host ")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("delete unfinished backup {running}")),
        "{out}"
    );
    assert_eq!(backup_files(&repo, &running), stored);

    // Released, it completes, is listed and verifies.
    held.signal(Signal::SIGCONT);
    let status = held.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{}", held.output());
    assert!(
        held.output().contains("backup complete"),
        "{}",
        held.output()
    );
    let ids: Vec<String> = listed(&config)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [first.clone(), running.clone()]);
    let (code, out, err) = pgward(&config, &["verify", &running]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");

    // The lease was released: the next backup needs no wait.
    backup_ok(&config);
    assert_eq!(listed(&config).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_is_cleaned_by_expire_once_its_lease_expired() {
    let cluster = Cluster::new();
    // Renewed every 3.3 s: after the kill, the lease stays live for at least 6.7 s, long
    // enough for the two commands below even on a loaded machine.
    let storage = format!("{}backup:\n  lease_ttl: 10s\n", file_storage(&cluster));
    let (config, _daemon, client) = start_archiving(&cluster, &storage).await;
    let repo = cluster.dir.join("repo");
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
        .await
        .unwrap();

    let out = pgward_armed(&config, "backup-before-manifest=return(kill)", &["backup"]);
    assert_killed_at(&out, "backup-before-manifest");
    let killed = backup_dirs(&repo)
        .pop()
        .expect("the killed backup's objects");

    // Until its lease expires, the killed backup counts as running.
    let (code, out, err) = pgward(&config, &["expire"]);
    assert_eq!(code, 0, "expire failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("leave running backup {killed}")),
        "{out}"
    );
    assert!(!backup_files(&repo, &killed).is_empty());
    let (code, _, err) = pgward(&config, &["backup"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("running: backup {killed} by host ")),
        "{err}"
    );

    // Expired: its objects are abandoned, and the next backup takes over the lease.
    std::thread::sleep(Duration::from_secs(11));
    let (code, out, err) = pgward(&config, &["expire"]);
    assert_eq!(code, 0, "expire failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("delete unfinished backup {killed}")),
        "{out}"
    );
    assert!(!repo.join("backups").join(&killed).exists());
    let (code, out, err) = pgward(&config, &["backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(err.contains("took over an expired lease"), "{err}");
    assert_eq!(listed(&config).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_listed_only_with_every_wal_segment_of_its_range() {
    let cluster = Cluster::new();
    let storage = format!("{}backup:\n  wal_wait: 5s\n", file_storage(&cluster));
    let (config, _daemon, client) = start_archiving(&cluster, &storage).await;
    let repo = cluster.dir.join("repo");
    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();

    // A backup spanning several segments, all archived: listed; then one in the middle of
    // its range goes, and verify names it.
    let mut held = start_armed(&config, "backup-after-copy=return(stop)", &["backup"]);
    wait_stopped_at(&held, "backup-after-copy");
    let spanned = three_segments(&client).await;
    held.signal(Signal::SIGCONT);
    assert!(
        held.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        held.output()
    );
    let backups = listed(&config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let id = backups[0]["id"].as_str().unwrap().to_owned();
    let (start, stop) = (
        backups[0]["start_wal"].as_str().unwrap(),
        backups[0]["stop_wal"].as_str().unwrap(),
    );
    assert!(start < spanned[1].as_str() && spanned[1].as_str() < stop);
    delete_archived(&repo, &spanned[1]);
    let (code, out, err) = pgward(&config, &["verify", &id]);
    assert_ne!(code, 0, "verify passed without {}:\n{out}", spanned[1]);
    let missing = format!(
        "error: wal/00000001/{0}: WAL segment {0} is missing from the archive",
        spanned[1]
    );
    assert!(
        out.contains(&missing) || err.contains(&missing),
        "{out}\n{err}"
    );

    // A backup whose middle segment is gone before it completes: not listed, and the error
    // names the segment.
    let mut held = start_armed(&config, "backup-after-copy=return(stop)", &["backup"]);
    wait_stopped_at(&held, "backup-after-copy");
    let spanned = three_segments(&client).await;
    delete_archived(&repo, &spanned[1]);
    held.expect_error(
        &format!("the backup needs WAL segment {}", spanned[1]),
        "the test deleted that segment from the archive",
    );
    held.signal(Signal::SIGCONT);
    let status = held.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "{}", held.output());
    assert!(
        held.output().contains(&format!(
            "the backup needs WAL segment {}, which did not reach the archive within 5s",
            spanned[1]
        )) && held
            .output()
            .contains("the backup is incomplete and not listed"),
        "{}",
        held.output()
    );
    let ids: Vec<String> = listed(&config)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [id]);
}
