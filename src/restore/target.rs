//! Recovery settings of a restored cluster: `recovery.signal` (`standby.signal` for a
//! standby), and a block in `postgresql.auto.conf` with `restore_command` (pgward's
//! `wal-fetch`) and the recovery target, or a standby's `primary_conninfo` and slot. A block from an earlier restore is replaced, never stacked: a stale
//! `recovery_target_time` left behind would stop a later recovery at the wrong point.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::postgres::standby::STANDBY_SIGNAL;
use crate::postgres::wal::{Lsn, TimelineId};

/// The file that makes postgres recover, then promote.
const RECOVERY_SIGNAL: &str = "recovery.signal";
const BEGIN: &str = "# pgward restore: recovery settings (begin)";
const END: &str = "# pgward restore: recovery settings (end)";

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    EndOfWal,
    /// As soon as the backup is consistent.
    Immediate,
    /// A timestamp postgres understands (`2026-11-30 03:55:00+00`).
    Time(String),
    Lsn(Lsn),
    Xid(u64),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
}

/// What postgres does at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    pub fn parse(s: &str) -> Result<TargetAction> {
        Ok(match s {
            "pause" => TargetAction::Pause,
            "promote" => TargetAction::Promote,
            "shutdown" => TargetAction::Shutdown,
            other => bail!("invalid target action {other:?} (use pause, promote or shutdown)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Everything written for recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySettings {
    /// The shell command postgres runs to fetch WAL (`%f`, `%p`).
    pub restore_command: String,
    pub target: RecoveryTarget,
    /// Default: postgres's own (`pause`).
    pub action: Option<TargetAction>,
    /// Written into the block's comment.
    pub backup_id: String,
    /// `recovery_target_timeline`: the lineage the restore is for, so recovery never follows
    /// a newer branch of another cluster.
    pub timeline: RecoveryTimeline,
    /// A hot standby: it streams from its primary and follows the primary's timelines, with
    /// no target; `None`: recovery, then promotion.
    pub standby: Option<StandbySettings>,
}

/// What a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    /// `primary_conninfo`, without a password (a `passfile=` names where it is).
    pub primary_conninfo: String,
    /// `primary_slot_name`.
    pub slot: Option<String>,
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryTimeline {
    /// The newest timeline the archive holds a history of (postgres's default).
    #[default]
    Latest,
    /// The backup's own timeline: no history file needed.
    Current,
    /// This timeline, descending from the backup's: its history file must be in the archive
    /// (postgres refuses to start otherwise).
    Id(TimelineId),
}

impl RecoveryTimeline {
    /// Pinned to timeline `tli` for a backup taken on `backup_tli`: `current` when they are
    /// the same (no history file needed), else the number.
    pub fn pinned(tli: TimelineId, backup_tli: u32) -> RecoveryTimeline {
        match tli.0 == backup_tli {
            true => RecoveryTimeline::Current,
            false => RecoveryTimeline::Id(tli),
        }
    }
}

impl RecoverySettings {
    /// The `postgresql.auto.conf` block.
    pub fn block(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{BEGIN}");
        let _ = writeln!(out, "# from backup {}", self.backup_id);
        let _ = writeln!(out, "restore_command = {}", quote(&self.restore_command));
        if let Some(standby) = &self.standby {
            // A standby follows its primary onto each new timeline, and has no target.
            let _ = writeln!(
                out,
                "primary_conninfo = {}",
                quote(&standby.primary_conninfo)
            );
            if let Some(slot) = &standby.slot {
                let _ = writeln!(out, "primary_slot_name = {}", quote(slot));
            }
            let _ = writeln!(out, "recovery_target_timeline = 'latest'");
            let _ = writeln!(out, "{END}");
            return out;
        }
        let timeline = match self.timeline {
            RecoveryTimeline::Latest => "latest".to_owned(),
            RecoveryTimeline::Current => "current".to_owned(),
            RecoveryTimeline::Id(tli) => tli.to_string(),
        };
        let _ = writeln!(out, "recovery_target_timeline = '{timeline}'");
        match &self.target {
            RecoveryTarget::EndOfWal => {}
            RecoveryTarget::Immediate => {
                let _ = writeln!(out, "recovery_target = 'immediate'");
            }
            RecoveryTarget::Time(t) => {
                let _ = writeln!(out, "recovery_target_time = {}", quote(t));
            }
            RecoveryTarget::Lsn(lsn) => {
                let _ = writeln!(out, "recovery_target_lsn = '{lsn}'");
            }
            RecoveryTarget::Xid(xid) => {
                let _ = writeln!(out, "recovery_target_xid = '{xid}'");
            }
            RecoveryTarget::Name(name) => {
                let _ = writeln!(out, "recovery_target_name = {}", quote(name));
            }
        }
        if let Some(action) = self.action {
            let _ = writeln!(out, "recovery_target_action = '{}'", action.name());
        }
        let _ = writeln!(out, "{END}");
        out
    }

    /// Writes the block into `data_dir/postgresql.auto.conf` (replacing an earlier one) and
    /// creates `recovery.signal`, or `standby.signal` for a standby (the other one removed,
    /// were an earlier attempt made with another config).
    pub fn write(&self, data_dir: &Path) -> Result<()> {
        let conf = data_dir.join("postgresql.auto.conf");
        let existing = match std::fs::read_to_string(&conf) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", conf.display())),
        };
        let mut text = without_block(&existing);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&self.block());
        super::write_file(&conf, text.as_bytes())?;
        let (signal, other) = match self.standby {
            Some(_) => (STANDBY_SIGNAL, RECOVERY_SIGNAL),
            None => (RECOVERY_SIGNAL, STANDBY_SIGNAL),
        };
        match std::fs::remove_file(data_dir.join(other)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {other}")),
        }
        super::write_file(&data_dir.join(signal), b"")
    }
}

/// `text` without a block written by an earlier restore.
fn without_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            BEGIN => inside = true,
            END if inside => inside = false,
            _ if inside => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A GUC string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The common shapes of a recovery target time (`2026-11-30 03:55:00+00`, with or without
/// fractional seconds, `T`, or a zone); `None` for anything else.
pub fn parse_target_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    // Without a zone, postgres reads the server's TimeZone; UTC is what images run with.
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target: RecoveryTarget) -> RecoverySettings {
        RecoverySettings {
            restore_command: "/usr/bin/pgward --config '/etc/p g.yaml' wal-fetch %f %p".into(),
            target,
            action: Some(TargetAction::Promote),
            backup_id: "20261130T035500F".into(),
            timeline: RecoveryTimeline::Latest,
            standby: None,
        }
    }

    #[test]
    fn a_standby_streams_from_its_primary_follows_the_latest_timeline_and_has_no_target() {
        let standby = RecoverySettings {
            standby: Some(StandbySettings {
                primary_conninfo: "host=db-0 user=r passfile=/run/pg/p".into(),
                slot: Some("standby_1".into()),
            }),
            timeline: RecoveryTimeline::Current,
            action: None,
            ..settings(RecoveryTarget::EndOfWal)
        };
        let block = standby.block();
        assert!(block.contains("primary_conninfo = 'host=db-0 user=r passfile=/run/pg/p'\n"));
        assert!(block.contains("primary_slot_name = 'standby_1'\n"));
        assert!(
            block.contains("recovery_target_timeline = 'latest'\n"),
            "{block}"
        );
        assert!(!block.contains("recovery_target_action"), "{block}");
        let dir = tempfile::tempdir().unwrap();
        // An earlier attempt as a plain restore left recovery.signal: a standby has none.
        std::fs::write(dir.path().join("recovery.signal"), "").unwrap();
        standby.write(dir.path()).unwrap();
        assert!(dir.path().join("standby.signal").exists());
        assert!(!dir.path().join("recovery.signal").exists());
    }

    #[test]
    fn a_block_replaces_the_one_of_an_earlier_restore() {
        let first = settings(RecoveryTarget::Time("2026-11-30 03:55:00+00".into())).block();
        assert!(first.contains("recovery_target_time = '2026-11-30 03:55:00+00'\n"));
        assert!(first.contains(
            "restore_command = '/usr/bin/pgward --config ''/etc/p g.yaml'' wal-fetch %f %p'\n"
        ));
        let conf = format!("work_mem = '8MB'\n{first}max_connections = '50'\n");
        let second = settings(RecoveryTarget::EndOfWal);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.auto.conf"), conf).unwrap();
        second.write(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(!written.contains("recovery_target_time ="), "{written}");
        assert!(written.starts_with("work_mem = '8MB'\nmax_connections = '50'\n"));
        assert!(written.ends_with(&second.block()));
        assert!(dir.path().join("recovery.signal").exists());
    }

    #[test]
    fn targets_and_actions() {
        let lsn = settings(RecoveryTarget::Lsn(Lsn(0x3_0000_0028))).block();
        assert!(lsn.contains("recovery_target_lsn = '3/28'\n"), "{lsn}");
        assert!(settings(RecoveryTarget::Immediate)
            .block()
            .contains("recovery_target = 'immediate'\n"));
        assert!(settings(RecoveryTarget::Name("before-delete".into()))
            .block()
            .contains("recovery_target_name = 'before-delete'\n"));
        assert!(settings(RecoveryTarget::Xid(1234))
            .block()
            .contains("recovery_target_action = 'promote'\n"));
        assert!(TargetAction::parse("resume").is_err());
        let pinned = RecoverySettings {
            timeline: RecoveryTimeline::Id(TimelineId(3)),
            ..settings(RecoveryTarget::EndOfWal)
        };
        assert!(pinned.block().contains("recovery_target_timeline = '3'\n"));
        assert!(lsn.contains("recovery_target_timeline = 'latest'\n"));
        let current = RecoverySettings {
            timeline: RecoveryTimeline::Current,
            ..settings(RecoveryTarget::EndOfWal)
        };
        assert!(current
            .block()
            .contains("recovery_target_timeline = 'current'\n"));
        assert_eq!(
            RecoveryTimeline::pinned(TimelineId(2), 2),
            RecoveryTimeline::Current
        );
        assert_eq!(
            RecoveryTimeline::pinned(TimelineId(3), 2),
            RecoveryTimeline::Id(TimelineId(3))
        );
    }

    #[test]
    fn target_times_in_the_shapes_people_type() {
        let want = chrono::DateTime::parse_from_rfc3339("2026-11-30T03:55:00Z").unwrap();
        for text in [
            "2026-11-30 03:55:00+00",
            "2026-11-30 04:55:00+01:00",
            "2026-11-30T03:55:00Z",
            "2026-11-30 03:55:00",
            "2026-11-30 03:55:00.000000+00",
        ] {
            assert_eq!(parse_target_time(text), Some(want.into()), "{text}");
        }
        assert_eq!(parse_target_time("yesterday"), None);
    }
}
