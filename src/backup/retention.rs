//! Retention: which backups `pgward expire` keeps, which it expires, and which archived WAL
//! no kept backup needs. Pure functions of the manifests, the policy and the time (no I/O),
//! so every rule is tested without a repository; [`super::expire`] lists and deletes.
//!
//! # The rule
//!
//! The unit is the **chain**: a full backup and every incremental backup built on it,
//! directly or through other incrementals. An incremental's files point (`stored_in`) at
//! objects of earlier backups of its chain, and a restore of it needs its parents' manifests,
//! so a chain is kept or expired whole: no incremental outlives its full backup, and no object
//! a kept backup reads goes away. A chain is kept when any of these keeps it:
//!
//! 1. one of its backups was taken with `--keep`;
//! 2. it is the newest chain (the newest complete full backup is always kept);
//! 3. it is one of the `full` newest chains;
//! 4. with `max_age`, a restore to some point of the last `max_age` needs it: one of its
//!    backups ended within that window, or it holds the newest backup that ended before the
//!    window opened, where a restore to the window's first moment starts;
//! 5. a backup kept by the above stores files in it (`stored_in`; within a chain this is
//!    already so, checked anyway rather than assumed).
//!
//! Everything else is expired. The rules only add: setting both `full` and `max_age` keeps
//! what either wants (like WAL-G's `retain FULL n --after t`, or Barman's recovery window with
//! a minimum redundancy); `full: 1` leaves the decision to `max_age` alone.
//!
//! **Lineage.** Rules 2 to 4 look at the chains of the asking cluster's lineage (its
//! timeline and the ancestors it came from, see [`super::lineage`]): a chain counts when its
//! full backup is on it. A chain of a branch the cluster left (backups taken on a timeline
//! after a point-in-time restore went back before them, or by a second writer) never counts
//! as the newest nor among the `full` newest, so it cannot push the cluster's own chains
//! out; it is kept only while `--keep`, its files, or `max_age` (one of its backups ended
//! within the window) keep it, and is otherwise expired as off the lineage.
//!
//! An incremental whose chain reaches no complete full backup (its parent's manifest is gone)
//! cannot be restored and is expired, unless `--keep` protects it.
//!
//! WAL: a restore from a backup replays WAL from the backup's start onwards and never reads
//! before it, on any timeline, so segments below the lowest `start_wal` position of the kept
//! backups serve no restore: they are deleted on every timeline. History files always stay,
//! and so do the `.backup` files at or after that position (those of every kept backup).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::manifest::{BackupKind, Manifest};
use crate::postgres::wal::{SegmentName, TimelineId, WalFileName};
use crate::repo::layout::wal_key;

/// What to keep (`backup.retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest `full` chains; at least 1.
    pub full: u32,
    /// Keep what a restore to any point of the last `max_age` needs.
    pub max_age: Option<Duration>,
}

/// Why a backup is kept or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Backup `by` of the chain was taken with `--keep`.
    Marked { by: String },
    /// The newest complete full backup's chain.
    NewestFull,
    /// One of the `count` newest chains.
    FullCount { count: u32 },
    /// A restore to some point of the last `max_age` needs it.
    Window { max_age: Duration },
    /// Kept backup `by` stores files in it.
    HoldsFilesOf { by: String },
    /// No rule keeps it.
    Unneeded {
        full: u32,
        max_age: Option<Duration>,
    },
    /// Its chain reaches no complete full backup: `missing` is the parent it stops at.
    Orphan { missing: String },
    /// Its full backup is not on the lineage of `timeline`, the asking cluster's.
    OffLineage { timeline: u32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Marked { by } => write!(f, "{by} is marked keep"),
            Reason::NewestFull => f.write_str("newest full backup"),
            Reason::FullCount { count } => write!(f, "one of the {count} newest full backups"),
            Reason::Window { max_age } => {
                write!(f, "needed to restore within the last {}", span(*max_age))
            }
            Reason::HoldsFilesOf { by } => write!(f, "holds files of kept backup {by}"),
            Reason::Unneeded { full, max_age } => {
                match full {
                    1 => f.write_str("older than the newest full backup")?,
                    n => write!(f, "older than the {n} newest full backups")?,
                }
                match max_age {
                    Some(d) => write!(f, " and not needed to restore within the last {}", span(*d)),
                    None => Ok(()),
                }
            }
            Reason::Orphan { missing } if missing.is_empty() => {
                f.write_str("an incremental backup without a parent: it cannot be restored")
            }
            Reason::Orphan { missing } => write!(
                f,
                "its chain reaches no complete full backup (parent {missing}): it cannot be \
                 restored"
            ),
            Reason::OffLineage { timeline } => write!(
                f,
                "not on the lineage of timeline {timeline} (a branch the cluster left) and \
                 not needed within the retention window"
            ),
        }
    }
}

/// `30d`, `1d 12h`, `90s` → `1m 30s`: a window as people write it (humantime would say
/// `1month 13h 26m 24s` for 31 days).
fn span(d: Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
        if left >= unit {
            parts.push(format!("{}{name}", left / unit));
            left %= unit;
        }
    }
    if parts.is_empty() {
        return format!("{}ms", d.as_millis());
    }
    parts.join(" ")
}

/// The decision about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub id: String,
    pub kind: BackupKind,
    pub expire: bool,
    /// The backup heading its chain (a full backup, or for an orphan the parent it stops at),
    /// when that is not the backup itself: the reason is the chain's.
    pub chain: Option<String>,
    pub reason: Reason,
}

impl Verdict {
    /// The reason as `expire` prints it in parentheses.
    pub fn explain(&self) -> String {
        match &self.chain {
            Some(head) => format!("chain of {head}: {}", self.reason),
            None => self.reason.to_string(),
        }
    }
}

/// Every complete backup's verdict, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub verdicts: Vec<Verdict>,
}

impl Selection {
    pub fn kept(&self) -> impl Iterator<Item = &str> {
        self.verdicts
            .iter()
            .filter(|v| !v.expire)
            .map(|v| v.id.as_str())
    }

    pub fn expired(&self) -> impl Iterator<Item = &str> {
        self.verdicts
            .iter()
            .filter(|v| v.expire)
            .map(|v| v.id.as_str())
    }
}

/// A full backup and what is built on it; or, for an orphan, the backups that stop at the same
/// missing parent.
struct Chain<'a> {
    head: String,
    complete: bool,
    /// Its full backup is on the asking cluster's lineage.
    on_lineage: bool,
    members: Vec<&'a Manifest>,
}

/// Decides, for each complete backup in `manifests`, whether `policy` keeps it at `now`, all
/// of them on one lineage (a repository of one timeline's history).
pub fn select(manifests: &[Manifest], policy: &Policy, now: DateTime<Utc>) -> Selection {
    select_on(manifests, policy, now, None)
}

/// The asking cluster's lineage, for [`select_on`]: its timeline, and which backups it holds.
pub struct OnLineage<'a> {
    pub timeline: u32,
    pub holds: &'a dyn Fn(&Manifest) -> bool,
}

/// [`select`] for the cluster whose lineage is `lineage` (`None`: every backup is on it).
pub fn select_on(
    manifests: &[Manifest],
    policy: &Policy,
    now: DateTime<Utc>,
    lineage: Option<OnLineage<'_>>,
) -> Selection {
    let by_id: BTreeMap<&str, &Manifest> = manifests.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut chains: BTreeMap<(bool, String), Chain> = BTreeMap::new();
    let holds = |id: &str| match (&lineage, by_id.get(id)) {
        (None, _) => true,
        (Some(l), Some(m)) => (l.holds)(m),
        (Some(_), None) => false,
    };
    for m in by_id.values() {
        let (head, complete) = chain_head(m, &by_id);
        chains
            .entry((complete, head.clone()))
            .or_insert_with(|| Chain {
                on_lineage: complete && holds(&head),
                head,
                complete,
                members: Vec::new(),
            })
            .members
            .push(m);
    }
    let mut chains: Vec<Chain> = chains.into_values().collect();
    // The lineage's complete chains newest first (heads are full backup ids, which sort by
    // start time), then those off it, then the orphans.
    chains.sort_by(|a, b| {
        (b.complete, b.on_lineage)
            .cmp(&(a.complete, a.on_lineage))
            .then(b.head.cmp(&a.head))
    });

    let needed_by_window = window(&chains, policy, now);
    let mut reasons: Vec<Option<Reason>> = chains
        .iter()
        .enumerate()
        .map(|(i, chain)| {
            if let Some(marked) = chain.members.iter().find(|m| m.keep) {
                Some(Reason::Marked {
                    by: marked.id.clone(),
                })
            } else if !chain.complete {
                None
            } else if i == 0 && chain.on_lineage {
                Some(Reason::NewestFull)
            } else if i < policy.full as usize && chain.on_lineage {
                Some(Reason::FullCount { count: policy.full })
            } else if needed_by_window.contains(&i) {
                policy.max_age.map(|max_age| Reason::Window { max_age })
            } else {
                None
            }
        })
        .collect();

    // Rule 5, to a fixed point: keeping a chain for its files may make its own files matter.
    let chain_of: BTreeMap<&str, usize> = chains
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.members.iter().map(move |m| (m.id.as_str(), i)))
        .collect();
    loop {
        let mut newly = Vec::new();
        for (i, chain) in chains.iter().enumerate() {
            if reasons[i].is_none() {
                continue;
            }
            for m in &chain.members {
                let stores: BTreeSet<&str> = m
                    .files
                    .iter()
                    .flat_map(|f| f.objects())
                    .map(|o| o.stored_in)
                    .collect();
                for holder in stores {
                    if let Some(&j) = chain_of.get(holder) {
                        if reasons[j].is_none() && !newly.iter().any(|(k, _)| *k == j) {
                            newly.push((j, m.id.clone()));
                        }
                    }
                }
            }
        }
        if newly.is_empty() {
            break;
        }
        for (j, by) in newly {
            reasons[j] = Some(Reason::HoldsFilesOf { by });
        }
    }

    let mut verdicts = Vec::new();
    for (chain, reason) in chains.iter().zip(reasons) {
        let expire = reason.is_none();
        let reason = reason.unwrap_or_else(|| {
            if let (false, true, Some(l)) = (chain.on_lineage, chain.complete, &lineage) {
                Reason::OffLineage {
                    timeline: l.timeline,
                }
            } else if chain.complete {
                Reason::Unneeded {
                    full: policy.full,
                    max_age: policy.max_age,
                }
            } else {
                Reason::Orphan {
                    missing: chain.head.clone(),
                }
            }
        });
        for m in &chain.members {
            verdicts.push(Verdict {
                id: m.id.clone(),
                kind: m.kind,
                expire,
                chain: (m.id != chain.head && !chain.head.is_empty()).then(|| chain.head.clone()),
                reason: reason.clone(),
            });
        }
    }
    verdicts.sort_by(|a, b| a.id.cmp(&b.id));
    Selection { verdicts }
}

/// The full backup `m` builds on (`true`), or the parent where its chain breaks off (`false`):
/// a missing manifest, no parent recorded (`""`), or parents that loop.
fn chain_head(m: &Manifest, by_id: &BTreeMap<&str, &Manifest>) -> (String, bool) {
    let mut current = m;
    for _ in 0..=by_id.len() {
        if current.kind == BackupKind::Full {
            return (current.id.clone(), true);
        }
        let Some(parent) = current.parent.as_deref() else {
            return (String::new(), false);
        };
        match by_id.get(parent) {
            Some(p) => current = p,
            None => return (parent.to_owned(), false),
        }
    }
    (current.parent.clone().unwrap_or_default(), false)
}

/// Indexes of the complete chains a restore to some point of the last `policy.max_age` needs.
fn window(chains: &[Chain], policy: &Policy, now: DateTime<Utc>) -> BTreeSet<usize> {
    let Some(max_age) = policy.max_age else {
        return BTreeSet::new();
    };
    let complete = chains.iter().enumerate().filter(|(_, c)| c.complete);
    let opened = chrono::Duration::from_std(max_age)
        .ok()
        .and_then(|d| now.checked_sub_signed(d));
    let Some(opened) = opened else {
        // A window longer than the calendar: every backup is in it.
        return complete.map(|(i, _)| i).collect();
    };
    // A restore to the window's first moment starts from the newest backup of the lineage
    // that had ended by then (a restore target must lie after the backup's end).
    let anchor = complete
        .clone()
        .filter(|(_, c)| c.on_lineage)
        .flat_map(|(_, c)| c.members.iter())
        .filter(|m| m.stop_time <= opened)
        .max_by(|a, b| a.stop_time.cmp(&b.stop_time).then(a.id.cmp(&b.id)))
        .map(|m| m.id.as_str());
    complete
        .filter(|(_, c)| {
            c.members
                .iter()
                .any(|m| m.stop_time > opened || Some(m.id.as_str()) == anchor)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Ids of unfinished backups (objects, no manifest) that are abandoned: every one but
/// `running`, the backup a live backup lease names. One backup of a repository runs at a time,
/// and it names itself in the lease before its first object (see `exclusive`), so any other
/// unfinished backup was interrupted and its objects will never be part of a backup.
pub fn abandoned<'a>(unfinished: &'a [String], running: Option<&str>) -> Vec<&'a str> {
    unfinished
        .iter()
        .map(String::as_str)
        .filter(|id| Some(*id) != running)
        .collect()
}

/// The start segment of the kept backup that starts lowest in the WAL (by
/// [`SegmentName::position`], whatever the timeline); `None` without a kept backup, when no
/// WAL may be deleted.
pub fn wal_horizon<'a>(
    kept: impl IntoIterator<Item = &'a Manifest>,
) -> Result<Option<SegmentName>> {
    let mut lowest: Option<SegmentName> = None;
    for m in kept {
        let start = SegmentName::parse(&m.start_wal)
            .with_context(|| format!("the manifest of backup {} has a bad start_wal", m.id))?;
        if lowest.is_none_or(|l| start.position() < l.position()) {
            lowest = Some(start);
        }
    }
    Ok(lowest)
}

/// The WAL files of one timeline to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDeletion {
    /// Keys of segments and partial segments, in order.
    pub segments: Vec<String>,
    /// Keys of backup history files (`.backup`) of backups that started below the horizon.
    pub backup_files: Vec<String>,
    /// The last segment deleted.
    pub last: Option<SegmentName>,
}

impl WalDeletion {
    /// Every key, segments first.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.segments
            .iter()
            .chain(&self.backup_files)
            .map(String::as_str)
    }
}

/// Which of the repository keys `keys` (anything under `wal/`) to delete so that, on every
/// timeline, only WAL at or after `horizon`'s position remains. Keys that are not WAL files
/// where the layout puts them are never deleted, nor are history files.
pub fn wal_to_delete(keys: &[String], horizon: SegmentName) -> BTreeMap<TimelineId, WalDeletion> {
    let horizon = horizon.position();
    let mut out: BTreeMap<TimelineId, WalDeletion> = BTreeMap::new();
    for key in keys {
        let Some(name) = key.rsplit('/').next() else {
            continue;
        };
        let Ok(file) = WalFileName::parse(name) else {
            continue;
        };
        if wal_key(name).ok().as_deref() != Some(key.as_str()) {
            continue;
        }
        let Some(segment) = file.segment() else {
            continue; // a history file
        };
        if segment.position() >= horizon {
            continue;
        }
        let entry = out.entry(file.timeline()).or_insert(WalDeletion {
            segments: Vec::new(),
            backup_files: Vec::new(),
            last: None,
        });
        match file {
            WalFileName::BackupHistory { .. } => entry.backup_files.push(key.clone()),
            _ => {
                entry.segments.push(key.clone());
                entry.last = entry.last.max(Some(segment));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backup::manifest::FileEntry;

    const DAY: i64 = 86_400;

    /// `now` in the tests.
    pub(crate) fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A backup that started `days_ago` days before `now` (optionally plus `secs`), lasted
    /// 10 minutes and starts in WAL segment `seg` of timeline 1. An incremental one stores
    /// one file in itself and one in its parent.
    fn backup(days_ago: i64, kind: BackupKind, parent: Option<&Manifest>, seg: u32) -> Manifest {
        let start = now() - chrono::Duration::seconds(days_ago * DAY);
        let id = super::super::manifest::backup_id(start, kind);
        let file = |path: &str, stored_in: &str| FileEntry {
            path: path.into(),
            size: 1,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o600,
            checksum: "00".into(),
            stored_size: 1,
            stored_in: stored_in.into(),
            bad_blocks: vec![],
            parts: vec![],
            bundle: None,
        };
        let mut files = vec![file("base/1/1", &id)];
        if let Some(p) = parent {
            files.push(file("base/1/2", &p.files[1].stored_in));
        } else {
            files.push(file("base/1/2", &id));
        }
        Manifest {
            format_version: 1,
            id: id.clone(),
            kind,
            parent: parent.map(|p| p.id.clone()),
            pg_major: 16,
            system_identifier: "1".into(),
            timeline: 1,
            start_lsn: format!("0/{seg:X}000028"),
            stop_lsn: format!("0/{seg:X}000100"),
            start_wal: format!("00000001000000{:02X}{:08X}", 0, seg),
            stop_wal: format!("00000001000000{:02X}{:08X}", 0, seg),
            start_time: start,
            stop_time: start + chrono::Duration::minutes(10),
            data_checksums: true,
            tablespaces: vec![],
            directories: vec![],
            files,
            annotations: BTreeMap::new(),
            keep: false,
            size: 2,
            stored_size: 2,
            read_size: 2,
            created_by: "pgward test".into(),
        }
    }

    pub(crate) fn full(days_ago: i64, seg: u32) -> Manifest {
        backup(days_ago, BackupKind::Full, None, seg)
    }

    pub(crate) fn incr(days_ago: i64, parent: &Manifest, seg: u32) -> Manifest {
        backup(days_ago, BackupKind::Incremental, Some(parent), seg)
    }

    fn policy(full: u32, max_age_days: Option<u64>) -> Policy {
        Policy {
            full,
            max_age: max_age_days.map(|d| Duration::from_secs(d * DAY as u64)),
        }
    }

    fn ids(it: impl Iterator<Item = impl AsRef<str>>) -> Vec<String> {
        it.map(|s| s.as_ref().to_owned()).collect()
    }

    fn expired(manifests: &[Manifest], policy: Policy) -> Vec<String> {
        ids(select(manifests, &policy, now()).expired())
    }

    fn reason_of(selection: &Selection, id: &str) -> String {
        let v = selection.verdicts.iter().find(|v| v.id == id).unwrap();
        format!(
            "{} ({})",
            if v.expire { "expire" } else { "keep" },
            v.explain()
        )
    }

    #[test]
    fn windows_read_as_written() {
        let s = |secs: u64| span(Duration::from_secs(secs));
        assert_eq!(s(30 * 86_400), "30d");
        assert_eq!(s(31 * 86_400), "31d");
        assert_eq!(s(36 * 3_600), "1d 12h");
        assert_eq!(s(90), "1m 30s");
        assert_eq!(span(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn nothing_to_decide_without_backups() {
        assert_eq!(
            select(&[], &policy(2, Some(7)), now()),
            Selection::default()
        );
    }

    #[test]
    fn full_count_keeps_the_newest_chains() {
        let b: Vec<Manifest> = (0..5).map(|i| full(50 - 10 * i, i as u32 + 1)).collect();
        assert_eq!(
            expired(&b, policy(2, None)),
            ids([&b[0].id, &b[1].id, &b[2].id].iter())
        );
        assert_eq!(expired(&b, policy(5, None)), Vec::<String>::new());
        assert_eq!(expired(&b, policy(9, None)), Vec::<String>::new());
        let s = select(&b, &policy(2, None), now());
        assert_eq!(reason_of(&s, &b[4].id), "keep (newest full backup)");
        assert_eq!(
            reason_of(&s, &b[3].id),
            "keep (one of the 2 newest full backups)"
        );
        assert_eq!(
            reason_of(&s, &b[0].id),
            "expire (older than the 2 newest full backups)"
        );
    }

    #[test]
    fn the_newest_full_backup_always_stays() {
        let b = [full(400, 1), full(300, 2)];
        // Both are far outside a one-day window, and one full is asked for.
        assert_eq!(expired(&b, policy(1, Some(1))), vec![b[0].id.clone()]);
        // Only incrementals since the newest full: the whole chain stays.
        let f = full(100, 3);
        let i1 = incr(90, &f, 4);
        let i2 = incr(80, &i1, 5);
        let b = [full(200, 1), f.clone(), i1.clone(), i2.clone()];
        let s = select(&b, &policy(1, Some(1)), now());
        assert_eq!(ids(s.kept()), ids([&f.id, &i1.id, &i2.id].iter()));
        assert_eq!(
            reason_of(&s, &i2.id),
            format!("keep (chain of {}: newest full backup)", f.id)
        );
    }

    #[test]
    fn an_incremental_chain_goes_with_its_full_backup() {
        let f1 = full(30, 1);
        let i1 = incr(29, &f1, 2);
        let i2 = incr(28, &i1, 3);
        let f2 = full(20, 4);
        let i3 = incr(19, &f2, 5);
        let f3 = full(10, 6);
        let b = [
            f1.clone(),
            i1.clone(),
            i2.clone(),
            f2.clone(),
            i3.clone(),
            f3.clone(),
        ];
        assert_eq!(
            expired(&b, policy(2, None)),
            ids([&f1.id, &i1.id, &i2.id].iter())
        );
        let s = select(&b, &policy(2, None), now());
        assert_eq!(
            reason_of(&s, &i2.id),
            format!(
                "expire (chain of {}: older than the 2 newest full backups)",
                f1.id
            )
        );
        assert_eq!(
            reason_of(&s, &i3.id),
            format!(
                "keep (chain of {}: one of the 2 newest full backups)",
                f2.id
            )
        );
        assert_eq!(
            expired(&b, policy(1, None)),
            ids([&f1.id, &i1.id, &i2.id, &f2.id, &i3.id].iter())
        );
    }

    #[test]
    fn keep_protects_the_whole_chain_it_is_in() {
        let f1 = full(30, 1);
        let i1 = incr(29, &f1, 2);
        let mut i2 = incr(28, &i1, 3);
        i2.keep = true;
        let i3 = incr(27, &i2, 4);
        let f2 = full(20, 5);
        let f3 = full(10, 6);
        let b = [
            f1.clone(),
            i1.clone(),
            i2.clone(),
            i3.clone(),
            f2.clone(),
            f3.clone(),
        ];
        let s = select(&b, &policy(1, None), now());
        assert_eq!(ids(s.expired()), vec![f2.id.clone()]);
        assert_eq!(
            reason_of(&s, &f1.id),
            format!("keep ({} is marked keep)", i2.id)
        );
        assert_eq!(
            reason_of(&s, &i3.id),
            format!("keep (chain of {}: {} is marked keep)", f1.id, i2.id)
        );
        // A marked full backup, however old, and nothing else beyond the count.
        let mut old = full(900, 1);
        old.keep = true;
        let b = [old.clone(), full(20, 2), full(10, 3)];
        assert_eq!(expired(&b, policy(1, Some(1))), vec![b[1].id.clone()]);
    }

    #[test]
    fn max_age_keeps_the_window_and_the_backup_a_restore_to_its_start_needs() {
        // Weekly fulls, 10 weeks back; each ended 10 minutes after it started.
        let b: Vec<Manifest> = (0..10).map(|w| full(70 - 7 * w, w as u32 + 1)).collect();
        // Window of 30 days: backups that ended within it are 28, 21, 14, 7 days old (and 0);
        // the one 35 days old is where a restore to 30 days ago starts.
        let s = select(&b, &policy(1, Some(30)), now());
        assert_eq!(ids(s.expired()), ids(b[..5].iter().map(|m| &m.id)));
        assert_eq!(
            reason_of(&s, &b[5].id),
            "keep (needed to restore within the last 30d)"
        );
        assert_eq!(
            reason_of(&s, &b[4].id),
            "expire (older than the newest full backup and not needed to restore within \
             the last 30d)"
        );
        // The rules add up: 6 newest by count beats the window.
        assert_eq!(
            expired(&b, policy(6, Some(30))),
            ids(b[..4].iter().map(|m| &m.id))
        );
        assert_eq!(
            expired(&b, policy(8, Some(30))),
            ids(b[..2].iter().map(|m| &m.id))
        );
    }

    #[test]
    fn max_age_boundary_is_the_backups_end() {
        let old = full(40, 1);
        let mut edge = full(20, 2);
        let new = full(1, 3);
        let window = Duration::from_secs(10 * DAY as u64);
        let p = Policy {
            full: 1,
            max_age: Some(window),
        };
        // `edge` ended exactly when the window opens: a restore to that moment starts from it,
        // and nothing older is needed.
        edge.stop_time = now() - chrono::Duration::from_std(window).unwrap();
        let b = [old.clone(), edge.clone(), new.clone()];
        assert_eq!(expired(&b, p), vec![old.id.clone()]);
        // One second later it ended inside the window: still kept, and so is `old`, where a
        // restore to the window's first moment now starts.
        edge.stop_time += chrono::Duration::seconds(1);
        let b = [old.clone(), edge.clone(), new.clone()];
        assert_eq!(expired(&b, p), Vec::<String>::new());
        // One second earlier: `edge` starts restores to the window's first moment, `old` goes.
        edge.stop_time -= chrono::Duration::seconds(2);
        let b = [old.clone(), edge, new];
        assert_eq!(expired(&b, p), vec![old.id.clone()]);
    }

    #[test]
    fn max_age_keeps_the_chain_of_an_incremental_that_starts_restores() {
        // A full 60 days ago with daily incrementals up to 20 days ago, then a new full.
        let f1 = full(60, 1);
        let mut chain = vec![f1.clone()];
        for d in (20..60).rev() {
            let i = incr(d, chain.last().unwrap(), 100 - d as u32);
            chain.push(i);
        }
        let f2 = full(10, 200);
        let mut b = chain.clone();
        b.push(f2.clone());
        // The window of 30 days opens in the middle of f1's chain: all of it stays.
        assert_eq!(expired(&b, policy(1, Some(30))), Vec::<String>::new());
        // A window of 15 days opens after the chain's last incremental (20 days ago) ended:
        // that incremental starts restores to its first moment, so the chain still stays.
        assert_eq!(expired(&b, policy(1, Some(15))), Vec::<String>::new());
        // A window of 5 days opens after f2 ended: f1's chain goes.
        assert_eq!(
            expired(&b, policy(1, Some(5))),
            ids(chain.iter().map(|m| &m.id))
        );
    }

    #[test]
    fn everything_is_kept_when_no_backup_ended_before_the_window() {
        let b = [full(3, 1), full(2, 2), full(1, 3)];
        assert_eq!(expired(&b, policy(1, Some(30))), Vec::<String>::new());
        // A window longer than the calendar.
        let huge = Policy {
            full: 1,
            max_age: Some(Duration::from_secs(u64::MAX / 4)),
        };
        assert_eq!(expired(&b, huge), Vec::<String>::new());
    }

    #[test]
    fn orphaned_incrementals_expire_unless_marked() {
        let gone = full(30, 1);
        let i1 = incr(29, &gone, 2);
        let i2 = incr(28, &i1, 3);
        let f = full(10, 4);
        let b = [i1.clone(), i2.clone(), f.clone()];
        let s = select(&b, &policy(5, Some(365)), now());
        assert_eq!(ids(s.expired()), ids([&i1.id, &i2.id].iter()));
        assert_eq!(
            reason_of(&s, &i2.id),
            format!(
                "expire (chain of {}: its chain reaches no complete full backup (parent {}): \
                 it cannot be restored)",
                gone.id, gone.id
            )
        );
        let mut marked = i2.clone();
        marked.keep = true;
        let s = select(&[i1.clone(), marked, f.clone()], &policy(1, None), now());
        assert_eq!(ids(s.expired()), Vec::<String>::new());
        // No parent recorded at all, and parents that loop.
        let mut lone = incr(5, &f, 5);
        lone.parent = None;
        let mut a = incr(4, &f, 6);
        let mut c = incr(3, &f, 7);
        a.parent = Some(c.id.clone());
        c.parent = Some(a.id.clone());
        let b = [f.clone(), lone.clone(), a.clone(), c.clone()];
        let s = select(&b, &policy(1, None), now());
        assert_eq!(ids(s.expired()), ids([&lone.id, &a.id, &c.id].iter()));
        assert_eq!(
            reason_of(&s, &lone.id),
            "expire (an incremental backup without a parent: it cannot be restored)"
        );
    }

    #[test]
    fn chains_off_the_lineage_neither_count_nor_stay_unless_the_window_keeps_them() {
        // f1 is the lineage's; f2 and its incremental were taken on a branch the cluster
        // left (a point-in-time restore went back before them), and are newer.
        let (f1, f2) = (full(20, 1), full(10, 2));
        let i2 = incr(9, &f2, 3);
        let b = [f1.clone(), f2.clone(), i2.clone()];
        let holds = |m: &Manifest| m.id == f1.id;
        let on = || {
            Some(OnLineage {
                timeline: 2,
                holds: &holds,
            })
        };
        let s = select_on(&b, &policy(1, None), now(), on());
        assert_eq!(ids(s.kept()), ids([&f1.id].iter()));
        assert_eq!(reason_of(&s, &f1.id), "keep (newest full backup)");
        assert_eq!(
            reason_of(&s, &i2.id),
            format!(
                "expire (chain of {}: not on the lineage of timeline 2 (a branch the cluster \
                 left) and not needed within the retention window)",
                f2.id
            )
        );
        // Ended within max_age: kept for a restore to that branch; not the window's anchor.
        let s = select_on(&b, &policy(1, Some(15)), now(), on());
        assert_eq!(ids(s.expired()), Vec::<String>::new());
        // Without a lineage, the newest chain is the branch's.
        assert_eq!(expired(&b, policy(1, None)), ids([&f1.id].iter()));
    }

    #[test]
    fn a_kept_backup_keeps_the_chains_that_store_its_files() {
        // Files pointing outside their own chain do not happen with pgward's incrementals;
        // should a manifest say so, the objects it reads stay anyway.
        let f1 = full(30, 1);
        let f2 = full(20, 2);
        let mut f3 = full(10, 3);
        f3.files[1].stored_in = f1.id.clone();
        let b = [f1.clone(), f2.clone(), f3.clone()];
        let s = select(&b, &policy(1, None), now());
        assert_eq!(ids(s.expired()), vec![f2.id.clone()]);
        assert_eq!(
            reason_of(&s, &f1.id),
            format!("keep (holds files of kept backup {})", f3.id)
        );
    }

    #[test]
    fn unfinished_backups_are_abandoned_unless_a_live_lease_names_them() {
        let before = "20261220T000000F".to_owned();
        let running = "20261230T000000I".to_owned();
        let unfinished = [before.clone(), running.clone()];
        assert_eq!(
            abandoned(&unfinished, Some(&running)),
            vec![before.as_str()]
        );
        assert_eq!(
            abandoned(&unfinished, None),
            vec![before.as_str(), running.as_str()]
        );
    }

    #[test]
    fn wal_horizon_is_the_lowest_start_of_the_kept_backups() {
        let mut a = full(10, 0x30);
        let b = full(5, 0x20);
        let name = |m: Option<SegmentName>| m.map(|s| s.to_string());
        assert_eq!(
            name(wal_horizon([&a, &b]).unwrap()).as_deref(),
            Some("000000010000000000000020")
        );
        // Positions, not names: a later timeline does not make a start later.
        a.start_wal = "000000030000000000000010".into();
        assert_eq!(
            name(wal_horizon([&a, &b]).unwrap()).as_deref(),
            Some("000000030000000000000010")
        );
        assert_eq!(wal_horizon([]).unwrap(), None);
        a.start_wal = "junk".into();
        let err = wal_horizon([&a]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!(
                "the manifest of backup {} has a bad start_wal",
                a.id
            )),
            "{err:#}"
        );
    }

    #[test]
    fn wal_below_the_horizon_goes_on_every_timeline_history_stays() {
        let keys: Vec<String> = [
            "wal/00000001/000000010000000000000009",
            "wal/00000001/00000001000000000000000A",
            "wal/00000001/00000001000000000000000A.00000028.backup",
            "wal/00000001/00000001000000000000000B.partial",
            "wal/00000001/00000001000000000000000C",
            "wal/00000002/00000002.history",
            "wal/00000002/00000002000000000000000B",
            "wal/00000002/00000002000000000000000C",
            "wal/00000002/00000002000000000000000C.00000060.backup",
            "wal/00000002/00000002000000010000000A",
            "wal/00000003/00000003.history",
            "wal/00000003/00000003000000000000000A",
            // Not where the layout puts them, or not WAL: never touched.
            "wal/00000001/00000002000000000000000A",
            "wal/00000001/notes.txt",
            "wal/00000001/000000010000000000000001.partial.old",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let horizon = SegmentName::parse("00000002000000000000000C").unwrap();
        let plan = wal_to_delete(&keys, horizon);
        let one = &plan[&TimelineId(1)];
        assert_eq!(
            one.segments,
            [
                "wal/00000001/000000010000000000000009",
                "wal/00000001/00000001000000000000000A",
                "wal/00000001/00000001000000000000000B.partial",
            ]
        );
        assert_eq!(
            one.backup_files,
            ["wal/00000001/00000001000000000000000A.00000028.backup"]
        );
        assert_eq!(one.last.unwrap().to_string(), "00000001000000000000000B");
        let two = &plan[&TimelineId(2)];
        assert_eq!(two.segments, ["wal/00000002/00000002000000000000000B"]);
        assert!(two.backup_files.is_empty());
        let three = &plan[&TimelineId(3)];
        assert_eq!(three.segments, ["wal/00000003/00000003000000000000000A"]);
        assert_eq!(plan.len(), 3);
        assert_eq!(one.keys().count(), 4);
        let first = SegmentName::parse("000000010000000000000000").unwrap();
        assert!(wal_to_delete(&keys, first).is_empty());
    }
}
