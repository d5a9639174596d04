//! Non-exclusive backup mode, held on one session: the SQL that starts and stops it, which
//! PostgreSQL 15 renamed (`pg_start_backup`/`pg_stop_backup` before, `pg_backup_start`/
//! `pg_backup_stop` since). If the session ends before the stop, the server leaves backup
//! mode by itself, so a failed backup needs no clean-up here.

use anyhow::{Context, Result};
use tokio_postgres::Client;

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

/// Starts backup mode with an immediate checkpoint (`fast`), labelled `label`.
pub async fn start(client: &Client, label: &str, pg_major: u32) -> Result<BackupStart> {
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
    let row = client
        .query_one(
            "SELECT timeline_id::int4, pg_walfile_name($1::text::pg_lsn) FROM pg_control_checkpoint()",
            &[&lsn],
        )
        .await
        .context("read the backup's timeline")?;
    let (timeline, wal): (i32, String) = (row.get(0), row.get(1));
    Ok(BackupStart {
        lsn,
        timeline: timeline as u32,
        wal,
    })
}

/// Ends backup mode without waiting for the archive (the caller waits for its own archive).
pub async fn stop(client: &Client, pg_major: u32) -> Result<BackupStop> {
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
    let wal: String = client
        .query_one("SELECT pg_walfile_name($1::text::pg_lsn)", &[&lsn])
        .await
        .context("name the stop segment")?
        .get(0);
    Ok(BackupStop {
        lsn,
        wal,
        label_file,
        tablespace_map: tablespace_map.filter(|m| !m.is_empty()),
    })
}
