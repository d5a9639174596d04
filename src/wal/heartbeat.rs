//! The archiver's heartbeat: `heartbeat/<system identifier>.json` in the repository, a plain
//! JSON object the daemon that archives rewrites every [`HEARTBEAT_EVERY`] (host, pid,
//! timeline, time) and marks `stopped` when it stops in order. The daemon of a standby writes
//! none until its cluster is promoted.
//!
//! It is how a successor (`postgres.init.restore_as: successor`) tells whether its original
//! still archives: a heartbeat younger than [`HEARTBEAT_STALE`] that is not marked stopped
//! means it does, and the successor refuses to start (`pgward run --force` overrides, for an
//! original known dead whose last beat is still fresh). Times are the writer's clock: hosts
//! that share a repository must keep their clocks roughly right (NTP), within the window.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::postgres::standby::is_standby;
use crate::postgres::timeline::current_timeline;
use crate::repo::{PutMode, Repo};

/// How often a running archiver rewrites its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A heartbeat older than this is stale: its writer is taken for gone.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(120);
/// How often the daemon of a standby looks whether it was promoted, to beat from then on.
const STANDBY_LOOK_EVERY: Duration = Duration::from_secs(1);

/// The content of the heartbeat object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The writer's host name.
    pub host: String,
    /// The writing pgward's process id.
    pub pid: u32,
    /// The timeline the writer's cluster is on.
    pub timeline: u32,
    /// When it was written (the writer's clock).
    pub time: DateTime<Utc>,
    /// Written by an orderly stop: the writer archives no more.
    #[serde(default)]
    pub stopped: bool,
}

impl Heartbeat {
    /// Whether the writer still archives as of `now`: not stopped, and fresh.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        let age = now.signed_duration_since(self.time);
        !self.stopped && age.to_std().map_or(true, |age| age < HEARTBEAT_STALE)
    }
}

/// Where the heartbeat of the cluster `system_identifier` is.
pub fn heartbeat_key(system_identifier: u64) -> String {
    format!("heartbeat/{system_identifier}.json")
}

/// The heartbeat in `repo`, `None` when there is none (or it cannot be read as one: a stale
/// format is no proof of life).
pub async fn read(repo: &Repo, system_identifier: u64) -> Result<Option<Heartbeat>> {
    let key = heartbeat_key(system_identifier);
    let Some(bytes) = repo
        .get_plain(&key)
        .await
        .with_context(|| format!("read {key} from {}", repo.describe()))?
    else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(beat) => Ok(Some(beat)),
        Err(e) => {
            tracing::warn!("ignoring {key}, which is not a heartbeat: {e}");
            Ok(None)
        }
    }
}

/// `Err` when `beat` says the original still archives into the repository and `force` is not
/// given: a successor must not start beside it.
pub fn check_original_stopped(
    beat: Option<&Heartbeat>,
    now: DateTime<Utc>,
    force: bool,
    key: &str,
) -> Result<()> {
    let Some(beat) = beat.filter(|b| b.is_live(now)) else {
        return Ok(());
    };
    let age = now
        .signed_duration_since(beat.time)
        .to_std()
        .unwrap_or_default();
    let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
    if force {
        tracing::warn!(
            host = %beat.host,
            timeline = beat.timeline,
            "--force: starting as successor although {key} says the original still archived \
             {age} ago"
        );
        return Ok(());
    }
    bail!(
        "refusing to start as successor: the original still archives into this repository \
         ({key}: host {}, pid {}, timeline {}, last beat {age} ago; a heartbeat is stale after \
         {})\n\
         HINT: stop the original first (its orderly stop marks the heartbeat stopped); if it \
         is gone for good but its last beat is recent, wait until it is stale or start this \
         one with `pgward run --force`",
        beat.host,
        beat.pid,
        beat.timeline,
        humantime::format_duration(HEARTBEAT_STALE),
    )
}

/// Writes the heartbeat of the cluster in `data_dir` every [`HEARTBEAT_EVERY`] until
/// `cancel`, then once more marked stopped. A failed write is logged and tried again at the
/// next beat. Cancel: returns after the stopped beat was written (or failed).
pub async fn beat(
    repo: Repo,
    system_identifier: u64,
    data_dir: PathBuf,
    cancel: CancellationToken,
) {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let key = heartbeat_key(system_identifier);
    let mut failing = false;
    loop {
        let stopped = cancel.is_cancelled();
        // A standby archives nothing: the heartbeat is its primary's to write (a standby's
        // `stopped` mark would tell a successor that the running primary stopped). Postgres
        // removes `standby.signal` when it is promoted; the next beat is this daemon's.
        if is_standby(&data_dir) {
            if stopped {
                return;
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(STANDBY_LOOK_EVERY) => {}
            }
            continue;
        }
        let timeline = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || current_timeline(&dir))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .map_or(0, |t| t.0)
        };
        let beat = Heartbeat {
            host: host.clone(),
            pid: std::process::id(),
            timeline,
            time: Utc::now(),
            stopped,
        };
        let written = match serde_json::to_vec_pretty(&beat) {
            Ok(json) => repo
                .put_plain(&key, json, PutMode::Overwrite)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::new),
            Err(e) => Err(anyhow::Error::new(e)),
        };
        match written {
            Ok(()) if failing => {
                tracing::info!("heartbeat written again to {key}");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!("failed to write the heartbeat {key}: {e:#}");
                }
                failing = true;
            }
        }
        if stopped {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(secs_ago: i64, stopped: bool) -> Heartbeat {
        Heartbeat {
            host: "db-1".into(),
            pid: 7,
            timeline: 1,
            time: now() - chrono::Duration::seconds(secs_ago),
            stopped,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_successor_waits_for_a_live_original_unless_forced() {
        let key = heartbeat_key(7312);
        assert_eq!(key, "heartbeat/7312.json");
        let check = |b: Option<&Heartbeat>, force| check_original_stopped(b, now(), force, &key);
        check(None, false).expect("no original");
        check(Some(&beat(5, true)), false).expect("stopped in order");
        check(Some(&beat(121, false)), false).expect("stale");
        check(Some(&beat(5, false)), true).expect("forced");
        // A clock a little ahead of ours is still fresh.
        let ahead = beat(-10, false);
        assert!(ahead.is_live(now()));
        assert_eq!(
            format!("{:#}", check(Some(&beat(65, false)), false).unwrap_err()),
            "refusing to start as successor: the original still archives into this repository \
             (heartbeat/7312.json: host db-1, pid 7, timeline 1, last beat 1m 5s ago; a \
             heartbeat is stale after 2m)\n\
             HINT: stop the original first (its orderly stop marks the heartbeat stopped); if \
             it is gone for good but its last beat is recent, wait until it is stale or start \
             this one with `pgward run --force`"
        );
    }

    #[tokio::test]
    async fn the_heartbeat_is_rewritten_and_marked_stopped_at_the_end() {
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        let repo = Repo::open_with_store(store, "p", crate::repo::Codec::Zstd, 3);
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(beat_task(repo.clone(), dir.path().into(), cancel.clone()));
        for _ in 0..100 {
            if read(&repo, 42).await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = read(&repo, 42).await.unwrap().expect("a first beat");
        assert!(first.is_live(Utc::now()));
        cancel.cancel();
        task.await.unwrap();
        let last = read(&repo, 42).await.unwrap().expect("a last beat");
        assert!(last.stopped && !last.is_live(Utc::now()), "{last:?}");
    }

    async fn beat_task(repo: Repo, dir: PathBuf, cancel: CancellationToken) {
        super::beat(repo, 42, dir, cancel).await
    }
}
