//! `pgward expire` on the repository: read the manifests and the listings, let
//! [`retention`] decide, delete. Nothing here decides what to keep.
//!
//! Deletion order, so that an interruption (a crash, a storage outage, Ctrl-C) leaves a
//! repository that is consistent and that the next run finishes cleaning:
//! 1. expired backups, newest first (an incremental before the backups it builds on), each
//!    manifest first: the backup stops being one at once, and what remains of it is an
//!    unfinished backup, which the next run removes;
//! 2. the objects of abandoned unfinished backups (never those of the backup the live backup
//!    lease names, read after the listing and again right before deleting);
//! 3. WAL below what the kept backups need.
//!
//! Memory: one listing of `backups/` and one of `wal/` (a key and a size per object), and
//! every manifest.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

use super::catalog;
use super::exclusive;
use super::lineage::Lineage;
use super::manifest::{manifest_key, Manifest};
use super::retention::{self, Policy, Selection, WalDeletion};
use crate::postgres::wal::{SegmentName, TimelineId};
use crate::repo::layout::{backup_prefix, WAL_PREFIX};
use crate::repo::{LeaseInfo, Repo};

/// What `expire` deletes, decided before anything is.
#[derive(Debug)]
pub struct Plan {
    /// Every complete backup, kept or expired, oldest first.
    pub selection: Selection,
    /// Keys of every backup's objects, complete or not.
    objects: BTreeMap<String, Vec<String>>,
    /// Unfinished backups that cannot be running anymore (see [`retention::abandoned`]).
    pub abandoned: Vec<String>,
    /// The backup running now (its lease is live), whose objects are left alone.
    pub running: Option<LeaseInfo>,
    /// Where the WAL the kept backups need starts; `None` when no backup is kept (no WAL is
    /// deleted then).
    pub wal_horizon: Option<SegmentName>,
    /// The WAL to delete, by timeline.
    pub wal: BTreeMap<TimelineId, WalDeletion>,
}

impl Plan {
    /// How many objects backup `id` (complete or not) has.
    pub fn object_count(&self, id: &str) -> usize {
        self.objects.get(id).map_or(0, Vec::len)
    }

    /// Objects the expired and abandoned backups have, together.
    pub fn backup_objects(&self) -> usize {
        self.selection
            .expired()
            .chain(self.abandoned.iter().map(String::as_str))
            .map(|id| self.object_count(id))
            .sum()
    }

    /// WAL files to delete, every timeline.
    pub fn wal_files(&self) -> usize {
        self.wal.values().map(|w| w.keys().count()).sum()
    }

    /// One line saying what was (or, in a dry run, would be) deleted.
    pub fn summary(&self, dry_run: bool) -> String {
        let what = format!(
            "{} of {} backups and {} unfinished",
            self.selection.expired().count(),
            self.selection.verdicts.len(),
            self.abandoned.len()
        );
        let objects = format!(
            "{} backup objects and {} WAL files",
            self.backup_objects(),
            self.wal_files()
        );
        if dry_run {
            format!("dry run, nothing deleted: would expire {what}, deleting {objects}")
        } else {
            format!("expired {what}: deleted {objects}")
        }
    }
}

/// Reads the repository and decides, as of `now`, what `policy` lets go, every backup
/// counting as the cluster's own (see [`plan_for`]).
pub async fn plan(repo: &Repo, policy: &Policy, now: DateTime<Utc>) -> Result<Plan> {
    plan_for(repo, policy, now, None).await
}

/// [`plan`] for the cluster of `lineage`: backups of other branches do not count as its
/// newest (see [`retention`]'s rule on lineage).
pub async fn plan_for(
    repo: &Repo,
    policy: &Policy,
    now: DateTime<Utc>,
    lineage: Option<&Lineage>,
) -> Result<Plan> {
    let objects = catalog::objects_by_backup(repo).await?;
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut unfinished: Vec<String> = Vec::new();
    for (id, keys) in &objects {
        if keys.contains(&manifest_key(id)) {
            let manifest = catalog::read_manifest(repo, id).await?;
            // Deletion goes by the manifest's id: it must name its own objects.
            if manifest.id != *id {
                bail!(
                    "the manifest of backup {id} names backup {:?}; nothing deleted\n\
                     HINT: was it copied from another backup's directory?",
                    manifest.id
                );
            }
            manifests.push(manifest);
        } else {
            unfinished.push(id.clone());
        }
    }
    // After the listing: a backup whose objects it saw has named itself in the lease by now.
    let running = exclusive::running_backup(repo).await?;
    let holds = |m: &Manifest| lineage.is_none_or(|l| l.holds(m));
    let on = lineage.map(|l| retention::OnLineage {
        timeline: l.timeline().0,
        holds: &holds,
    });
    let selection = retention::select_on(&manifests, policy, now, on);
    let running_id = running.as_ref().and_then(|r| r.subject.as_deref());
    let abandoned = retention::abandoned(&unfinished, running_id)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let kept: BTreeSet<&str> = selection.kept().collect();
    let wal_horizon =
        retention::wal_horizon(manifests.iter().filter(|m| kept.contains(m.id.as_str())))?;
    let wal = match wal_horizon {
        Some(horizon) => {
            let keys: Vec<String> = repo
                .list(WAL_PREFIX)
                .await
                .with_context(|| format!("list WAL in {}", repo.describe()))?
                .into_iter()
                .map(|o| o.key)
                .collect();
            retention::wal_to_delete(&keys, horizon)
        }
        None => BTreeMap::new(),
    };
    Ok(Plan {
        selection,
        objects,
        abandoned,
        running,
        wal_horizon,
        wal,
    })
}

/// Deletes what `plan` says, in the order the module doc gives.
///
/// Cancel safety: every step can be cut short; a later `expire` finishes the work.
pub async fn execute(repo: &Repo, plan: &Plan) -> Result<()> {
    // Owned ids and keys throughout: futures holding iterators over `plan` across awaits
    // would not be `Send` for every lifetime, which a scheduled job (a spawned task) needs.
    let mut expired: Vec<String> = plan.selection.expired().map(str::to_owned).collect();
    // Ids sort by start time, and an incremental starts after the backups it builds on.
    expired.sort_unstable_by(|a, b| b.cmp(a));
    for id in expired {
        let manifest = manifest_key(&id);
        repo.delete(&manifest)
            .await
            .with_context(|| format!("delete the manifest of backup {id}"))?;
        // Unlisted from here on; its objects are an unfinished backup's to the next expire.
        crate::failpoint!("expire-after-manifest");
        let rest: Vec<String> = plan
            .objects
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|k| **k != manifest)
            .cloned()
            .collect();
        let n = delete_all(repo, rest).await?;
        repo.remove_empty_dirs(&backup_prefix(&id))
            .await
            .with_context(|| format!("remove the directories of backup {id}"))?;
        tracing::info!(backup = %id, objects = n + 1, "backup expired");
    }
    for id in &plan.abandoned {
        // A backup may have taken over the lease since the plan (its holder was only slow):
        // its objects are its again.
        let running = exclusive::running_backup(repo).await?;
        if let Some(holder) = running.filter(|r| r.subject.as_deref() == Some(id.as_str())) {
            tracing::info!(backup = %id, "left alone: running again ({})", holder.describe());
            continue;
        }
        let keys: Vec<String> = plan
            .objects
            .get(id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let n = delete_all(repo, keys).await?;
        repo.remove_empty_dirs(&backup_prefix(id))
            .await
            .with_context(|| format!("remove the directories of backup {id}"))?;
        tracing::info!(backup = %id, objects = n, "objects of an unfinished backup deleted");
    }
    for (tli, wal) in &plan.wal {
        let keys: Vec<String> = wal.keys().map(str::to_owned).collect();
        let n = delete_all(repo, keys).await?;
        tracing::info!(timeline = tli.0, files = n, last = ?wal.last.map(|s| s.to_string()),
            "WAL no kept backup needs deleted");
    }
    Ok(())
}

/// Deletes `keys` (in batches, as the store allows); how many.
async fn delete_all(repo: &Repo, keys: Vec<String>) -> Result<usize> {
    repo.delete_keys(&keys)
        .await
        .context("delete objects of the repository")?;
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{file_key, label_key, BackupKind};
    use crate::backup::retention::tests::{full, incr, now};
    use crate::repo::PutMode;

    async fn put(repo: &Repo, key: &str) {
        repo.put_bytes(key, b"x".to_vec(), PutMode::Create)
            .await
            .unwrap();
    }

    /// A backup's objects: two files, the label, then the manifest.
    async fn store(repo: &Repo, m: &Manifest) {
        for f in &m.files {
            if f.stored_in == m.id {
                put(repo, &file_key(&m.id, &f.path)).await;
            }
        }
        put(repo, &label_key(&m.id, "backup_label")).await;
        let json = serde_json::to_vec(m).unwrap();
        repo.put_bytes(&manifest_key(&m.id), json, PutMode::Create)
            .await
            .unwrap();
    }

    async fn keys(repo: &Repo, prefix: &str) -> Vec<String> {
        repo.list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    fn wal(name: &str) -> String {
        crate::repo::wal_key(name).unwrap()
    }

    fn memory_repo() -> Repo {
        Repo::open_with_store(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "",
            crate::repo::Codec::Zstd,
            3,
        )
    }

    async fn plan_keeping_one_full(repo: &Repo) -> Result<Plan> {
        let policy = Policy {
            full: 1,
            max_age: None,
        };
        super::plan(repo, &policy, now()).await
    }

    #[tokio::test]
    async fn expire_deletes_old_chains_abandoned_objects_and_unneeded_wal() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("storage:\n  url: file://{}\n", dir.path().display());
        let config = crate::config::from_str(&yaml, "t.yaml", &|_| None).unwrap();
        let repo = Repo::open(&config.storage).unwrap();

        let f1 = full(30, 2);
        let i1 = incr(29, &f1, 3);
        let f2 = full(20, 5);
        let f3 = full(10, 9);
        for m in [&f1, &i1, &f2, &f3] {
            store(&repo, m).await;
        }
        // Interrupted 25 days ago, and one running now (its live lease names it).
        let interrupted = crate::backup::manifest::backup_id(
            now() - chrono::Duration::days(25),
            BackupKind::Full,
        );
        let running = crate::backup::manifest::backup_id(now(), BackupKind::Full);
        put(&repo, &file_key(&interrupted, "base/1/1")).await;
        put(&repo, &file_key(&running, "base/1/1")).await;
        let ttl = std::time::Duration::from_secs(300);
        let lease = match repo
            .try_lease(exclusive::BACKUP_LEASE, LeaseInfo::mine("backup", ttl))
            .await
            .unwrap()
        {
            crate::repo::Taken::Acquired(lease) => lease,
            crate::repo::Taken::Held(info) => panic!("held by {info:?}"),
        };
        lease.set_subject(&running).await.unwrap();
        for seg in 1..=12u32 {
            put(&repo, &wal(&format!("0000000100000000{seg:08X}"))).await;
        }
        put(&repo, &wal("000000010000000000000002.00000028.backup")).await;
        put(&repo, &wal("000000010000000000000005.00000028.backup")).await;
        put(&repo, &wal("00000002.history")).await;

        let policy = Policy {
            full: 2,
            max_age: None,
        };
        let plan = super::plan(&repo, &policy, now()).await.unwrap();
        assert_eq!(
            plan.selection.expired().collect::<Vec<_>>(),
            [f1.id.as_str(), i1.id.as_str()]
        );
        assert_eq!(plan.abandoned, [interrupted.as_str()]);
        assert_eq!(
            plan.wal_horizon.unwrap().to_string(),
            "000000010000000000000005"
        );
        assert_eq!(plan.object_count(&f1.id), 4);
        assert_eq!(plan.object_count(&i1.id), 3);
        assert_eq!(plan.backup_objects(), 8);
        assert_eq!(plan.wal_files(), 5);

        execute(&repo, &plan).await.unwrap();
        let left = catalog::objects_by_backup(&repo).await.unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), [&f2.id, &f3.id, &running]);
        assert_eq!(
            keys(&repo, WAL_PREFIX).await,
            [
                "wal/00000001/000000010000000000000005",
                "wal/00000001/000000010000000000000005.00000028.backup",
                "wal/00000001/000000010000000000000006",
                "wal/00000001/000000010000000000000007",
                "wal/00000001/000000010000000000000008",
                "wal/00000001/000000010000000000000009",
                "wal/00000001/00000001000000000000000A",
                "wal/00000001/00000001000000000000000B",
                "wal/00000001/00000001000000000000000C",
                "wal/00000002/00000002.history",
            ]
        );
        // No empty directories are left of what went.
        for id in [&f1.id, &i1.id, &interrupted] {
            assert!(!dir.path().join("backups").join(id).exists(), "{id}");
        }

        // Nothing more to do.
        let again = super::plan(&repo, &policy, now()).await.unwrap();
        assert_eq!(again.selection.expired().count(), 0);
        assert_eq!(again.backup_objects() + again.wal_files(), 0);

        // A run cut short after a manifest went: the rest is an unfinished backup, removed by
        // the next run.
        repo.delete(&manifest_key(&f2.id)).await.unwrap();
        let resumed = super::plan(&repo, &policy, now()).await.unwrap();
        assert_eq!(resumed.abandoned, [f2.id.as_str()]);
        // f3 alone is kept now: WAL before its start goes.
        assert_eq!(
            resumed.wal_horizon.unwrap().to_string(),
            "000000010000000000000009"
        );
        execute(&repo, &resumed).await.unwrap();
        assert_eq!(
            catalog::objects_by_backup(&repo)
                .await
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [&f3.id, &running]
        );

        // Once the running backup's lease is released without a manifest, it is abandoned.
        lease.release().await;
        let released = super::plan(&repo, &policy, now()).await.unwrap();
        assert_eq!(released.abandoned, [running.as_str()]);
    }

    #[tokio::test]
    async fn a_manifest_naming_another_backup_stops_everything() {
        let repo = memory_repo();
        let f1 = full(20, 1);
        let f2 = full(10, 2);
        store(&repo, &f1).await;
        let json = serde_json::to_vec(&f2).unwrap();
        repo.put_bytes(&manifest_key("20260101T000000F"), json, PutMode::Create)
            .await
            .unwrap();
        let err = plan_keeping_one_full(&repo).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the manifest of backup 20260101T000000F names backup {:?}; nothing deleted\n\
                 HINT: was it copied from another backup's directory?",
                f2.id
            )
        );
    }

    #[tokio::test]
    async fn without_a_complete_backup_no_wal_is_deleted() {
        let repo = memory_repo();
        put(&repo, &file_key("20261201T000000F", "base/1/1")).await;
        put(&repo, &wal("000000010000000000000001")).await;
        let plan = plan_keeping_one_full(&repo).await.unwrap();
        assert!(plan.selection.verdicts.is_empty());
        // No lease names the unfinished backup: it was interrupted.
        assert_eq!(plan.abandoned, ["20261201T000000F"]);
        assert_eq!(plan.wal_horizon, None);
        execute(&repo, &plan).await.unwrap();
        assert_eq!(
            keys(&repo, "").await,
            ["wal/00000001/000000010000000000000001"]
        );
    }
}
