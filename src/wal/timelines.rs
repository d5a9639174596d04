//! The repository's timelines: which exist (`wal/<timeline>/`), the history of each (the
//! archived `<timeline>.history` files), and the refusal of WAL of a branch the repository's
//! history has left.
//!
//! A timeline is left when a newer one branches off it: a point-in-time restore, or a
//! successor that recovered from this repository and promoted. WAL written on the old
//! timeline after that point belongs to no cluster the repository continues: it comes from
//! a second writer (the original still running beside its successor, or started again), and
//! archiving it would let a restore of that timeline mix two clusters' histories. Pushes of
//! such segments are refused, naming both timelines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::postgres::timeline::TimelineHistory;
use crate::postgres::wal::{Lsn, SegmentName, TimelineId, WalFileName, WalSegSize};
use crate::repo::layout::{wal_key, WAL_PREFIX};
use crate::repo::Repo;

/// How long a daemon trusts what it learned of the repository's timelines before it lists
/// them again: a second writer's segments are refused at most this long after the
/// repository's history left its timeline.
pub const TIMELINES_FRESH: Duration = Duration::from_secs(10);

/// The timelines the repository holds WAL or history of, oldest first.
pub async fn timelines(repo: &Repo) -> Result<Vec<TimelineId>> {
    let dirs = repo
        .list_dirs(WAL_PREFIX)
        .await
        .with_context(|| format!("list the timelines in {}", repo.describe()))?;
    let mut out: Vec<TimelineId> = dirs
        .iter()
        .filter(|d| d.len() == 8)
        .filter_map(|d| u32::from_str_radix(d, 16).ok())
        .filter(|&tli| tli > 0)
        .map(TimelineId)
        .collect();
    out.sort();
    Ok(out)
}

/// The repository's newest timeline: the one a cluster restored from it continues, as
/// postgres's `recovery_target_timeline = 'latest'` would pick it. `None` for an empty
/// archive.
pub async fn newest(repo: &Repo) -> Result<Option<TimelineId>> {
    Ok(timelines(repo).await?.last().copied())
}

/// The history of `tli` as archived; timeline 1 has none (it is its own root). `None` when
/// the history file is not in the repository.
pub async fn history(repo: &Repo, tli: TimelineId) -> Result<Option<TimelineHistory>> {
    if tli == TimelineId(1) {
        return Ok(Some(TimelineHistory::root(tli)));
    }
    let name = format!("{:08X}.history", tli.0);
    let key = wal_key(&name)?;
    let Some(bytes) = repo
        .get_bytes(&key)
        .await
        .with_context(|| format!("read {name} from {}", repo.describe()))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).with_context(|| format!("{name} is not text"))?;
    Ok(Some(
        TimelineHistory::parse(tli, &text).with_context(|| format!("read {name}"))?,
    ))
}

/// A newer timeline that branched off another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// The newer timeline.
    pub child: TimelineId,
    /// Where it left the older one.
    pub at: Lsn,
}

/// The timelines of the repository that branched off `tli` (directly or further down),
/// each with the point where its history left `tli`.
pub async fn departures(repo: &Repo, tli: TimelineId) -> Result<Vec<Departure>> {
    let mut out = Vec::new();
    for child in timelines(repo).await?.into_iter().filter(|&t| t > tli) {
        if let Some(at) = history(repo, child)
            .await?
            .and_then(|h| h.switch_point(tli))
        {
            out.push(Departure { child, at });
        }
    }
    Ok(out)
}

/// `Err` when `segment` lies past the point where one of `departures` left its timeline: WAL
/// of a diverging branch, which only a second writer can produce.
pub fn check_not_diverging(
    segment: SegmentName,
    seg_size: WalSegSize,
    departures: &[Departure],
) -> Result<()> {
    let start = segment.start_lsn(seg_size)?;
    let tli = segment.tli();
    if let Some(d) = departures.iter().find(|d| start >= d.at) {
        bail!(
            "refusing to archive WAL segment {segment} of timeline {tli}: this repository's \
             history left timeline {tli} at {at} for timeline {child} ({child_hex:08X}.history), so this \
             segment is of a diverging branch: a second cluster of this system is writing on \
             timeline {tli} while the repository continues on timeline {child}\n\
             HINT: stop the cluster on timeline {tli}: a successor has replaced it (a restored \
             copy must not archive into the repository it came from; see \
             postgres.init.restore_as), or give it its own storage.url",
            at = d.at,
            child = d.child,
            child_hex = d.child.0,
        );
    }
    Ok(())
}

/// What an archiver knows of the timelines that left the one it archives, refreshed every
/// [`TIMELINES_FRESH`].
#[derive(Debug, Default)]
pub struct DivergenceGuard {
    known: Mutex<Option<Known>>,
}

#[derive(Debug, Clone)]
struct Known {
    at: Instant,
    timeline: TimelineId,
    departures: Vec<Departure>,
}

impl DivergenceGuard {
    /// Checks the WAL file `name` (segments and partial segments; other files pass), asking
    /// the repository when what is known is stale.
    pub async fn check(&self, repo: &Repo, name: &WalFileName, seg_size: WalSegSize) -> Result<()> {
        let Some(segment) = segment_of(name) else {
            return Ok(());
        };
        let departures = match self.fresh(segment.tli()) {
            Some(known) => known,
            None => {
                let found = departures(repo, segment.tli())
                    .await
                    .context("read the repository's timeline history")?;
                *self.lock() = Some(Known {
                    at: Instant::now(),
                    timeline: segment.tli(),
                    departures: found.clone(),
                });
                found
            }
        };
        check_not_diverging(segment, seg_size, &departures)
    }

    /// [`check`](Self::check) from what is known, without asking the repository; `None`
    /// when that is stale (the caller then takes the path that asks).
    pub fn check_known(&self, name: &WalFileName, seg_size: WalSegSize) -> Option<Result<()>> {
        let Some(segment) = segment_of(name) else {
            return Some(Ok(()));
        };
        let departures = self.fresh(segment.tli())?;
        Some(check_not_diverging(segment, seg_size, &departures))
    }

    fn fresh(&self, tli: TimelineId) -> Option<Vec<Departure>> {
        self.lock()
            .as_ref()
            .filter(|k| k.timeline == tli && k.at.elapsed() < TIMELINES_FRESH)
            .map(|k| k.departures.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn segment_of(name: &WalFileName) -> Option<SegmentName> {
    match name {
        WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
        WalFileName::History { .. } | WalFileName::BackupHistory { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn segment(name: &str) -> SegmentName {
        SegmentName::parse(name).unwrap()
    }

    #[test]
    fn segments_past_the_point_a_newer_timeline_left_are_refused() {
        let size = WalSegSize::DEFAULT;
        let left = [Departure {
            child: TimelineId(2),
            at: "0/5000060".parse().unwrap(),
        }];
        // Up to the segment of the switch: WAL the successor's history shares.
        for ok in ["000000010000000000000004", "000000010000000000000005"] {
            check_not_diverging(segment(ok), size, &left).expect(ok);
        }
        let why = format!(
            "{:#}",
            check_not_diverging(segment("000000010000000000000006"), size, &left).unwrap_err()
        );
        assert!(
            why.starts_with(
                "refusing to archive WAL segment 000000010000000000000006 of timeline 1: this \
                 repository's history left timeline 1 at 0/5000060 for timeline 2 \
                 (00000002.history)"
            ),
            "{why}"
        );
        assert!(
            why.contains("\nHINT: stop the cluster on timeline 1"),
            "{why}"
        );
        // A switch exactly at a segment's start: that segment is all the branch's.
        let at_boundary = [Departure {
            child: TimelineId(3),
            at: "0/6000000".parse().unwrap(),
        }];
        assert!(
            check_not_diverging(segment("000000010000000000000006"), size, &at_boundary).is_err()
        );
        check_not_diverging(segment("000000010000000000000006"), size, &[]).expect("no branch");
    }

    #[tokio::test]
    async fn the_guard_reads_the_archived_histories_and_remembers_them() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let repo = Repo::open_with_store(store, "", crate::repo::Codec::None, 0);
        let size = WalSegSize::DEFAULT;
        let name = |n: &str| WalFileName::parse(n).unwrap();
        let guard = DivergenceGuard::default();
        assert!(guard
            .check_known(&name("000000010000000000000009"), size)
            .is_none());
        guard
            .check(&repo, &name("000000010000000000000009"), size)
            .await
            .expect("no other timeline yet");
        assert!(matches!(
            guard.check_known(&name("000000010000000000000009"), size),
            Some(Ok(()))
        ));
        repo.put_bytes(
            "wal/00000002/00000002.history",
            b"1\t0/5000060\tno recovery target specified\n".to_vec(),
            crate::repo::PutMode::Create,
        )
        .await
        .unwrap();
        assert_eq!(timelines(&repo).await.unwrap(), vec![TimelineId(2)]);
        assert_eq!(newest(&repo).await.unwrap(), Some(TimelineId(2)));
        assert_eq!(
            departures(&repo, TimelineId(1)).await.unwrap(),
            vec![Departure {
                child: TimelineId(2),
                at: "0/5000060".parse().unwrap()
            }]
        );
        // A fresh guard (or a stale one) asks the repository again.
        let guard = DivergenceGuard::default();
        assert!(guard
            .check(&repo, &name("000000010000000000000009"), size)
            .await
            .is_err());
        guard
            .check(&repo, &name("00000001.history"), size)
            .await
            .expect("history files are not segments");
    }
}
