//! One job: its schedule loop, its runs (attempts, retries, policies), its status and the
//! state it leaves for the next start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::policy::{self, Due, RunFacts};
use super::report::RunStatus;
use super::schedule::Schedule;
use super::state::{JobStates, RunResult};
use super::{JobStatus, OutputLine, OutputStream};
use crate::config::{ConcurrencyPolicy, Config, JobConfig, JobTask};
use crate::init::ExitInfo;
use crate::process::{LogSink, RunAs};
use crate::redact::scrub;

use super::BoxFuture;

/// What the last runs left, into a status.
pub(super) fn fill_from_state(status: &mut JobStatus, state: &super::state::JobState) {
    status.last_start = state.last_start;
    status.last_end = state.last_end;
    status.last_success = state.last_success;
    status.last_failure = state.last_failure;
    match &state.last_result {
        Some(RunResult::Success) => {
            status.last_result = Some(RunStatus::Success);
            status.last_reason = None;
        }
        Some(RunResult::Failure { reason }) => {
            status.last_result = Some(RunStatus::Failure);
            // Scrubbed when recorded; a state file of an older pgward may not be.
            status.last_reason = Some(scrub(reason).into_owned());
        }
        None => {}
    }
    status.last_duration_seconds = state.last_duration_secs;
}

/// What every job shares.
pub(super) struct Shared {
    config: Arc<Config>,
    sink: LogSink,
    actions: Arc<dyn super::Actions>,
    child_env: super::JobEnv,
    postgres_ready: watch::Receiver<bool>,
    state_path: PathBuf,
    /// Loaded once; changed in memory, written by [`Shared::save`] off the runtime.
    states: Mutex<JobStates>,
    /// Bumped on every change; the saver writes when it is ahead of what is on disk.
    changes: watch::Sender<u64>,
    /// The change last written (held while writing, so writes never reorder).
    saved: Mutex<u64>,
}

impl Shared {
    pub(super) fn new(
        config: Arc<Config>,
        runners: super::Runners,
        postgres_ready: watch::Receiver<bool>,
        state_path: PathBuf,
    ) -> Shared {
        let states = match JobStates::load(&state_path) {
            Ok(states) => states,
            Err(e) => {
                tracing::error!(
                    "failed to read the jobs' state ({e:#}); starting without it (no catch-up \
                     this time)"
                );
                JobStates::default()
            }
        };
        Shared {
            config,
            sink: runners.sink,
            actions: runners.actions,
            child_env: runners.child_env,
            postgres_ready,
            state_path,
            states: Mutex::new(states),
            changes: watch::channel(0).0,
            saved: Mutex::new(0),
        }
    }

    /// Writes the state file whenever it changed, until `cancel`; bursts of changes (a
    /// seconds schedule) are written once.
    pub(super) async fn saver(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes = self.changes.subscribe();
        loop {
            // First round too: changes made before this task subscribed count as seen.
            self.clone().save().await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Writes the current state (fsyncs: on a blocking thread). A failed write is logged:
    /// the scheduler goes on, and catch-up may then run a job once more than needed.
    pub(super) async fn save(self: Arc<Self>) {
        let written = tokio::task::spawn_blocking(move || {
            let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            let current = *self.changes.borrow();
            if current <= *saved {
                return Ok(());
            }
            let snapshot = self
                .states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            snapshot.save(&self.state_path)?;
            *saved = current;
            anyhow::Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("failed to save the jobs' state: {e:#}"),
            Err(e) => tracing::error!("failed to save the jobs' state: {e}"),
        }
    }

    /// Changes job `name`'s persisted state; the saver writes it soon after.
    fn update_state(&self, name: &str, change: impl FnOnce(&mut super::state::JobState)) {
        change(
            self.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .job_mut(name),
        );
        self.changes.send_modify(|n| *n += 1);
    }

    fn state_of(&self, name: &str) -> Option<super::state::JobState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.jobs.get(name).cloned()
    }
}

/// How a run ended, for a `jobs run` client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSummary {
    pub job: String,
    pub success: bool,
    /// Why it failed.
    pub reason: Option<String>,
    /// A command's exit code (the last attempt's).
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub duration_seconds: u64,
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Its time came (this is that time).
    Schedule(DateTime<Utc>),
    /// Missed while pgward was down (the missed time).
    CatchUp(DateTime<Utc>),
    /// `@reboot`.
    Reboot,
    /// At start, because the action said a run is needed now (`at_start: if_none`).
    AtStart,
    /// `pgward jobs run`.
    Manual,
}

impl Trigger {
    fn describe(self) -> String {
        match self {
            Trigger::Schedule(_) => "on schedule".into(),
            Trigger::CatchUp(at) => format!("to catch up the run missed at {at}"),
            Trigger::Reboot => "at start (@reboot)".into(),
            Trigger::AtStart => "at start (no backup of this cluster yet)".into(),
            Trigger::Manual => "on request (jobs run)".into(),
        }
    }
}

/// A run in progress: how to stop it.
struct Active {
    id: u64,
    started: DateTime<Utc>,
    stop: CancellationToken,
}

/// One configured job.
pub(super) struct Job {
    config: JobConfig,
    schedule: Schedule,
    shared: Arc<Shared>,
    status: Mutex<JobStatus>,
    active: Mutex<Vec<Active>>,
    /// Changes whenever a run ends, so `wait_idle` and `replace` can wait for it.
    ended: watch::Sender<u64>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Job {
    pub(super) fn new(config: JobConfig, shared: Arc<Shared>) -> Result<Job, String> {
        let schedule = Schedule::new(&config.schedule, &config.timezone)?;
        let mut status = JobStatus {
            name: config.name.clone(),
            schedule: config.schedule.clone(),
            timezone: config.timezone.clone(),
            kind: config.task.kind().to_owned(),
            enabled: config.enabled,
            timeout_seconds: config.timeout.map(|t| t.as_secs_f64()),
            ..JobStatus::default()
        };
        if let Some(state) = shared.state_of(&config.name) {
            fill_from_state(&mut status, &state);
        }
        Ok(Job {
            config,
            schedule,
            shared,
            status: Mutex::new(status),
            active: Mutex::new(Vec::new()),
            ended: watch::channel(0).0,
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub(super) fn status(&self) -> JobStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // A run that replaces another waits for it to end before it starts: one is running.
        status.running = match self.config.concurrency {
            ConcurrencyPolicy::Replace => active.len().min(1),
            _ => active.len(),
        };
        status.running_since = active.iter().map(|a| a.started).min();
        status
    }

    fn set_next(&self, next: Option<DateTime<Utc>>) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_run = next;
    }

    /// The job's life in the daemon: catch-up or `@reboot` first, then every scheduled time
    /// until `cancel`. A critical task: it returns only once cancelled.
    pub(super) async fn schedule_loop(
        self: Arc<Self>,
        started: DateTime<Utc>,
        cancel: CancellationToken,
    ) {
        self.clone().fire_on_schedule(started, &cancel).await;
        // Nothing (more) on schedule: a disabled or `@reboot` job, a schedule with no next time.
        cancel.cancelled().await;
    }

    /// Starts the job's runs at its times, until `cancel` or the schedule's end.
    async fn fire_on_schedule(self: Arc<Self>, started: DateTime<Utc>, cancel: &CancellationToken) {
        let cancel = cancel.clone();
        if !self.config.enabled {
            self.set_next(None);
            return;
        }
        let name = self.config.name.clone();
        if self.config.task.runs_at_start() {
            tokio::spawn(self.clone().run_at_start_if_needed(cancel.clone()));
        }
        if self.schedule.is_reboot() {
            self.set_next(None);
            self.clone().start(Trigger::Reboot, None, cancel.clone());
            return;
        }
        match self.shared.state_of(&name).and_then(|s| s.last_fire) {
            Some(last_fire) if self.config.catch_up => {
                if let Some(missed) = self.schedule.last_due(last_fire, started) {
                    tracing::info!(job = %name, %missed, "a run was missed while pgward was down: running it now");
                    self.shared
                        .update_state(&name, |s| s.last_fire = Some(missed));
                    self.clone()
                        .start(Trigger::CatchUp(missed), None, cancel.clone());
                }
            }
            Some(_) => {}
            // First start with this job: from now on, missed runs can be told.
            None => self
                .shared
                .update_state(&name, |s| s.last_fire = Some(started)),
        }
        let mut after = started;
        loop {
            let Some(next) = self.schedule.next_after(after) else {
                self.set_next(None);
                return;
            };
            self.set_next(Some(next));
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            // The wall clock may lag the monotonic sleep by a little (or jump): never start
            // before the scheduled second.
            let now = Utc::now();
            if now < next {
                let early = (next - now).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(early).await;
            }
            self.shared
                .update_state(&name, |s| s.last_fire = Some(next));
            tracing::debug!(job = %name, %next, "job due");
            self.clone()
                .start(Trigger::Schedule(next), None, cancel.clone());
            after = next;
        }
    }

    /// Once postgres is ready, asks the action whether a run is needed now (a first backup of
    /// a fresh cluster) and starts one if so. A failed question starts the run too: its own
    /// error then says what is wrong, in the job's status and reports.
    async fn run_at_start_if_needed(self: Arc<Self>, cancel: CancellationToken) {
        let name = self.config.name.clone();
        let mut ready = self.shared.postgres_ready.clone();
        tokio::select! {
            _ = ready.wait_for(|r| *r) => {}
            () = cancel.cancelled() => return,
        }
        match self.shared.actions.skip_at_start(&self.config.task).await {
            Ok(Some(reason)) => {
                tracing::info!(job = %name, "no run at start: {reason}");
                return;
            }
            Ok(None) => {
                tracing::info!(job = %name, "running at start: no backup of this cluster yet")
            }
            Err(e) => {
                tracing::warn!(job = %name, "running at start: could not tell whether a backup exists: {e:#}")
            }
        }
        // Nobody waits for this run: it reports through the job's status, like a scheduled one.
        drop(self.start(Trigger::AtStart, None, cancel));
    }

    /// Applies the concurrency policy and, if it allows, starts a run in its own task; the
    /// run's summary arrives on the returned receiver (or an error saying why it did not
    /// start).
    fn start(
        self: Arc<Self>,
        trigger: Trigger,
        live: Option<mpsc::UnboundedSender<OutputLine>>,
        cancel: CancellationToken,
    ) -> tokio::sync::oneshot::Receiver<Result<RunSummary, String>> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let name = self.config.name.clone();
        let running = self.active.lock().unwrap_or_else(|p| p.into_inner()).len();
        match policy::on_due(self.config.concurrency, running) {
            Due::Skip => {
                let message = format!(
                    "job {name} is still running (concurrency: forbid): run {} skipped",
                    trigger.describe()
                );
                tracing::warn!(job = %name, "{message}");
                let _ = done_tx.send(Err(message));
                return done_rx;
            }
            Due::ReplaceThenStart => {
                tracing::warn!(job = %name, "job is still running (concurrency: replace): stopping the running one");
                for active in self.active.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    active.stop.cancel();
                }
            }
            Due::Start => {}
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = cancel.child_token();
        let started = Utc::now();
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Active {
                id,
                started,
                stop: stop.clone(),
            });
        tokio::spawn(async move {
            if self.config.concurrency == ConcurrencyPolicy::Replace {
                self.wait_others(id).await;
            }
            let summary = self.run(trigger, live, &stop).await;
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|a| a.id != id);
            self.ended.send_modify(|n| *n += 1);
            let _ = done_tx.send(Ok(summary));
        });
        done_rx
    }

    /// For `replace`: waits until every run started before run `id` has ended.
    async fn wait_others(&self, id: u64) {
        let mut ended = self.ended.subscribe();
        loop {
            let older = self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|a| a.id < id);
            if !older || ended.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until no run of this job is in progress.
    pub(super) async fn wait_idle(&self) {
        let mut ended = self.ended.subscribe();
        loop {
            if self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            if ended.changed().await.is_err() {
                return;
            }
        }
    }

    /// `enabled` in its config.
    pub(super) fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// `pgward jobs run`: starts a run now and waits for its end. A disabled job never runs,
    /// on schedule or by hand.
    pub(super) async fn run_now(
        self: Arc<Self>,
        live: mpsc::UnboundedSender<OutputLine>,
        cancel: CancellationToken,
    ) -> Result<RunSummary, String> {
        if !self.config.enabled {
            return Err(disabled(&self.config.name));
        }
        let done = self.start(Trigger::Manual, Some(live), cancel);
        done.await
            .unwrap_or_else(|_| Err("the run ended without a result".into()))
    }

    /// One run: wait for postgres if needed, attempts with retries, status, state, report.
    async fn run(
        &self,
        trigger: Trigger,
        live: Option<mpsc::UnboundedSender<OutputLine>>,
        stop: &CancellationToken,
    ) -> RunSummary {
        let name = self.config.name.clone();
        let say = |text: String| {
            if let Some(live) = &live {
                let _ = live.send(OutputLine {
                    stream: OutputStream::Pgward,
                    text,
                });
            }
        };
        if !self.wait_for_postgres(&say, stop).await {
            return self.cancelled_before_start();
        }
        let started = Utc::now();
        let clock = Instant::now();
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.last_start = Some(started);
        }
        self.shared
            .update_state(&name, |s| s.last_start = Some(started));
        tracing::info!(job = %name, kind = self.config.task.kind(), "job started {}", trigger.describe());
        let tried = self.attempts(live.as_ref(), stop, &say).await;
        let ended = Utc::now();
        let duration = clock.elapsed();
        match &tried.reason {
            None => tracing::info!(
                job = %name,
                seconds = duration.as_secs_f64(),
                attempts = tried.attempts,
                "job succeeded"
            ),
            // Stopped on purpose (pgward stops, or a newer run replaced this one): the run
            // counts as failed, but nobody needs to look.
            Some(why) if stop.is_cancelled() => tracing::warn!(
                job = %name,
                seconds = duration.as_secs_f64(),
                attempts = tried.attempts,
                "job stopped: {why}"
            ),
            Some(why) => tracing::error!(
                job = %name,
                seconds = duration.as_secs_f64(),
                attempts = tried.attempts,
                "job failed: {why}"
            ),
        }
        say(match &tried.reason {
            None => format!("job {name} succeeded"),
            Some(why) => format!("job {name} failed: {why}"),
        });
        self.record(&tried, ended, duration);
        self.report(&tried, started, ended, duration).await;
        RunSummary {
            job: name,
            success: tried.reason.is_none(),
            reason: tried.reason,
            exit_code: tried.facts.exit_code,
            attempts: tried.attempts,
            duration_seconds: duration.as_secs(),
        }
    }

    /// Waits until postgres accepts connections if the job wants it; `false` when `stop`
    /// came first.
    async fn wait_for_postgres(&self, say: &impl Fn(String), stop: &CancellationToken) -> bool {
        if !self.config.wait_for_postgres || *self.shared.postgres_ready.borrow() {
            return true;
        }
        tracing::info!(job = %self.config.name, "waiting for postgres to accept connections");
        say("waiting for postgres to accept connections".into());
        let mut ready = self.shared.postgres_ready.clone();
        tokio::select! {
            _ = ready.wait_for(|r| *r) => true,
            () = stop.cancelled() => false,
        }
    }

    /// The attempts of one run: again after a failure while the retry policy allows.
    async fn attempts(
        &self,
        live: Option<&mpsc::UnboundedSender<OutputLine>>,
        stop: &CancellationToken,
        say: &impl Fn(String),
    ) -> Tried {
        let mut attempt = 1u32;
        loop {
            let (facts, tail, error) = self.attempt(live, stop).await;
            // An action's own error (or a command that could not start) says more than its
            // exit status would.
            let reason = error.or_else(|| policy::failure_reason(&self.config.fails_when, &facts));
            let tried = Tried {
                facts,
                tail,
                reason,
                attempts: attempt,
            };
            let Some(why) = &tried.reason else {
                return tried;
            };
            if stop.is_cancelled() {
                return tried;
            }
            let Some(delay) = policy::retry_delay(&self.config.retries, attempt) else {
                return tried;
            };
            let delay_text = humantime::format_duration(delay);
            tracing::warn!(
                job = %self.config.name,
                attempt,
                "job attempt failed: {why}; retrying in {delay_text}"
            );
            say(format!(
                "attempt {attempt} failed: {why}; retrying in {delay_text}"
            ));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return tried,
            }
            attempt += 1;
        }
    }

    /// Keeps how the run ended: in the status and in the state file.
    fn record(&self, tried: &Tried, ended: DateTime<Utc>, duration: Duration) {
        let success = tried.reason.is_none();
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.last_end = Some(ended);
            status.last_duration_seconds = Some(duration.as_secs_f64());
            status.runs_total += 1;
            status.last_output = tried.tail.clone();
            if success {
                status.last_success = Some(ended);
                status.last_result = Some(RunStatus::Success);
                status.last_reason = None;
            } else {
                status.last_failure = Some(ended);
                status.last_result = Some(RunStatus::Failure);
                status.last_reason = tried.reason.clone();
                status.failures_total += 1;
            }
        }
        self.shared.update_state(&self.config.name, |s| {
            s.last_end = Some(ended);
            s.last_duration_secs = Some(duration.as_secs_f64());
            s.last_result = Some(match &tried.reason {
                None => RunResult::Success,
                Some(reason) => RunResult::Failure {
                    reason: reason.clone(),
                },
            });
            if success {
                s.last_success = Some(ended);
            } else {
                s.last_failure = Some(ended);
            }
        });
    }

    /// Sends the `on_success` or `on_failure` report, if the job has one.
    async fn report(
        &self,
        tried: &Tried,
        started: DateTime<Utc>,
        ended: DateTime<Utc>,
        duration: Duration,
    ) {
        let success = tried.reason.is_none();
        let report_config = match success {
            true => &self.config.on_success,
            false => &self.config.on_failure,
        };
        let Some(report_config) = report_config else {
            return;
        };
        let report = super::report::RunReport {
            job: self.config.name.clone(),
            status: match success {
                true => super::report::RunStatus::Success,
                false => super::report::RunStatus::Failure,
            },
            reason: tried.reason.clone(),
            exit_code: tried.facts.exit_code,
            attempt: tried.attempts,
            started_at: started,
            finished_at: ended,
            duration_secs: duration.as_secs_f64(),
            output_tail: tried.tail.clone(),
            host: super::report::hostname(),
        };
        let child_env = (self.shared.child_env)(&self.config);
        // A user that cannot be found fails the report command (logged), not the webhook.
        let run_as = self.run_as();
        // Boxed as `dyn Send`: the compiler then checks Send for these borrows here, once,
        // instead of failing to prove it for every lifetime inside the spawned run.
        let send: BoxFuture<'_, ()> = Box::pin(super::report::send(
            report_config,
            &report,
            &self.config.env,
            &child_env,
            run_as,
            &self.shared.sink,
        ));
        send.await;
    }

    fn cancelled_before_start(&self) -> RunSummary {
        RunSummary {
            job: self.config.name.clone(),
            success: false,
            reason: Some("stopped before it started (pgward is shutting down)".into()),
            exit_code: None,
            attempts: 0,
            duration_seconds: 0,
        }
    }

    /// The OS user commands run as when pgward is root: the job's `user`, else
    /// `postgres.user` (root only when written), looked up again for each run. A user that
    /// cannot be found fails the run: a command never falls back to pgward's own user.
    fn run_as(&self) -> Result<Option<RunAs>, String> {
        let user = self
            .config
            .user
            .as_deref()
            .unwrap_or(&self.shared.config.postgres.user);
        RunAs::for_child(Some(user)).map_err(|e| format!("cannot run as user {user:?}: {e:#}"))
    }

    /// One attempt: the facts that decide success, the output's last lines, and the error
    /// of an action that failed (or of a command that could not start).
    async fn attempt(
        &self,
        live: Option<&mpsc::UnboundedSender<OutputLine>>,
        stop: &CancellationToken,
    ) -> (RunFacts, Vec<String>, Option<String>) {
        match &self.config.task {
            JobTask::Command { .. } => {
                let run_as = match self.run_as() {
                    Ok(run_as) => run_as,
                    Err(error) => {
                        if let Some(live) = live {
                            let _ = live.send(OutputLine {
                                stream: OutputStream::Pgward,
                                text: error.clone(),
                            });
                        }
                        return (RunFacts::action(false), vec![error.clone()], Some(error));
                    }
                };
                let mut run = super::command::CommandRun::for_job(&self.config, run_as)
                    .expect("a command job has a command");
                run.child_env = (self.shared.child_env)(&self.config);
                // The runner speaks in process streams; a `jobs run` client gets them named.
                let forward = live.cloned().map(|live| {
                    let (tx, mut rx) = mpsc::unbounded_channel::<crate::process::OutputLine>();
                    let task = tokio::spawn(async move {
                        while let Some(line) = rx.recv().await {
                            let stream = match line.stream {
                                crate::process::StreamKind::Stdout => OutputStream::Stdout,
                                crate::process::StreamKind::Stderr => OutputStream::Stderr,
                            };
                            let _ = live.send(OutputLine {
                                stream,
                                text: line.text,
                            });
                        }
                    });
                    (tx, task)
                });
                let (tx, task) = match forward {
                    Some((tx, task)) => (Some(tx), Some(task)),
                    None => (None, None),
                };
                let outcome = super::command::run(&run, &self.shared.sink, tx, stop).await;
                if let Some(task) = task {
                    // Every line before the verdict.
                    let _ = task.await;
                }
                match outcome {
                    Ok(outcome) => {
                        let (exit_code, signal) = match outcome.exit {
                            ExitInfo::Code(code) => (Some(code), None),
                            ExitInfo::Signal(signal) => (None, Some(signal)),
                        };
                        let facts = RunFacts {
                            exit_code,
                            signal,
                            timed_out: outcome.timed_out.then_some(self.config.timeout).flatten(),
                            stdout_lines: outcome.stdout_lines,
                            stderr_lines: outcome.stderr_lines,
                        };
                        let error = (outcome.cancelled && !outcome.timed_out).then(|| {
                            format!(
                                "stopped (replaced by a newer run, or pgward is shutting down; {})",
                                outcome.exit
                            )
                        });
                        (facts, outcome.tail, error)
                    }
                    Err(e) => {
                        let error = scrub(&format!("failed to start: {e:#}")).into_owned();
                        (RunFacts::action(false), vec![error.clone()], Some(error))
                    }
                }
            }
            task => {
                let result = self.run_action(task, stop).await;
                let result = match result {
                    ActionEnd::Done(result) => result,
                    ActionEnd::TimedOut(limit) => {
                        let facts = RunFacts {
                            timed_out: Some(limit),
                            ..RunFacts::default()
                        };
                        let reason = policy::failure_reason(&self.config.fails_when, &facts)
                            .unwrap_or_else(|| "timed out".into());
                        return (facts, vec![reason], None);
                    }
                };
                // What an action says goes to the status, the state file and reports: an
                // error may quote what it read (a conninfo, a URL).
                let (line, succeeded) = match result {
                    Ok(summary) => (scrub(&summary).into_owned(), true),
                    Err(e) => (scrub(&e).into_owned(), false),
                };
                if let Some(live) = live {
                    let _ = live.send(OutputLine {
                        stream: OutputStream::Pgward,
                        text: line.clone(),
                    });
                }
                match succeeded {
                    true => (RunFacts::action(true), vec![line], None),
                    false => (RunFacts::action(false), vec![line.clone()], Some(line)),
                }
            }
        }
    }

    /// Runs a built-in action to its end, its `timeout`, or `stop`. An action stops where it
    /// stands when its future is dropped (see [`super::Actions::run`]).
    async fn run_action(&self, task: &JobTask, stop: &CancellationToken) -> ActionEnd {
        let limit = self.config.timeout.unwrap_or(Duration::MAX);
        let action = self.shared.actions.run(&self.config.name, task, stop);
        tokio::select! {
            result = tokio::time::timeout(limit, action) => match result {
                Ok(result) => ActionEnd::Done(result.map_err(|e| format!("{e:#}"))),
                Err(_) => ActionEnd::TimedOut(limit),
            },
            () = stop.cancelled() => ActionEnd::Done(Err(
                "stopped (replaced by a newer run, or pgward is shutting down)".to_owned(),
            )),
        }
    }
}

/// How a run's attempts ended: the last attempt's facts and output, why the run failed (none
/// when it succeeded), and how many attempts it took.
struct Tried {
    facts: RunFacts,
    tail: Vec<String>,
    reason: Option<String>,
    attempts: u32,
}

/// How a built-in action ended.
enum ActionEnd {
    Done(Result<String, String>),
    TimedOut(Duration),
}

/// The refusal of a run of the disabled job `name`.
pub(super) fn disabled(name: &str) -> String {
    format!("job {name} is disabled\nHINT: set enabled: true in its config (and restart pgward) to run it")
}
