//! The lineage a command works for: the timeline of the cluster that asks and the ancestors
//! it came from ([`TimelineHistory`]), so that `latest`, a restore's time target, retention
//! and an incremental's parent never pick a backup of a branch that cluster is not on (one a
//! point-in-time restore left behind, or a second writer's).
//!
//! The asking cluster is the one in the config's data directory; its history comes from its
//! own `pg_wal`, else from the repository. A directory without a cluster (a new host, a
//! `from_backup` start) asks for the repository's newest timeline, the one a restored
//! cluster continues.

use std::path::Path;

use anyhow::{Context, Result};

use super::manifest::ManifestOf;
use crate::postgres::timeline::{current_timeline, local_history, TimelineHistory};
use crate::postgres::wal::{Lsn, TimelineId};
use crate::repo::Repo;
use crate::wal::timelines;

/// Whose lineage it is, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asker {
    /// The cluster in this data directory.
    Cluster(String),
    /// No cluster: the repository's newest timeline.
    Repository,
}

/// A timeline and its ancestry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub history: TimelineHistory,
    pub asker: Asker,
    /// The repository holds the timeline's history file (or it needs none: timeline 1), so
    /// recovery can be pinned to it; postgres refuses a target timeline whose history it
    /// cannot fetch.
    pub archived: bool,
}

impl Lineage {
    /// Everything of timeline `tli` and its ancestors as `history` says.
    pub fn new(history: TimelineHistory, asker: Asker, archived: bool) -> Lineage {
        Lineage {
            history,
            asker,
            archived,
        }
    }

    pub fn timeline(&self) -> TimelineId {
        self.history.timeline
    }

    /// Whether backup `m` belongs to the lineage: taken on its timeline, or on an ancestor
    /// and stopped before the lineage left it. A stop LSN that does not parse is no proof.
    pub fn holds<F>(&self, m: &ManifestOf<F>) -> bool {
        m.stop_lsn
            .parse::<Lsn>()
            .is_ok_and(|stop| self.history.holds(TimelineId(m.timeline), stop))
    }

    /// The timeline recovery is pinned to when `m` is restored: the lineage's own when it
    /// holds `m` and its history is archived (recovery follows no other branch), else `m`'s
    /// (a backup of another branch, asked for by its id, recovers along its own timeline; so
    /// does one whose lineage's history never reached the repository: a copy that archives
    /// nothing, rewound from its original's backup).
    pub fn target_timeline<F>(&self, m: &ManifestOf<F>) -> TimelineId {
        match self.holds(m) && self.archived {
            true => self.timeline(),
            false => TimelineId(m.timeline),
        }
    }

    /// `timeline 2 (the cluster in /data)`.
    pub fn describe(&self) -> String {
        match &self.asker {
            Asker::Cluster(dir) => format!("timeline {} (the cluster in {dir})", self.timeline()),
            Asker::Repository => {
                format!("timeline {} (the repository's newest)", self.timeline())
            }
        }
    }
}

/// The lineage of the cluster in `data_dir`; for a directory without one (or whose
/// `pg_control` cannot be read: it is being replaced), the repository's newest timeline's.
pub async fn of_cluster(repo: &Repo, data_dir: &Path) -> Result<Lineage> {
    let dir = data_dir.to_owned();
    let current = tokio::task::spawn_blocking(move || current_timeline(&dir))
        .await
        .context("join the timeline lookup")?;
    match current {
        Ok(Some(tli)) => of_timeline(repo, data_dir, tli).await,
        Ok(None) => of_repository(repo).await,
        Err(e) => {
            tracing::warn!(
                "cannot tell the timeline of the cluster in {}: {e:#}; following the \
                 repository's newest timeline",
                data_dir.display()
            );
            of_repository(repo).await
        }
    }
}

/// The lineage of the cluster in `data_dir`, running on timeline `tli`. Its history is its
/// own `pg_wal`'s, else the repository's; without either (a copy that never archived, its
/// `pg_wal` emptied), the repository's newest timeline's, which it came from.
pub async fn of_timeline(repo: &Repo, data_dir: &Path, tli: TimelineId) -> Result<Lineage> {
    let asker = Asker::Cluster(data_dir.display().to_string());
    let dir = data_dir.to_owned();
    let local = tokio::task::spawn_blocking(move || local_history(&dir, tli))
        .await
        .context("join the history read")??;
    let archived = timelines::history(repo, tli).await?;
    let is_archived = archived.is_some();
    match local.or(archived) {
        Some(history) => Ok(Lineage::new(history, asker, is_archived)),
        None => {
            tracing::warn!(
                "the history of timeline {tli} is neither in {} nor in the repository; \
                 following the repository's newest timeline",
                data_dir.join("pg_wal").display()
            );
            of_repository(repo).await
        }
    }
}

/// The lineage of the repository's newest timeline (timeline 1 for an empty archive).
pub async fn of_repository(repo: &Repo) -> Result<Lineage> {
    let tli = timelines::newest(repo).await?.unwrap_or(TimelineId(1));
    Ok(match timelines::history(repo, tli).await? {
        Some(history) => Lineage::new(history, Asker::Repository, true),
        None => {
            tracing::warn!(
                "the repository holds WAL of timeline {tli} but not its history file; only \
                 backups of timeline {tli} itself count as its lineage"
            );
            Lineage::new(TimelineHistory::root(tli), Asker::Repository, false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::retention::tests::full;

    #[test]
    fn a_backup_is_on_the_lineage_when_it_stopped_before_the_switch() {
        let history = TimelineHistory::parse(TimelineId(2), "1\t0/5000060\tx\n").unwrap();
        let lineage = Lineage::new(history.clone(), Asker::Cluster("/data".into()), true);
        let on_one = |stop: &str| {
            let mut m = full(3, 1);
            m.stop_lsn = stop.into();
            m
        };
        assert!(lineage.holds(&on_one("0/4000100")));
        assert!(lineage.holds(&on_one("0/5000060")));
        // Ran on past the point where timeline 2 left timeline 1: it copied the branch's
        // changes.
        let late = on_one("0/6000100");
        assert!(!lineage.holds(&late));
        assert_eq!(lineage.target_timeline(&late), TimelineId(1));
        assert_eq!(lineage.target_timeline(&on_one("0/1")), TimelineId(2));

        let mut own = on_one("9/0");
        own.timeline = 2;
        assert!(lineage.holds(&own));
        let mut sibling = own.clone();
        sibling.timeline = 3;
        assert!(!lineage.holds(&sibling));
        let mut garbled = own;
        garbled.stop_lsn = "x".into();
        assert!(!lineage.holds(&garbled));
        assert_eq!(lineage.describe(), "timeline 2 (the cluster in /data)");
        // A lineage whose history the repository lacks cannot pin recovery to its timeline.
        let unarchived = Lineage::new(history, Asker::Cluster("/data".into()), false);
        assert!(unarchived.holds(&on_one("0/1")));
        assert_eq!(unarchived.target_timeline(&on_one("0/1")), TimelineId(1));
    }
}
