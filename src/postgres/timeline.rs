//! Timeline history files (`00000002.history`): which timeline holds which part of the WAL.
//!
//! Each line of a history file is `<parent tli>\t<switch LSN>\t<reason>`: the parent timeline
//! ran until the switch LSN, where the next one began. Recovery asks for each segment on the
//! newest timeline that had begun by then (`XLogFileReadAnyTLI`), so the same rule tells a
//! prefetcher which file name postgres will ask for next.

use thiserror::Error;

use super::wal::{Lsn, SegmentNo, TimelineId, WalSegSize};

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
}
