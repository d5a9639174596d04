//! Non-exclusive backup mode, held on one session: the SQL that starts and stops it, which
//! PostgreSQL 15 renamed (`pg_start_backup`/`pg_stop_backup` before, `pg_backup_start`/
//! `pg_backup_stop` since). If the session ends before the stop, the server leaves backup
//! mode by itself, so a failed backup needs no clean-up here. Works on a primary and on a hot
//! standby alike.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::wal::{Lsn, SegmentName, TimelineId, WalSegSize};

/// Where a backup starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    pub lsn: String,
    /// Timeline of the checkpoint the backup starts from.
    pub timeline: u32,
    /// The WAL segment holding `lsn`.
    pub wal: String,
}

/// Where a backup stops, and the files the server wrote for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStop {
    pub lsn: String,
    /// The WAL segment holding `lsn`: the backup is usable once it is archived.
    pub wal: String,
    /// The `backup_label` a restore must put in the data directory.
    pub label_file: String,
    /// The `tablespace_map`, when the cluster has tablespaces.
    pub tablespace_map: Option<String>,
}

/// Starts backup mode with an immediate checkpoint (`fast`; on a standby, from its last
/// restartpoint), labelled `label`. Segment names are computed for WAL segments of
/// `seg_size`: the server refuses to name them during recovery.
pub async fn start(
    client: &Client,
    label: &str,
    pg_major: u32,
    seg_size: WalSegSize,
) -> Result<BackupStart> {
    let sql = if pg_major >= 15 {
        "SELECT pg_backup_start($1, true)::text"
    } else {
        "SELECT pg_start_backup($1, true, false)::text"
    };
    let lsn: String = client
        .query_one(sql, &[&label])
        .await
        .context("start the backup (pg_backup_start)")?
        .get(0);
    let timeline: i32 = client
        .query_one("SELECT timeline_id::int4 FROM pg_control_checkpoint()", &[])
        .await
        .context("read the backup's timeline")?
        .get(0);
    let timeline = timeline as u32;
    let wal = segment_of(&lsn, timeline, seg_size)?;
    Ok(BackupStart { lsn, timeline, wal })
}

/// The name of the segment holding `lsn` (as `pg_walfile_name` gives it) on `timeline`.
fn segment_of(lsn: &str, timeline: u32, seg_size: WalSegSize) -> Result<String> {
    let position: Lsn = lsn
        .parse()
        .with_context(|| format!("the server gave the LSN {lsn:?}"))?;
    Ok(
        SegmentName::ending_at(TimelineId(timeline), position, seg_size)
            .with_context(|| format!("name the segment of {lsn}"))?
            .to_string(),
    )
}

/// Ends backup mode without waiting for the archive (the caller waits for its own archive).
/// The stop segment is named on `timeline` (the start's: a backup never spans a timeline
/// switch, which the caller refuses).
pub async fn stop(
    client: &Client,
    pg_major: u32,
    timeline: u32,
    seg_size: WalSegSize,
) -> Result<BackupStop> {
    let sql = if pg_major >= 15 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(sql, &[])
        .await
        .context("stop the backup (pg_backup_stop)")?;
    let (lsn, label_file, tablespace_map): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let wal = segment_of(&lsn, timeline, seg_size)?;
    Ok(BackupStop {
        lsn,
        wal,
        label_file,
        tablespace_map: tablespace_map.filter(|m| !m.is_empty()),
    })
}
