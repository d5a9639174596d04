//! `restore_command`: fetching WAL from the archive, with prefetch.
//!
//! Recovery asks for one file at a time; one round trip per 16 MiB segment would bound replay
//! speed by storage latency. So every request also starts downloading the next `wal.prefetch`
//! segments in parallel into a spool directory inside `pg_wal` (the same
//! filesystem as the destination), and a later request for a spooled segment is answered by a
//! rename. Downloads are verified (checksum) and written atomically, so a spooled file is
//! always complete. Memory: at most `prefetch` downloads in flight, each bounded by the
//! repository's streaming buffers.
//!
//! Timeline switches are followed: once recovery has fetched a timeline history file, each
//! prefetched segment is named on the timeline postgres will ask for it on.
//!
//! Where a file goes is checked before anything is fetched ([`Fetcher::destination`], see
//! `wal::pg_wal`): for the server's user, directly into the cluster's `pg_wal`. Every write
//! is a temp file created in the directory held open, given to the server's user by its
//! descriptor, then renamed into place: never through a symlink, never a chown by path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio_util::sync::CancellationToken;

use super::pg_wal::{Destination, PgWal, Refused, Scope};
use crate::fsutil::Dir;
use crate::postgres::timeline::TimelineHistory;
use crate::postgres::wal::{segment_name, SegmentNo, TimelineId, WalFileName, WalSegSize};
use crate::process::RunAs;
use crate::repo::{layout, retry, Repo, RetryPolicy};

/// Name of the spool directory inside `pg_wal`.
pub const SPOOL_DIR: &str = "pgward.prefetch";

/// Start of the names of downloads in progress (temp files beside their destination).
const TEMP_PREFIX: &str = "pgward.fetch.";

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
    /// The cluster's `pg_wal`: where postgres wants its files, and the spool's directory.
    pg_wal: PgWal,
    spool: PathBuf,
    seg_size: WalSegSize,
    prefetch: usize,
    /// The newest timeline history recovery fetched (see `timeline_for`).
    history: Mutex<Option<TimelineHistory>>,
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
        // Symlink-safe: a link in the spool's place is removed, not followed.
        let _ = std::fs::remove_dir_all(wal_dir.join(SPOOL_DIR));
        Fetcher {
            inner: Arc::new(Inner {
                repo,
                retry,
                pg_wal: PgWal::new(wal_dir.to_owned(), owner.map(|u| (u.uid, u.gid))),
                spool: wal_dir.join(SPOOL_DIR),
                seg_size,
                prefetch,
                history: Mutex::new(None),
                in_flight: Mutex::new(HashMap::new()),
                cancel,
            }),
        }
    }

    /// Where the file a client asked for at `dest` may be written, within `scope` (see
    /// `wal::pg_wal`); checked before anything is fetched.
    pub fn destination(&self, dest: &Path, scope: Scope) -> Result<Destination, Refused> {
        self.inner.pg_wal.destination(dest, scope)
    }

    /// Fetches `name` into `dest` (atomically) and starts prefetching what follows it.
    pub async fn fetch(&self, name: &str, dest: &Destination) -> Result<Fetched> {
        let result = self.fetch_file(name, dest).await;
        let outcome = match &result {
            Ok(Fetched::Found) => "found",
            Ok(Fetched::NotFound) => "not_found",
            Err(_) => "failed",
        };
        metrics::counter!("pgward_wal_fetched_total", "result" => outcome).increment(1);
        result
    }

    async fn fetch_file(&self, name: &str, dest: &Destination) -> Result<Fetched> {
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
        let from_spool = match download {
            // Absent a moment ago, or a failed prefetch: ask the archive again below.
            Some(download) => download.await == Ok(Fetched::Found),
            None => tokio::fs::try_exists(&spooled).await.unwrap_or(false),
        };
        if from_spool {
            match self.hand_over(name, dest).await {
                Ok(()) => {
                    metrics::counter!("pgward_wal_prefetch_hits_total").increment(1);
                    return Ok(Fetched::Found);
                }
                // A destination on another filesystem (a copy asked for by root): fetched
                // straight there below.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("move the prefetched {name} to {}", dest.path.display())
                    })
                }
            }
        }
        let to = Target {
            dir: dest
                .dir
                .try_clone()
                .context("duplicate a directory descriptor")?,
            name: dest.name.clone(),
            owner: dest.owner,
            path: dest.path.clone(),
        };
        let (fetched, content) = self.download(name, to, kind).await?;
        if let (WalFileName::History { tli }, Some(text)) = (&kind, content) {
            self.learn_history(*tli, &text);
        }
        Ok(fetched)
    }

    /// Remembers the newest timeline history recovery has fetched, so prefetch asks for each
    /// segment on the timeline postgres will ask for it on.
    fn learn_history(&self, tli: TimelineId, text: &str) {
        match TimelineHistory::parse(tli, text) {
            Ok(history) => {
                let mut known = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
                if known.as_ref().is_none_or(|k| k.timeline <= tli) {
                    *known = Some(history);
                }
            }
            Err(e) => tracing::warn!("ignoring timeline history for prefetch: {e}"),
        }
    }

    /// The timeline recovery will ask `segno` on: per the newest known history, but never
    /// older than the timeline it asks on now.
    fn timeline_for(&self, segno: SegmentNo, asked_on: TimelineId) -> TimelineId {
        let known = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        known
            .as_ref()
            .map(|h| h.timeline_of(segno, self.inner.seg_size))
            .filter(|&tli| tli >= asked_on)
            .unwrap_or(asked_on)
    }

    /// Waits for the prefetches in flight (the standalone client fills the spool for the
    /// requests that follow before it exits).
    pub async fn settle(&self) {
        let downloads: Vec<Download> = self.lock().values().cloned().collect();
        for download in downloads {
            let _ = download.await;
        }
    }

    /// Downloads `name` into `to`: a temp file created beside it, given to its owner,
    /// written, fsynced, renamed into place. With the content of a timeline history file.
    async fn download(
        &self,
        name: &str,
        to: Target,
        kind: WalFileName,
    ) -> Result<(Fetched, Option<String>)> {
        let key = layout::wal_key(name)?;
        let repo = &self.inner.repo;
        let cancel = &self.inner.cancel;
        let (temp, file) = to
            .dir
            .create_temp(TEMP_PREFIX)
            .with_context(|| format!("create a file in {}", to.dir.path().display()))?;
        let fetched = async {
            if let Some((uid, gid)) = to.owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .with_context(|| format!("give {} to uid {uid}", to.path.display()))?;
            }
            let found = retry(
                &self.inner.retry,
                cancel,
                &format!("fetch {name}"),
                || async {
                    let dest =
                        rewound(&file).map_err(|e| crate::repo::RepoError::io(&to.path, e))?;
                    repo.get_into_file(&key, dest, &to.path, cancel).await
                },
            )
            .await
            .with_context(|| format!("fetch {name} from {}", repo.describe()))?;
            if !found {
                return Ok((Fetched::NotFound, None));
            }
            let final_name = to.name.clone();
            let (file, temp, to) = (file.try_clone()?, temp.clone(), to.dir.try_clone()?);
            let history = matches!(kind, WalFileName::History { .. });
            tokio::task::spawn_blocking(move || -> Result<Option<String>> {
                let text = history.then(|| read_text(&file)).flatten();
                to.rename(&temp, &to, &final_name)
                    .with_context(|| format!("rename {temp} to {final_name}"))?;
                to.sync()
                    .with_context(|| format!("fsync {}", to.path().display()))?;
                Ok(text)
            })
            .await
            .context("join the rename")?
            .map(|text| (Fetched::Found, text))
        }
        .await;
        if !matches!(fetched, Ok((Fetched::Found, _))) {
            let _ = to.dir.remove_file(&temp);
        }
        fetched
    }

    /// Moves the spooled `name` to `dest`: a rename between two directories held open.
    async fn hand_over(&self, name: &str, dest: &Destination) -> std::io::Result<()> {
        let wal = self.inner.pg_wal.open().map_err(std::io::Error::other)?;
        let spool = wal.open_dir(SPOOL_DIR)?;
        let (into, to, name) = (dest.dir.try_clone()?, dest.name.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            spool.rename(&name, &into, &to)?;
            into.sync()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn start_prefetch(&self, tli: TimelineId, segno: SegmentNo) {
        if self.inner.prefetch == 0 {
            return;
        }
        let timelines: Vec<TimelineId> = (segno.0 + 1..=segno.0 + self.inner.prefetch as u64)
            .map(|next| self.timeline_for(SegmentNo(next), tli))
            .collect();
        let mut in_flight = self.lock();
        for (next, tli) in (segno.0 + 1..).zip(timelines) {
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
        let fetched = async {
            let to = Target {
                dir: self.spool_dir()?,
                name: name.to_owned(),
                owner: self.inner.pg_wal.owner(),
                path: spooled.to_owned(),
            };
            let kind = WalFileName::parse(name)?;
            self.download(name, to, kind)
                .await
                .map(|(fetched, _)| fetched)
        }
        .await;
        if let Err(e) = &fetched {
            tracing::debug!(
                file = name,
                "prefetch failed (the request itself will retry): {e:#}"
            );
        }
        fetched
    }

    /// The spool directory, made if missing: pgward's own (no symlink, not the server
    /// user's: a rename out of it is the hand-over).
    fn spool_dir(&self) -> Result<Dir> {
        let wal = self
            .inner
            .pg_wal
            .open()
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        match wal.create_dir(SPOOL_DIR, 0o700) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("create {}", self.inner.spool.display()))
            }
            _ => {}
        }
        let spool = wal
            .open_dir(SPOOL_DIR)
            .with_context(|| format!("open {}", self.inner.spool.display()))?;
        let meta = spool.metadata()?;
        let me = nix::unistd::geteuid().as_raw();
        if std::os::unix::fs::MetadataExt::uid(&meta) != me {
            anyhow::bail!(
                "{} is not pgward's own directory (uid {}); prefetch is off until pgward \
                 restarts",
                self.inner.spool.display(),
                std::os::unix::fs::MetadataExt::uid(&meta)
            );
        }
        Ok(spool)
    }

    /// Removes spooled segments recovery has passed (any timeline), so the spool holds at
    /// most the prefetch window.
    fn clean_spool(&self, requested: SegmentNo) {
        let seg_size = self.inner.seg_size;
        let Some(spool) = self
            .inner
            .pg_wal
            .open()
            .ok()
            .and_then(|w| w.open_dir(SPOOL_DIR).ok())
        else {
            return;
        };
        let Ok(names) = spool.file_names() else {
            return;
        };
        for name in &names {
            let name = name.as_str();
            // Temp files of downloads in flight are left alone; `new` clears leftovers.
            let stale = match WalFileName::parse(name).ok().and_then(|k| k.segment()) {
                Some(segment) => segment.segno(seg_size).is_ok_and(|segno| segno < requested),
                None => false,
            };
            if stale && !self.lock().contains_key(name) {
                let _ = spool.remove_file(name);
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

/// Where one download goes.
struct Target {
    dir: Dir,
    name: String,
    owner: Option<(u32, u32)>,
    path: PathBuf,
}

/// `file` emptied, on a descriptor of its own read and written from the start.
fn rewound(file: &std::fs::File) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    let mut file = file.try_clone()?;
    file.set_len(0)?;
    file.rewind()?;
    Ok(file)
}

/// The text of a small file just written (a timeline history), from its descriptor.
fn read_text(file: &std::fs::File) -> Option<String> {
    use std::io::{Read, Seek};
    let mut file = file.try_clone().ok()?;
    file.rewind().ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Codec, PutMode};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(1),
        }
    }

    async fn put(repo: &Repo, name: &str, content: &[u8]) {
        repo.put_bytes(
            &layout::wal_key(name).unwrap(),
            content.to_vec(),
            PutMode::Create,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn prefetch_follows_the_timeline_switch_and_hands_over_by_rename() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let repo = Repo::open_with_store(store, "", Codec::Zstd, 1);
        let size = WalSegSize::DEFAULT;
        let name =
            |tli: u32, segno: u64| segment_name(TimelineId(tli), SegmentNo(segno), size).unwrap();
        for segno in 1..=5 {
            put(
                &repo,
                &name(1, segno),
                format!("tli1 seg{segno}").as_bytes(),
            )
            .await;
        }
        for segno in 5..=9 {
            put(
                &repo,
                &name(2, segno),
                format!("tli2 seg{segno}").as_bytes(),
            )
            .await;
        }
        // Timeline 2 began inside segment 5.
        put(
            &repo,
            "00000002.history",
            b"1\t0/5000060\tno recovery target specified\n",
        )
        .await;

        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("pg_wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let fetcher = Fetcher::new(
            repo,
            policy(),
            &wal_dir,
            size,
            3,
            None,
            CancellationToken::new(),
        );
        let dest = wal_dir.join("RECOVERYXLOG");
        let into = || fetcher.destination(&dest, Scope::PgWal).unwrap();

        assert_eq!(
            fetcher.fetch("00000002.history", &into()).await.unwrap(),
            Fetched::Found
        );
        assert_eq!(
            fetcher.fetch(&name(1, 3), &into()).await.unwrap(),
            Fetched::Found
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"tli1 seg3");
        fetcher.settle().await;
        let mut spooled: Vec<String> = std::fs::read_dir(wal_dir.join(SPOOL_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        spooled.sort();
        // Segment 4 on timeline 1, then 5 and 6 on timeline 2 (where postgres will ask).
        assert_eq!(spooled, vec![name(1, 4), name(2, 5), name(2, 6)]);

        // The next request is answered from the spool, by rename.
        assert_eq!(
            fetcher.fetch(&name(1, 4), &into()).await.unwrap(),
            Fetched::Found
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"tli1 seg4");
        assert!(!wal_dir.join(SPOOL_DIR).join(name(1, 4)).exists());

        // Past the end of the archive: not found, and nothing left at the destination.
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(
            fetcher.fetch(&name(2, 42), &into()).await.unwrap(),
            Fetched::NotFound
        );
        assert!(!dest.exists());
    }
}
