//! The job scheduler: `jobs[]` of the config run on cron schedules inside the daemon, with
//! yacron's policies (concurrency, timeout and kill, retries with backoff, `fails_when`),
//! catch-up of runs missed while pgward was down, and reports on failure and success. What
//! the built-in actions (backup, expire, verify, check, sql, restore-test) do is not known
//! here: the daemon's wiring hands them in as [`Actions`].
//!
//! One task per job sleeps until the job's next time in its zone and starts a run; a run is
//! its attempts (a command in its own process group, or an action in this process) and its
//! report. What each job did last survives restarts in a small state file in the data
//! directory, which is what catch-up is computed from. `pgward jobs run` starts a run through
//! [`Scheduler::run_now`] and streams its output.
//!
//! - [`schedule`]: when a job fires, in its time zone, through DST changes (pure).
//! - [`policy`]: concurrency, retry delays, what makes a run a failure (pure).
//! - [`state`]: what survives a restart (last runs, for catch-up and status), kept in the
//!   data directory.
//! - [`command`]: one attempt of a command job (process group, timeout and kill, output).
//! - [`report`]: `on_failure` / `on_success` (command and webhook).

pub mod command;
pub mod policy;
pub mod report;
pub mod schedule;
pub mod state;

mod job;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, JobConfig, JobTask};
use crate::process::{ChildEnv, LogSink};
use crate::tasks::Critical;

pub use job::RunSummary;

/// A boxed future that is `Send`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The built-in actions, provided by the daemon's wiring: the scheduler decides when a job
/// runs, how often it is tried and who hears of it; what an action does is this trait's.
pub trait Actions: Send + Sync {
    /// Runs `task` (an action, not a command) once for job `job`: a one-line summary of what
    /// it did, or why it failed. Dropping the future stops the action where it stands (a
    /// backup then leaves no manifest, so none is listed); `cancel` asks it to stop cleanly.
    fn run<'a>(
        &'a self,
        job: &'a str,
        task: &'a JobTask,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, anyhow::Result<String>>;

    /// For a job whose task runs at start ([`JobTask::runs_at_start`]): why no run is needed
    /// now (`Some`), or `None` when one is. Asked once postgres is ready.
    fn skip_at_start<'a>(
        &'a self,
        task: &'a JobTask,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        let _ = task;
        Box::pin(async { Ok(None) })
    }
}

/// What runs a job's work besides the scheduler itself.
pub struct Runners {
    /// Where commands' output goes.
    pub sink: LogSink,
    /// The built-in actions.
    pub actions: Arc<dyn Actions>,
    /// The environment of a job's command and report command (pgward's own less its
    /// secrets, below the job's `env`).
    pub child_env: JobEnv,
}

/// The environment of a job's commands, by job (its `inherit_env`).
pub type JobEnv = Arc<dyn Fn(&JobConfig) -> ChildEnv + Send + Sync>;

/// One line of a run's output, for a `jobs run` client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub text: String,
}

/// Where a line of a run's output comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// What the scheduler says of the run.
    Pgward,
}

/// What `jobs list`, `status` and the exporter show of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct JobStatus {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    /// The action, or `command`.
    pub kind: String,
    pub enabled: bool,
    /// Next time on schedule (none for `@reboot` or a disabled job).
    pub next_run: Option<DateTime<Utc>>,
    /// Runs in progress.
    pub running: usize,
    /// Start of the oldest run in progress.
    pub running_since: Option<DateTime<Utc>>,
    /// The job's `timeout`, to tell a stuck run.
    pub timeout_seconds: Option<f64>,
    pub last_start: Option<DateTime<Utc>>,
    pub last_end: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub last_result: Option<report::RunStatus>,
    /// Why the last run failed.
    pub last_reason: Option<String>,
    pub last_duration_seconds: Option<f64>,
    /// Runs ended since pgward started, and how many of them failed.
    pub runs_total: u64,
    pub failures_total: u64,
    /// The last lines of the last run's output (a command's; an action's summary).
    pub last_output: Vec<String>,
}

/// The jobs as the config schedules them and as their last runs left them (the state file),
/// for `jobs list` when no daemon runs.
pub fn offline_status(config: &Config, now: DateTime<Utc>) -> Vec<JobStatus> {
    let states =
        state::JobStates::load(&state::state_path(&config.postgres.data_dir)).unwrap_or_default();
    config
        .jobs
        .iter()
        .map(|cfg| {
            let next_run = schedule::Schedule::new(&cfg.schedule, &cfg.timezone)
                .ok()
                .and_then(|s| s.next_after(now))
                .filter(|_| cfg.enabled);
            let mut status = JobStatus {
                name: cfg.name.clone(),
                schedule: cfg.schedule.clone(),
                timezone: cfg.timezone.clone(),
                kind: cfg.task.kind().to_owned(),
                enabled: cfg.enabled,
                next_run,
                timeout_seconds: cfg.timeout.map(|t| t.as_secs_f64()),
                ..JobStatus::default()
            };
            if let Some(state) = states.jobs.get(&cfg.name) {
                job::fill_from_state(&mut status, state);
            }
            status
        })
        .collect()
}

/// The scheduler of a running daemon.
#[derive(Clone)]
pub struct Scheduler {
    jobs: Arc<BTreeMap<String, Arc<job::Job>>>,
    cancel: CancellationToken,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    shared: Arc<job::Shared>,
    /// Writes the state file as it changes; stopped (after a last write) at shutdown.
    saver: Arc<Mutex<Option<Saver>>>,
}

/// The task writing the state file, and how to stop it.
type Saver = (tokio::task::JoinHandle<()>, CancellationToken);

impl Scheduler {
    /// Starts a task per job: catch-up and `@reboot` runs first, then the schedule.
    /// `postgres_ready` tells when postgres accepts connections (runs wait for it unless
    /// their job says otherwise).
    pub fn start(
        config: Arc<Config>,
        runners: Runners,
        postgres_ready: watch::Receiver<bool>,
        cancel: CancellationToken,
        critical: &Critical,
    ) -> Scheduler {
        let state_path: PathBuf = state::state_path(&config.postgres.data_dir);
        let shared = Arc::new(job::Shared::new(
            config.clone(),
            runners,
            postgres_ready,
            state_path,
        ));
        let jobs: BTreeMap<String, Arc<job::Job>> = config
            .jobs
            .iter()
            .filter_map(|cfg| match job::Job::new(cfg.clone(), shared.clone()) {
                Ok(job) => Some((cfg.name.clone(), Arc::new(job))),
                Err(e) => {
                    // Validation parsed the same schedule: this cannot happen with a checked
                    // config, but a job that cannot be scheduled must be loud, not silent.
                    tracing::error!(job = %cfg.name, "cannot schedule the job: {e}");
                    None
                }
            })
            .collect();
        let jobs = Arc::new(jobs);
        let now = Utc::now();
        let saver_cancel = CancellationToken::new();
        let saver = critical.spawn(
            "the jobs' state saver",
            &saver_cancel,
            shared.clone().saver(saver_cancel.clone()),
        );
        let tasks = jobs
            .iter()
            .map(|(name, job)| {
                critical.spawn(
                    format!("the schedule of job {name}"),
                    &cancel,
                    job.clone().schedule_loop(now, cancel.clone()),
                )
            })
            .collect();
        if !jobs.is_empty() {
            tracing::info!(jobs = jobs.len(), "scheduler started");
        }
        Scheduler {
            jobs,
            cancel,
            tasks: Arc::new(Mutex::new(tasks)),
            shared,
            saver: Arc::new(Mutex::new(Some((saver, saver_cancel)))),
        }
    }

    /// Every job, by name.
    pub fn list(&self) -> Vec<JobStatus> {
        self.jobs.values().map(|job| job.status()).collect()
    }

    /// Why job `name` may not be run now at all (it is disabled), if so.
    pub fn refusal(&self, name: &str) -> Option<String> {
        let job = self.jobs.get(name)?;
        (!job.enabled()).then(|| job::disabled(name))
    }

    /// Runs job `name` now (its concurrency policy applies), sending its output to `live`;
    /// how it ended. `Err` when there is no such job or the policy refuses the run.
    pub async fn run_now(
        &self,
        name: &str,
        live: mpsc::UnboundedSender<OutputLine>,
    ) -> Result<RunSummary, String> {
        let job = self.jobs.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            format!(
                "no job named {name:?} (jobs: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?;
        job.clone().run_now(live, self.cancel.clone()).await
    }

    /// Stops scheduling, stops the runs in progress (commands get SIGTERM then SIGKILL after
    /// their `kill_timeout`; actions are cancelled) and waits for them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        for job in self.jobs.values() {
            job.wait_idle().await;
        }
        let saver = self.saver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((task, cancel)) = saver {
            cancel.cancel();
            let _ = task.await;
        }
        self.shared.clone().save().await;
    }
}
