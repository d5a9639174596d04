//! Taking a base backup of the running cluster.
//!
//! Non-exclusive backup mode on one held session (`pg_backup_start` … `pg_backup_stop`), the
//! data directory read directly (pgward runs beside postgres), every file stored as its own
//! checksummed object, files in parallel. The backup is only usable with the WAL from its
//! start to its stop, so it is complete only once the stop segment is in the archive; the
//! manifest is written after that, last, and is what makes the backup exist.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::block_delta::{self, BlockMap};
use super::exclude::{rule, Rule};
use super::manifest::{
    backup_id, file_key, label_key, manifest_key, BackupKind, DirEntry, FileEntry, Manifest, Part,
    Tablespace, MANIFEST_VERSION,
};
use super::{catalog, page_checksum};
use crate::postgres::backup_mode;
use crate::postgres::control_file::ControlFile;
use crate::postgres::ready::Target;
use crate::postgres::wal::{Lsn, TimelineId};
use crate::postgres::ClusterIdentity;
use crate::repo::{layout, PutMode, PutOutcome, Repo};

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Files read, compressed and uploaded at once.
    pub concurrency: usize,
    /// How long to wait for the stop segment to reach the archive.
    pub wal_wait: Duration,
    /// Files larger than this are stored in slices of this size.
    pub slice_size: u64,
    pub annotations: BTreeMap<String, String>,
    pub keep: bool,
}

/// The cluster a backup is taken of: its data directory (read directly), the session that
/// holds backup mode, and the identity the repository was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub target: &'a Target,
    pub data_dir: &'a Path,
    pub identity: ClusterIdentity,
}

/// A file to back up.
struct Source {
    path: String,
    abs: PathBuf,
    mode: u32,
    /// Size when walked, for ordering only (the copy records what it reads).
    len: u64,
}

/// What a walk of the data directory found.
#[derive(Default)]
struct Walk {
    dirs: Vec<DirEntry>,
    files: Vec<Source>,
    tablespaces: Vec<Tablespace>,
    bytes: u64,
}

/// Takes a backup of `cluster` into `repo` (the `backup` command and job action): full, or,
/// with `incremental`, on top of the latest complete backup (full when there is none).
pub async fn take_backup(
    repo: &Repo,
    cluster: &Cluster<'_>,
    incremental: bool,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let unfinished = catalog::unfinished_ids(repo).await?;
    if !unfinished.is_empty() {
        tracing::warn!(
            "the repository holds objects of backups that never completed (interrupted, or \
             running elsewhere now); they are not listed or restored: {}\nHINT: `pgward \
             expire` deletes those that started before the newest complete backup",
            unfinished.join(", ")
        );
    }
    let parent = match incremental {
        true => match catalog::backup_ids(repo).await?.pop() {
            Some(id) => Some(catalog::read_manifest(repo, &id).await?),
            None => {
                tracing::info!("no earlier backup to build on: taking a full backup");
                None
            }
        },
        false => None,
    };
    take(repo, cluster, parent.as_ref(), options, cancel).await
}

/// A backup that has started: backup mode held on `client`.
struct Started {
    client: tokio_postgres::Client,
    id: String,
    kind: BackupKind,
    start_time: chrono::DateTime<Utc>,
    start: backup_mode::BackupStart,
    data_checksums: bool,
}

/// Takes a backup of `cluster` into `repo`: full, or incremental on top of `parent` (the
/// latest backup), storing only what changed since.
pub async fn take(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: Option<&Manifest>,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let started = start(repo, cluster, parent).await?;
    let id = &started.id;
    // Until the stop, a failure must still end backup mode: the session's end does that for
    // a non-exclusive backup, so dropping `started.client` is enough.
    let walk = {
        let data_dir = cluster.data_dir.to_owned();
        tokio::task::spawn_blocking(move || walk(&data_dir))
            .await
            .context("join the data directory walk")??
    };
    tracing::info!(
        backup = %id,
        files = walk.files.len(),
        bytes = walk.bytes,
        "copying the data directory"
    );
    let block_map = match parent {
        Some(parent) => block_map(repo, cluster, parent, &started.start, cancel).await,
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
    let files = copy_files(
        repo,
        id,
        walk.files,
        walk.bytes,
        parent.map(|p| (p, block_map.as_ref())),
        check_pages_before,
        options,
        cancel,
    )
    .await?;
    let stop = stop(repo, &started, cluster.identity.pg_major).await?;
    wait_archived(repo, &started.client, &stop.wal, options.wal_wait, cancel).await?;
    let contents = Contents {
        files,
        directories: walk.dirs,
        tablespaces: walk.tablespaces,
    };
    finish(repo, cluster, parent, options, started, stop, contents).await
}

/// Checks that the backup can complete, picks its id and starts backup mode.
async fn start(repo: &Repo, cluster: &Cluster<'_>, parent: Option<&Manifest>) -> Result<Started> {
    let kind = match parent {
        Some(_) => BackupKind::Incremental,
        None => BackupKind::Full,
    };
    let target = cluster.target;
    let client = target.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "connect to postgres at {}: {e}\n{POSTGRES_HINT}",
            target.socket_dir.display()
        )
    })?;
    let data_checksums = preflight(&client).await?;
    repo.probe_writable().await.map_err(|e| {
        // The cause's whole chain, then the hint: a hint ends the message.
        let e = anyhow::Error::new(e);
        anyhow::anyhow!(
            "the repository {} is not writable; no backup started: {e:#}\n{REPO_WRITE_HINT}",
            repo.describe()
        )
    })?;
    let (start_time, id) = unused_id(repo, kind).await?;
    let label = format!("pgward backup {id}");
    let start = backup_mode::start(&client, &label, cluster.identity.pg_major).await?;
    tracing::info!(backup = %id, start_lsn = %start.lsn, "backup started");
    Ok(Started {
        client,
        id,
        kind,
        start_time,
        start,
        data_checksums,
    })
}

/// Ends backup mode and stores the `backup_label` (and `tablespace_map`) it returns.
async fn stop(repo: &Repo, started: &Started, pg_major: u32) -> Result<backup_mode::BackupStop> {
    let stop = backup_mode::stop(&started.client, pg_major).await?;
    let id = &started.id;
    repo.put_bytes(
        &label_key(id, "backup_label"),
        stop.label_file.clone().into_bytes(),
        PutMode::Create,
    )
    .await
    .context("store backup_label")?;
    if let Some(map) = &stop.tablespace_map {
        repo.put_bytes(
            &label_key(id, "tablespace_map"),
            map.clone().into_bytes(),
            PutMode::Create,
        )
        .await
        .context("store tablespace_map")?;
    }
    Ok(stop)
}

/// What a backup copied.
struct Contents {
    files: Vec<FileEntry>,
    directories: Vec<DirEntry>,
    tablespaces: Vec<Tablespace>,
}

/// Writes the manifest, last: it is what makes the backup exist.
async fn finish(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: Option<&Manifest>,
    options: &BackupOptions,
    started: Started,
    stop: backup_mode::BackupStop,
    contents: Contents,
) -> Result<Manifest> {
    let Started {
        id,
        kind,
        start_time,
        start,
        data_checksums,
        ..
    } = started;
    let files = contents.files;
    let size = files.iter().map(|f| f.size).sum();
    let own_objects = || {
        files
            .iter()
            .flat_map(|f| f.objects())
            .filter(|o| o.stored_in == id)
    };
    let stored_size = own_objects().map(|o| o.stored_size).sum();
    let read_size = own_objects().map(|o| o.len).sum();
    let manifest = Manifest {
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
        tablespaces: contents.tablespaces,
        directories: contents.directories,
        files,
        annotations: options.annotations.clone(),
        keep: options.keep,
        size,
        stored_size,
        read_size,
        created_by: format!("pgward {}", env!("CARGO_PKG_VERSION")),
    };
    let json = serde_json::to_vec_pretty(&manifest).context("encode the manifest")?;
    repo.put_bytes(&manifest_key(&id), json, PutMode::Create)
        .await
        .context("store the manifest")?;
    tracing::info!(
        backup = %id,
        size,
        stored_size,
        seconds = (manifest.stop_time - manifest.start_time).num_milliseconds() as f64 / 1e3,
        "backup complete"
    );
    Ok(manifest)
}

/// The blocks changed since `parent` started, when a block-level incremental is possible;
/// else `None`, said in the log, and changed files are copied whole.
async fn block_map(
    repo: &Repo,
    cluster: &Cluster<'_>,
    parent: &Manifest,
    start: &backup_mode::BackupStart,
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

/// A backup id no object uses yet, and the time it stands for. Ids have a resolution of one
/// second, and a backup killed in the same second leaves objects under its id: those must
/// never be mistaken for this backup's (a create-only put would find them), so a used id waits
/// for the next second.
async fn unused_id(repo: &Repo, kind: BackupKind) -> Result<(chrono::DateTime<Utc>, String)> {
    for _ in 0..5 {
        let now = Utc::now();
        let id = backup_id(now, kind);
        let used = repo
            .list(&layout::backup_prefix(&id))
            .await
            .with_context(|| format!("look for objects of backup {id}"))?;
        if used.is_empty() {
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
async fn preflight(client: &tokio_postgres::Client) -> Result<bool> {
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
            in_recovery,
            archive_mode,
            archive_command,
            failed_wal,
            failing,
        } = self;
        if *in_recovery {
            bail!(
                "the server is in recovery (a standby, or a restore not yet promoted)\nHINT: \
                 take backups from the primary"
            );
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

/// Lists what to back up. Blocking.
fn walk(data_dir: &Path) -> Result<Walk> {
    let mut out = Walk::default();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            data_dir.to_owned()
        } else {
            data_dir.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Dropped while the backup runs (a database, a temp directory): nothing to copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!("skipping {}: not a UTF-8 name", entry.path().display());
                continue;
            };
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let abs = entry.path();
            // A tablespace is a symlink in pg_tblspc: remember where it points, walk it.
            let meta = if rel == "pg_tblspc" {
                let link = std::fs::symlink_metadata(&abs)
                    .with_context(|| format!("stat {}", abs.display()))?;
                if link.file_type().is_symlink() {
                    let location = std::fs::read_link(&abs)
                        .with_context(|| format!("read link {}", abs.display()))?;
                    out.tablespaces.push(Tablespace {
                        oid: name.parse().with_context(|| {
                            format!("{} is not a tablespace oid", abs.display())
                        })?,
                        location: location.to_string_lossy().into_owned(),
                    });
                }
                std::fs::metadata(&abs)
            } else {
                entry.metadata()
            };
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
            };
            let mode = meta.permissions().mode() & 0o7777;
            match rule(&path, meta.is_dir()) {
                Rule::Skip => {}
                Rule::KeepEmpty => out.dirs.push(DirEntry { path, mode }),
                Rule::Include if meta.is_dir() => {
                    out.dirs.push(DirEntry {
                        path: path.clone(),
                        mode,
                    });
                    pending.push(path);
                }
                Rule::Include if meta.is_file() => {
                    out.bytes += meta.len();
                    out.files.push(Source {
                        path,
                        abs,
                        mode,
                        len: meta.len(),
                    });
                }
                // Sockets, fifos, symlinks outside pg_tblspc: not data.
                Rule::Include => {
                    tracing::debug!("skipping {}: not a regular file", abs.display())
                }
            }
        }
    }
    out.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    // Largest first: the long uploads start early and the tail of the backup is short.
    out.files.sort_by_key(|s| std::cmp::Reverse(s.len));
    Ok(out)
}

/// One unit of copying work. Files larger than `backup.slice_size` are stored in slices, read,
/// compressed and uploaded in parallel (a 1 GiB relation segment would otherwise keep one
/// worker busy while the others idle at the end of the backup), and restored in parallel.
enum Work {
    /// A file stored as one object.
    Whole(Source),
    /// One slice of a large file: `(offset, length)`, the last one reading to the end.
    Slice(Arc<SlicedFile>, (u64, u64)),
    /// The changed blocks of a relation file, over the parent's copy.
    Blocks(Box<ChangedFile>),
}

/// A relation file of which an incremental reads only the changed blocks.
struct ChangedFile {
    source: Source,
    /// The parent's entry.
    earlier: FileEntry,
    /// What to read.
    ranges: Vec<(u64, u64)>,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    relseg_size: u32,
}

/// A large file being stored in slices, as it was before the first slice was read.
struct SlicedFile {
    source: Source,
    mtime: i64,
    mtime_nsec: i64,
}

/// What one unit of work produced.
enum Done {
    File(FileEntry),
    Slice {
        file: Arc<SlicedFile>,
        part: Option<Part>,
        bad_blocks: Vec<u32>,
    },
    Vanished,
}

/// Stores every file, `concurrency` at a time, logging progress; with a `parent`, files it
/// holds unchanged are referenced instead.
#[allow(clippy::too_many_arguments)]
async fn copy_files(
    repo: &Repo,
    id: &str,
    sources: Vec<Source>,
    total: u64,
    parent: Option<(&Manifest, Option<&BlockMap>)>,
    check_pages_before: Option<u64>,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Vec<FileEntry>> {
    let progress = super::progress::Progress::new(id, total);
    let (parent, block_map) = match parent {
        Some((parent, map)) => (Some(parent), map),
        None => (None, None),
    };
    let earlier: HashMap<&str, &FileEntry> = parent
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    let mut files = Vec::new();
    let mut work = Vec::new();
    let planned: Vec<Plan> = stream::iter(sources)
        .map(|source| {
            let earlier = earlier.get(source.path.as_str()).copied();
            plan(source, earlier, parent, block_map, options.slice_size)
        })
        .buffered(16)
        .try_collect()
        .await?;
    for planned in planned {
        match planned {
            Plan::Reference(entry) => {
                progress.add(entry.size);
                files.push(entry);
            }
            Plan::Work(items) => work.extend(items),
            Plan::Vanished => {}
        }
    }
    let results: Vec<Done> = stream::iter(work)
        .map(|item| {
            let progress = &progress;
            async move {
                let done = match item {
                    Work::Whole(source) => {
                        match copy_file(repo, id, source, check_pages_before, cancel).await? {
                            Some(entry) => Done::File(entry),
                            None => Done::Vanished,
                        }
                    }
                    Work::Slice(file, range) => {
                        copy_slice(repo, id, file, range, check_pages_before, cancel).await?
                    }
                    Work::Blocks(delta) => {
                        Done::File(copy_blocks(repo, id, *delta, check_pages_before, cancel).await?)
                    }
                };
                match &done {
                    Done::File(entry) => progress.add(entry.size),
                    Done::Slice {
                        part: Some(part), ..
                    } => progress.add(part.bytes()),
                    _ => {}
                }
                anyhow::Ok(done)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    progress.finish();
    files.extend(assemble(id, results));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// How one file is backed up.
enum Plan {
    /// Unchanged since the parent: its entry there serves.
    Reference(FileEntry),
    Work(Vec<Work>),
    Vanished,
}

/// Decides how `source` is backed up: referenced when `earlier` (its entry in the parent
/// backup) still describes it, else copied whole or, when large, in slices.
async fn plan(
    source: Source,
    earlier: Option<&FileEntry>,
    parent: Option<&Manifest>,
    block_map: Option<&BlockMap>,
    slice_size: u64,
) -> Result<Plan> {
    if let (Some(entry), Some(parent)) = (earlier, parent) {
        if let Some(entry) = referenced(entry, &source, parent.start_time).await {
            return Ok(Plan::Reference(entry));
        }
        if let Some(map) = block_map {
            let meta = match tokio::fs::metadata(&source.abs).await {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Plan::Vanished),
                Err(e) => return Err(e).with_context(|| format!("stat {}", source.abs.display())),
            };
            if let Some(ranges) = map.ranges_to_read(&source.path, entry, meta.len()) {
                return Ok(Plan::Work(vec![Work::Blocks(Box::new(ChangedFile {
                    source,
                    earlier: entry.clone(),
                    ranges,
                    size: meta.len(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                    relseg_size: map.relseg_size(),
                }))]));
            }
        }
    }
    if source.len <= slice_size {
        return Ok(Plan::Work(vec![Work::Whole(source)]));
    }
    let meta = match tokio::fs::metadata(&source.abs).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Plan::Vanished),
        Err(e) => return Err(e).with_context(|| format!("stat {}", source.abs.display())),
    };
    let slices = meta.len().div_ceil(slice_size);
    let file = Arc::new(SlicedFile {
        source,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    });
    Ok(Plan::Work(
        (0..slices)
            .map(|i| {
                let offset = i * slice_size;
                // The last slice reads whatever the file holds by then.
                let len = if i + 1 == slices {
                    u64::MAX - offset
                } else {
                    slice_size
                };
                Work::Slice(file.clone(), (offset, len))
            })
            .collect(),
    ))
}

/// Stores one slice of a large file; no part when the file no longer reaches it.
async fn copy_slice(
    repo: &Repo,
    id: &str,
    file: Arc<SlicedFile>,
    range: (u64, u64),
    check_pages_before: Option<u64>,
    cancel: &CancellationToken,
) -> Result<Done> {
    let source = &file.source;
    let key = format!("{}@{}", file_key(id, &source.path), range.0);
    let (outcome, stored) = match repo
        .put_ranges_create(&key, &source.abs, vec![range], cancel)
        .await
    {
        Ok(done) => done,
        Err(e) if is_not_found(&e) => return Ok(Done::Vanished),
        Err(e) => return Err(e).with_context(|| format!("back up {}", source.path)),
    };
    let bad_blocks = check_pages(source, check_pages_before, &stored).await?;
    let part = (!stored.is_empty()).then(|| {
        let (checksum, stored_size) = stored_outcome(outcome);
        Part {
            ranges: stored.iter().map(|&(o, l)| [o, l]).collect(),
            checksum,
            stored_size,
            stored_in: id.to_owned(),
            whole_object: false,
        }
    });
    Ok(Done::Slice {
        file,
        part,
        bad_blocks,
    })
}

/// Stores the changed blocks of a relation file: its entry is the parent's parts, then one
/// part with those blocks. A file gone since is still listed: WAL replay removes it.
async fn copy_blocks(
    repo: &Repo,
    id: &str,
    file: ChangedFile,
    check_pages_before: Option<u64>,
    cancel: &CancellationToken,
) -> Result<FileEntry> {
    let source = &file.source;
    let mut parts = block_delta::base_parts(&file.earlier, file.size);
    let mut stored = Vec::new();
    let mut new_part = None;
    if let Some(&(first, _)) = file.ranges.first() {
        let key = format!("{}@{first}", file_key(id, &source.path));
        let (outcome, read) = repo
            .put_ranges_create(&key, &source.abs, file.ranges.clone(), cancel)
            .await
            .with_context(|| format!("back up the changed blocks of {}", source.path))?;
        if !read.is_empty() {
            let (checksum, stored_size) = stored_outcome(outcome);
            new_part = Some(Part {
                ranges: read.iter().map(|&(o, l)| [o, l]).collect(),
                checksum,
                stored_size,
                stored_in: id.to_owned(),
                whole_object: false,
            });
            stored = read;
        }
    }
    let mut bad_blocks = check_pages(source, check_pages_before, &stored).await?;
    // The parent's bad blocks that were not read again are still in the copy.
    let per_segment = u64::from(file.relseg_size.max(1));
    let reread = |blkno: u32| {
        let offset = (u64::from(blkno) % per_segment) * block_delta::BLOCK;
        offset >= file.size || stored.iter().any(|&(o, l)| offset >= o && offset < o + l)
    };
    bad_blocks.extend(
        file.earlier
            .bad_blocks
            .iter()
            .copied()
            .filter(|&b| !reread(b)),
    );
    bad_blocks.sort_unstable();
    let (stored_in, stored_size) = match &new_part {
        Some(part) => (id.to_owned(), part.stored_size),
        None => {
            let newest = parts
                .last()
                .map_or(&file.earlier.stored_in, |p| &p.stored_in);
            let size = parts
                .iter()
                .filter(|p| &p.stored_in == newest)
                .map(|p| p.stored_size)
                .sum();
            (newest.clone(), size)
        }
    };
    parts.extend(new_part);
    Ok(FileEntry {
        path: source.path.clone(),
        size: file.size,
        mtime: file.mtime,
        mtime_nsec: file.mtime_nsec,
        mode: source.mode,
        checksum: String::new(),
        stored_size,
        stored_in,
        bad_blocks,
        parts,
    })
}

/// The entries of the files stored whole and of those stored in slices.
fn assemble(id: &str, results: Vec<Done>) -> Vec<FileEntry> {
    let mut files = Vec::new();
    /// A sliced file, its stored parts, its bad blocks.
    type Slices = (Arc<SlicedFile>, Vec<Part>, Vec<u32>);
    let mut sliced: BTreeMap<String, Slices> = BTreeMap::new();
    for done in results {
        match done {
            Done::File(entry) => files.push(entry),
            Done::Vanished => {}
            Done::Slice {
                file,
                part,
                bad_blocks,
            } => {
                let slot = sliced
                    .entry(file.source.path.clone())
                    .or_insert_with(|| (file.clone(), Vec::new(), Vec::new()));
                slot.1.extend(part);
                slot.2.extend(bad_blocks);
            }
        }
    }
    for (path, (file, mut parts, mut bad_blocks)) in sliced {
        if parts.is_empty() {
            continue;
        }
        parts.sort_by_key(|p| p.ranges[0][0]);
        bad_blocks.sort_unstable();
        let size = parts
            .iter()
            .flat_map(|p| p.ranges.iter().map(|r| r[0] + r[1]))
            .max()
            .unwrap_or(0);
        files.push(FileEntry {
            path,
            size,
            mtime: file.mtime,
            mtime_nsec: file.mtime_nsec,
            mode: file.source.mode,
            checksum: String::new(),
            stored_size: parts.iter().map(|p| p.stored_size).sum(),
            stored_in: id.to_owned(),
            bad_blocks,
            parts,
        });
    }
    files
}

/// Checksum and stored size of a put.
fn stored_outcome(outcome: PutOutcome) -> (String, u64) {
    match outcome {
        PutOutcome::Created {
            checksum,
            stored_bytes,
        } => (checksum.to_string(), stored_bytes),
        // Only a retry of this very backup could find its own object there.
        PutOutcome::AlreadyIdentical { checksum } => (checksum.to_string(), 0),
    }
}

/// With `check_pages_before` (the backup's start LSN, when the cluster has data checksums),
/// the bad pages among `ranges` of a relation file, logged.
async fn check_pages(
    source: &Source,
    check_pages_before: Option<u64>,
    ranges: &[(u64, u64)],
) -> Result<Vec<u32>> {
    let Some(lsn) = check_pages_before else {
        return Ok(Vec::new());
    };
    if !page_checksum::is_relation_file(&source.path) || ranges.is_empty() {
        return Ok(Vec::new());
    }
    let (abs, path, ranges) = (source.abs.clone(), source.path.clone(), ranges.to_vec());
    let bad =
        tokio::task::spawn_blocking(move || page_checksum::bad_blocks(&abs, &path, lsn, &ranges))
            .await
            .context("join a page check")?;
    let bad = match bad {
        Ok(bad) => bad,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("check the pages of {}", source.path)),
    };
    if !bad.is_empty() {
        tracing::warn!(
            file = %source.path,
            blocks = ?bad,
            "data page checksum mismatch: the copy holds the damaged pages as they are on disk"
        );
    }
    Ok(bad)
}

/// `earlier`'s entry for `source` when the file has not changed since: its object serves.
async fn referenced(
    earlier: &FileEntry,
    source: &Source,
    earlier_start: chrono::DateTime<Utc>,
) -> Option<FileEntry> {
    let meta = tokio::fs::metadata(&source.abs).await.ok()?;
    earlier
        .unchanged(meta.len(), meta.mtime(), meta.mtime_nsec(), earlier_start)
        .then(|| FileEntry {
            mode: source.mode,
            ..earlier.clone()
        })
}

/// Stores one file; `None` when it vanished (dropped while the backup ran: WAL replay
/// drops it in the restored cluster too).
///
/// With `check_pages_before` (the backup's start LSN, when the cluster has data checksums),
/// the pages of relation files are checked too, and bad ones recorded.
async fn copy_file(
    repo: &Repo,
    id: &str,
    source: Source,
    check_pages_before: Option<u64>,
    cancel: &CancellationToken,
) -> Result<Option<FileEntry>> {
    let meta = match tokio::fs::metadata(&source.abs).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("stat {}", source.abs.display())),
    };
    let key = file_key(id, &source.path);
    // The size recorded is what was read (the file may grow meanwhile): a later backup may
    // use the object as the first part of the file, and parts hold exact ranges.
    let (outcome, read) = match repo
        .put_ranges_create(&key, &source.abs, vec![(0, u64::MAX)], cancel)
        .await
    {
        Ok(done) => done,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("back up {}", source.path)),
    };
    let size = read.first().map_or(0, |r| r.1);
    let (checksum, stored_size) = stored_outcome(outcome);
    let bad_blocks = check_pages(&source, check_pages_before, &[(0, u64::MAX)]).await?;
    Ok(Some(FileEntry {
        path: source.path,
        size,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        mode: source.mode,
        checksum,
        stored_size,
        stored_in: id.to_owned(),
        bad_blocks,
        parts: Vec::new(),
    }))
}

fn is_not_found(e: &crate::repo::RepoError) -> bool {
    matches!(e, crate::repo::RepoError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Waits until `segment` is in the archive: before that the backup cannot be restored.
async fn wait_archived(
    repo: &Repo,
    client: &tokio_postgres::Client,
    segment: &str,
    patience: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    let key = layout::wal_key(segment)?;
    let started = Instant::now();
    loop {
        if repo
            .exists(&key)
            .await
            .with_context(|| format!("look for {segment} in the archive"))?
            .is_some()
        {
            return Ok(());
        }
        if started.elapsed() > patience {
            let last_error: String = client
                .query_one(
                    "SELECT coalesce(last_failed_wal || ' at ' || last_failed_time::text, 'none') \
                     FROM pg_stat_archiver",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or_else(|e| format!("unknown ({e})"));
            bail!(
                "the backup's last WAL segment {segment} did not reach the archive within {} \
                 (the archiver's last failure: {last_error}); the backup is incomplete and \
                 not listed\nHINT: fix archiving (`pgward status` shows the archiver's last \
                 error), or raise backup.wal_wait if it is only slow",
                humantime::format_duration(patience)
            );
        }
        tokio::select! {
            () = cancel.cancelled() => {
                bail!("the backup was cancelled while waiting for {segment} to be archived")
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Archiving {
        Archiving {
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
        .ends_with("\nHINT: take backups from the primary"));
    }
}
