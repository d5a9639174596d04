//! The backup's files written into the data directory (and the tablespaces' locations):
//! downloads, a bundle read once and written out as the files it holds, a parted file
//! assembled from its parts (a part in a bundle read alone, with a ranged read), and with
//! `--delta` the files that already hold the backup's content kept.
//!
//! Each file is renamed into place whole but not fsynced: the restore syncs each filesystem
//! it wrote once at the end, before its marker goes (see `sync_restored`).
//!
//! Open files are bounded whatever the backup holds: at most `concurrency` files are being
//! written at once (a whole file's download, a bundle's current member, or a parted file
//! being assembled) and at most `concurrency` downloads run, each holding one handle on its
//! file. So a restore has at most
//! 2 × `concurrency` files of the data directory open (a `--delta` comparison: one file and
//! one handle per check, `concurrency` checks at once), plus, with a `file://` repository, the
//! stored object each download reads.

use std::cmp::Reverse;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use futures_util::future::BoxFuture;
use futures_util::{stream, Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{damaged_hint, set_mode_nofollow, Layout, RestoreOptions};
use crate::backup::entries::SpilledManifest;
use crate::backup::manifest::{FileEntry, Part};
use crate::backup::progress::Progress;
use crate::fsutil::{AtomicFile, Durability};
use crate::repo::{retry_to_end, Repo, RepoError, RetryPolicy};
use crate::spill::{Sorted, Spill};

/// What every file restore needs.
struct Shared<'a> {
    repo: &'a Repo,
    /// The backup's id.
    id: &'a str,
    layout: &'a Layout,
    progress: &'a Progress,
    /// One permit per download under way.
    downloads: &'a Semaphore,
    concurrency: usize,
    /// With `--delta`: files that already hold the backup's content are kept.
    delta: bool,
    /// Each object's download is retried as a whole on transient failures (`storage.retry`).
    retry: &'a RetryPolicy,
    /// Cancelled by the caller, or by the first failure: the files not started yet are
    /// skipped.
    stop: &'a CancellationToken,
}

/// Entries held in memory at most while they are put in the order they are restored in
/// (see `spill`); the tests' build (with failpoints) holds 8, so that each restore they run
/// goes through runs on disk.
const RUN_LEN: usize = if cfg!(feature = "failpoints") {
    8
} else {
    8192
};

/// Files read back ahead of the workers.
const FILES_AHEAD: usize = 256;

/// Writes the backup's files, `concurrency` at a time; a parted file's parts in rounds (a
/// part after every earlier part it overlaps). With `--delta`, files that already hold the
/// backup's content are kept. The files are read from where the manifest's list was set
/// aside, in the order they are restored in: never all in memory.
///
/// On the first failure the files not started yet are skipped, and the ones under way are
/// awaited: no download may still be writing into the directory once this returns (a
/// restore test removes it right after).
pub(super) async fn restore_files(
    repo: &Repo,
    manifest: &SpilledManifest,
    layout: &Layout,
    options: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let progress = Progress::new(&manifest.id, manifest.size);
    let concurrency = options.concurrency.max(1);
    let by_path = manifest.files.sorted.clone();
    let in_order = tokio::task::spawn_blocking(move || in_restore_order(&by_path))
        .await
        .context("join the ordering of the backup's files")??;
    let stop = cancel.child_token();
    let downloads = Semaphore::new(concurrency);
    let cx = Shared {
        repo,
        id: &manifest.id,
        layout,
        progress: &progress,
        downloads: &downloads,
        concurrency,
        delta: options.delta,
        retry: &options.retry,
        stop: &stop,
    };
    // Boxed as `dyn Send` where the lifetimes are concrete: otherwise the compiler cannot
    // prove a caller's future `Send` for every lifetime of this stream's closure.
    let all: BoxFuture<'_, Vec<Result<()>>> = Box::pin(
        units(in_order)
            .map(|unit| {
                let cx = &cx;
                async move {
                    if cx.stop.is_cancelled() {
                        return Ok(());
                    }
                    let written = match unit {
                        Ok(unit) => restore_unit(cx, unit).await,
                        Err(e) => Err(e),
                    };
                    written
                        .and_then(|()| restored_one())
                        .inspect_err(|_| cx.stop.cancel())
                }
            })
            .buffer_unordered(concurrency)
            .collect(),
    );
    real_failure(all.await)?;
    if stop.is_cancelled() {
        bail!("the restore was cancelled before it completed");
    }
    progress.finish();
    Ok(())
}

/// Restores one unit; with `--delta`, only its files that do not already hold the backup's
/// content (the others get their mode, and count as restored).
async fn restore_unit(cx: &Shared<'_>, unit: Unit) -> Result<()> {
    match unit {
        Unit::Bundle(key, files) => {
            let mut todo = Vec::with_capacity(files.len());
            for file in files {
                if !kept(cx, &file).await? {
                    todo.push(file);
                }
            }
            match todo.is_empty() {
                true => Ok(()),
                false => restore_bundle(cx, &key, todo).await,
            }
        }
        Unit::File(file) if kept(cx, &file).await? => Ok(()),
        Unit::File(file) if file.parts.is_empty() => restore_whole(cx, &file).await,
        Unit::File(file) => restore_parted(cx, &file).await,
    }
}

/// With `--delta`, whether the file already holds the backup's content: then it keeps it
/// (its mode set, counted as restored).
async fn kept(cx: &Shared<'_>, file: &FileEntry) -> Result<bool> {
    if !cx.delta {
        return Ok(false);
    }
    let dest = cx.layout.path(&file.path);
    if !matches_already(&dest, file).await? {
        return Ok(false);
    }
    set_mode(&dest, file.mode).await?;
    cx.progress.add(file.size);
    Ok(true)
}

/// What one worker restores at a time.
enum Unit {
    /// The files stored whole in one bundle (its key), in the order they sit in it.
    Bundle(String, Vec<FileEntry>),
    /// A file stored as an object of its own, or in parts.
    File(FileEntry),
}

/// Whether `file` is restored as a member of its bundle (rather than on its own).
fn in_bundle(file: &FileEntry) -> bool {
    file.bundle.is_some() && file.parts.is_empty()
}

/// The order files are restored in: those stored on their own first, largest first (the
/// long poles, a large file's slices, start at once instead of after everything else), then
/// each bundle's (each read once, whole, filling the gaps) in the order they sit in it.
fn restore_order(a: &FileEntry, b: &FileEntry) -> std::cmp::Ordering {
    restore_key(a)
        .cmp(&restore_key(b))
        .then_with(|| a.path.cmp(&b.path))
}

/// Alone: (false, size, "", 0, 0); in a bundle: (true, 0, its backup, bundle, offset).
fn restore_key(f: &FileEntry) -> (bool, Reverse<u64>, &str, u32, u64) {
    match f.bundle.filter(|_| in_bundle(f)) {
        Some(at) => (true, Reverse(0), f.stored_in.as_str(), at.bundle, at.offset),
        None => (false, Reverse(f.size), "", 0, 0),
    }
}

/// The files (by path) put in [`restore_order`]. Blocking.
fn in_restore_order(by_path: &Sorted<FileEntry>) -> Result<Sorted<FileEntry>> {
    let mut spill = Spill::new(restore_order, RUN_LEN);
    for file in by_path.iter().context("read back the backup's files")? {
        spill
            .push_blocking(file.context("read back the backup's files")?)
            .context("set aside the backup's files (in TMPDIR)")?;
    }
    spill.finish_blocking().context("sort the backup's files")
}

/// The files (in [`restore_order`]) as units: each file stored on its own, then each
/// bundle's members together. Read on a blocking thread a few files ahead.
fn units(files: Sorted<FileEntry>) -> impl Stream<Item = Result<Unit>> + Send + 'static {
    let read_back =
        |e: std::io::Error| anyhow::Error::new(e).context("read back the backup's files");
    let entries = Box::pin(files.stream(FILES_AHEAD));
    // The state: the files still to read, and the first file of the next unit, when the
    // unit before ended on it.
    stream::unfold((entries, None), move |(mut entries, next)| async move {
        let first = match next {
            Some(first) => first,
            None => match entries.next().await? {
                Ok(first) => first,
                Err(e) => return Some((Err(read_back(e)), (entries, None))),
            },
        };
        if !in_bundle(&first) {
            return Some((Ok(Unit::File(first)), (entries, None)));
        }
        let key = first.key();
        let mut members = vec![first];
        loop {
            match entries.next().await {
                Some(Ok(file)) if in_bundle(&file) && file.key() == key => members.push(file),
                Some(Ok(file)) => {
                    return Some((Ok(Unit::Bundle(key, members)), (entries, Some(file))))
                }
                Some(Err(e)) => return Some((Err(read_back(e)), (entries, None))),
                None => return Some((Ok(Unit::Bundle(key, members)), (entries, None))),
            }
        }
    })
}

/// The files of one bundle: the bundle read once, each member written beside its place and
/// renamed over it once it decoded whole and matches the manifest. A retry reads the bundle
/// again and rewrites them all.
async fn restore_bundle(cx: &Shared<'_>, key: &str, files: Vec<FileEntry>) -> Result<()> {
    let _download = cx
        .downloads
        .acquire()
        .await
        .context("wait for a download")?;
    /// Where a member goes, and what the manifest says it holds.
    struct Member {
        dest: std::path::PathBuf,
        path: String,
        checksum: String,
        size: u64,
    }
    let mut members = Vec::with_capacity(files.len());
    let mut wanted = Vec::with_capacity(files.len());
    for file in &files {
        members.push(file.bundle.expect("bundled files only").member(&file.path));
        wanted.push(Member {
            dest: cx.layout.file(&file.path)?,
            path: file.path.clone(),
            checksum: file.checksum.clone(),
            size: file.size,
        });
    }
    let wanted = std::sync::Arc::new(wanted);
    let what = format!("restore bundle {key} ({} files)", files.len());
    let found = retry_to_end(cx.retry, cx.stop, &what, || {
        let (to_open, to_finish) = (wanted.clone(), wanted.clone());
        let bundle = key.to_owned();
        cx.repo.get_bundle(
            key,
            members.clone(),
            cx.stop,
            move |i| {
                let dest = &to_open[i].dest;
                let file = AtomicFile::create(dest).map_err(|e| RepoError::io(dest, e))?;
                Ok(Some(std::io::BufWriter::with_capacity(256 * 1024, file)))
            },
            move |i, out, verified| {
                let member = &to_finish[i];
                if verified.checksum.to_string() != member.checksum || verified.len != member.size {
                    return Err(RepoError::Corrupt {
                        key: bundle.clone(),
                        reason: format!(
                            "member {} holds other content than the manifest lists",
                            member.path
                        ),
                    });
                }
                let file = out
                    .into_inner()
                    .map_err(|e| RepoError::io(&member.dest, e.into_error()))?;
                file.commit_unsynced()
                    .map_err(|e| RepoError::io(&member.dest, e))
            },
        )
    })
    .await
    .context(what)?;
    if !found {
        return Err(missing(cx, key));
    }
    for (file, member) in files.iter().zip(wanted.iter()) {
        set_mode(&member.dest, file.mode).await?;
        cx.progress.add(file.size);
    }
    Ok(())
}

/// A file of the backup restored, others maybe not yet: where a test interrupts a restore
/// in the middle of its downloads.
fn restored_one() -> Result<()> {
    crate::failpoint!("restore-mid-download");
    Ok(())
}

/// The first real failure among `results`, not the cancellations it caused.
fn real_failure(results: Vec<Result<()>>) -> Result<()> {
    match results
        .into_iter()
        .filter_map(Result::err)
        .find(|e| !RepoError::only_cancelled(e))
    {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// The error for object `key` of the backup missing from the repository.
fn missing(cx: &Shared<'_>, key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "object {key} of backup {} is missing from {}\n{}",
        cx.id,
        cx.repo.describe(),
        damaged_hint(cx.id)
    )
}

/// A file stored as one object: downloaded beside its place, then renamed over it.
async fn restore_whole(cx: &Shared<'_>, file: &FileEntry) -> Result<()> {
    let _download = cx
        .downloads
        .acquire()
        .await
        .context("wait for a download")?;
    let dest = cx.layout.file(&file.path)?;
    let key = file.key();
    // A failed attempt leaves `dest` as it was: a retry starts over. An attempt under way
    // ends by itself on `cx.stop` and is awaited: its writer is done with `dest` after it.
    let what = format!("restore {}", file.path);
    let found = retry_to_end(cx.retry, cx.stop, &what, || {
        cx.repo
            .get_to_file_as(&key, &dest, Durability::Deferred, cx.stop)
    })
    .await
    .context(what)?;
    if !found {
        return Err(missing(cx, &key));
    }
    set_mode(&dest, file.mode).await?;
    cx.progress.add(file.size);
    Ok(())
}

/// A parted file: assembled in a temp file beside its place from its parts, round after
/// round, then renamed over it. Its parts download at once up to the shared limit.
async fn restore_parted(cx: &Shared<'_>, file: &FileEntry) -> Result<()> {
    let dest = cx.layout.file(&file.path)?;
    let out = AtomicFile::create(&dest)
        .and_then(|out| crate::fsutil::preallocate(out.as_file(), file.size).map(|()| out))
        .with_context(|| format!("create {}", dest.display()))?;
    let rounds = file.part_rounds();
    let last = rounds.iter().copied().max().unwrap_or(0);
    for round in 0..=last {
        let parts = file
            .parts
            .iter()
            .zip(&rounds)
            .filter(|(_, r)| **r == round)
            .map(|(part, _)| part);
        let (out, dest) = (&out, &dest);
        // Boxed as `dyn Send` (as in `restore_files`).
        let written: BoxFuture<'_, Vec<Result<()>>> = Box::pin(
            stream::iter(parts)
                .map(|part| async move {
                    if cx.stop.is_cancelled() {
                        return Ok(());
                    }
                    restore_part(cx, file, part, out, dest)
                        .await
                        .inspect_err(|_| cx.stop.cancel())
                })
                .buffer_unordered(cx.concurrency)
                .collect(),
        );
        real_failure(written.await)?;
        if cx.stop.is_cancelled() {
            // Another file failed: this one is left unfinished (its temp file goes with `out`).
            return Err(crate::repo::RepoError::Cancelled.into());
        }
    }
    // Parts of the parent's copy may reach past a file that shrank since.
    let size = file.size;
    tokio::task::spawn_blocking(move || {
        out.as_file()
            .set_len(size)
            .and_then(|()| out.commit_unsynced())
    })
    .await
    .context("join a file commit")?
    .with_context(|| format!("write {}", dest.display()))?;
    set_mode(&dest, file.mode).await
}

/// One part of a parted file, into its ranges of `out`.
async fn restore_part(
    cx: &Shared<'_>,
    file: &FileEntry,
    part: &Part,
    out: &AtomicFile,
    dest: &Path,
) -> Result<()> {
    let _download = cx
        .downloads
        .acquire()
        .await
        .context("wait for a download")?;
    let key = part.key(&file.path);
    // Positioned writes: a retry writes the same ranges again.
    let what = format!("restore {}", file.path);
    let found = retry_to_end(cx.retry, cx.stop, &what, || async {
        let handle = out.as_file().try_clone().map_err(|source| RepoError::Io {
            path: dest.to_owned(),
            source,
        })?;
        match &part.bundle {
            Some(at) => {
                let member = at.member(&file.path);
                cx.repo
                    .get_member_to_ranges(&key, &member, handle, dest, part.ranges(), cx.stop)
                    .await
            }
            None => {
                cx.repo
                    .get_to_ranges(&key, handle, dest, part.ranges(), cx.stop)
                    .await
            }
        }
    })
    .await
    .context(what)?;
    if !found {
        return Err(missing(cx, &key));
    }
    cx.progress.add(part.bytes());
    Ok(())
}

async fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || set_mode_nofollow(&path, mode))
        .await
        .context("join a mode change")?
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
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        let local = match opened {
            Ok(local) => local,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // A symlink is never read through; the restored file replaces it.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let len = local
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if len != size || !local.metadata().is_ok_and(|m| m.is_file()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::InBundle;

    fn file(path: &str, size: u64, bundle: Option<u32>) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: String::new(),
            stored_size: size / 4,
            stored_in: "20261207T180000F".to_owned(),
            bad_blocks: Vec::new(),
            parts: Vec::new(),
            bundle: bundle.map(|bundle| InBundle {
                bundle,
                offset: size,
                stored_len: size / 4,
            }),
        }
    }

    fn describe(units: &[Unit]) -> Vec<String> {
        units
            .iter()
            .map(|unit| match unit {
                Unit::File(f) => f.path.clone(),
                Unit::Bundle(key, files) => format!(
                    "{key}: {}",
                    files
                        .iter()
                        .map(|f| f.path.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            })
            .collect()
    }

    #[tokio::test]
    async fn files_of_their_own_come_first_largest_first_then_each_bundle_in_member_order() {
        let files = [
            file("base/5/small", 8192, Some(1)),
            file("base/5/big", 300 << 20, None),
            file("base/5/other", 9000, Some(0)),
            file("base/5/first", 100, Some(1)),
            file("base/5/medium", 2 << 20, None),
        ];
        // Runs of 2 on disk, as a restore of many files sets them aside.
        let mut by_path = Spill::new(|a: &FileEntry, b: &FileEntry| a.path.cmp(&b.path), 2);
        for f in files {
            by_path.push_blocking(f).unwrap();
        }
        let in_order = in_restore_order(&by_path.finish_blocking().unwrap()).unwrap();
        let units: Vec<Unit> = units(in_order)
            .map(|u| u.unwrap())
            .collect::<Vec<_>>()
            .await;
        assert_eq!(
            describe(&units),
            [
                "base/5/big",
                "base/5/medium",
                "backups/20261207T180000F/bundles/000000: base/5/other",
                "backups/20261207T180000F/bundles/000001: base/5/first base/5/small",
            ]
        );
    }
}
