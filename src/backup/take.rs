//! Taking a base backup of the running cluster.
//!
//! Non-exclusive backup mode on one held session (`pg_backup_start` … `pg_backup_stop`), the
//! data directory read directly (pgward runs beside postgres), every file stored as its own
//! checksummed object, files in parallel. The backup is only usable with the WAL from its
//! start to its stop, so it is complete only once every segment of that range is in the
//! archive; the manifest is written after that and after the checks of `complete`, last, and
//! is what makes the backup exist. One backup runs at a time: it holds the repository's backup
//! lease (`exclusive`) from before its id is chosen until it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::block_delta::{self, BlockMap};
use super::catalog;
use super::complete::{check_before_manifest, segment_range, wait_wal_range};
use super::control_copy::{read_control_file, store_control_file};
use super::copy::copy_files;
use super::entries::{SpilledManifest, Tally};
use super::exclusive::take_backup_lease;
use super::lineage;
use super::manifest::{
    backup_id, label_key, manifest_key, BackupKind, DirEntry, FileEntry, ManifestHead,
    StreamedFiles, Tablespace, MANIFEST_VERSION,
};
use super::summary::Completed;
use super::walk::{sources, walk};
use crate::postgres::backup_mode;
use crate::postgres::control_file::{ControlFile, CONTROL_FILE_PATH};
use crate::postgres::ready::Target;
use crate::postgres::standby::is_standby;
use crate::postgres::wal::WalSegSize;
use crate::postgres::wal::{Lsn, TimelineId};
use crate::postgres::wal_switch::archiver_last_failure;
use crate::postgres::ClusterIdentity;
use crate::repo::{retry, Lease, PutMode, Repo, RetryPolicy};
use crate::spill::Sorted;

/// How long the checks before the manifest stay fresh: run while the WAL is awaited, they run
/// again when the WAL took longer than this.
const CHECKS_FRESH: Duration = Duration::from_secs(1);

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Threads compressing at once.
    pub concurrency: usize,
    /// Objects uploading at once.
    pub transfers: usize,
    /// How long to wait for the backup's WAL (start to stop) to reach the archive.
    pub wal_wait: Duration,
    /// The backup lease expires this long after its last renewal (renewed every third).
    pub lease_ttl: Duration,
    /// Files larger than this are stored in slices of this size.
    pub slice_size: u64,
    /// Bytes the map of changed blocks of an incremental may hold (see `block_delta`).
    pub incremental_memory: u64,
    /// How small files are packed into bundles.
    pub bundling: super::copy::Bundling,
    pub annotations: BTreeMap<String, String>,
    pub keep: bool,
    /// Each object's upload is retried as a whole on transient failures (`storage.retry`).
    pub retry: RetryPolicy,
}

/// The cluster a backup is taken of: its data directory (read directly), the session that
/// holds backup mode, and the identity the repository was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub target: &'a Target,
    pub data_dir: &'a Path,
    pub identity: ClusterIdentity,
}

/// Takes a backup of `cluster` into `repo` (the `backup` command and job action): full, or,
/// with `incremental`, on top of the latest complete backup (full when there is none).
/// `repo_checked`: the check that `repo` is the cluster's (its `repo.json`), which runs
/// while the backup lease is read and must pass before anything is written.
pub async fn take_backup(
    repo: &Repo,
    cluster: &Cluster<'_>,
    repo_checked: impl Future<Output = Result<()>>,
    incremental: bool,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Completed> {
    let client = connect(cluster.target).await?;
    let standby = is_standby(cluster.data_dir);
    let data_checksums = preflight(&client, standby).await?;
    let seg_size = wal_segment_size(&client).await?;
    // Backup mode starts (its checkpoint) while the lease is taken, under an id chosen now
    // and written into the lease as it is taken: round trips saved, and nothing is read or
    // stored before both. A refused lease ends backup mode with the session.
    let start_time = Utc::now();
    let kind = match incremental {
        true => BackupKind::Incremental,
        false => BackupKind::Full,
    };
    let id = backup_id(start_time, kind);
    let label = format!("pgward backup {id}");
    // One listing, under the lease: the ids in use, what never completed, and what an
    // incremental may build on.
    let (leased, start) = tokio::join!(
        take_backup_lease(repo, options.lease_ttl, &id, repo_checked, || {
            catalog::objects_by_backup(repo)
        }),
        backup_mode::start(&client, &label, cluster.identity.pg_major, seg_size)
    );
    let (lease, objects) = leased?;
    let begun = |start| Started {
        client,
        id,
        kind,
        start_time,
        start,
        data_checksums,
        seg_size,
        standby,
    };
    let taken = match (objects, start) {
        (Ok(objects), Ok(start)) => {
            let begun = begun(start);
            take_leased(repo, cluster, objects, begun, options, &lease, cancel).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    lease.release().await;
    taken
}

/// [`take_backup`] under `lease`, in backup mode since `begun`; `objects`: the repository's
/// backup objects, listed under the lease.
async fn take_leased(
    repo: &Repo,
    cluster: &Cluster<'_>,
    objects: BTreeMap<String, Vec<String>>,
    mut begun: Started,
    options: &BackupOptions,
    lease: &Lease,
    cancel: &CancellationToken,
) -> Result<Completed> {
    let used: BTreeSet<String> = objects.keys().cloned().collect();
    let (complete, unfinished) = catalog::split_by_completion(objects);
    if !unfinished.is_empty() {
        tracing::warn!(
            "the repository holds objects of backups that never completed (interrupted); \
             they are not listed or restored: {}\nHINT: `pgward expire` deletes them",
            unfinished.join(", ")
        );
    }
    let parent = match begun.kind {
        BackupKind::Incremental => {
            let timeline = TimelineId(begun.start.timeline);
            latest_of_lineage(repo, cluster, timeline, &complete).await?
        }
        BackupKind::Full => None,
    };
    // The id chosen before the listing stands unless it is taken (objects of an interrupted
    // backup of the same second) or names the wrong kind (an incremental with nothing to
    // build on is full): then another, written into the lease before any object.
    let kind = match parent {
        Some(_) => BackupKind::Incremental,
        None => BackupKind::Full,
    };
    if kind != begun.kind || used.contains(&begun.id) {
        let (start_time, id) = unused_id(&used, kind).await?;
        lease
            .set_subject(&id)
            .await
            .with_context(|| format!("write backup {id} into the backup lease"))?;
        (begun.id, begun.kind, begun.start_time) = (id, kind, start_time);
    }
    tracing::info!(backup = %begun.id, start_lsn = %begun.start.lsn, "backup started");
    take(
        repo,
        cluster,
        parent.as_ref(),
        begun,
        options,
        lease,
        cancel,
    )
    .await
}

/// The backup an incremental builds on: the newest complete one on the running cluster's
/// lineage (`timeline`, the new backup's start checkpoint's: on a primary the checkpoint that
/// `pg_backup_start` made, so a promotion's new timeline; or an ancestor up to where it was
/// left), never one of a branch the cluster left behind; `None` (a full backup) without one.
/// `complete`: the repository's complete backups, oldest first. Its files are set aside, not
/// held.
async fn latest_of_lineage(
    repo: &Repo,
    cluster: &Cluster<'_>,
    timeline: TimelineId,
    complete: &[String],
) -> Result<Option<SpilledManifest>> {
    if complete.is_empty() {
        tracing::info!("no earlier backup to build on: taking a full backup");
        return Ok(None);
    }
    let lineage = lineage::of_timeline(repo, cluster.data_dir, timeline).await?;
    // A storage error fails the backup rather than quietly turn it into a full one.
    let (newest, off_lineage) = catalog::newest_among(repo, complete, &lineage)
        .await
        .context("look for the backup to build on")?;
    if newest.is_none() {
        tracing::info!(
            off_lineage = %off_lineage.join(", "),
            "no earlier backup on this cluster's lineage to build on: taking a full backup"
        );
    }
    Ok(newest)
}

/// A backup that has started: backup mode held on `client`.
struct Started {
    client: tokio_postgres::Client,
    id: String,
    kind: BackupKind,
    /// The server's WAL segment size.
    seg_size: WalSegSize,
    /// Taken on a hot standby: its WAL comes from the primary's archiving.
    standby: bool,
    start_time: chrono::DateTime<Utc>,
    start: backup_mode::BackupStart,
    data_checksums: bool,
}

/// Takes a backup of `cluster` into `repo` under the backup `lease`, in backup mode since
/// `started`: full, or incremental on top of `parent` (the latest backup), storing only what
/// changed since.
async fn take(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: Option<&SpilledManifest>,
    started: Started,
    options: &BackupOptions,
    lease: &Lease,
    cancel: &CancellationToken,
) -> Result<Completed> {
    let id = &started.id;
    // Until the stop, a failure must still end backup mode: the session's end does that for
    // a non-exclusive backup, so dropping `started.client` is enough.
    let walk = {
        let data_dir = cluster.data_dir.to_owned();
        let bundling = options.bundling;
        let small = (bundling.size > 0).then_some(bundling.file_max);
        let earlier = parent.map(|p| p.files.sorted.clone());
        tokio::task::spawn_blocking(move || walk(&data_dir, small, earlier.as_ref()))
            .await
            .context("join the data directory walk")??
    };
    tracing::info!(
        backup = %id,
        files = walk.files.len() + u64::from(walk.control.is_some()),
        bytes = walk.bytes,
        "copying the data directory"
    );
    let block_map = match parent {
        Some(parent) => {
            let ceiling = options.incremental_memory;
            block_map(repo, cluster, parent, &started.start, ceiling, cancel).await
        }
        None => None,
    };
    let check_pages_before = match started.data_checksums {
        true => Some(
            started
                .start
                .lsn
                .parse::<Lsn>()
                .with_context(|| format!("read the start LSN {}", started.start.lsn))?
                .0,
        ),
        false => None,
    };
    let Some(control) = walk.control else {
        bail!(
            "{} has no {CONTROL_FILE_PATH}: not a data directory",
            cluster.data_dir.display()
        );
    };
    let mut files = copy_files(
        repo,
        id,
        sources(walk.files, cluster.data_dir),
        (walk.bytes, walk.small_bytes),
        parent.map(|p| (p.start_time, block_map.as_ref())),
        check_pages_before,
        options,
        cancel,
    )
    .await?;
    crate::failpoint!("backup-after-copy");
    // Read last, as pg_basebackup sends it, and before the stop; stored while backup mode
    // ends.
    let control = read_control_file(control).await?;
    let (control, stop) = tokio::join!(
        store_control_file(repo, id, control, &options.retry, cancel),
        backup_mode::stop(
            &started.client,
            cluster.identity.pg_major,
            started.start.timeline,
            started.seg_size
        )
    );
    let stop = stop?;
    files.push(control?).await?;
    let (files, tally) = files.finish().await?;
    let segments = segment_range(&started.start.wal, &stop.wal, started.seg_size)?;
    let archiver_said = || async {
        match started.standby {
            // A standby archives nothing: the primary's archiver is the one to ask.
            true => "none on this standby; its primary archives the WAL (look at the \
                     primary's `pgward status`)"
                .to_owned(),
            false => archiver_last_failure(&started.client).await,
        }
    };
    let check = || {
        check_before_manifest(
            repo,
            lease,
            id,
            parent.map(|p| p.id.as_str()),
            &files,
            &tally.holders,
            stop.tablespace_map.is_some(),
        )
    };
    // The label goes up, and the checks before the manifest run, while the archiver sends
    // the stop segment (two round trips fewer in a row); checks that are no longer fresh by
    // the time the WAL is there run again, so that the lease is confirmed right before the
    // manifest.
    let labelled_and_checked = async {
        store_labels(repo, id, &stop, options, cancel).await?;
        check().await?;
        anyhow::Ok(Instant::now())
    };
    let (checked_at, ()) = tokio::try_join!(
        labelled_and_checked,
        wait_wal_range(repo, &segments, options.wal_wait, archiver_said, cancel)
    )?;
    if checked_at.elapsed() > CHECKS_FRESH {
        check().await?;
    }
    let contents = Contents {
        files,
        tally,
        directories: walk.dirs,
        tablespaces: walk.tablespaces,
    };
    finish(repo, cluster, parent, options, started, stop, contents).await
}

/// Stores the `backup_label` (and `tablespace_map`) that ending backup mode returned.
async fn store_labels(
    repo: &Repo,
    id: &str,
    stop: &backup_mode::BackupStop,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let files = [
        ("backup_label", Some(&stop.label_file)),
        ("tablespace_map", stop.tablespace_map.as_ref()),
    ];
    for (name, content) in files {
        let Some(content) = content else { continue };
        let key = label_key(id, name);
        retry(&options.retry, cancel, &format!("store {name}"), || {
            repo.put_bytes(&key, content.clone().into_bytes(), PutMode::Create)
        })
        .await
        .with_context(|| format!("store {name}"))?;
    }
    Ok(())
}

/// What a backup copied.
struct Contents {
    /// Sorted by path.
    files: Sorted<FileEntry>,
    tally: Tally,
    directories: Vec<DirEntry>,
    tablespaces: Vec<Tablespace>,
}

/// Writes the manifest, last: it is what makes the backup exist.
async fn finish(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: Option<&SpilledManifest>,
    options: &BackupOptions,
    started: Started,
    stop: backup_mode::BackupStop,
    contents: Contents,
) -> Result<Completed> {
    let Started {
        id,
        kind,
        start_time,
        start,
        data_checksums,
        ..
    } = started;
    let Contents {
        files,
        tally,
        directories,
        tablespaces,
    } = contents;
    let (size, stored_size) = (tally.size, tally.stored_size);
    let manifest = ManifestHead {
        format_version: MANIFEST_VERSION,
        id: id.clone(),
        kind,
        parent: parent.map(|p| p.id.clone()),
        pg_major: cluster.identity.pg_major,
        system_identifier: cluster.identity.system_identifier.to_string(),
        timeline: start.timeline,
        start_lsn: start.lsn,
        stop_lsn: stop.lsn,
        start_wal: start.wal,
        stop_wal: stop.wal,
        start_time,
        stop_time: Utc::now(),
        data_checksums,
        tablespaces,
        directories,
        files: (),
        annotations: options.annotations.clone(),
        keep: options.keep,
        size,
        stored_size,
        read_size: tally.read_size,
        created_by: format!("pgward {}", env!("CARGO_PKG_VERSION")),
    };
    crate::failpoint!("backup-before-manifest");
    // Written out as it is serialized, the files read back from where they were set aside,
    // then stored from that file (compressed as it is read): never held in memory.
    let (manifest, written) = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::new(tempfile::tempfile()?);
        let manifest = manifest.with_files(StreamedFiles::new(files.iter()?));
        serde_json::to_writer_pretty(&mut out, &manifest)?;
        let written = out.into_inner().map_err(|e| e.into_error())?;
        std::io::Result::Ok((manifest.with_files(()), written))
    })
    .await
    .context("join the writing of the manifest")?
    .context("write the manifest (in TMPDIR)")?;
    let key = manifest_key(&id);
    let never = CancellationToken::new();
    // Create-only: a retry after a put whose answer was lost finds its own manifest.
    retry(&options.retry, &never, "store the manifest", || {
        repo.put_opened_create(&key, &written, Path::new("the manifest"), &never)
    })
    .await
    .context("store the manifest")?;
    tracing::info!(
        backup = %id,
        size,
        stored_size,
        seconds = (manifest.stop_time - manifest.start_time).num_milliseconds() as f64 / 1e3,
        "backup complete"
    );
    Ok(Completed { manifest, tally })
}

/// The blocks changed since `parent` started, when a block-level incremental is possible;
/// else `None`, said in the log, and changed files are copied whole.
async fn block_map(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: &SpilledManifest,
    start: &backup_mode::BackupStart,
    memory_ceiling: u64,
    cancel: &CancellationToken,
) -> Option<BlockMap> {
    let data_dir = cluster.data_dir;
    let (start_lsn, timeline) = (start.lsn.as_str(), start.timeline);
    let attempt = async {
        let control = {
            let data_dir = data_dir.to_owned();
            // pg_control is rewritten in place: a read may catch it mid-write; try again.
            tokio::task::spawn_blocking(move || {
                let mut last = None;
                for _ in 0..5 {
                    match ControlFile::read(&data_dir) {
                        Ok(control) => return Ok(control),
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(last.expect("five attempts"))
            })
            .await
            .context("join a pg_control read")??
        };
        if let Some(why) =
            block_delta::unusable_parent(parent, timeline, cluster.identity.pg_major, &control)
        {
            anyhow::bail!("{why}");
        }
        let start: Lsn = start_lsn
            .parse()
            .with_context(|| format!("read the start LSN {start_lsn}"))?;
        block_delta::scan(
            repo,
            data_dir,
            parent,
            start,
            TimelineId(timeline),
            &control,
            memory_ceiling,
            cancel,
        )
        .await
    };
    match attempt.await {
        Ok(map) => {
            let (records, wal_bytes) = map.scanned();
            tracing::info!(
                parent = %parent.id,
                records,
                wal_bytes,
                "changed relation files are read block by block (WAL since the parent backup scanned)"
            );
            let (whole, held) = map.ceiling();
            if whole > 0 {
                tracing::warn!(
                    parent = %parent.id,
                    relations = whole,
                    "the map of changed blocks reached backup.incremental_memory ({} bytes, \
                     {held} held): the changed files of the {whole} relations with the most \
                     changed blocks are copied whole\nHINT: raise backup.incremental_memory, \
                     or take incrementals more often",
                    memory_ceiling
                );
            }
            Some(map)
        }
        Err(e) => {
            tracing::warn!(
                parent = %parent.id,
                "changed files are copied whole: no block-level incremental: {e:#}"
            );
            None
        }
    }
}

/// A backup id no object uses yet (not in `used`, the ids listed under the backup lease: no
/// other backup writes while it is held), and the time it stands for. Ids have a resolution
/// of one second, and a backup killed in the same second leaves objects under its id: those
/// must never be mistaken for this backup's, so a used id waits for the next second.
async fn unused_id(
    used: &BTreeSet<String>,
    kind: BackupKind,
) -> Result<(chrono::DateTime<Utc>, String)> {
    for _ in 0..5 {
        let now = Utc::now();
        let id = backup_id(now, kind);
        if !used.contains(&id) {
            return Ok((now, id));
        }
        let next_second = 1_000_000_000u32.saturating_sub(now.timestamp_subsec_nanos());
        tokio::time::sleep(Duration::from_nanos(u64::from(next_second) + 1_000_000)).await;
    }
    bail!(
        "no unused backup id after 5 seconds\nHINT: run one backup at a time (are backups \
         started in a loop?)"
    )
}

// The hints below are shared with `check`, which looks at the same things.

/// Connects to the server at `target` (its superuser, over the unix socket); the error says
/// what to check.
pub async fn connect(target: &Target) -> Result<tokio_postgres::Client> {
    target.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "connect to postgres at {}: {e}\n{POSTGRES_HINT}",
            target.socket_dir.display()
        )
    })
}

/// What to ask when postgres does not answer.
pub const POSTGRES_HINT: &str =
    "HINT: is postgres running (`pgward status`), on this config's postgres.socket_dir and \
     postgres.port?";
/// What to do when the server's `archive_mode` is off.
pub const ARCHIVE_MODE_HINT: &str =
    "HINT: set wal.archive: true and restart pgward (archive_mode takes effect at server start)";
/// What to do when `archive_command` is not pgward's.
pub const ARCHIVE_COMMAND_HINT: &str =
    "HINT: set wal.archive: true, so that pgward sets archive_command, and restart pgward";
/// What to do when the repository refuses a write.
pub const REPO_WRITE_HINT: &str =
    "HINT: check pgward's permissions on storage.url (for a bucket: the credentials in \
     storage.s3, storage.gcs or storage.azure)";
/// Where to look when archiving fails.
pub const ARCHIVER_HINT: &str =
    "HINT: `pgward status` shows the archiver's last error, pgward's log the details";

/// Refuses to start a backup that could not be completed: archiving must be pgward's and
/// working, or the backup would wait for WAL that never comes. Returns whether data
/// checksums are on.
async fn preflight(client: &tokio_postgres::Client, standby: bool) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('archive_mode'), \
             current_setting('archive_command'), current_setting('data_checksums'), \
             coalesce(last_failed_wal, ''), \
             coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false) \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .context("read the archiving settings")?;
    let checksums: String = row.get(3);
    let archiving = Archiving {
        standby,
        in_recovery: row.get(0),
        archive_mode: row.get(1),
        archive_command: row.get(2),
        failed_wal: row.get(4),
        failing: row.get(5),
    };
    archiving.check()?;
    Ok(checksums == "on")
}

/// What the server says of its archiving, for [`preflight`].
struct Archiving {
    /// The data directory holds `standby.signal`: a hot standby.
    standby: bool,
    in_recovery: bool,
    archive_mode: String,
    archive_command: String,
    /// The last segment that failed, `""` for none.
    failed_wal: String,
    /// The last attempt failed.
    failing: bool,
}

impl Archiving {
    /// `Err` saying why a backup could not complete, and what to do.
    fn check(&self) -> Result<()> {
        let Archiving {
            standby,
            in_recovery,
            archive_mode,
            archive_command,
            failed_wal,
            failing,
        } = self;
        match (*in_recovery, *standby) {
            // A hot standby archives nothing: its primary archives the WAL the backup needs,
            // which the backup waits for in the repository (backup.wal_wait).
            (true, true) => return Ok(()),
            (true, false) => bail!(
                "the server is in recovery (a restore not yet promoted)\nHINT: back up once it \
                 is promoted, or from its primary"
            ),
            (false, _) => {}
        }
        if archive_mode == "off" {
            bail!("archive_mode is off: a backup needs its WAL archived\n{ARCHIVE_MODE_HINT}");
        }
        if !archive_command.contains(" wal-push ") {
            bail!(
                "archive_command is {archive_command:?}, not pgward's wal-push: the backup's \
                 WAL would not reach this repository\n{ARCHIVE_COMMAND_HINT}"
            );
        }
        if *failing {
            bail!(
                "WAL archiving is failing (last failure: {failed_wal}): fix it before a \
                 backup\n{ARCHIVER_HINT}"
            );
        }
        Ok(())
    }
}

/// The server's WAL segment size, to walk the backup's segments.
async fn wal_segment_size(client: &tokio_postgres::Client) -> Result<WalSegSize> {
    // In bytes since PostgreSQL 11 (unit `B`).
    let bytes: String = client
        .query_one(
            "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'",
            &[],
        )
        .await
        .context("read wal_segment_size")?
        .get(0);
    let bytes: u32 = bytes
        .parse()
        .with_context(|| format!("read wal_segment_size {bytes:?}"))?;
    WalSegSize::new(bytes).with_context(|| format!("wal_segment_size {bytes}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Archiving {
        Archiving {
            standby: false,
            in_recovery: false,
            archive_mode: "on".into(),
            archive_command: "test -f pg_wal/x/%f || /usr/bin/pgward wal-push %p".into(),
            failed_wal: String::new(),
            failing: false,
        }
    }

    #[test]
    fn preflight_refuses_a_backup_that_could_not_complete_and_says_what_to_do() {
        healthy().check().expect("a healthy archiver");
        let refused = |archiving: Archiving| format!("{:#}", archiving.check().unwrap_err());
        assert_eq!(
            refused(Archiving {
                archive_mode: "off".into(),
                ..healthy()
            }),
            "archive_mode is off: a backup needs its WAL archived\n\
             HINT: set wal.archive: true and restart pgward (archive_mode takes effect at server \
             start)"
        );
        assert_eq!(
            refused(Archiving {
                archive_command: "cp %p /mnt/%f".into(),
                ..healthy()
            }),
            "archive_command is \"cp %p /mnt/%f\", not pgward's wal-push: the backup's WAL \
             would not reach this repository\n\
             HINT: set wal.archive: true, so that pgward sets archive_command, and restart pgward"
        );
        assert_eq!(
            refused(Archiving {
                failed_wal: "00000001000000000000000A".into(),
                failing: true,
                ..healthy()
            }),
            "WAL archiving is failing (last failure: 00000001000000000000000A): fix it before a \
             backup\n\
             HINT: `pgward status` shows the archiver's last error, pgward's log the details"
        );
        assert!(refused(Archiving {
            in_recovery: true,
            ..healthy()
        })
        .ends_with("\nHINT: back up once it is promoted, or from its primary"));
        // A hot standby archives nothing of its own: its primary's archiving is what counts.
        Archiving {
            standby: true,
            in_recovery: true,
            archive_mode: "off".into(),
            ..healthy()
        }
        .check()
        .expect("a standby backs up");
    }
}
