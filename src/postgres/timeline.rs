//! Timeline history files (`00000002.history`): which timeline holds which part of the WAL.
//!
//! Each line of a history file is `<parent tli>\t<switch LSN>\t<reason>`: the parent timeline
//! ran until the switch LSN, where the next one began. Recovery asks for each segment on the
//! newest timeline that had begun by then (`XLogFileReadAnyTLI`), so the same rule tells a
//! prefetcher which file name postgres will ask for next.
//!
//! A history is also a cluster's **lineage**: its own timeline and the ancestors it came
//! from, each up to the point where it was left. A backup belongs to the lineage when it
//! was taken on the timeline itself, or on an ancestor and ended before the lineage left
//! that ancestor ([`TimelineHistory::holds`]).

use std::path::Path;

use anyhow::Context;
use thiserror::Error;

use super::control_file::ControlFile;
use super::wal::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegSize};

/// The ancestry of one timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline this history leads to.
    pub timeline: TimelineId,
    /// `(timeline, the LSN where it ended)`, in order.
    pub switches: Vec<(TimelineId, Lsn)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error("line {line} of the history of timeline {timeline}: {reason}")]
    BadLine {
        timeline: TimelineId,
        line: usize,
        reason: String,
    },
}

impl TimelineHistory {
    /// Parses the content of `<timeline>.history`. Comments (`#`) and blank lines are skipped,
    /// as postgres does.
    pub fn parse(timeline: TimelineId, text: &str) -> Result<TimelineHistory, HistoryError> {
        let mut switches = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| HistoryError::BadLine {
                timeline,
                line: i + 1,
                reason: reason.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let tli: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad("no parent timeline number"))?;
            let lsn: Lsn = fields
                .next()
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad("no switch LSN"))?;
            if switches
                .last()
                .is_some_and(|&(prev, _): &(TimelineId, Lsn)| prev.0 >= tli)
            {
                return Err(bad("timeline numbers must increase"));
            }
            switches.push((TimelineId(tli), lsn));
        }
        Ok(TimelineHistory { timeline, switches })
    }

    /// The history of a timeline without ancestors: timeline 1, or one whose history file is
    /// nowhere to be read.
    pub fn root(timeline: TimelineId) -> TimelineHistory {
        TimelineHistory {
            timeline,
            switches: Vec::new(),
        }
    }

    /// Where the lineage left `tli`: `Some(lsn)` for an ancestor, `None` for the timeline
    /// itself (not left) and for a timeline that is not on the lineage at all.
    pub fn switch_point(&self, tli: TimelineId) -> Option<Lsn> {
        self.switches
            .iter()
            .find(|(t, _)| *t == tli)
            .map(|&(_, end)| end)
    }

    /// Whether `tli` is this timeline or one of its ancestors.
    pub fn includes(&self, tli: TimelineId) -> bool {
        tli == self.timeline || self.switch_point(tli).is_some()
    }

    /// Whether the point `lsn` of timeline `tli` is part of this lineage: on the timeline
    /// itself anywhere, on an ancestor up to where the lineage left it. A backup belongs to
    /// the lineage when its **stop** is such a point: the files it copied up to then hold
    /// only changes the lineage has (a backup that ran on past the switch copied changes of
    /// the abandoned branch; postgres itself checks only the start).
    pub fn holds(&self, tli: TimelineId, lsn: Lsn) -> bool {
        if tli == self.timeline {
            return true;
        }
        self.switch_point(tli).is_some_and(|end| lsn <= end)
    }

    /// The timeline whose file recovery asks for when it needs segment `segno`: the newest
    /// one that had begun by then (a timeline begins in the segment of its parent's switch).
    pub fn timeline_of(&self, segno: SegmentNo, seg_size: WalSegSize) -> TimelineId {
        let mut chosen = self.switches.first().map_or(self.timeline, |&(tli, _)| tli);
        for (i, &(_, end)) in self.switches.iter().enumerate() {
            let next = self
                .switches
                .get(i + 1)
                .map_or(self.timeline, |&(tli, _)| tli);
            if end.segment_number(seg_size) <= segno {
                chosen = next;
            }
        }
        chosen
    }
}

/// The timeline a cluster's data directory is on: the newest of its latest checkpoint's
/// (`pg_control`) and of the WAL segments in `pg_wal` (after a promotion, postgres writes
/// on the new timeline at once, while `pg_control` names it only after the next
/// checkpoint). `None` when the directory holds no cluster (no `pg_control`). Blocking.
pub fn current_timeline(data_dir: &Path) -> anyhow::Result<Option<TimelineId>> {
    if !data_dir.join("global/pg_control").exists() {
        return Ok(None);
    }
    let control = ControlFile::read(data_dir)?;
    let pg_wal = data_dir.join("pg_wal");
    let mut newest = control.checkpoint_tli;
    let entries = match std::fs::read_dir(&pg_wal) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(newest)),
        Err(e) => return Err(e).with_context(|| format!("list {}", pg_wal.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", pg_wal.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Ok(WalFileName::Segment(segment) | WalFileName::Partial(segment)) =
            WalFileName::parse(&name)
        {
            newest = newest.max(segment.tli());
        }
    }
    Ok(Some(newest))
}

/// The history of `timeline` as the cluster in `data_dir` holds it (`pg_wal/<tli>.history`),
/// `None` when the file is not there. Blocking.
pub fn local_history(
    data_dir: &Path,
    timeline: TimelineId,
) -> anyhow::Result<Option<TimelineHistory>> {
    let path = data_dir
        .join("pg_wal")
        .join(format!("{:08X}.history", timeline.0));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            TimelineHistory::parse(timeline, &text)
                .with_context(|| format!("read {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> SegmentNo {
        SegmentNo(n)
    }

    #[test]
    fn parses_postgres_history_files() {
        let text = "1\t0/5000060\tno recovery target specified\n\n# comment\n2\t0/9000000\tbefore 2026-01-01\n";
        let history = TimelineHistory::parse(TimelineId(3), text).unwrap();
        assert_eq!(
            history.switches,
            vec![
                (TimelineId(1), "0/5000060".parse().unwrap()),
                (TimelineId(2), "0/9000000".parse().unwrap())
            ]
        );
        assert!(TimelineHistory::parse(TimelineId(3), "x\t0/1\n").is_err());
        assert!(TimelineHistory::parse(TimelineId(3), "2\t0/1\n1\t0/2\n").is_err());
    }

    #[test]
    fn picks_the_newest_timeline_begun_by_each_segment() {
        let size = WalSegSize::DEFAULT;
        let history =
            TimelineHistory::parse(TimelineId(3), "1\t0/5000060\tx\n2\t0/9000000\tx\n").unwrap();
        // Timeline 2 begins inside segment 5 (its parent's switch), timeline 3 at segment 9.
        let got: Vec<u32> = [1, 4, 5, 6, 8, 9, 12]
            .iter()
            .map(|&n| history.timeline_of(seg(n), size).0)
            .collect();
        assert_eq!(got, vec![1, 1, 2, 2, 2, 3, 3]);
        let fresh = TimelineHistory {
            timeline: TimelineId(1),
            switches: vec![],
        };
        assert_eq!(fresh.timeline_of(seg(7), size), TimelineId(1));
    }

    #[test]
    fn a_lineage_holds_its_own_timeline_and_its_ancestors_up_to_each_switch() {
        let lsn = |s: &str| s.parse::<Lsn>().unwrap();
        // Timeline 3 left 1 at 0/5000060 (for 2), and 2 at 0/9000000.
        let history =
            TimelineHistory::parse(TimelineId(3), "1\t0/5000060\tx\n2\t0/9000000\tx\n").unwrap();
        assert!(history.holds(TimelineId(3), lsn("0/1")));
        assert!(history.holds(TimelineId(3), lsn("FF/0")));
        assert!(history.holds(TimelineId(1), lsn("0/5000060")));
        assert!(!history.holds(TimelineId(1), lsn("0/5000061")));
        assert!(history.holds(TimelineId(2), lsn("0/8FFFFFF")));
        assert!(!history.holds(TimelineId(2), lsn("0/9000001")));
        // A sibling branch (4 also branched off 2, elsewhere) and a descendant are not on it.
        assert!(!history.holds(TimelineId(4), lsn("0/1")));
        assert!(history.includes(TimelineId(2)));
        assert!(!history.includes(TimelineId(4)));
        assert_eq!(history.switch_point(TimelineId(2)), Some(lsn("0/9000000")));
        assert_eq!(history.switch_point(TimelineId(3)), None);
        let root = TimelineHistory::root(TimelineId(1));
        assert!(root.holds(TimelineId(1), lsn("0/1")));
        assert!(!root.holds(TimelineId(2), lsn("0/1")));
    }

    #[test]
    fn the_current_timeline_is_the_newest_of_pg_control_and_pg_wal() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(current_timeline(dir.path()).unwrap(), None);
        assert!(local_history(dir.path(), TimelineId(2)).unwrap().is_none());
        std::fs::create_dir_all(dir.path().join("pg_wal")).unwrap();
        std::fs::write(
            dir.path().join("pg_wal/00000002.history"),
            "1\t0/5000060\tno recovery target specified\n",
        )
        .unwrap();
        let history = local_history(dir.path(), TimelineId(2)).unwrap().unwrap();
        assert_eq!(
            history.switch_point(TimelineId(1)),
            Some("0/5000060".parse().unwrap())
        );
    }
}
