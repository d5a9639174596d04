//! Checking a backup without restoring it: every object it needs is read back through the
//! repository's verifying decoder and compared with the manifest, and the WAL it needs is
//! looked for in the archive. Composes `repo/` and `postgres/` (WAL names, `pg_control`);
//! printing the report is the command's job.
//!
//! What makes a backup unrestorable is an error: a manifest naming a path pgward never
//! writes, a file object missing, corrupt or holding other content than the manifest lists,
//! no `backup_label`, a WAL segment from the start
//! to the stop segment missing or malformed. Past the stop segment, the first gap in the
//! backup's timeline is a warning: the backup restores, but recovery cannot replay beyond it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::manifest::{file_key, label_key, manifest_key, Manifest};
use super::progress::{human_bytes, Progress};
use crate::postgres::control_file::{ControlFile, CONTROL_FILE_PATH};
use crate::postgres::wal::{NameError, SegmentName, WalSegSize};
use crate::repo::{layout, retry, Checksum, Repo, RepoError, RetryPolicy, Verified};

/// How a verification runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Objects read and decoded at once (`backup.concurrency`).
    pub concurrency: usize,
    /// Whole reads retried on transient storage errors (`storage.retry`).
    pub retry: RetryPolicy,
    /// A data directory whose `pg_control` may tell the WAL segment size when the backup's
    /// own copy cannot (`postgres.data_dir`; used only if it is the same cluster).
    pub data_dir: Option<PathBuf>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The backup cannot be restored (to a consistent state) as it is.
    Error,
    /// The backup restores, but not everything one may expect of it holds.
    Warning,
}

/// Something wrong with an object the backup needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// Not in the repository under any codec.
    MissingObject { key: String },
    /// Decodes (and matches its own trailer), but to other content than the manifest lists.
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    /// Does not decode: the decoder's (or the trailer parser's) reason.
    CorruptObject { key: String, reason: String },
    /// Could not be read, retries included: not checked.
    Unreadable { key: String, reason: String },
    /// The backup's `global/pg_control` decodes to the content the manifest lists, but that
    /// content fails PostgreSQL's own check (its CRC): copied while postgres rewrote it.
    BadControlFile { key: String, reason: String },
    /// The manifest names a path or id pgward never writes ([`Manifest::validate`]): no
    /// reader acts on the backup.
    InvalidManifest {
        key: String,
        /// The offending entry, as the manifest spells it.
        entry: String,
        /// What is wrong with it: `(a file) climbs out of the data directory with ".."`.
        problem: String,
    },
    /// A WAL segment the backup needs (start to stop) is not in the archive.
    MissingWal { segment: String, key: String },
    /// A WAL segment after the backup's stop is not in the archive, while newer segments of
    /// the timeline are: recovery stops before `segment`.
    WalGap {
        segment: String,
        key: String,
        newest: String,
    },
}

/// One problem and how bad it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for Finding {
    /// `error: <key>: <what is wrong>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.problem {
            Problem::MissingObject { key } => {
                write!(f, "{severity}: {key}: missing from the repository")
            }
            Problem::ChecksumMismatch {
                key,
                expected,
                actual,
            } => write!(
                f,
                "{severity}: {key}: checksum mismatch: the manifest says {expected}, the \
                 stored content hashes to {actual}"
            ),
            Problem::CorruptObject { key, reason } => {
                write!(f, "{severity}: {key}: corrupt: {reason}")
            }
            Problem::Unreadable { key, reason } => {
                write!(
                    f,
                    "{severity}: {key}: cannot be read, not checked: {reason}"
                )
            }
            Problem::BadControlFile { key, reason } => write!(
                f,
                "{severity}: {key}: the backup's pg_control is damaged ({reason}): a restored \
                 cluster would not start from it; take a new backup"
            ),
            Problem::InvalidManifest {
                key,
                entry,
                problem,
            } => write!(
                f,
                "{severity}: {key}: manifest entry {entry:?} {problem}; restore refuses this \
                 backup (someone who can write to the repository changed its manifest)"
            ),
            Problem::MissingWal { segment, key } => write!(
                f,
                "{severity}: {key}: WAL segment {segment} is missing from the archive; the \
                 backup cannot reach consistency without it"
            ),
            Problem::WalGap {
                segment,
                key,
                newest,
            } => write!(
                f,
                "{severity}: {key}: WAL segment {segment} is missing from the archive while \
                 newer ones are (up to {newest}); recovery from this backup stops before it"
            ),
        }
    }
}

/// Where the WAL segment size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegSizeSource {
    /// The backup's copy of `global/pg_control`.
    Backup,
    /// `pg_control` of the local data directory of the same cluster.
    DataDir,
    /// Neither could be read: PostgreSQL's default, 16 MiB.
    Assumed,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub backup: String,
    /// No error (warnings allowed): the backup restores.
    pub ok: bool,
    /// Objects holding the manifest's files read back (one per file, or one per part of a
    /// parted file; `backup_label` and `tablespace_map` are checked too, not counted).
    pub objects_checked: usize,
    /// Decoded bytes of those that decoded.
    pub bytes_checked: u64,
    /// WAL segments looked up in the archive (trailer read and parsed).
    pub wal_segments_checked: usize,
    pub wal_segment_size: u32,
    pub wal_segment_size_source: SegSizeSource,
    pub start_wal: String,
    pub stop_wal: String,
    /// The last segment of the unbroken run from `start_wal` on the backup's timeline: how
    /// far recovery can replay; `None` when even the start segment is missing.
    pub wal_continuous_to: Option<String>,
    pub problems: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == severity)
            .count()
    }
}

/// One object to read back.
struct ObjectCheck {
    key: String,
    /// The manifest's checksum (hex), for data files.
    expected: Option<String>,
    /// An object holding (part of) a file of the manifest: counted, and the bytes of the
    /// file it holds move the progress.
    file_size: Option<u64>,
    /// Absence is a problem (always, except `tablespace_map` without tablespaces).
    required: bool,
    /// For a bundle: the members the manifest lists in it (ascending offsets), each checked
    /// against its own checksum.
    members: Vec<BundledCheck>,
}

/// A member of a bundle, as the manifest lists it.
struct BundledCheck {
    member: crate::repo::Member,
    expected: String,
}

impl ObjectCheck {
    /// The checks of the objects `manifest` lists: one per object, one per bundle.
    fn of_files(manifest: &Manifest) -> Vec<ObjectCheck> {
        let mut checks = Vec::new();
        let mut bundles: BTreeMap<String, ObjectCheck> = BTreeMap::new();
        for file in &manifest.files {
            for o in file.objects() {
                let Some(at) = o.bundle else {
                    checks.push(ObjectCheck {
                        key: o.key,
                        expected: Some(o.checksum.to_owned()),
                        file_size: Some(o.len),
                        required: true,
                        members: Vec::new(),
                    });
                    continue;
                };
                let check = bundles.entry(o.key.clone()).or_insert_with(|| ObjectCheck {
                    key: o.key,
                    expected: None,
                    file_size: Some(0),
                    required: true,
                    members: Vec::new(),
                });
                check.file_size = check.file_size.map(|size| size + o.len);
                check.members.push(BundledCheck {
                    member: at.member(&file.path),
                    expected: o.checksum.to_owned(),
                });
            }
        }
        for mut check in bundles.into_values() {
            check.members.sort_by_key(|m| m.member.offset);
            checks.push(check);
        }
        checks
    }
}

/// Verifies `manifest`'s backup in `repo`: its objects, then its WAL.
pub async fn verify(
    repo: &Repo,
    manifest: &Manifest,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<Report> {
    let mut checks = ObjectCheck::of_files(manifest);
    for (name, required) in [
        ("backup_label", true),
        ("tablespace_map", !manifest.tablespaces.is_empty()),
    ] {
        checks.push(ObjectCheck {
            key: label_key(&manifest.id, name),
            expected: None,
            file_size: None,
            required,
            members: Vec::new(),
        });
    }
    tracing::info!(backup = %manifest.id, files = manifest.files.len(), "verifying the backup's objects");
    let progress = Progress::new(&format!("verify {}", manifest.id), manifest.size);
    let results: Vec<(Option<u64>, Vec<Problem>)> = stream::iter(checks)
        .map(|check| {
            let progress = &progress;
            async move {
                let (decoded, problem) = check_object(repo, &check, options, cancel).await?;
                if let Some(size) = check.file_size {
                    progress.add(size);
                }
                anyhow::Ok((check.file_size.map(|_| decoded), problem))
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    progress.finish();

    let mut problems: Vec<Finding> = Vec::new();
    if let Err(invalid) = manifest.validate(None) {
        problems.push(Finding {
            severity: Severity::Error,
            problem: Problem::InvalidManifest {
                key: manifest_key(&manifest.id),
                entry: invalid.entry,
                problem: format!("({}) {}", invalid.what, invalid.problem),
            },
        });
    }
    let (mut objects_checked, mut bytes_checked) = (0, 0);
    for (decoded, found) in results {
        if let Some(decoded) = decoded {
            objects_checked += 1;
            bytes_checked += decoded;
        }
        problems.extend(found.into_iter().map(|problem| Finding {
            severity: Severity::Error,
            problem,
        }));
    }
    let (seg_size, seg_size_source, control_problem) =
        segment_size(repo, manifest, options.data_dir.as_deref()).await;
    problems.extend(control_problem.map(|problem| Finding {
        severity: Severity::Error,
        problem,
    }));
    // Stable output whatever order the parallel checks finished in.
    problems.sort_by(|a, b| problem_key(&a.problem).cmp(problem_key(&b.problem)));

    if seg_size_source == SegSizeSource::Assumed {
        tracing::warn!(
            "the WAL segment size is unknown (no readable pg_control of this cluster); \
             assuming {seg_size}\nHINT: run verify where postgres.data_dir is this \
             cluster's data directory (its pg_control tells the size)"
        );
    }
    let wal = check_wal(repo, manifest, seg_size, options, cancel)
        .await
        .with_context(|| {
            format!(
                "check the WAL of backup {} (segment size {seg_size})",
                manifest.id
            )
        })?;
    problems.extend(wal.problems);

    let mut report = Report {
        backup: manifest.id.clone(),
        ok: false,
        objects_checked,
        bytes_checked,
        wal_segments_checked: wal.checked,
        wal_segment_size: seg_size.bytes(),
        wal_segment_size_source: seg_size_source,
        start_wal: manifest.start_wal.clone(),
        stop_wal: manifest.stop_wal.clone(),
        wal_continuous_to: wal.continuous_to.map(|s| s.to_string()),
        problems,
    };
    report.ok = report.errors() == 0;
    Ok(report)
}

fn problem_key(p: &Problem) -> &str {
    match p {
        Problem::MissingObject { key }
        | Problem::ChecksumMismatch { key, .. }
        | Problem::CorruptObject { key, .. }
        | Problem::Unreadable { key, .. }
        | Problem::BadControlFile { key, .. }
        | Problem::InvalidManifest { key, .. }
        | Problem::MissingWal { key, .. }
        | Problem::WalGap { key, .. } => key,
    }
}

/// Reads one object back: its decoded length and what is wrong with it. Only cancellation
/// is an `Err`; a read that fails after retries is [`Problem::Unreadable`].
async fn check_object(
    repo: &Repo,
    check: &ObjectCheck,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<(u64, Vec<Problem>)> {
    if !check.members.is_empty() {
        return check_bundle(repo, check, options, cancel).await;
    }
    let key = &check.key;
    let found = retry(&options.retry, cancel, &format!("verify {key}"), || {
        repo.verify(key, cancel)
    })
    .await;
    let problem = match found {
        Ok(Some(Verified { len, checksum, .. })) => {
            let actual = checksum.to_string();
            return Ok(match &check.expected {
                Some(expected) if *expected != actual => (
                    len,
                    vec![Problem::ChecksumMismatch {
                        key: key.clone(),
                        expected: expected.clone(),
                        actual,
                    }],
                ),
                _ => (len, Vec::new()),
            });
        }
        Ok(None) if !check.required => return Ok((0, Vec::new())),
        Ok(None) => Problem::MissingObject { key: key.clone() },
        Err(e) => object_problem(key, e)?,
    };
    Ok((0, vec![problem]))
}

/// Reads a bundle back once: every member decoded and compared with the manifest's
/// checksum, and the bundle's own checksum.
async fn check_bundle(
    repo: &Repo,
    check: &ObjectCheck,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<(u64, Vec<Problem>)> {
    let key = &check.key;
    let members: Vec<crate::repo::Member> =
        check.members.iter().map(|m| m.member.clone()).collect();
    let read = retry(&options.retry, cancel, &format!("verify {key}"), || {
        let found: std::sync::Arc<std::sync::Mutex<Vec<(usize, Verified)>>> = Default::default();
        let sink = found.clone();
        let members = members.clone();
        async move {
            let there = repo
                .get_bundle(
                    key,
                    members,
                    cancel,
                    |_| Ok(Some(std::io::sink())),
                    move |i, _, verified| {
                        sink.lock().expect("not poisoned").push((i, verified));
                        Ok(())
                    },
                )
                .await?;
            let found = std::mem::take(&mut *found.lock().expect("not poisoned"));
            Ok(there.then_some(found))
        }
    })
    .await;
    let found = match read {
        Ok(Some(found)) => found,
        Ok(None) => return Ok((0, vec![Problem::MissingObject { key: key.clone() }])),
        Err(e) => return Ok((0, vec![object_problem(key, e)?])),
    };
    let mut problems = Vec::new();
    let mut decoded = 0;
    for (i, verified) in found {
        decoded += verified.len;
        let listed = &check.members[i];
        let actual = verified.checksum.to_string();
        if actual != listed.expected {
            problems.push(Problem::ChecksumMismatch {
                key: format!("{key} ({})", listed.member.name),
                expected: listed.expected.clone(),
                actual,
            });
        }
    }
    Ok((decoded, problems))
}

/// The problem a failed read of `key` is; `Err` only for cancellation.
fn object_problem(key: &str, e: RepoError) -> Result<Problem> {
    Ok(match e {
        RepoError::Cancelled => bail!("the verify was cancelled"),
        RepoError::Corrupt { reason, .. } => Problem::CorruptObject {
            key: key.to_owned(),
            reason,
        },
        other => Problem::Unreadable {
            key: key.to_owned(),
            reason: format!("{:#}", anyhow::Error::new(other)),
        },
    })
}

/// The WAL segment size of the backup's cluster: from the backup's own `pg_control`, else
/// from the local data directory's if it is the same cluster, else PostgreSQL's default.
/// With it, the problem of a backup `pg_control` whose stored content fails its CRC.
async fn segment_size(
    repo: &Repo,
    manifest: &Manifest,
    data_dir: Option<&Path>,
) -> (WalSegSize, SegSizeSource, Option<Problem>) {
    let mut problem = None;
    if let Some(entry) = manifest.files.iter().find(|f| f.path == CONTROL_FILE_PATH) {
        let key = file_key(&entry.stored_in, &entry.path);
        match repo.get_bytes(&key).await {
            Ok(Some(bytes)) => match ControlFile::parse(&bytes) {
                Ok(control) => return (control.xlog_seg_size, SegSizeSource::Backup, None),
                // Only content the manifest vouches for: other damage is the object's
                // problem, reported with the other objects.
                Err(e) if content_listed(entry, &bytes) => {
                    problem = Some(Problem::BadControlFile {
                        key,
                        reason: e.to_string(),
                    })
                }
                Err(e) => tracing::debug!("the backup's pg_control: {e}"),
            },
            // Reported with the other objects.
            Ok(None) => {}
            Err(e) => tracing::debug!("read the backup's pg_control: {e}"),
        }
    }
    let (size, source) = local_segment_size(manifest, data_dir).await;
    (size, source, problem)
}

/// Whether `content` is what `entry` (a file stored whole) lists.
fn content_listed(entry: &super::manifest::FileEntry, content: &[u8]) -> bool {
    entry.parts.is_empty() && Checksum::of(content).to_string() == entry.checksum
}

/// The WAL segment size from the local data directory's `pg_control` if it is the same
/// cluster, else PostgreSQL's default.
async fn local_segment_size(
    manifest: &Manifest,
    data_dir: Option<&Path>,
) -> (WalSegSize, SegSizeSource) {
    if let Some(dir) = data_dir {
        let dir = dir.to_owned();
        let local = tokio::task::spawn_blocking(move || ControlFile::read(&dir)).await;
        if let Ok(Ok(control)) = local {
            if control.system_identifier.to_string() == manifest.system_identifier {
                return (control.xlog_seg_size, SegSizeSource::DataDir);
            }
        }
    }
    (WalSegSize::DEFAULT, SegSizeSource::Assumed)
}

/// What the WAL check found.
struct WalCheck {
    checked: usize,
    continuous_to: Option<SegmentName>,
    problems: Vec<Finding>,
}

/// Looks up every segment from the backup's start to its stop, then those after it on the
/// same timeline up to the first gap (one trailer read each, `concurrency` at once).
async fn check_wal(
    repo: &Repo,
    manifest: &Manifest,
    seg_size: WalSegSize,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<WalCheck> {
    let start = SegmentName::parse(&manifest.start_wal).context("the manifest's start_wal")?;
    let stop = SegmentName::parse(&manifest.stop_wal).context("the manifest's stop_wal")?;
    let timeline_prefix = format!("{}/{:08X}", layout::WAL_PREFIX, stop.tli().0);
    let listed = repo
        .list(&timeline_prefix)
        .await
        .with_context(|| format!("list {timeline_prefix}"))?;
    let archived = archived_segments(listed.iter().map(|o| o.key.as_str()), stop, seg_size);
    let plan = plan_wal(start, stop, &archived, seg_size)?;
    tracing::info!(
        from = %start,
        to = %plan.segments.last().map_or(stop, |(s, _)| *s),
        "verifying the WAL"
    );

    let lookups: Vec<(SegmentName, bool, Result<Option<Checksum>, RepoError>)> =
        stream::iter(plan.segments)
            .map(|(segment, needed)| async move {
                let key = layout::wal_key(&segment.to_string())?;
                let found = retry(&options.retry, cancel, &format!("look up {key}"), || {
                    repo.exists(&key)
                })
                .await;
                anyhow::Ok((segment, needed, found))
            })
            .buffered(options.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;

    let mut out = WalCheck {
        checked: lookups.len(),
        continuous_to: None,
        problems: Vec::new(),
    };
    let mut unbroken = true;
    let mut gap_reported = false;
    for (segment, needed, found) in lookups {
        let key = layout::wal_key(&segment.to_string())?;
        let severity = if needed {
            Severity::Error
        } else {
            Severity::Warning
        };
        let problem = match found {
            Ok(Some(_)) => None,
            Ok(None) if needed => Some(Problem::MissingWal {
                segment: segment.to_string(),
                key,
            }),
            // Listed a moment ago, gone now: a gap all the same.
            Ok(None) => Some(Problem::WalGap {
                segment: segment.to_string(),
                key,
                newest: plan.newest.map_or_else(String::new, |s| s.to_string()),
            }),
            Err(e) => Some(object_problem(&key, e)?),
        };
        match problem {
            None if unbroken => out.continuous_to = Some(segment),
            None => {}
            Some(problem) => {
                unbroken = false;
                // Past the stop, only the first break matters: replay ends there.
                if needed || !gap_reported {
                    gap_reported |= !needed;
                    out.problems.push(Finding { severity, problem });
                }
            }
        }
    }
    if let (Some(missing), Some(newest)) = (plan.gap, plan.newest) {
        if !gap_reported {
            out.problems.push(Finding {
                severity: Severity::Warning,
                problem: Problem::WalGap {
                    segment: missing.to_string(),
                    key: layout::wal_key(&missing.to_string())?,
                    newest: newest.to_string(),
                },
            });
        }
    }
    Ok(out)
}

/// The plain segments of `stop`'s timeline among `keys` (`wal/<tli>/<name>`), valid names at
/// `seg_size` only: `.partial`, `.backup` and `.history` files are not segments.
fn archived_segments<'a>(
    keys: impl Iterator<Item = &'a str>,
    stop: SegmentName,
    seg_size: WalSegSize,
) -> BTreeSet<SegmentName> {
    keys.filter_map(|key| {
        let name = key.rsplit('/').next()?;
        let segment = SegmentName::parse(name).ok()?;
        (segment.tli() == stop.tli() && segment.segno(seg_size).is_ok()).then_some(segment)
    })
    .collect()
}

/// Which segments to look up.
#[derive(Debug, PartialEq, Eq)]
struct WalPlan {
    /// In order: every segment from start to stop (`true`: the backup needs it), then the
    /// archived ones that follow the stop without a gap (`false`).
    segments: Vec<(SegmentName, bool)>,
    /// The first segment after the stop that is not archived, when a newer one is.
    gap: Option<SegmentName>,
    /// The newest archived segment of the timeline, when past the stop.
    newest: Option<SegmentName>,
}

/// Plans the walk from `start` to `stop` and on through `archived` (plain segments of the
/// timeline). Pure.
fn plan_wal(
    start: SegmentName,
    stop: SegmentName,
    archived: &BTreeSet<SegmentName>,
    seg_size: WalSegSize,
) -> Result<WalPlan> {
    if start.tli() != stop.tli() {
        bail!("the backup starts in {start} and stops in {stop}, on another timeline");
    }
    let (first, last) = (start.segno(seg_size)?, stop.segno(seg_size)?);
    if first > last {
        bail!("the backup's start segment {start} is after its stop segment {stop}");
    }
    let mut segments = Vec::new();
    let mut segment = start;
    loop {
        segments.push((segment, true));
        if segment == stop {
            break;
        }
        segment = segment.next_segment(seg_size)?;
    }
    let newest = archived.last().copied().filter(|n| *n > stop);
    let mut gap = None;
    if let Some(newest) = newest {
        let mut segment = stop;
        while segment < newest {
            segment = match segment.next_segment(seg_size) {
                Ok(next) => next,
                Err(NameError::SegmentNoOutOfRange { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            if !archived.contains(&segment) {
                gap = Some(segment);
                break;
            }
            segments.push((segment, false));
        }
    }
    Ok(WalPlan {
        segments,
        gap,
        newest,
    })
}

/// One line per problem, a note when the WAL segment size was assumed, then the summary.
pub fn human_report(report: &Report) -> String {
    let mut out = String::new();
    for finding in &report.problems {
        out.push_str(&format!("{finding}\n"));
    }
    if report.wal_segment_size_source == SegSizeSource::Assumed {
        out.push_str(&format!(
            "note: WAL segment size assumed to be {} MiB (neither the backup's pg_control nor \
             the data directory's could be read)\n",
            report.wal_segment_size >> 20
        ));
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let verdict = match (report.errors(), report.warnings()) {
        (0, 0) => "ok".to_owned(),
        (0, w) => format!("ok, {}", plural(w, "warning")),
        (e, 0) => format!("not restorable, {}", plural(e, "error")),
        (e, w) => format!(
            "not restorable, {}, {}",
            plural(e, "error"),
            plural(w, "warning")
        ),
    };
    let wal_to = report.wal_continuous_to.as_deref().map_or_else(
        || "not even the start segment".to_owned(),
        |s| format!("continuous to {s}"),
    );
    out.push_str(&format!(
        "backup {}: {} ({}) and {} ({wal_to}) checked: {verdict}\n",
        report.backup,
        plural(report.objects_checked, "data object"),
        human_bytes(report.bytes_checked),
        plural(report.wal_segments_checked, "WAL segment"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::wal::{SegmentNo, TimelineId};

    fn report(problems: Vec<Finding>, source: SegSizeSource) -> Report {
        Report {
            backup: "20261130T035500F".into(),
            ok: problems.iter().all(|p| p.severity != Severity::Error),
            objects_checked: 1203,
            bytes_checked: 23 << 20,
            wal_segments_checked: 5,
            wal_segment_size: 16 << 20,
            wal_segment_size_source: source,
            start_wal: "000000010000000000000003".into(),
            stop_wal: "000000010000000000000004".into(),
            wal_continuous_to: Some("000000010000000000000007".into()),
            problems,
        }
    }

    #[test]
    fn the_human_report_lists_problems_then_sums_up() {
        assert_eq!(
            human_report(&report(vec![], SegSizeSource::Backup)),
            "backup 20261130T035500F: 1203 data objects (23.0 MiB) and 5 WAL segments (continuous to \
             000000010000000000000007) checked: ok\n"
        );
        let problems = vec![
            Finding {
                severity: Severity::Error,
                problem: Problem::MissingObject {
                    key: "backups/20261130T035500F/data/base/1/1259".into(),
                },
            },
            Finding {
                severity: Severity::Warning,
                problem: Problem::WalGap {
                    segment: "000000010000000000000008".into(),
                    key: "wal/00000001/000000010000000000000008".into(),
                    newest: "000000010000000000000009".into(),
                },
            },
        ];
        let text = human_report(&report(problems, SegSizeSource::Assumed));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[0],
            "error: backups/20261130T035500F/data/base/1/1259: missing from the repository"
        );
        assert!(lines[1].starts_with("warning: wal/00000001/000000010000000000000008: "));
        assert!(lines[2].starts_with("note: WAL segment size assumed to be 16 MiB"));
        assert!(
            lines[3].ends_with("checked: not restorable, 1 error, 1 warning"),
            "{}",
            lines[3]
        );
    }

    const SIZE: WalSegSize = WalSegSize::DEFAULT;

    fn seg(tli: u32, segno: u64) -> SegmentName {
        SegmentName::new(TimelineId(tli), SegmentNo(segno), SIZE).expect("valid segment")
    }

    fn set(segments: &[SegmentName]) -> BTreeSet<SegmentName> {
        segments.iter().copied().collect()
    }

    #[test]
    fn the_walk_covers_start_to_stop_then_the_unbroken_run_after() {
        // Across a log id boundary: 0x…00FF then 0x…0100 (…000000FF → …00000001 00000000).
        let (start, stop) = (seg(1, 0xFE), seg(1, 0x100));
        let archived = set(&[seg(1, 0xFE), seg(1, 0x100), seg(1, 0x101), seg(1, 0x102)]);
        let plan = plan_wal(start, stop, &archived, SIZE).unwrap();
        assert_eq!(
            plan.segments,
            vec![
                (seg(1, 0xFE), true),
                (seg(1, 0xFF), true),
                (seg(1, 0x100), true),
                (seg(1, 0x101), false),
                (seg(1, 0x102), false),
            ]
        );
        assert_eq!(plan.segments[1].0.to_string(), "0000000100000000000000FF");
        assert_eq!(plan.segments[2].0.to_string(), "000000010000000100000000");
        assert_eq!(plan.gap, None);
        assert_eq!(plan.newest, Some(seg(1, 0x102)));
    }

    #[test]
    fn the_first_gap_after_the_stop_ends_the_walk() {
        let (start, stop) = (seg(1, 3), seg(1, 4));
        let archived = set(&[seg(1, 3), seg(1, 4), seg(1, 5), seg(1, 7), seg(1, 9)]);
        let plan = plan_wal(start, stop, &archived, SIZE).unwrap();
        assert_eq!(
            plan.segments,
            vec![(seg(1, 3), true), (seg(1, 4), true), (seg(1, 5), false)]
        );
        assert_eq!(plan.gap, Some(seg(1, 6)));
        assert_eq!(plan.newest, Some(seg(1, 9)));
    }

    #[test]
    fn segments_before_the_stop_are_looked_up_whether_listed_or_not() {
        // Nothing listed: the needed ones are still planned (and found missing by lookup);
        // nothing after the stop means no gap.
        let plan = plan_wal(seg(2, 10), seg(2, 12), &BTreeSet::new(), SIZE).unwrap();
        assert_eq!(
            plan.segments,
            vec![(seg(2, 10), true), (seg(2, 11), true), (seg(2, 12), true)]
        );
        assert_eq!((plan.gap, plan.newest), (None, None));
        // A single-segment backup, archive ending at its stop.
        let plan = plan_wal(seg(1, 5), seg(1, 5), &set(&[seg(1, 2), seg(1, 5)]), SIZE).unwrap();
        assert_eq!(plan.segments, vec![(seg(1, 5), true)]);
        assert_eq!((plan.gap, plan.newest), (None, None));
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let err = plan_wal(seg(1, 5), seg(1, 4), &BTreeSet::new(), SIZE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the backup's start segment 000000010000000000000005 is after its stop segment \
             000000010000000000000004"
        );
        let err = plan_wal(seg(1, 5), seg(2, 6), &BTreeSet::new(), SIZE).unwrap_err();
        assert!(err.to_string().contains("on another timeline"), "{err}");
        // A name that does not fit the segment size (…000000FF at 1 GiB holds 4 per log id).
        let big = WalSegSize::new(1 << 30).unwrap();
        assert!(plan_wal(seg(1, 0xFF), seg(1, 0xFF), &BTreeSet::new(), big).is_err());
    }

    #[test]
    fn only_plain_segments_of_the_timeline_count_as_archived() {
        let keys = [
            "wal/00000001/000000010000000000000003",
            "wal/00000001/000000010000000000000004.partial",
            "wal/00000001/000000010000000000000004.00000028.backup",
            "wal/00000001/00000001.history",
            "wal/00000001/0000000100000000000001FF",
            "wal/00000002/000000020000000000000005",
            "wal/00000001/000000010000000000000006",
        ];
        let got = archived_segments(keys.into_iter(), seg(1, 4), SIZE);
        // …01FF does not fit 16 MiB segments (256 per log id).
        assert_eq!(got, set(&[seg(1, 3), seg(1, 6)]));
    }

    #[test]
    fn findings_name_the_object_and_what_is_wrong() {
        let finding = |severity, problem| Finding { severity, problem }.to_string();
        assert_eq!(
            finding(
                Severity::Error,
                Problem::ChecksumMismatch {
                    key: "backups/X/data/base/1/1259".into(),
                    expected: "aa".into(),
                    actual: "bb".into(),
                }
            ),
            "error: backups/X/data/base/1/1259: checksum mismatch: the manifest says aa, the \
             stored content hashes to bb"
        );
        assert_eq!(
            finding(
                Severity::Warning,
                Problem::WalGap {
                    segment: "000000010000000000000006".into(),
                    key: "wal/00000001/000000010000000000000006".into(),
                    newest: "000000010000000000000009".into(),
                }
            ),
            "warning: wal/00000001/000000010000000000000006: WAL segment \
             000000010000000000000006 is missing from the archive while newer ones are (up \
             to 000000010000000000000009); recovery from this backup stops before it"
        );
        let json = serde_json::to_value(Finding {
            severity: Severity::Error,
            problem: Problem::MissingWal {
                segment: "000000010000000000000004".into(),
                key: "wal/00000001/000000010000000000000004".into(),
            },
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "severity": "error",
                "kind": "missing_wal",
                "segment": "000000010000000000000004",
                "key": "wal/00000001/000000010000000000000004",
            })
        );
    }
}
