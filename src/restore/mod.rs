//! Restoring a backup into a data directory, and the recovery settings that make postgres
//! replay the archived WAL on top of it (to the end, or to a point in time).
//!
//! Every file comes back through the repository's verified download (checksum, atomic
//! write); the data directory is refused unless empty (or `--force`); the backup label,
//! tablespace links, permissions and owner are restored; `recovery.signal` and the recovery
//! settings are written last, so an interrupted restore never looks startable.

pub mod target;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::backup::manifest::{file_key, label_key, FileEntry, Manifest, Part};
use crate::backup::progress::Progress;
use crate::postgres::bootstrap::INCOMPLETE_MARKER;
use crate::process::RunAs;
use crate::repo::Repo;
use target::RecoverySettings;

/// How a restore runs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    /// Empty a non-empty data directory first.
    pub force: bool,
    /// Restore over what the data directory holds: files whose content already matches the
    /// backup's are kept, the rest rewritten, anything else removed.
    pub delta: bool,
    pub concurrency: usize,
    /// Owner of the restored files when running as root (the server's user).
    pub owner: Option<RunAs>,
    pub recovery: RecoverySettings,
    /// New locations of tablespaces, by oid; the others go back where they were.
    pub tablespace_map: std::collections::HashMap<u32, PathBuf>,
}

impl RestoreOptions {
    /// A restore into `data_dir`, which must be empty: nothing forced, nothing moved.
    pub fn new(
        data_dir: PathBuf,
        concurrency: usize,
        owner: Option<RunAs>,
        recovery: RecoverySettings,
    ) -> RestoreOptions {
        RestoreOptions {
            data_dir,
            force: false,
            delta: false,
            concurrency,
            owner,
            recovery,
            tablespace_map: Default::default(),
        }
    }
}

/// `postgres.init.from_backup`: restores `manifest` into the empty data directory of
/// `options` before `pgward run` starts postgres, which then recovers from the archive (a
/// disaster-recovery host, or a copy, in one command).
pub async fn bootstrap_from_backup(
    repo: &Repo,
    manifest: &Manifest,
    options: &RestoreOptions,
) -> Result<()> {
    tracing::info!(backup = %manifest.id, data_dir = %options.data_dir.display(), "empty data directory: restoring from the repository instead of initdb");
    restore(repo, manifest, options, &CancellationToken::new()).await?;
    tracing::info!(backup = %manifest.id, "restored; postgres recovers from the archive when it starts");
    Ok(())
}

/// Where tablespace `oid` of a backup is restored.
fn location_of<'a>(options: &'a RestoreOptions, oid: u32, original: &'a str) -> &'a Path {
    options
        .tablespace_map
        .get(&oid)
        .map(PathBuf::as_path)
        .unwrap_or_else(|| Path::new(original))
}

/// `tablespace_map` as `pg_backup_stop` wrote it (`<oid> <path>` lines), with relocated
/// tablespaces pointing at their new place: postgres recreates the links from it.
fn relocate_map(map: &str, options: &RestoreOptions) -> String {
    map.lines()
        .map(|line| {
            let relocated = line
                .split_once(' ')
                .and_then(|(oid, _)| Some((oid, options.tablespace_map.get(&oid.parse().ok()?)?)));
            match relocated {
                Some((oid, dir)) => format!("{oid} {}\n", dir.display()),
                None => format!("{line}\n"),
            }
        })
        .collect()
}

/// Restores `manifest`'s backup from `repo`.
pub async fn restore(
    repo: &Repo,
    manifest: &Manifest,
    options: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let data_dir = &options.data_dir;
    if options.delta {
        prepare_for_delta(data_dir, manifest, options)?;
    } else {
        prepare_data_dir(data_dir, options.force, DATA_DIR_HINT)?;
    }
    // Until the end, the directory holds a cluster that must not start (no backup_label
    // yet: postgres would "recover" from the copied pg_control and serve torn data). The
    // marker makes `pgward run` refuse it, as it does a half-done initdb.
    let marker = data_dir.join(INCOMPLETE_MARKER);
    write_file(&marker, b"restore under way\n")?;
    for tablespace in &manifest.tablespaces {
        let link = data_dir.join("pg_tblspc").join(tablespace.oid.to_string());
        std::fs::create_dir_all(data_dir.join("pg_tblspc"))
            .with_context(|| format!("create {}", data_dir.join("pg_tblspc").display()))?;
        let location = location_of(options, tablespace.oid, &tablespace.location);
        if options.delta && std::fs::read_link(&link).is_ok_and(|l| l == location) {
            continue;
        }
        // Never emptied, not even with --force: on the original's host the location is the
        // running cluster's own tablespace.
        let oid = tablespace.oid;
        let hint = format!(
            "HINT: empty it, or restore tablespace {oid} elsewhere with --tablespace-map \
             {oid}=DIR (--force does not empty a tablespace's location)"
        );
        prepare_data_dir(location, false, &hint).with_context(|| format!("tablespace {oid}"))?;
        std::os::unix::fs::symlink(location, &link)
            .with_context(|| format!("link {} to {}", link.display(), location.display()))?;
    }
    for dir in &manifest.directories {
        let path = data_dir.join(&dir.path);
        if !path.exists() {
            std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode))
            .with_context(|| format!("set the mode of {}", path.display()))?;
    }
    std::fs::create_dir_all(data_dir.join("pg_wal/archive_status"))
        .with_context(|| format!("create {}", data_dir.join("pg_wal").display()))?;

    restore_files(repo, manifest, options, cancel).await?;

    for name in ["backup_label", "tablespace_map"] {
        let key = label_key(&manifest.id, name);
        match repo
            .get_bytes(&key)
            .await
            .with_context(|| format!("read {key}"))?
        {
            Some(content) if name == "tablespace_map" => {
                let map = relocate_map(&String::from_utf8_lossy(&content), options);
                write_file(&data_dir.join(name), map.as_bytes())?
            }
            Some(content) => write_file(&data_dir.join(name), &content)?,
            None if name == "backup_label" => bail!(
                "backup {} has no backup_label in {}\n{}",
                manifest.id,
                repo.describe(),
                damaged_hint(&manifest.id)
            ),
            None => {}
        }
    }
    // Last: with recovery.signal the directory is a cluster that recovers.
    options.recovery.write(data_dir)?;
    if let Some(owner) = &options.owner {
        crate::postgres::server::chown_tree(data_dir, owner)?;
        for tablespace in &manifest.tablespaces {
            let location = location_of(options, tablespace.oid, &tablespace.location);
            crate::postgres::server::chown_tree(location, owner)?;
        }
    }
    std::fs::remove_file(&marker).with_context(|| format!("remove {}", marker.display()))?;
    crate::fsutil::sync_dir(data_dir)?;
    Ok(())
}

/// Writes the backup's files, `concurrency` objects at a time: whole files, and the parts of
/// parted files in rounds (a part after every earlier part it overlaps). With `--delta`,
/// files that already hold the backup's content are kept.
async fn restore_files(
    repo: &Repo,
    manifest: &Manifest,
    options: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let data_dir = &options.data_dir;
    let progress = Progress::new(&manifest.id, manifest.size);
    let todo: Vec<&FileEntry> = if options.delta {
        // Boxed as `dyn Send` (here too, see below).
        let checks: BoxFuture<'_, Result<Vec<Option<&FileEntry>>>> = Box::pin(
            stream::iter(&manifest.files)
                .map(|file| {
                    let progress = &progress;
                    async move {
                        let dest = data_dir.join(&file.path);
                        if !matches_already(&dest, file).await? {
                            return anyhow::Ok(Some(file));
                        }
                        set_mode(&dest, file.mode).await?;
                        progress.add(file.size);
                        Ok(None)
                    }
                })
                .buffer_unordered(options.concurrency.max(1))
                .try_collect(),
        );
        let kept = checks.await?;
        kept.into_iter().flatten().collect()
    } else {
        manifest.files.iter().collect()
    };
    let (whole, parted): (Vec<&FileEntry>, Vec<&FileEntry>) =
        todo.into_iter().partition(|f| f.parts.is_empty());

    // Parted files are assembled in a temp file beside their place, renamed when complete.
    let mut outputs = Vec::with_capacity(parted.len());
    for file in &parted {
        let dest = data_dir.join(&file.path);
        let out = crate::fsutil::AtomicFile::create(&dest)
            .and_then(|out| crate::fsutil::preallocate(out.as_file(), file.size).map(|()| out))
            .with_context(|| format!("create {}", dest.display()))?;
        outputs.push(Arc::new(out));
    }
    let mut jobs: Vec<(usize, Job)> = whole.into_iter().map(|f| (0, Job::Whole(f))).collect();
    for (file, out) in parted.iter().zip(&outputs) {
        for (part, round) in file.parts.iter().zip(file.part_rounds()) {
            jobs.push((
                round,
                Job::Part {
                    file,
                    part,
                    out: out.clone(),
                },
            ));
        }
    }
    let rounds = jobs.iter().map(|(r, _)| *r).max().map_or(0, |r| r + 1);
    let mut by_round: Vec<Vec<Job>> = (0..rounds).map(|_| Vec::new()).collect();
    for (round, job) in jobs {
        by_round[round].push(job);
    }
    // On the first failure the jobs not started yet are skipped, and the ones under way are
    // awaited: no download may still be writing into the directory once this returns (a
    // restore test removes it right after).
    let stop = cancel.child_token();
    for jobs in by_round {
        // Boxed as `dyn Send` where the lifetimes are concrete: otherwise the compiler cannot
        // prove a caller's future `Send` for every lifetime of this stream's closure.
        let round: BoxFuture<'_, Vec<Result<()>>> = Box::pin(
            stream::iter(jobs)
                .map(|job| {
                    let (progress, stop) = (&progress, &stop);
                    async move {
                        if stop.is_cancelled() {
                            return Ok(());
                        }
                        let written = restore_job(repo, manifest, data_dir, job, stop)
                            .await
                            .inspect_err(|_| stop.cancel())?;
                        progress.add(written);
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(options.concurrency.max(1))
                .collect(),
        );
        let results = round.await;
        // The first real failure, not the cancellations it caused.
        let mut errors = results.into_iter().filter_map(Result::err);
        if let Some(first) = errors.find(|e| !is_cancelled(e)) {
            return Err(first);
        }
        if stop.is_cancelled() {
            bail!("the restore was cancelled before it completed");
        }
    }
    for (file, out) in parted.into_iter().zip(outputs) {
        let dest = data_dir.join(&file.path);
        let out = Arc::into_inner(out).expect("every part job has ended");
        let size = file.size;
        // Parts of the parent's copy may reach past a file that shrank since.
        tokio::task::spawn_blocking(move || {
            out.as_file().set_len(size).and_then(|()| out.commit())
        })
        .await
        .context("join a file commit")?
        .with_context(|| format!("write {}", dest.display()))?;
        set_mode(&dest, file.mode).await?;
    }
    progress.finish();
    Ok(())
}

/// Whether `e` only says the restore was cancelled (by the caller, or after another job failed).
fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::repo::RepoError>(),
            Some(crate::repo::RepoError::Cancelled)
        )
    })
}

/// One object to restore.
enum Job<'a> {
    /// A file stored as one object.
    Whole(&'a FileEntry),
    /// One part of a parted file, into its temp file.
    Part {
        file: &'a FileEntry,
        part: &'a Part,
        out: Arc<crate::fsutil::AtomicFile>,
    },
}

/// Restores one object; the bytes of the file it wrote.
async fn restore_job(
    repo: &Repo,
    manifest: &Manifest,
    data_dir: &Path,
    job: Job<'_>,
    cancel: &CancellationToken,
) -> Result<u64> {
    let missing = |key: &str| {
        anyhow::anyhow!(
            "object {key} of backup {} is missing from {}\n{}",
            manifest.id,
            repo.describe(),
            damaged_hint(&manifest.id)
        )
    };
    match job {
        Job::Whole(file) => {
            let dest = data_dir.join(&file.path);
            let key = file_key(&file.stored_in, &file.path);
            let found = repo
                .get_to_file(&key, &dest, cancel)
                .await
                .with_context(|| format!("restore {}", file.path))?;
            if !found {
                return Err(missing(&key));
            }
            set_mode(&dest, file.mode).await?;
            Ok(file.size)
        }
        Job::Part { file, part, out } => {
            let key = part.key(&file.path);
            let dest = data_dir.join(&file.path);
            let handle = out
                .as_file()
                .try_clone()
                .with_context(|| format!("open {} for writing", dest.display()))?;
            let found = repo
                .get_to_ranges(&key, handle, &dest, part.ranges(), cancel)
                .await
                .with_context(|| format!("restore {}", file.path))?;
            if !found {
                return Err(missing(&key));
            }
            Ok(part.bytes())
        }
    }
}

async fn set_mode(path: &Path, mode: u32) -> Result<()> {
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .with_context(|| format!("set the mode of {}", path.display()))
}

/// Before a delta restore: the server must not run on `data_dir`, and whatever the backup
/// does not hold goes (files and directories not in the manifest, stale WAL, the old
/// `postmaster.pid`); what it holds stays, to be compared.
fn prepare_for_delta(data_dir: &Path, manifest: &Manifest, options: &RestoreOptions) -> Result<()> {
    if !data_dir.exists() {
        return prepare_data_dir(data_dir, false, DATA_DIR_HINT);
    }
    if let Some(pid) = running_postmaster(data_dir) {
        bail!(
            "postgres (pid {pid}) runs on {}\nHINT: stop it (`pgward run`, or its container) \
             before restoring over it",
            data_dir.display()
        );
    }
    let files: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    let dirs: std::collections::HashSet<&str> = manifest
        .directories
        .iter()
        .map(|d| d.path.as_str())
        .chain(["pg_tblspc"])
        .collect();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = data_dir.join(&rel);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let abs = entry.path();
            let kind = std::fs::symlink_metadata(&abs)
                .with_context(|| format!("stat {}", abs.display()))?
                .file_type();
            let keep = if kind.is_dir() {
                dirs.contains(path.as_str())
            } else if kind.is_symlink() {
                // Tablespace links are checked and recreated by the caller.
                rel == "pg_tblspc"
            } else {
                files.contains(path.as_str())
            };
            if keep && kind.is_dir() {
                pending.push(path);
            } else if keep && kind.is_symlink() {
                let target = manifest.tablespaces.iter().find(|t| {
                    t.oid.to_string() == abs.file_name().unwrap_or_default().to_string_lossy()
                });
                match target {
                    // Where the restore puts it (mapped or original), as `restore` checks too.
                    Some(t)
                        if std::fs::read_link(&abs)
                            .is_ok_and(|l| l == location_of(options, t.oid, &t.location)) =>
                    {
                        pending.push(path);
                    }
                    _ => std::fs::remove_file(&abs)
                        .with_context(|| format!("remove {}", abs.display()))?,
                }
            } else if !keep {
                let removed = if kind.is_dir() {
                    std::fs::remove_dir_all(&abs)
                } else {
                    std::fs::remove_file(&abs)
                };
                removed.with_context(|| format!("remove {}", abs.display()))?;
            }
        }
    }
    Ok(())
}

/// The pid in `postmaster.pid` when that process exists.
fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    alive.then_some(pid)
}

/// Whether the file at `path` already holds `file`'s content: its size, and the checksum of
/// the whole file or of each part. A parted file with overlapping parts (an incremental
/// backup's changed blocks over earlier parts) cannot be compared part by part and is
/// always rewritten. Read on a blocking thread.
async fn matches_already(path: &Path, file: &FileEntry) -> Result<bool> {
    if file.part_rounds().iter().any(|&r| r > 0) {
        return Ok(false);
    }
    let path = path.to_owned();
    let size = file.size;
    let expected: Vec<(Vec<(u64, u64)>, String)> = if file.parts.is_empty() {
        vec![(vec![(0, size)], file.checksum.clone())]
    } else {
        file.parts
            .iter()
            .map(|p| (p.ranges(), p.checksum.clone()))
            .collect()
    };
    tokio::task::spawn_blocking(move || -> Result<bool> {
        let local = match std::fs::File::open(&path) {
            Ok(local) => local,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let len = local
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if len != size {
            return Ok(false);
        }
        for (ranges, checksum) in expected {
            let handle = local
                .try_clone()
                .with_context(|| format!("open {}", path.display()))?;
            let (hash, whole) = crate::repo::ranges::hash_ranges(handle, &ranges)
                .with_context(|| format!("read {}", path.display()))?;
            if !whole || hash.to_hex().as_str() != checksum {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .context("join a file comparison")?
}

/// What to do about a data directory that is not empty.
const DATA_DIR_HINT: &str = "HINT: restore into an empty directory, or pass --delta to restore \
                             over it (files that match stay) or --force to replace its content";

/// What to do about a backup with an object missing.
fn damaged_hint(id: &str) -> String {
    format!("HINT: `pgward verify {id}` lists what is wrong with it; restore another backup")
}

/// A data directory (or tablespace location) to restore into: created when missing, refused
/// when it holds anything unless `force` (with `hint`, the `HINT:` line saying what to do),
/// then emptied.
fn prepare_data_dir(dir: &Path, force: bool, hint: &str) -> Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !force {
                    bail!(
                        "{} is not empty; restoring would overwrite it\n{hint}",
                        dir.display()
                    );
                }
                for entry in std::fs::read_dir(dir)? {
                    let path = entry?.path();
                    let removed = if path.is_dir() && !path.is_symlink() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.with_context(|| format!("remove {}", path.display()))?;
                }
            }
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("set the mode of {}", dir.display()))
}

/// Writes a small file durably (temp, fsync, rename).
fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    let mut file = crate::fsutil::AtomicFile::create(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(content)
        .and_then(|()| file.commit())
        .with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("set the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_use_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare_data_dir(&dir.path().join("new"), false, DATA_DIR_HINT).expect("created");
        std::fs::write(dir.path().join("PG_VERSION"), "17\n").expect("write");
        assert_eq!(
            format!(
                "{:#}",
                prepare_data_dir(dir.path(), false, DATA_DIR_HINT).unwrap_err()
            ),
            format!(
                "{} is not empty; restoring would overwrite it\n\
                 HINT: restore into an empty directory, or pass --delta to restore over it \
                 (files that match stay) or --force to replace its content",
                dir.path().display()
            )
        );
        prepare_data_dir(dir.path(), true, DATA_DIR_HINT).expect("emptied");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
