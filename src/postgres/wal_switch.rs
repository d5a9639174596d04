//! Closing the server's current WAL segment (`pg_switch_wal`), so that it is archived now
//! rather than when it fills or at `archive_timeout`; and what the server says of its
//! archiver's last failure (`pg_stat_archiver`), for an error that waited on archiving.

use anyhow::{bail, Context, Result};

use super::ready::in_recovery;
use super::wal::SegmentName;

/// Closes the current WAL segment of the server `client` is connected to (a primary: a
/// server in recovery writes no WAL of its own); returns the segment that is now complete
/// and goes to the archive: the one just closed, or, when nothing was written since the last
/// switch (postgres then switches nothing), the one that switch closed.
pub async fn switch_wal(client: &tokio_postgres::Client) -> Result<SegmentName> {
    if in_recovery(client).await? {
        bail!(
            "the server is in recovery (a standby, or a restore not yet promoted): it writes no \
             WAL of its own to switch\nHINT: run switch-wal with the primary's config"
        );
    }
    // `pg_switch_wal` returns the end of the segment it closed, or, with nothing written since
    // the last switch, the start of the current one: either way `pg_walfile_name` of it names
    // the last complete segment (a segment boundary belongs to the segment before it).
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .context("switch to a new WAL segment (pg_switch_wal)")?
        .get(0);
    SegmentName::parse(&name)
        .with_context(|| format!("the server named the segment it closed {name:?}"))
}

/// The archiver's last failure as the server reports it (`segment at time`, `none`), or why
/// it could not be read: for an error about WAL that did not reach the archive.
pub async fn archiver_last_failure(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT coalesce(last_failed_wal || ' at ' || last_failed_time::text, 'none') \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
