//! Storing a backup's files: small files (and small sets of changed blocks) packed into
//! bundles, other files each as its own checksummed object, large files in slices, changed
//! blocks of relation files over the parent's copy, unchanged files referenced from the
//! parent; `backup.concurrency` at a time, with progress. Data pages are checked against their
//! checksums on the way.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::block_delta::{self, BlockMap};
use super::entries::Entries;
use super::manifest::{bundle_key, file_key, FileEntry, InBundle, Part};
use super::page_checksum;
use super::take::BackupOptions;
use super::walk::{Source, ToCopy};
use crate::repo::{retry, BundleInput, PutOutcome, Repo, RetryPolicy};

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
    /// Small files and sets of changed blocks, packed into one object.
    Bundle(u32, Vec<Work>),
}

impl Work {
    /// Bytes the work stores, when it may go into a bundle: a whole file or changed blocks
    /// of at most `file_max` bytes.
    fn bundle_size(&self, file_max: u64) -> Option<u64> {
        let size = match self {
            Work::Whole(source) => source.len,
            Work::Blocks(file) => file.ranges.iter().map(|r| r.1).sum(),
            Work::Slice(..) | Work::Bundle(..) => return None,
        };
        (size <= file_max).then_some(size)
    }
}

/// How small files are packed (see [`BackupOptions`]).
#[derive(Debug, Clone, Copy)]
pub struct Bundling {
    /// Largest bundle, in bytes read; 0: no bundles.
    pub size: u64,
    /// Largest file (or set of changed blocks) that goes into a bundle.
    pub file_max: u64,
}

/// Smallest bundle worth a request of its own when there is little to pack.
const MIN_BUNDLE: u64 = 4 << 20;

/// Files in one bundle at most: what a bundle in flight holds in memory is a few hundred
/// bytes per member, so a bundle of tiny (or empty) files must not take them all.
const MAX_MEMBERS: usize = 4096;

/// Packs the work that fits into bundles as it comes, numbered from 0; the rest passes
/// through. A bundle holds up to `bundling.size`, less when there is little to pack, so
/// that the bundles still keep the workers busy.
struct Bundler {
    file_max: u64,
    target: u64,
    current: Vec<Work>,
    filled: u64,
    next: u32,
}

impl Bundler {
    /// For about `small_bytes` to pack (an incremental packs less: what changed), spread over
    /// `concurrency` workers.
    fn new(bundling: Bundling, small_bytes: u64, concurrency: usize) -> Bundler {
        let spread = small_bytes.div_ceil(2 * concurrency.max(1) as u64);
        Bundler {
            file_max: bundling.file_max,
            // 0 with no bundles: nothing is packed.
            target: spread.max(MIN_BUNDLE).min(bundling.size),
            current: Vec::new(),
            filled: 0,
            next: 0,
        }
    }

    /// Takes `item`; returns what is ready: the item itself, or a full bundle.
    fn add(&mut self, item: Work) -> Option<Work> {
        let size = match self.target {
            0 => None,
            _ => item.bundle_size(self.file_max),
        };
        let Some(size) = size else {
            return Some(item);
        };
        let full = (self.filled + size > self.target || self.current.len() >= MAX_MEMBERS)
            .then(|| self.take())
            .flatten();
        self.filled += size;
        self.current.push(item);
        full
    }

    /// The bundle being filled, if it holds anything.
    fn take(&mut self) -> Option<Work> {
        if self.current.is_empty() {
            return None;
        }
        self.filled = 0;
        let n = self.next;
        self.next += 1;
        Some(Work::Bundle(n, std::mem::take(&mut self.current)))
    }
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
    Files(Vec<FileEntry>),
    Slice {
        file: Arc<SlicedFile>,
        part: Option<Part>,
        bad_blocks: Vec<u32>,
    },
    Vanished,
}

/// Stores every file of `sources` (read as they come, `total` bytes of which about
/// `small_bytes` fit in bundles), `concurrency` at a time, logging progress; with a `parent`,
/// files it holds unchanged are referenced instead. Returns their entries, `pg_control`'s
/// still to come.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_files(
    repo: &Repo,
    id: &str,
    sources: impl Stream<Item = Result<ToCopy>> + Send,
    (total, small_bytes): (u64, u64),
    parent: Option<(DateTime<Utc>, Option<&BlockMap>)>,
    check_pages_before: Option<u64>,
    options: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Entries> {
    let progress = super::progress::Progress::new(id, total);
    // More objects in flight than threads compressing: on a remote store each waits for
    // the network most of its time.
    let repo = &repo.with_encoders(options.concurrency);
    let (parent_start, block_map) = match parent {
        Some((start, map)) => (Some(start), map),
        None => (None, None),
    };
    let policy = &options.retry;
    let in_flight = options.transfers.max(options.concurrency).max(1);
    let mut bundler = Bundler::new(options.bundling, small_bytes, options.transfers.max(1));
    // Each file is planned (looked up in the parent, stat'ed) as it comes; what is to be
    // stored goes through the bundler; the last bundle when the files run out.
    let steps = sources
        .map(|to_copy| async {
            let (source, earlier) = to_copy?;
            plan(source, earlier, parent_start, block_map, options.slice_size).await
        })
        .buffered(16)
        .map(Some)
        .chain(stream::iter([None]))
        .map(move |planned| {
            let steps: Vec<Result<Step>> = match planned {
                Some(Ok(Plan::Reference(entry))) => vec![Ok(Step::Reference(entry))],
                Some(Ok(Plan::Work(items))) => items
                    .into_iter()
                    .filter_map(|item| bundler.add(item))
                    .map(|work| Ok(Step::Work(work)))
                    .collect(),
                Some(Ok(Plan::Vanished)) => Vec::new(),
                Some(Err(e)) => vec![Err(e)],
                None => bundler
                    .take()
                    .map(|b| Ok(Step::Work(b)))
                    .into_iter()
                    .collect(),
            };
            stream::iter(steps)
        })
        .flatten();
    let done = steps
        .map(|step| {
            let progress = &progress;
            async move {
                let done = match step? {
                    Step::Reference(entry) => Done::File(entry),
                    Step::Work(item) => {
                        run(repo, id, item, check_pages_before, policy, cancel).await?
                    }
                };
                match &done {
                    Done::File(entry) => progress.add(entry.size),
                    Done::Files(entries) => progress.add(entries.iter().map(|e| e.size).sum()),
                    Done::Slice {
                        part: Some(part), ..
                    } => progress.add(part.bytes()),
                    _ => {}
                }
                anyhow::Ok(done)
            }
        })
        .buffer_unordered(in_flight);
    let mut done = std::pin::pin!(done);
    let mut assembly = Assembly::new(id);
    while let Some(done) = done.try_next().await? {
        assembly.add(done).await?;
    }
    progress.finish();
    assembly.finish().await
}

/// What flows from the planning of the files to the workers.
enum Step {
    /// A file referenced from the parent: nothing to store.
    Reference(FileEntry),
    Work(Work),
}

/// Does one unit of work.
async fn run(
    repo: &Repo,
    id: &str,
    item: Work,
    check_pages_before: Option<u64>,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<Done> {
    Ok(match item {
        Work::Whole(source) => {
            match copy_file(repo, id, source, check_pages_before, policy, cancel).await? {
                Some(entry) => Done::File(entry),
                None => Done::Vanished,
            }
        }
        Work::Slice(file, range) => {
            copy_slice(repo, id, file, range, check_pages_before, policy, cancel).await?
        }
        Work::Blocks(delta) => {
            Done::File(copy_blocks(repo, id, *delta, check_pages_before, policy, cancel).await?)
        }
        Work::Bundle(n, items) => {
            Done::Files(copy_bundle(repo, id, n, items, check_pages_before, policy, cancel).await?)
        }
    })
}

/// How one file is backed up.
enum Plan {
    /// Unchanged since the parent: its entry there serves.
    Reference(FileEntry),
    Work(Vec<Work>),
    Vanished,
}

/// Decides how `source` is backed up: referenced when `earlier` (its entry in the parent
/// backup, which started at `parent_start`) still describes it, else copied whole or, when
/// large, in slices.
async fn plan(
    source: Source,
    earlier: Option<FileEntry>,
    parent_start: Option<DateTime<Utc>>,
    block_map: Option<&BlockMap>,
    slice_size: u64,
) -> Result<Plan> {
    if let (Some(entry), Some(parent_start)) = (earlier, parent_start) {
        if let Some(entry) = referenced(&entry, &source, parent_start).await {
            return Ok(Plan::Reference(entry));
        }
        if let Some(map) = block_map {
            let Some(meta) = stat_unless_gone(&source).await? else {
                return Ok(Plan::Vanished);
            };
            if let Some(ranges) = map.ranges_to_read(&source.path, &entry, meta.len()) {
                return Ok(Plan::Work(vec![Work::Blocks(Box::new(ChangedFile {
                    source,
                    earlier: entry,
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
    let Some(meta) = stat_unless_gone(&source).await? else {
        return Ok(Plan::Vanished);
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
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<Done> {
    let source = &file.source;
    let key = format!("{}@{}", file_key(id, &source.path), range.0);
    let op = format!("back up {} at offset {}", source.path, range.0);
    let stored = retry(policy, cancel, &op, || {
        repo.put_ranges_create(&key, &source.abs, vec![range], cancel)
    })
    .await;
    let (outcome, stored) = match stored {
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
            bundle: None,
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
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<FileEntry> {
    let source = &file.source;
    let parts = block_delta::base_parts(&file.earlier, file.size);
    let mut stored = Vec::new();
    let mut new_part = None;
    if let Some(&(first, _)) = file.ranges.first() {
        let key = format!("{}@{first}", file_key(id, &source.path));
        let op = format!("back up the changed blocks of {}", source.path);
        let (outcome, read) = retry(policy, cancel, &op, || {
            repo.put_ranges_create(&key, &source.abs, file.ranges.clone(), cancel)
        })
        .await
        .with_context(|| op.clone())?;
        if !read.is_empty() {
            let (checksum, stored_size) = stored_outcome(outcome);
            new_part = Some(Part {
                ranges: read.iter().map(|&(o, l)| [o, l]).collect(),
                checksum,
                stored_size,
                stored_in: id.to_owned(),
                whole_object: false,
                bundle: None,
            });
            stored = read;
        }
    }
    let bad_blocks = check_pages(source, check_pages_before, &stored).await?;
    Ok(blocks_entry(file, parts, new_part, &stored, bad_blocks))
}

/// The entry of a relation file of which the changed blocks `stored` were read (into
/// `new_part`, if any) over `parts`, the parent's.
fn blocks_entry(
    file: ChangedFile,
    mut parts: Vec<Part>,
    new_part: Option<Part>,
    stored: &[(u64, u64)],
    mut bad_blocks: Vec<u32>,
) -> FileEntry {
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
        Some(part) => (part.stored_in.clone(), part.stored_size),
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
    FileEntry {
        path: file.source.path,
        size: file.size,
        mtime: file.mtime,
        mtime_nsec: file.mtime_nsec,
        mode: file.source.mode,
        checksum: String::new(),
        stored_size,
        stored_in,
        bad_blocks,
        parts,
        bundle: None,
    }
}

/// Stores `items` (whole small files and small sets of changed blocks) as bundle `n`, then
/// checks their pages; the entries of the files that were still there.
async fn copy_bundle(
    repo: &Repo,
    id: &str,
    n: u32,
    items: Vec<Work>,
    check_pages_before: Option<u64>,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<Vec<FileEntry>> {
    let inputs: Vec<BundleInput> = items
        .iter()
        .map(|item| match item {
            Work::Whole(source) => BundleInput {
                name: source.path.clone(),
                src: source.abs.clone(),
                ranges: vec![(0, u64::MAX)],
            },
            Work::Blocks(file) => BundleInput {
                name: file.source.path.clone(),
                src: file.source.abs.clone(),
                ranges: file.ranges.clone(),
            },
            Work::Slice(..) | Work::Bundle(..) => unreachable!("only whole files and blocks"),
        })
        .collect();
    let key = bundle_key(id, n);
    let op = format!("back up bundle {n} ({} files)", inputs.len());
    let (_, packed) = retry(policy, cancel, &op, || {
        repo.put_bundle(&key, inputs.clone(), cancel)
    })
    .await
    .with_context(|| {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        format!("{op}: {}", crate::repo::name_list(&names))
    })?;
    let mut entries = Vec::with_capacity(items.len());
    for (item, packed) in items.into_iter().zip(packed) {
        let at = packed.as_ref().map(|p| InBundle {
            bundle: n,
            offset: p.offset,
            stored_len: p.stored_len,
        });
        match item {
            Work::Whole(source) => {
                let Some(packed) = packed else { continue };
                let Some(meta) = stat_unless_gone(&source).await? else {
                    continue;
                };
                let bad_blocks = check_pages(&source, check_pages_before, &[(0, u64::MAX)]).await?;
                let stored = (packed.checksum.to_string(), packed.stored_len);
                entries.push(whole_entry(
                    id, source, &meta, packed.len, stored, bad_blocks, at,
                ));
            }
            Work::Blocks(file) => {
                let parts = block_delta::base_parts(&file.earlier, file.size);
                let (new_part, stored) = match packed.filter(|p| !p.read.is_empty()) {
                    Some(packed) => {
                        let part = Part {
                            ranges: packed.read.iter().map(|&(o, l)| [o, l]).collect(),
                            checksum: packed.checksum.to_string(),
                            stored_size: packed.stored_len,
                            stored_in: id.to_owned(),
                            whole_object: false,
                            bundle: at,
                        };
                        (Some(part), packed.read)
                    }
                    None => (None, Vec::new()),
                };
                let bad_blocks = check_pages(&file.source, check_pages_before, &stored).await?;
                entries.push(blocks_entry(*file, parts, new_part, &stored, bad_blocks));
            }
            Work::Slice(..) | Work::Bundle(..) => {}
        }
    }
    Ok(entries)
}

/// The entries of the files stored whole and of those stored in slices, gathered as the
/// work completes (a sliced file's entry once all its slices are in).
struct Assembly {
    entries: Entries,
    id: String,
    sliced: BTreeMap<String, Slices>,
}

/// A sliced file, its stored parts, its bad blocks.
type Slices = (Arc<SlicedFile>, Vec<Part>, Vec<u32>);

impl Assembly {
    fn new(id: &str) -> Assembly {
        Assembly {
            entries: Entries::new(id),
            id: id.to_owned(),
            sliced: BTreeMap::new(),
        }
    }

    async fn add(&mut self, done: Done) -> Result<()> {
        match done {
            Done::File(entry) => self.entries.push(entry).await?,
            Done::Files(entries) => {
                for entry in entries {
                    self.entries.push(entry).await?;
                }
            }
            Done::Vanished => {}
            Done::Slice {
                file,
                part,
                bad_blocks,
            } => {
                let slot = self
                    .sliced
                    .entry(file.source.path.clone())
                    .or_insert_with(|| (file.clone(), Vec::new(), Vec::new()));
                slot.1.extend(part);
                slot.2.extend(bad_blocks);
            }
        }
        Ok(())
    }

    async fn finish(self) -> Result<Entries> {
        let Assembly {
            mut entries,
            id,
            sliced,
        } = self;
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
            let entry = FileEntry {
                path,
                size,
                mtime: file.mtime,
                mtime_nsec: file.mtime_nsec,
                mode: file.source.mode,
                checksum: String::new(),
                stored_size: parts.iter().map(|p| p.stored_size).sum(),
                stored_in: id.clone(),
                bad_blocks,
                parts,
                bundle: None,
            };
            entries.push(entry).await?;
        }
        Ok(entries)
    }
}

/// Checksum and stored size of a put.
pub(super) fn stored_outcome(outcome: PutOutcome) -> (String, u64) {
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
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<Option<FileEntry>> {
    let Some(meta) = stat_unless_gone(&source).await? else {
        return Ok(None);
    };
    let key = file_key(id, &source.path);
    // The size recorded is what was read (the file may grow meanwhile): a later backup may
    // use the object as the first part of the file, and parts hold exact ranges.
    let op = format!("back up {}", source.path);
    let stored = retry(policy, cancel, &op, || {
        repo.put_ranges_create(&key, &source.abs, vec![(0, u64::MAX)], cancel)
    })
    .await;
    let (outcome, read) = match stored {
        Ok(done) => done,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("back up {}", source.path)),
    };
    let size = read.first().map_or(0, |r| r.1);
    let bad_blocks = check_pages(&source, check_pages_before, &[(0, u64::MAX)]).await?;
    let stored = stored_outcome(outcome);
    Ok(Some(whole_entry(
        id, source, &meta, size, stored, bad_blocks, None,
    )))
}

/// The entry of a file this backup stored whole (in an object of its own, or `bundle`d):
/// `size` bytes read, `stored` as (checksum, stored size), `meta` its stat.
fn whole_entry(
    id: &str,
    source: Source,
    meta: &std::fs::Metadata,
    size: u64,
    (checksum, stored_size): (String, u64),
    bad_blocks: Vec<u32>,
    bundle: Option<InBundle>,
) -> FileEntry {
    FileEntry {
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
        bundle,
    }
}

/// `source`'s metadata; `None` when it is gone (dropped while the backup runs).
async fn stat_unless_gone(source: &Source) -> Result<Option<std::fs::Metadata>> {
    match tokio::fs::metadata(&source.abs).await {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stat {}", source.abs.display())),
    }
}

fn is_not_found(e: &crate::repo::RepoError) -> bool {
    matches!(e, crate::repo::RepoError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(len: u64) -> Work {
        Work::Whole(Source {
            path: format!("base/1/{len}"),
            abs: format!("/nonexistent/{len}").into(),
            mode: 0o600,
            len,
        })
    }

    /// (bundle number, files in it) of each bundle, then the count of other work.
    fn shape(work: &[Work]) -> (Vec<(u32, usize)>, usize) {
        let bundles = work
            .iter()
            .filter_map(|w| match w {
                Work::Bundle(n, items) => Some((*n, items.len())),
                _ => None,
            })
            .collect();
        let rest = work
            .iter()
            .filter(|w| !matches!(w, Work::Bundle(..)))
            .count();
        (bundles, rest)
    }

    const MIB: u64 = 1 << 20;

    /// `work` through a bundler, as a backup sends it: for as much to pack as `work` holds.
    fn bundle(work: Vec<Work>, bundling: Bundling, concurrency: usize) -> Vec<Work> {
        let small_bytes = work
            .iter()
            .filter_map(|w| w.bundle_size(bundling.file_max))
            .sum();
        let mut bundler = Bundler::new(bundling, small_bytes, concurrency);
        let mut out: Vec<Work> = work.into_iter().filter_map(|w| bundler.add(w)).collect();
        out.extend(bundler.take());
        out
    }

    #[test]
    fn small_files_are_packed_and_large_ones_keep_their_own_objects() {
        let bundling = Bundling {
            size: 64 * MIB,
            file_max: MIB,
        };
        let mut work: Vec<Work> = (0..1000).map(|_| whole(8192)).collect();
        work.push(whole(2 * MIB));
        work.push(whole(MIB));
        let planned = bundle(work, bundling, 8);
        let (bundles, rest) = shape(&planned);
        assert_eq!(rest, 1, "the 2 MiB file keeps its own object");
        // About 9 MB to pack: the smallest bundles worth a request, numbered from 0.
        assert_eq!(bundles.iter().map(|b| b.1).sum::<usize>(), 1001);
        assert!((2..=3).contains(&bundles.len()), "{bundles:?}");
        assert!(bundles.iter().enumerate().all(|(i, b)| b.0 == i as u32));
        assert!(
            matches!(planned[0], Work::Bundle(0, _)),
            "a bundle goes when full"
        );
    }

    #[test]
    fn much_to_pack_spreads_over_the_workers_up_to_the_bundle_size() {
        let bundling = Bundling {
            size: 64 * MIB,
            file_max: MIB,
        };
        // 30,000 files of 32 KiB: 938 MiB, 8 workers: bundles of about 59 MiB.
        let work: Vec<Work> = (0..30_000).map(|_| whole(32 << 10)).collect();
        let (bundles, rest) = shape(&bundle(work, bundling, 8));
        assert_eq!(rest, 0);
        assert!((16..=17).contains(&bundles.len()), "{}", bundles.len());
        // 100,000 files of 8 KiB would make bundles of 49 MiB: at most 4,096 files each.
        let work: Vec<Work> = (0..100_000).map(|_| whole(8192)).collect();
        let (bundles, _) = shape(&bundle(work, bundling, 8));
        assert_eq!(bundles.len(), 25);
        // A small bundle size caps them.
        let small = Bundling {
            size: 4 * MIB,
            file_max: 64 * 1024,
        };
        let work: Vec<Work> = (0..10_000).map(|_| whole(8192)).collect();
        let (bundles, _) = shape(&bundle(work, small, 2));
        assert_eq!(bundles.len(), 20, "78 MiB in 4 MiB bundles");
    }

    #[test]
    fn a_bundle_holds_a_bounded_number_of_files_however_small() {
        let bundling = Bundling {
            size: 64 * MIB,
            file_max: MIB,
        };
        let work: Vec<Work> = (0..10_000).map(|_| whole(0)).collect();
        let (bundles, rest) = shape(&bundle(work, bundling, 8));
        assert_eq!(rest, 0);
        assert_eq!(
            bundles.iter().map(|b| b.1).collect::<Vec<_>>(),
            [MAX_MEMBERS, MAX_MEMBERS, 10_000 - 2 * MAX_MEMBERS]
        );
    }

    #[test]
    fn no_bundles_when_the_size_is_zero() {
        let bundling = Bundling {
            size: 0,
            file_max: 0,
        };
        let work: Vec<Work> = (0..10).map(|_| whole(8192)).collect();
        assert_eq!(shape(&bundle(work, bundling, 2)), (vec![], 10));
    }
}
