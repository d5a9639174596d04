//! `restore_command`: fetching WAL from the archive, with prefetch.
//!
//! Recovery asks for one file at a time; one round trip per 16 MiB segment would bound replay
//! speed by storage latency. So every request also starts downloading the next `wal.prefetch`
//! segments of the same timeline in parallel into a spool directory inside `pg_wal` (the same
//! filesystem as the destination), and a later request for a spooled segment is answered by a
//! rename. Downloads are verified (checksum) and written atomically, so a spooled file is
//! always complete. Memory: at most `prefetch` downloads in flight, each bounded by the
//! repository's streaming buffers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio_util::sync::CancellationToken;

use crate::postgres::wal::{segment_name, SegmentNo, TimelineId, WalFileName, WalSegSize};
use crate::process::RunAs;
use crate::repo::{layout, retry, Repo, RetryPolicy};

/// Name of the spool directory inside `pg_wal`.
pub const SPOOL_DIR: &str = "pgward.prefetch";

/// What a fetch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Found,
    /// Not in the archive: for postgres, the end of the archived WAL.
    NotFound,
}

type Download = Shared<BoxFuture<'static, Result<Fetched, String>>>;

/// Fetches WAL for one cluster; cloneable, shares downloads in flight.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repo,
    retry: RetryPolicy,
    spool: PathBuf,
    seg_size: WalSegSize,
    prefetch: usize,
    /// The server's OS user when the daemon runs as root: fetched files must be theirs.
    owner: Option<RunAs>,
    in_flight: Mutex<HashMap<String, Download>>,
    cancel: CancellationToken,
}

impl Fetcher {
    /// `wal_dir` is the cluster's `pg_wal`; `seg_size` its WAL segment size.
    /// Leftovers of an earlier run in the spool are removed: they may be of another recovery.
    pub fn new(
        repo: Repo,
        retry: RetryPolicy,
        wal_dir: &Path,
        seg_size: WalSegSize,
        prefetch: usize,
        owner: Option<RunAs>,
        cancel: CancellationToken,
    ) -> Fetcher {
        let _ = std::fs::remove_dir_all(wal_dir.join(SPOOL_DIR));
        Fetcher {
            inner: Arc::new(Inner {
                repo,
                retry,
                spool: wal_dir.join(SPOOL_DIR),
                seg_size,
                prefetch,
                owner,
                in_flight: Mutex::new(HashMap::new()),
                cancel,
            }),
        }
    }

    /// Fetches `name` into `dest` (atomically) and starts prefetching what follows it.
    pub async fn fetch(&self, name: &str, dest: &Path) -> Result<Fetched> {
        let kind =
            WalFileName::parse(name).with_context(|| format!("{name} is not a WAL file name"))?;
        let segment = match kind.segment() {
            Some(segment) => Some((segment.tli(), segment.segno(self.inner.seg_size)?)),
            None => None,
        };
        if let Some((tli, segno)) = segment {
            self.start_prefetch(tli, segno);
            self.clean_spool(segno);
        }
        let spooled = self.inner.spool.join(name);
        let download = segment.and_then(|_| self.lock().get(name).cloned());
        if let Some(download) = download {
            match download.await {
                Ok(Fetched::Found) => {
                    return hand_over(&spooled, dest).await.map(|()| Fetched::Found)
                }
                // Absent a moment ago, or a failed prefetch: ask the archive again below.
                Ok(Fetched::NotFound) | Err(_) => {}
            }
        } else if tokio::fs::try_exists(&spooled).await.unwrap_or(false) {
            return hand_over(&spooled, dest).await.map(|()| Fetched::Found);
        }
        self.download(name, dest).await
    }

    /// Waits for the prefetches in flight (the standalone client fills the spool for the
    /// requests that follow before it exits).
    pub async fn settle(&self) {
        let downloads: Vec<Download> = self.lock().values().cloned().collect();
        for download in downloads {
            let _ = download.await;
        }
    }

    async fn download(&self, name: &str, dest: &Path) -> Result<Fetched> {
        let key = layout::wal_key(name)?;
        let repo = &self.inner.repo;
        let cancel = &self.inner.cancel;
        let found = retry(&self.inner.retry, cancel, &format!("fetch {name}"), || {
            repo.get_to_file(&key, dest, cancel)
        })
        .await
        .with_context(|| format!("fetch {name} from {}", repo.describe()))?;
        if !found {
            return Ok(Fetched::NotFound);
        }
        if let Some(owner) = &self.inner.owner {
            owner.chown(dest)?;
        }
        Ok(Fetched::Found)
    }

    fn start_prefetch(&self, tli: TimelineId, segno: SegmentNo) {
        if self.inner.prefetch == 0 {
            return;
        }
        let mut in_flight = self.lock();
        for next in segno.0 + 1..=segno.0 + self.inner.prefetch as u64 {
            // Past the last possible segment there is nothing to prefetch.
            let Ok(name) = segment_name(tli, SegmentNo(next), self.inner.seg_size) else {
                break;
            };
            let spooled = self.inner.spool.join(&name);
            if in_flight.contains_key(&name) || spooled.exists() {
                continue;
            }
            let this = self.clone();
            let task_name = name.clone();
            let task = tokio::spawn(async move {
                let result = this
                    .prefetch_one(&task_name, &spooled)
                    .await
                    .map_err(|e| format!("{e:#}"));
                this.lock().remove(&task_name);
                result
            });
            let download = async move {
                task.await
                    .unwrap_or_else(|e| Err(format!("prefetch task failed: {e}")))
            }
            .boxed()
            .shared();
            in_flight.insert(name, download);
        }
    }

    async fn prefetch_one(&self, name: &str, spooled: &Path) -> Result<Fetched> {
        tokio::fs::create_dir_all(&self.inner.spool)
            .await
            .with_context(|| format!("create {}", self.inner.spool.display()))?;
        let fetched = self.download(name, spooled).await;
        if let Err(e) = &fetched {
            tracing::debug!(
                file = name,
                "prefetch failed (the request itself will retry): {e:#}"
            );
        }
        fetched
    }

    /// Removes spooled segments recovery has passed (any timeline), so the spool holds at
    /// most the prefetch window.
    fn clean_spool(&self, requested: SegmentNo) {
        let seg_size = self.inner.seg_size;
        let Ok(entries) = std::fs::read_dir(&self.inner.spool) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Temp files of downloads in flight are left alone; `new` clears leftovers.
            let stale = match WalFileName::parse(name).ok().and_then(|k| k.segment()) {
                Some(segment) => segment.segno(seg_size).is_ok_and(|segno| segno < requested),
                None => false,
            };
            if stale && !self.lock().contains_key(name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Download>> {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Moves a spooled file to where postgres wants it: a rename within one filesystem.
async fn hand_over(spooled: &Path, dest: &Path) -> Result<()> {
    tokio::fs::rename(spooled, dest)
        .await
        .with_context(|| format!("move {} to {}", spooled.display(), dest.display()))
}
