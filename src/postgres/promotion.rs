//! Ending recovery on purpose: `pg_promote`, for `pgward promote` (a standby, or a restore
//! paused at its target, becomes a primary on a new timeline).

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::ready::in_recovery;
use super::wal::{SegmentName, TimelineId};

/// Promotes the server `client` is connected to and waits, at most `wait`, until it is a
/// primary; returns the timeline it now writes on. A server that is not in recovery is
/// refused: there is nothing to promote.
pub async fn promote(client: &tokio_postgres::Client, wait: Duration) -> Result<TimelineId> {
    if !in_recovery(client).await? {
        bail!(
            "the server is not in recovery: it is already a primary, nothing to promote\n\
             HINT: promote runs on a standby (postgres.standby) or on a restore paused at its \
             target"
        );
    }
    let seconds = i32::try_from(wait.as_secs().max(1)).unwrap_or(i32::MAX);
    let promoted: bool = client
        .query_one("SELECT pg_promote(true, $1)", &[&seconds])
        .await
        .context("promote the server (pg_promote)")?
        .get(0);
    if !promoted {
        bail!(
            "the server did not finish promoting within {}s (it may still be replaying WAL)\n\
             HINT: `pgward status` shows recovery's progress; run promote again once it caught up",
            seconds
        );
    }
    // Out of recovery, the current WAL file's name starts with the timeline written on.
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .context("read the promoted server's timeline")?
        .get(0);
    let segment = SegmentName::parse(&name)
        .with_context(|| format!("the promoted server named its current WAL file {name:?}"))?;
    Ok(segment.tli())
}
