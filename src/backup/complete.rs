//! What a backup makes sure of before it writes its manifest (which is what makes it exist):
//! every WAL segment from its start to its stop is in the archive, every object it names is
//! stored (its own and those of the backups it builds on), each backup of its parent chain
//! still has its manifest, and it still holds the backup lease. Anything else is an ERROR
//! naming what is missing, and the backup stays unlisted.
//!
//! The checks are listings and lookups, no download: a LIST of each backup prefix the
//! manifest refers to (one request per thousand objects), one manifest read per ancestor, and
//! one lookup per WAL segment of the range until it is found.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::manifest::{label_key, manifest_key, FileEntry, Manifest};
use crate::postgres::wal::{SegmentName, WalSegSize};
use crate::repo::layout::{self, backup_prefix};
use crate::repo::{Lease, Repo};

/// Lookups of WAL segments in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;

/// Why a backup is incomplete: said when it fails, and the backup is not listed.
const UNLISTED: &str = "the backup is incomplete and not listed";

/// Every segment from `start` to `stop` (both included), on one timeline. A backup taken from
/// a primary starts and stops on the same timeline (promotion needs recovery, and backups are
/// refused in recovery); a switch in between can only mean the server was replaced under the
/// backup, which is refused, not guessed at.
pub fn segment_range(start: &str, stop: &str, seg_size: WalSegSize) -> Result<Vec<SegmentName>> {
    let first = SegmentName::parse(start).with_context(|| format!("the start segment {start}"))?;
    let last = SegmentName::parse(stop).with_context(|| format!("the stop segment {stop}"))?;
    if first.tli() != last.tli() {
        bail!(
            "the backup started on timeline {} ({start}) and stopped on timeline {} ({stop}): \
             the server switched timelines under it; {UNLISTED}\nHINT: take the backup again",
            first.tli().0,
            last.tli().0
        );
    }
    if first.segno(seg_size)? > last.segno(seg_size)? {
        bail!("the backup's start segment {start} is after its stop segment {stop}");
    }
    let mut out = vec![first];
    let mut segment = first;
    while segment != last {
        segment = segment.next_segment(seg_size)?;
        out.push(segment);
    }
    Ok(out)
}

/// Waits until every segment of `segments` (a backup's start to stop) is in the archive, at
/// most `patience`; the error names the first one missing and what the archiver last said
/// (`archiver_said`, asked only then).
pub async fn wait_wal_range<F, Fut>(
    repo: &Repo,
    segments: &[SegmentName],
    patience: Duration,
    archiver_said: F,
    cancel: &CancellationToken,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let started = Instant::now();
    let mut missing: Vec<SegmentName> = segments.to_vec();
    loop {
        missing = still_missing(repo, missing).await?;
        let Some(first) = missing.first() else {
            return Ok(());
        };
        if started.elapsed() > patience {
            let also = match missing.len() {
                1 => String::new(),
                n => format!(" (and {} more of its {} segments)", n - 1, segments.len()),
            };
            let last_error = archiver_said().await;
            bail!(
                "the backup needs WAL segment {first}{also}, which did not reach the archive \
                 within {} (the archiver's last failure: {last_error}); {UNLISTED}\nHINT: fix \
                 archiving (`pgward status` shows the archiver's last error), or raise \
                 backup.wal_wait if it is only slow; a segment deleted from the repository by \
                 hand does not come back: take a new backup",
                humantime::format_duration(patience)
            );
        }
        tokio::select! {
            () = cancel.cancelled() => {
                bail!("the backup was cancelled while waiting for {first} to be archived")
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Those of `segments` not in the archive, in order.
async fn still_missing(repo: &Repo, segments: Vec<SegmentName>) -> Result<Vec<SegmentName>> {
    let found: Vec<(SegmentName, bool)> = stream::iter(segments)
        .map(|segment| async move {
            let name = segment.to_string();
            let key = layout::wal_key(&name)?;
            let there = repo
                .exists(&key)
                .await
                .with_context(|| format!("look for {name} in the archive"))?
                .is_some();
            anyhow::Ok((segment, there))
        })
        .buffered(LOOKUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    Ok(found
        .into_iter()
        .filter_map(|(segment, there)| (!there).then_some(segment))
        .collect())
}

/// Checks, right before backup `id` writes its manifest, that it still holds the backup
/// lease, that each backup of its parent chain still has its manifest, and that every object
/// it names is stored: its own (`files`, the backup label and tablespace map) and those of
/// its ancestors it builds on.
pub async fn check_before_manifest(
    repo: &Repo,
    lease: &Lease,
    id: &str,
    parent: Option<&Manifest>,
    files: &[FileEntry],
    has_tablespace_map: bool,
) -> Result<()> {
    if let Err(why) = lease.confirm().await {
        bail!(
            "backup {id} lost its lease on the repository: {why}; another backup or expire \
             may have acted on it, so {UNLISTED}\nHINT: take the backup again; keep \
             backup.lease_ttl well above any pause of the backing process or its storage"
        );
    }
    check_chain(repo, id, parent).await?;
    let mut wanted: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        for object in file.objects() {
            wanted
                .entry(object.stored_in)
                .or_default()
                .insert(object.key);
        }
    }
    let own = wanted.entry(id).or_default();
    own.insert(label_key(id, "backup_label"));
    if has_tablespace_map {
        own.insert(label_key(id, "tablespace_map"));
    }
    for (backup, keys) in wanted {
        let stored: BTreeSet<String> = repo
            .list(&backup_prefix(backup))
            .await
            .with_context(|| format!("list the objects of backup {backup}"))?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let missing: Vec<&String> = keys.difference(&stored).collect();
        if let Some(first) = missing.first() {
            let whose = match backup == id {
                true => "its own".to_owned(),
                false => format!("of backup {backup}, which it builds on,"),
            };
            bail!(
                "backup {id}: {} {whose} objects are missing from the repository, e.g. {first}; \
                 {UNLISTED}\nHINT: was `pgward expire` or a hand deletion run on it? take the \
                 backup again",
                missing.len()
            );
        }
    }
    Ok(())
}

/// Each backup from `parent` down to its full backup still has its manifest.
async fn check_chain(repo: &Repo, id: &str, parent: Option<&Manifest>) -> Result<()> {
    let mut next = parent.map(|p| p.id.clone());
    let mut seen = BTreeSet::new();
    while let Some(ancestor) = next {
        if !seen.insert(ancestor.clone()) {
            bail!("backup {id}: its parent chain loops at {ancestor}");
        }
        let present = repo
            .exists(&manifest_key(&ancestor))
            .await
            .with_context(|| format!("look for the manifest of backup {ancestor}"))?
            .is_some();
        if !present {
            bail!(
                "backup {id} builds on backup {ancestor}, whose manifest is gone from the \
                 repository (expired or deleted while this backup ran); {UNLISTED}\nHINT: take \
                 a full backup (`pgward backup --full`)"
            );
        }
        next = catalog::read_manifest(repo, &ancestor).await?.parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_every_segment_from_start_to_stop_on_one_timeline() {
        let size = WalSegSize::new(16 << 20).unwrap();
        let names = |v: Vec<SegmentName>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(
                segment_range("0000000100000000000000FE", "000000010000000100000001", size)
                    .unwrap()
            ),
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert_eq!(
            names(
                segment_range("000000010000000000000003", "000000010000000000000003", size)
                    .unwrap()
            ),
            ["000000010000000000000003"]
        );
        let switched = segment_range("000000010000000000000003", "000000020000000000000004", size)
            .unwrap_err()
            .to_string();
        assert!(
            switched.starts_with(
                "the backup started on timeline 1 (000000010000000000000003) and \
                 stopped on timeline 2"
            ),
            "{switched}"
        );
        assert!(
            segment_range("000000010000000000000004", "000000010000000000000003", size).is_err()
        );
    }
}
