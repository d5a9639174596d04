//! What a backup makes sure of before it writes its manifest (which is what makes it exist):
//! every WAL segment from its start to its stop is in the archive, every object it names is
//! stored (its own and those of the backups it builds on), each backup of its parent chain
//! still has its manifest, and it still holds the backup lease. Anything else is an ERROR
//! naming what is missing, and the backup stays unlisted.
//!
//! The checks are listings and lookups, no download, each independent one at the same time as
//! the others: a LIST of each backup prefix the manifest refers to (one request per thousand
//! objects), one manifest read per ancestor, the lease's generations, and lookups of each WAL
//! segment of the range until it is found (the stop segment's archiving is waited for with
//! short pauses that lengthen, under the configured codec's name).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::manifest::{label_key, manifest_key, FileEntry};
use crate::postgres::wal::{SegmentName, WalSegSize};
use crate::repo::layout::backup_prefix;
use crate::repo::{Lease, Repo};
use crate::spill::Sorted;
use crate::wal::awaited::wait_archived;
use serde::de::IgnoredAny;

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
    let missing = wait_archived(repo, segments, patience, cancel)
        .await
        .context("the backup stopped waiting for its WAL")?;
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let also = match missing.len() {
        1 => String::new(),
        n => format!(" (and {} more of its {} segments)", n - 1, segments.len()),
    };
    let last_error = archiver_said().await;
    bail!(
        "the backup needs WAL segment {first}{also}, which did not reach the archive within {} \
         (the archiver's last failure: {last_error}); {UNLISTED}\nHINT: fix archiving (`pgward \
         status` shows the archiver's last error), or raise backup.wal_wait if it is only slow; \
         a segment deleted from the repository by hand does not come back: take a new backup",
        humantime::format_duration(patience)
    );
}

/// Checks, right before backup `id` writes its manifest, that it still holds the backup
/// lease, that each backup of its parent chain still has its manifest, and that every object
/// it names is stored: its own (`files`, the backup label and tablespace map) and those of
/// its ancestors it builds on (`holders`: the backups whose objects `files` name).
pub async fn check_before_manifest(
    repo: &Repo,
    lease: &Lease,
    id: &str,
    parent: Option<&str>,
    files: &Sorted<FileEntry>,
    holders: &BTreeSet<String>,
    has_tablespace_map: bool,
) -> Result<()> {
    let mut backups: BTreeSet<String> = holders.clone();
    backups.insert(id.to_owned());
    // The checks are independent reads: at once (one listing per backup of the chain),
    // reported in this order.
    let (confirmed, chain, stored) = tokio::join!(
        lease.confirm(),
        check_chain(repo, id, parent),
        futures_util::future::join_all(backups.iter().map(|backup| stored_keys(repo, backup)))
    );
    if let Err(why) = confirmed {
        bail!(
            "backup {id} lost its lease on the repository: {why}; another backup or expire \
             may have acted on it, so {UNLISTED}\nHINT: take the backup again; keep \
             backup.lease_ttl well above any pause of the backing process or its storage"
        );
    }
    chain?;
    let stored: BTreeMap<String, BTreeSet<String>> = backups
        .into_iter()
        .zip(stored)
        .map(|(backup, keys)| Ok((backup, keys?)))
        .collect::<Result<_>>()?;
    let mut labels = vec![label_key(id, "backup_label")];
    if has_tablespace_map {
        labels.push(label_key(id, "tablespace_map"));
    }
    // The files are read back from disk: off the runtime.
    let (files, owner) = (files.clone(), id.to_owned());
    let missing = tokio::task::spawn_blocking(move || {
        let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut note = |backup: &str, key: String| {
            let there = stored.get(backup).is_some_and(|keys| keys.contains(&key));
            if !there {
                missing.entry(backup.to_owned()).or_default().insert(key);
            }
        };
        for key in labels {
            note(&owner, key);
        }
        for file in files.iter()? {
            let file = file?;
            for object in file.objects() {
                note(object.stored_in, object.key);
            }
        }
        std::io::Result::Ok(missing)
    })
    .await
    .context("join the check of the stored objects")?
    .context("read back the list of stored files")?;
    if let Some((backup, keys)) = missing.into_iter().next() {
        let whose = match backup == id {
            true => "of its own objects".to_owned(),
            false => format!("objects of backup {backup}, which it builds on,"),
        };
        let first = keys.first().map(String::as_str).unwrap_or_default();
        bail!(
            "backup {id}: {} {whose} are missing from the repository, e.g. {first}; \
             {UNLISTED}\nHINT: were they deleted (by hand, or by an `expire` that judged \
             the backup abandoned)? take the backup again",
            keys.len()
        );
    }
    Ok(())
}

/// The keys stored under `backup`'s prefix.
async fn stored_keys(repo: &Repo, backup: &str) -> Result<BTreeSet<String>> {
    Ok(repo
        .list(&backup_prefix(backup))
        .await
        .with_context(|| format!("list the objects of backup {backup}"))?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// Each backup from `parent` down to its full backup still has its manifest.
async fn check_chain(repo: &Repo, id: &str, parent: Option<&str>) -> Result<()> {
    let mut next = parent.map(str::to_owned);
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
        next = catalog::read_manifest::<IgnoredAny>(repo, &ancestor)
            .await?
            .parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::exclusive::take_backup_lease;
    use crate::backup::manifest::{file_key, Manifest};
    use crate::backup::retention::tests::{full, incr};
    use crate::repo::{layout, PutMode};

    fn memory_repo() -> Repo {
        Repo::open_with_store(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "",
            crate::repo::Codec::Zstd,
            3,
        )
    }

    async fn put(repo: &Repo, key: &str) {
        repo.put_bytes(key, b"x".to_vec(), PutMode::Create)
            .await
            .unwrap();
    }

    /// The objects `m` stores itself, its label, and (`complete`) its manifest.
    async fn store(repo: &Repo, m: &Manifest, complete: bool) {
        for f in m.files.iter().filter(|f| f.stored_in == m.id) {
            put(repo, &file_key(&m.id, &f.path)).await;
        }
        put(repo, &label_key(&m.id, "backup_label")).await;
        if complete {
            let json = serde_json::to_vec(m).unwrap();
            repo.put_bytes(&manifest_key(&m.id), json, PutMode::Create)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_backup_is_checked_for_its_lease_chain_and_objects_before_its_manifest() {
        let repo = memory_repo();
        let f = full(3, 1);
        let i1 = incr(2, &f, 2);
        let i2 = incr(1, &i1, 3);
        store(&repo, &f, true).await;
        store(&repo, &i1, true).await;
        store(&repo, &i2, false).await;
        let ttl = Duration::from_secs(60);
        let (lease, ()) = take_backup_lease(&repo, ttl, &i2.id, async { Ok(()) }, || async {})
            .await
            .unwrap();
        let mut entries = crate::backup::entries::Entries::new(&i2.id);
        for file in &i2.files {
            entries.push(file.clone()).await.unwrap();
        }
        let (files, tally) = entries.finish().await.unwrap();
        let check = || {
            check_before_manifest(
                &repo,
                &lease,
                &i2.id,
                Some(&i1.id),
                &files,
                &tally.holders,
                false,
            )
        };
        check().await.unwrap();

        // An object of the backup it builds on (the full backup holds base/1/2) is gone.
        let parents_object = file_key(&f.id, "base/1/2");
        repo.delete(&parents_object).await.unwrap();
        let err = format!("{:#}", check().await.unwrap_err());
        assert!(
            err.starts_with(&format!(
                "backup {}: 1 objects of backup {}, which it builds on, are missing from the \
                 repository, e.g. {parents_object}; the backup is incomplete and not listed\nHINT:",
                i2.id, f.id
            )),
            "{err}"
        );
        put(&repo, &parents_object).await;

        // One of its own objects is gone.
        let own = label_key(&i2.id, "backup_label");
        repo.delete(&own).await.unwrap();
        let err = format!("{:#}", check().await.unwrap_err());
        assert!(
            err.starts_with(&format!(
                "backup {}: 1 of its own objects are missing from the repository, e.g. {own}",
                i2.id
            )),
            "{err}"
        );
        put(&repo, &own).await;

        // The full backup at the head of the chain lost its manifest.
        repo.delete(&manifest_key(&f.id)).await.unwrap();
        let err = format!("{:#}", check().await.unwrap_err());
        assert!(
            err.starts_with(&format!(
                "backup {} builds on backup {}, whose manifest is gone from the repository",
                i2.id, f.id
            )),
            "{err}"
        );
        let json = serde_json::to_vec(&f).unwrap();
        repo.put_bytes(&manifest_key(&f.id), json, PutMode::Create)
            .await
            .unwrap();
        check().await.unwrap();

        // Someone else holds the lease now (this one was judged expired and taken over).
        let generation = lease.generation() + 1;
        let other = crate::repo::LeaseInfo::mine("backup", Duration::from_secs(60));
        repo.put_bytes(
            &format!("locks/backup/{generation:016}"),
            serde_json::to_vec(&other).unwrap(),
            PutMode::Create,
        )
        .await
        .unwrap();
        let err = format!("{:#}", check().await.unwrap_err());
        assert!(
            err.starts_with(&format!(
                "backup {} lost its lease on the repository: the backup lease was taken over",
                i2.id
            )),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_names_the_first_segment_of_the_range_still_missing() {
        let repo = memory_repo();
        let size = WalSegSize::new(16 << 20).unwrap();
        let range =
            segment_range("000000010000000000000003", "000000010000000000000006", size).unwrap();
        for name in ["000000010000000000000003", "000000010000000000000006"] {
            put(&repo, &layout::wal_key(name).unwrap()).await;
        }
        let cancel = CancellationToken::new();
        let said = || async { "none".to_owned() };
        let err = wait_wal_range(&repo, &range, Duration::from_secs(2), said, &cancel)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "the backup needs WAL segment 000000010000000000000004 (and 1 more of its 4 \
                 segments), which did not reach the archive within 2s (the archiver's last \
                 failure: none); the backup is incomplete and not listed\nHINT: "
            ),
            "{err}"
        );
        // Archived meanwhile: the wait ends.
        for name in ["000000010000000000000004", "000000010000000000000005"] {
            put(&repo, &layout::wal_key(name).unwrap()).await;
        }
        wait_wal_range(&repo, &range, Duration::from_secs(2), said, &cancel)
            .await
            .unwrap();
    }

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
