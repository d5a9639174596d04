//! Waiting for WAL segments to reach the archive: what a backup needs before its manifest,
//! and what `pgward switch-wal --wait` waits for. Lookups in the repository, the proof that
//! a segment is there (a server's own statistics only say that its `archive_command`
//! succeeded, perhaps into another repository), with short pauses that lengthen: a segment
//! just closed is usually archived within a few round trips.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::postgres::wal::SegmentName;
use crate::repo::layout;
use crate::repo::Repo;

/// Lookups of WAL segments in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;
/// The first pause between lookups of the segments still missing. Each pause is half again
/// as long as the one before, up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);
/// One round of lookups in this many tries every codec's name (a segment archived under an
/// earlier configuration); the others, the configured codec's, which the archiver writes.
const ANY_CODEC_EVERY: u32 = 8;

/// Waits until every one of `segments` is in the archive, at most `patience`; returns those
/// still missing then, in order (none: all there). Cancelled, an error naming the first one
/// still awaited.
pub async fn wait_archived(
    repo: &Repo,
    segments: &[SegmentName],
    patience: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<SegmentName>> {
    let started = Instant::now();
    let mut missing: Vec<SegmentName> = segments.to_vec();
    let mut pause = FIRST_PAUSE;
    let mut round = 0u32;
    loop {
        let any_codec = round % ANY_CODEC_EVERY == ANY_CODEC_EVERY - 1;
        missing = still_missing(repo, missing, any_codec).await?;
        let Some(first) = missing.first() else {
            return Ok(missing);
        };
        if started.elapsed() > patience {
            return Ok(missing);
        }
        tokio::select! {
            () = cancel.cancelled() => {
                bail!("cancelled while waiting for {first} to be archived")
            }
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 3 / 2).min(LONGEST_PAUSE);
        round = round.wrapping_add(1);
    }
}

/// Those of `segments` not in the archive, in order.
/// `any_codec`: look under every codec's name, else under the configured one's only.
async fn still_missing(
    repo: &Repo,
    segments: Vec<SegmentName>,
    any_codec: bool,
) -> Result<Vec<SegmentName>> {
    let found: Vec<(SegmentName, bool)> = stream::iter(segments)
        .map(|segment| async move {
            let name = segment.to_string();
            let key = layout::wal_key(&name)?;
            let lookup = match any_codec {
                true => repo.exists(&key).await,
                false => repo.exists_as_configured(&key).await,
            };
            let there = lookup
                .with_context(|| format!("look for {name} in the archive"))?
                .is_some();
            anyhow::Ok((segment, there))
        })
        .buffered(LOOKUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    Ok(found
        .into_iter()
        .filter_map(|(segment, there)| (!there).then_some(segment))
        .collect())
}
