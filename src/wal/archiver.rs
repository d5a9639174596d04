//! The daemon's archiver: answers `wal-push` requests and uploads ahead of them.
//!
//! Postgres archives one file at a time and waits for each archive_command, so one round trip
//! per segment caps its archiving rate. The archiver watches `pg_wal/archive_status/*.ready`
//! and uploads the oldest ready files in parallel (`wal.push_concurrency`) before postgres asks;
//! the later `wal-push` for such a file is answered from memory at once. Each file is uploaded
//! once: a request for a file already in flight waits for that upload.
//!
//! Nothing is dropped under load: the backlog is whatever postgres marked `.ready`, it is
//! reported (count, oldest age) and logged while it grows, and no result is ever acknowledged
//! before the upload was verified.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::archived_marks::ArchivedMarks;
use super::pg_wal::{FileId, PgWal, Refused, Scope, WalFile};
use super::push::{PushContext, Pushed};
use super::ready_scan::{scan_ready, Ready, ScanHealth};
use super::ready_watch::watch_ready;
use super::stage::SegmentStager;
use crate::tasks::Critical;

/// How often the look-ahead scans `archive_status` when nothing wakes it.
const SCAN_INTERVAL: Duration = Duration::from_millis(50);
/// A backlog above this many files is worth a warning (once a minute while it lasts).
const BACKLOG_WARN: usize = 64;

/// An upload's result: how it went, and which file went up (see [`FileId`]).
type Upload = Shared<BoxFuture<'static, Result<(Pushed, FileId), String>>>;

/// What `pgward status` shows of the archiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ArchiverStatus {
    /// Files postgres has marked ready and not yet seen acknowledged; `None` (null) when
    /// `archive_status` cannot be scanned (see `scan_error`): unknown, not 0.
    pub backlog: Option<usize>,
    /// Why the last scan of `pg_wal/archive_status` failed, while it fails.
    #[serde(default)]
    pub scan_error: Option<String>,
    /// Scans of `pg_wal/archive_status` that failed since the daemon started.
    #[serde(default)]
    pub scan_errors_total: u64,
    /// Age of the oldest `.ready` file.
    pub oldest_ready_age_seconds: Option<f64>,
    pub in_flight: usize,
    pub archived_total: u64,
    pub already_archived_total: u64,
    pub failed_total: u64,
    /// Requests answered at once from an upload the look-ahead had finished, by the daemon
    /// or by the mark it left for `wal-push`.
    pub answered_ahead_total: u64,
    /// Segments archived from a stage (only their last pages read at the request).
    #[serde(default)]
    pub staged_total: u64,
    /// Stages dropped because the finished segment differed from what was staged.
    #[serde(default)]
    pub stage_discarded_total: u64,
    pub last_archived: Option<String>,
    /// Seconds since the Unix epoch.
    pub last_archived_at: Option<f64>,
    /// Set while uploads fail; cleared by the next success.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<String, Upload>,
    /// Uploaded ahead of postgres's request, waiting to be acknowledged; only a request for
    /// the same file (not just the same name) is answered from here.
    done: HashMap<String, (Pushed, FileId)>,
    /// Acknowledged to postgres, whose `.ready` may linger until it renames it to `.done`:
    /// the look-ahead must not upload those again.
    acked: HashSet<String>,
    status: ArchiverStatus,
    /// The look-ahead pauses until then after a failure, so an outage is not hammered.
    paused_until: Option<Instant>,
    failures_in_a_row: u32,
    last_backlog_warning: Option<Instant>,
    scan: ScanHealth,
}

/// How the archiver works, from config.
#[derive(Debug, Clone, Copy)]
pub struct ArchiverOptions {
    /// Uploads at once (`wal.push_concurrency`).
    pub concurrency: usize,
    /// Stage the segment being written (`wal.stage`).
    pub stage: bool,
    /// `(uid, gid)` of the server's user, who runs `wal-push`, when the daemon is root.
    pub owner: Option<(u32, u32)>,
}

/// Where the archiver leaves its marks for `wal-push` (see `wal::archived_marks`).
#[derive(Debug, Clone)]
pub struct MarksAt {
    pub dir: PathBuf,
    /// The directory's parent is pgward's runtime directory, made (or checked) here.
    pub runtime: bool,
}

/// Cloneable handle to the running archiver.
#[derive(Clone)]
pub struct Archiver {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: PushContext,
    /// Stages the segment being written, so its archiving costs only its last pages.
    stager: Option<SegmentStager>,
    /// Where `wal-push` finds what was archived before it asked.
    marks: Option<ArchivedMarks>,
    status_dir: PathBuf,
    /// The files it archives, and the checks on them.
    pg_wal: PgWal,
    permits: Semaphore,
    concurrency: usize,
    state: Mutex<State>,
    wake: Notify,
    cancel: CancellationToken,
    /// For uploads started from the archive_status watcher's thread.
    runtime: tokio::runtime::Handle,
}

impl Archiver {
    /// Starts the look-ahead for the cluster in `data_dir`, a critical task. Stops when
    /// `cancel` fires.
    pub fn start(
        ctx: PushContext,
        data_dir: &Path,
        options: ArchiverOptions,
        marks: &MarksAt,
        cancel: CancellationToken,
        critical: &Critical,
    ) -> Archiver {
        let ArchiverOptions {
            concurrency,
            stage,
            owner,
        } = options;
        let wal_dir = data_dir.join("pg_wal");
        let cancel_watch = cancel.clone();
        let marks = ArchivedMarks::reset(&marks.dir, marks.runtime)
            .inspect_err(|e| {
                tracing::warn!(
                    "cannot prepare the archived marks in {}: {e:#}; every wal-push asks the \
                     daemon",
                    marks.dir.display()
                )
            })
            .ok();
        let stager = stage
            .then(|| {
                SegmentStager::start(
                    ctx.repo.clone(),
                    &wal_dir,
                    ctx.system_identifier,
                    ctx.seg_size,
                    cancel.clone(),
                )
                .inspect_err(|e| tracing::warn!("WAL staging is off: {e:#}"))
                .ok()
            })
            .flatten();
        let archiver = Archiver {
            inner: Arc::new(Inner {
                ctx,
                stager,
                marks,
                status_dir: data_dir.join("pg_wal/archive_status"),
                pg_wal: PgWal::new(wal_dir, owner),
                permits: Semaphore::new(concurrency.max(1)),
                concurrency: concurrency.max(1),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                cancel,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        let weak = Arc::downgrade(&archiver.inner);
        let on_ready = move |names: Vec<String>| {
            let Some(inner) = weak.upgrade() else { return };
            let this = Archiver { inner };
            for name in &names {
                this.archive_staged_here(name);
            }
            this.inner.wake.notify_one();
        };
        if let Err(e) = watch_ready(&archiver.inner.status_dir, on_ready, cancel_watch) {
            tracing::debug!("archive_status is scanned, not watched: {e:#}");
        }
        critical.spawn(
            "the WAL archiver's look-ahead",
            &archiver.inner.cancel,
            archiver.clone().look_ahead(),
        );
        archiver
    }

    /// Opens the WAL file at `path` for a client's `wal-push`, within `scope` (see
    /// `wal::pg_wal`): what [`Archiver::push`] then archives.
    pub fn open(&self, path: &Path, scope: Scope) -> Result<WalFile, Refused> {
        self.inner.pg_wal.open_wal_file(path, scope)
    }

    /// Archives `wal` for postgres: answers from a finished look-ahead upload of the same
    /// file, waits for one in flight, or uploads now.
    pub async fn push(&self, wal: WalFile) -> Result<Pushed, String> {
        let (name, id) = (wal.name.clone(), wal.id);
        let wal = Arc::new(wal);
        // Postgres asking means more files may be ready: start on those while this one goes up.
        self.inner.wake.notify_one();
        // A look-ahead upload that failed is retried once here before postgres hears of it.
        let mut failures = 0;
        loop {
            let upload = {
                let mut state = self.lock();
                match state.done.remove(&name) {
                    Some((outcome, archived)) if archived == id => {
                        tracing::debug!(file = %name, "answered from the look-ahead");
                        self.unmark(&name);
                        state.acked.insert(name);
                        state.status.answered_ahead_total += 1;
                        return Ok(outcome);
                    }
                    // Another file of that name went up ahead: it vouches for nothing here.
                    Some(_) => self.unmark(&name),
                    None => {}
                }
                match state.in_flight.get(&name) {
                    Some(upload) => upload.clone(),
                    None => self.start_upload(&mut state, name.clone(), Some(wal.clone())),
                }
            };
            let asked = Instant::now();
            let result = upload.await;
            tracing::debug!(
                file = %name,
                waited_ms = asked.elapsed().as_secs_f64() * 1e3,
                "answered after the upload"
            );
            match result {
                Ok((outcome, archived)) if archived == id => {
                    // The upload task records results in `done`; this request consumes it.
                    self.unmark(&name);
                    {
                        let mut state = self.lock();
                        state.done.remove(&name);
                        state.acked.insert(name.clone());
                    }
                    self.inner.wake.notify_one();
                    return Ok(outcome);
                }
                // That upload was of another file of this name: now this one.
                Ok(_) => {}
                Err(e) if self.inner.cancel.is_cancelled() => return Err(e),
                Err(e) => {
                    self.unmark(&name);
                    self.lock().done.remove(&name);
                    self.inner.wake.notify_one();
                    failures += 1;
                    if failures == 2 {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Counters and the backlog (a directory scan, on a blocking thread).
    pub async fn status(&self) -> ArchiverStatus {
        let status_dir = self.inner.status_dir.clone();
        let scan = tokio::task::spawn_blocking(move || scan_ready(&status_dir))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("join the archive_status scan: {e}")));
        let mut state = self.lock();
        state.scan.record(&scan);
        let (backlog, oldest) = match &scan {
            Ok(ready) => (
                Some(ready.len()),
                ready.iter().filter_map(|r| r.modified).min(),
            ),
            Err(_) => (None, None),
        };
        let mut status = state.status.clone();
        if let Some(stager) = &self.inner.stager {
            (status.staged_total, status.stage_discarded_total) = stager.counts();
        }
        status.backlog = backlog;
        status.scan_error = state.scan.error.clone();
        status.scan_errors_total = state.scan.errors_total;
        status.in_flight = state.in_flight.len();
        status.oldest_ready_age_seconds = oldest
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        status
    }

    /// Archives one file: from its stage when the stager has one, else whole.
    async fn push_one(&self, wal: &WalFile) -> anyhow::Result<Pushed> {
        let (cancel, name) = (&self.inner.cancel, wal.name.as_str());
        let Some(stager) = &self.inner.stager else {
            return self.inner.ctx.push(wal, cancel).await;
        };
        match self.inner.ctx.push_staged(stager, wal, cancel).await {
            Ok(Some(outcome)) => {
                stager.archived(name);
                return Ok(outcome);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                file = name,
                "archiving from the stage failed, archiving the file whole: {e:#}"
            ),
        }
        let outcome = self.inner.ctx.push(wal, cancel).await?;
        stager.archived(name);
        Ok(outcome)
    }

    /// On the thread that saw postgres mark `name` ready: archives it right here when it is
    /// the staged segment of a `file://` repository. Every hand-over between threads costs a
    /// scheduler wake-up, which on a busy machine is most of what archiving a staged segment
    /// takes; this path has none. Registered in flight like any upload, so a request for
    /// `name` meanwhile waits for this result. Blocking.
    fn archive_staged_here(&self, name: &str) {
        let Some(stager) = &self.inner.stager else {
            return;
        };
        if !self.inner.ctx.repo.is_local() || !stager.is_staging(name) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.lock();
            let busy = state.in_flight.contains_key(name)
                || state.done.contains_key(name)
                || state.acked.contains(name)
                || state.paused_until.is_some_and(|t| Instant::now() < t);
            if busy {
                return;
            }
            let upload = async move {
                rx.await
                    .unwrap_or_else(|_| Err("the archiving thread stopped".into()))
            }
            .boxed()
            .shared();
            state.in_flight.insert(name.to_owned(), upload);
        }
        let opened = self.inner.pg_wal.open_own(name);
        let staged = match &opened {
            Ok(wal) => self.inner.ctx.push_staged_here(stager, wal),
            Err(_) => Ok(None),
        };
        match (opened, staged) {
            (Ok(wal), Ok(Some(outcome))) => {
                stager.archived(name);
                let _ = tx.send(self.publish(name, Ok((outcome, wal.id))));
            }
            (opened, staged) => {
                if let Err(e) = staged {
                    tracing::warn!(
                        file = name,
                        "archiving from the stage failed, archiving the file whole: {e:#}"
                    );
                }
                // The usual upload takes over (and reports a file it cannot open); whoever
                // waits gets its result.
                let (this, name) = (self.clone(), name.to_owned());
                let wal = opened.ok().map(Arc::new);
                self.inner.runtime.spawn(async move {
                    let _ = tx.send(this.upload(&name, wal).await);
                });
            }
        }
    }

    /// One upload with a permit, its mark and its bookkeeping: of `wal`, or (the
    /// look-ahead's) of the file `name` in `pg_wal`, opened here.
    async fn upload(
        &self,
        name: &str,
        wal: Option<Arc<WalFile>>,
    ) -> Result<(Pushed, FileId), String> {
        let permit = self
            .inner
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let result = async {
            let wal = match wal {
                Some(wal) => wal,
                None => Arc::new(
                    self.inner
                        .pg_wal
                        .open_own(name)
                        .map_err(|refused| anyhow::anyhow!("{refused}"))?,
                ),
            };
            let outcome = self.push_one(&wal).await?;
            anyhow::Ok((outcome, wal.id))
        }
        .await;
        drop(permit);
        self.publish(name, result)
    }

    /// Marks a success for `wal-push`, then records the result.
    fn publish(
        &self,
        name: &str,
        result: anyhow::Result<(Pushed, FileId)>,
    ) -> Result<(Pushed, FileId), String> {
        if let (Ok(_), Some(marks)) = (&result, &self.inner.marks) {
            // Before the result is published: a request that sees it removes the mark.
            marks.mark(name);
        }
        self.finish(name, result)
    }

    /// Registers and spawns the upload of `name`; the caller holds the state lock, so no second
    /// upload of the same file can start.
    fn start_upload(&self, state: &mut State, name: String, wal: Option<Arc<WalFile>>) -> Upload {
        let this = self.clone();
        let key = name.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = this.upload(&key, wal).await;
            metrics::histogram!("pgward_wal_push_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            result
        });
        let upload = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("upload task failed: {e}")))
        }
        .boxed()
        .shared();
        state.in_flight.insert(name, upload.clone());
        upload
    }

    fn finish(
        &self,
        name: &str,
        result: anyhow::Result<(Pushed, FileId)>,
    ) -> Result<(Pushed, FileId), String> {
        let mut state = self.lock();
        state.in_flight.remove(name);
        match result {
            Ok((outcome, id)) => {
                let result = match outcome {
                    Pushed::Created => "archived",
                    Pushed::AlreadyArchived => "already_archived",
                };
                metrics::counter!("pgward_wal_pushed_total", "result" => result).increment(1);
                match outcome {
                    Pushed::Created => {
                        state.status.archived_total += 1;
                        tracing::debug!(file = name, "archived");
                    }
                    Pushed::AlreadyArchived => {
                        state.status.already_archived_total += 1;
                        tracing::info!(file = name, "already archived with identical content");
                    }
                }
                if state.status.last_error.take().is_some() {
                    tracing::info!(file = name, "archiving works again");
                }
                state.failures_in_a_row = 0;
                state.paused_until = None;
                state.status.last_archived = Some(name.to_owned());
                state.status.last_archived_at = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64());
                state.done.insert(name.to_owned(), (outcome, id));
                Ok((outcome, id))
            }
            // Stopped by pgward's shutdown: not a failure; postgres asks again at its next
            // start (the segment is still `.ready`).
            Err(e)
                if self.inner.cancel.is_cancelled()
                    && crate::repo::RepoError::only_cancelled(&e) =>
            {
                tracing::info!(
                    file = name,
                    "archiving stopped by the shutdown; postgres asks for it again at its next start"
                );
                Err("archiving stopped by the shutdown".to_owned())
            }
            Err(e) => {
                let message = crate::repo::with_hint(&e);
                metrics::counter!("pgward_wal_pushed_total", "result" => "failed").increment(1);
                state.status.failed_total += 1;
                state.failures_in_a_row += 1;
                let pause = Duration::from_millis(500)
                    .saturating_mul(1 << state.failures_in_a_row.min(6))
                    .min(Duration::from_secs(30));
                state.paused_until = Some(Instant::now() + pause);
                tracing::error!(file = name, "failed to archive: {message}");
                state.status.last_error = Some(message.clone());
                Err(message)
            }
        }
    }

    /// Uploads ready files ahead of postgres, oldest first, while permits are free.
    async fn look_ahead(self) {
        loop {
            tokio::select! {
                () = self.inner.cancel.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(SCAN_INTERVAL) => {}
            }
            let inner = self.inner.clone();
            let archived: Vec<(String, FileId)> = (self.lock().done.iter())
                .map(|(name, (_, id))| (name.clone(), *id))
                .collect();
            let scan = tokio::task::spawn_blocking(move || {
                // A mark vouches for the file it was written for: one replaced since (by
                // whoever can write pg_wal) is not archived by it.
                let replaced: Vec<(String, FileId)> = (archived.into_iter())
                    .filter(|(name, id)| inner.pg_wal.id_of(name).is_some_and(|now| now != *id))
                    .collect();
                scan_ready(&inner.status_dir).map(|ready| (ready, replaced))
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("join the archive_status scan: {e}")));
            let mut state = self.lock();
            state.scan.record(&scan);
            let Ok((ready, replaced)) = scan else {
                continue;
            };
            for (name, id) in &replaced {
                if state.done.get(name).is_some_and(|(_, done)| done == id) {
                    state.done.remove(name);
                    self.unmark(name);
                    if ready.iter().any(|r| &r.name == name) {
                        tracing::warn!(
                            file = %name,
                            "WAL file replaced after it was archived ahead: its mark is \
                             withdrawn, and postgres's request archives what is there now"
                        );
                    }
                }
            }
            self.warn_on_backlog(&mut state, &ready);
            if state.paused_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            // Results for files postgres no longer waits on (acknowledged by another path, or
            // removed) must not accumulate.
            let before = state.done.len();
            let mut answered_by_mark = Vec::new();
            state.done.retain(|name, _| {
                let pending = ready.iter().any(|r| &r.name == name);
                if !pending {
                    answered_by_mark.push(name.clone());
                }
                pending
            });
            // Postgres moved on without asking the daemon: its archive_command found the mark,
            // which has served its purpose.
            state.status.answered_ahead_total += (before - state.done.len()) as u64;
            if let Some(marks) = &self.inner.marks {
                for name in &answered_by_mark {
                    marks.unmark(name);
                }
            }
            state
                .acked
                .retain(|name| ready.iter().any(|r| &r.name == name));
            for file in &ready {
                if state.in_flight.len() >= self.inner.concurrency {
                    break;
                }
                if state.in_flight.contains_key(&file.name)
                    || state.done.contains_key(&file.name)
                    || state.acked.contains(&file.name)
                {
                    continue;
                }
                // The upload runs as its own task; the in-flight map keeps its handle.
                drop(self.start_upload(&mut state, file.name.clone(), None));
            }
        }
    }

    fn warn_on_backlog(&self, state: &mut State, ready: &[Ready]) {
        if ready.len() < BACKLOG_WARN {
            return;
        }
        if state
            .last_backlog_warning
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        state.last_backlog_warning = Some(Instant::now());
        let oldest = ready
            .iter()
            .filter_map(|r| r.modified)
            .min()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
            .unwrap_or_else(|| "?".into());
        tracing::warn!(
            backlog = ready.len(),
            "WAL archiving backlog: {} files wait, the oldest for {oldest}; nothing is dropped, \
             postgres keeps them until archived\nHINT: if uploads fail, the errors above say \
             why; if they are only slow, raise wal.push_concurrency",
            ready.len()
        );
    }

    fn unmark(&self, name: &str) {
        if let Some(marks) = &self.inner.marks {
            marks.unmark(name);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
