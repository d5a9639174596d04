//! pgward's own metrics (`pgward_*`): WAL archiving counters and push latency as they happen,
//! and at each scrape the state of backups, checks, services and jobs, and the storage
//! requests counted by the repository (`repo::counted`). Kept with the
//! `metrics` facade and rendered by `metrics-exporter-prometheus`; the names, units and
//! labels are listed in `docs/metrics.md`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::backup::manifest::{BackupKind, Manifest};
use crate::check::CheckResult;
use crate::scheduler::report::RunStatus;
use crate::scheduler::{BoxFuture, JobStatus};
use crate::supervisor::UnitStatus;
use crate::tasks::Critical;
use crate::wal::archiver::ArchiverStatus;

/// How often the backup catalogue is read again for the backup metrics.
pub const BACKUPS_INTERVAL: Duration = Duration::from_secs(60);
/// How often `pgward check` runs for the `pgward_check_ok` gauges (it writes a probe object to
/// the repository, so not at every scrape).
pub const CHECKS_INTERVAL: Duration = Duration::from_secs(300);

/// Push latency buckets, in seconds: a mark answers in microseconds, an upload in milliseconds
/// to seconds.
const PUSH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's metrics recorder and describes every pgward metric.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("pgward_wal_push_duration_seconds".into()),
            PUSH_BUCKETS,
        )
        .context("set the push latency buckets")?
        .install_recorder()
        .context("install the metrics recorder")?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_wal();
    describe_storage();
    describe_services();
    describe_backups();
    describe_checks();
    describe_jobs();
}

/// WAL archiving and fetching.
fn describe_wal() {
    describe_counter!(
        "pgward_wal_pushed_total",
        "WAL files archived by the daemon, by result (archived, already_archived, failed)"
    );
    describe_counter!(
        "pgward_wal_fetched_total",
        "WAL files fetched for recovery, by result (found, not_found, failed)"
    );
    describe_counter!(
        "pgward_wal_prefetch_hits_total",
        "WAL fetches answered from the prefetch spool"
    );
    describe_histogram!(
        "pgward_wal_push_duration_seconds",
        Unit::Seconds,
        "Time to store and verify one WAL file"
    );
    describe_gauge!(
        "pgward_wal_ready_backlog",
        "WAL files postgres marked ready and pgward has not acknowledged (NaN while pg_wal/archive_status cannot be scanned)"
    );
    describe_gauge!(
        "pgward_wal_ready_scan_failing",
        "1 while pg_wal/archive_status cannot be scanned (the backlog is then unknown: NaN)"
    );
    describe_counter!(
        "pgward_wal_ready_scan_errors_total",
        "Scans of pg_wal/archive_status that failed"
    );
    describe_gauge!(
        "pgward_wal_last_archived_age_seconds",
        Unit::Seconds,
        "Seconds since the last WAL file was archived"
    );
}

/// The requests made of the storage.
fn describe_storage() {
    describe_counter!(
        "pgward_storage_requests_total",
        "Requests made of the storage, by operation (op) and outcome (result: ok, not_found, exists, error); a request retried by the storage client counts once"
    );
}

/// pgward's loop and the supervised services.
fn describe_services() {
    describe_gauge!("pgward_up", "1 while pgward's loop runs");
    describe_gauge!(
        "pgward_service_up",
        "1 when the supervised service runs (postgres: accepts connections)"
    );
    describe_counter!(
        "pgward_service_restarts_total",
        "Restarts of the supervised service since pgward started"
    );
    describe_gauge!(
        "pgward_postgres_last_exit_code",
        "Exit code of postgres's last exit (128 + signal when killed); absent before any"
    );
}

/// The backups in the repository.
fn describe_backups() {
    describe_gauge!(
        "pgward_backup_last_success_timestamp_seconds",
        Unit::Seconds,
        "End of the newest complete backup"
    );
    describe_gauge!(
        "pgward_backup_last_failure_timestamp_seconds",
        Unit::Seconds,
        "End of the last failed backup job run"
    );
    describe_gauge!(
        "pgward_backup_last_age_seconds",
        Unit::Seconds,
        "Seconds since the newest complete backup ended"
    );
    describe_gauge!(
        "pgward_backup_last_size_bytes",
        Unit::Bytes,
        "Size of the data directory in the newest backup"
    );
    describe_gauge!(
        "pgward_backup_last_stored_bytes",
        Unit::Bytes,
        "Bytes the newest backup stored in the repository"
    );
    describe_gauge!(
        "pgward_backup_last_duration_seconds",
        Unit::Seconds,
        "Duration of the newest backup"
    );
    describe_gauge!(
        "pgward_backups",
        "Complete backups in the repository, by kind (the redundancy)"
    );
    describe_gauge!(
        "pgward_backup_min_redundancy",
        "backup.min_redundancy: complete full backups expected"
    );
    describe_gauge!(
        "pgward_backup_first_recoverability_timestamp_seconds",
        Unit::Seconds,
        "Earliest point a restore can reach (start of the oldest backup)"
    );
    describe_gauge!(
        "pgward_backup_recovery_window_seconds",
        Unit::Seconds,
        "Seconds from the first recoverability point to now"
    );
    describe_gauge!(
        "pgward_backup_bad_blocks",
        "Data pages whose checksum failed in the newest backup"
    );
}

/// Restore tests and `pgward check`.
fn describe_checks() {
    describe_gauge!(
        "pgward_restore_test_last_success",
        "1 when the last restore test passed, 0 when it failed"
    );
    describe_gauge!(
        "pgward_restore_test_last_timestamp_seconds",
        Unit::Seconds,
        "End of the last restore test"
    );
    describe_gauge!(
        "pgward_restore_test_last_duration_seconds",
        Unit::Seconds,
        "Duration of the last restore test"
    );
    describe_gauge!(
        "pgward_check_ok",
        "1 when the `pgward check` item passed at the last check, 0 when it failed"
    );
}

/// Scheduled jobs.
fn describe_jobs() {
    describe_gauge!(
        "pgward_job_last_run_timestamp_seconds",
        Unit::Seconds,
        "Start of the job's last run"
    );
    describe_gauge!(
        "pgward_job_last_success_timestamp_seconds",
        Unit::Seconds,
        "End of the job's last successful run"
    );
    describe_gauge!(
        "pgward_job_last_duration_seconds",
        Unit::Seconds,
        "Duration of the job's last run"
    );
    describe_counter!(
        "pgward_job_runs_total",
        "Runs of the job ended since pgward started"
    );
    describe_counter!(
        "pgward_job_failures_total",
        "Failed runs of the job since pgward started"
    );
    describe_gauge!("pgward_job_running", "Runs of the job in progress");
    describe_gauge!(
        "pgward_job_stuck",
        "1 when a run of the job has lasted longer than its timeout"
    );
}

/// What the backup metrics are computed from, read from the repository now and then.
#[derive(Debug, Clone, Default)]
pub struct BackupFacts {
    pub manifests: Vec<Manifest>,
    pub read_at: Option<DateTime<Utc>>,
}

/// Reads the backup catalogue, for the backup metrics.
pub type ReadBackups = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<Manifest>>> + Send + Sync>;
/// Runs the health checks, for the `pgward_check_ok` gauges.
pub type RunChecks = Arc<dyn Fn() -> BoxFuture<'static, Vec<CheckResult>> + Send + Sync>;

/// Background readers of the backup catalogue and of the health checks, for the scrapes.
#[derive(Clone, Default)]
pub struct Watchers {
    backups: Arc<Mutex<Option<BackupFacts>>>,
    checks: Arc<Mutex<Option<Vec<CheckResult>>>>,
}

impl Watchers {
    /// Starts the readers, critical tasks; they stop with `cancel`.
    pub fn start(
        read_backups: ReadBackups,
        run_checks: RunChecks,
        critical: &Critical,
        cancel: CancellationToken,
    ) -> Watchers {
        let watchers = Watchers::default();
        let backups = watchers.backups.clone();
        let backup_cancel = cancel.clone();
        critical.spawn("the backup metrics' reader", &cancel, async move {
            loop {
                match read_backups().await {
                    Ok(manifests) => {
                        let facts = BackupFacts {
                            manifests,
                            read_at: Some(Utc::now()),
                        };
                        *backups.lock().unwrap_or_else(|p| p.into_inner()) = Some(facts);
                    }
                    Err(e) => tracing::debug!("backup metrics: {e:#}"),
                }
                tokio::select! {
                    () = backup_cancel.cancelled() => return,
                    () = tokio::time::sleep(BACKUPS_INTERVAL) => {}
                }
            }
        });
        let checks = watchers.checks.clone();
        let check_cancel = cancel.clone();
        critical.spawn("the check metrics' runner", &cancel, async move {
            // Let postgres come up before the first round.
            tokio::select! {
                () = check_cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            loop {
                let results = run_checks().await;
                *checks.lock().unwrap_or_else(|p| p.into_inner()) = Some(results);
                tokio::select! {
                    () = check_cancel.cancelled() => return,
                    () = tokio::time::sleep(CHECKS_INTERVAL) => {}
                }
            }
        });
        watchers
    }

    fn backups(&self) -> Option<BackupFacts> {
        self.backups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn checks(&self) -> Option<Vec<CheckResult>> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The daemon's state at a scrape.
pub struct Snapshot<'a> {
    pub services: &'a [UnitStatus],
    pub archiver: Option<&'a ArchiverStatus>,
    pub jobs: &'a [JobStatus],
    pub min_redundancy: u32,
    pub now: DateTime<Utc>,
}

/// Sets the scrape-time gauges from `snapshot` and the watchers' last readings.
pub fn update(snapshot: &Snapshot<'_>, watchers: &Watchers) {
    let now = snapshot.now;
    let secs = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    gauge!("pgward_up").set(1.0);
    for service in snapshot.services {
        let up = service.state.is_up();
        gauge!("pgward_service_up", "service" => service.name.clone()).set(f64::from(u8::from(up)));
        counter!("pgward_service_restarts_total", "service" => service.name.clone())
            .absolute(u64::from(service.restarts));
        if service.name == crate::supervisor::POSTGRES {
            if let Some(code) = service.last_exit.as_deref().and_then(exit_code) {
                gauge!("pgward_postgres_last_exit_code").set(f64::from(code));
            }
        }
    }
    if let Some(archiver) = snapshot.archiver {
        // Unknown is not 0: a failed scan leaves the gauge NaN, and the flag says why.
        gauge!("pgward_wal_ready_backlog").set(archiver.backlog.map_or(f64::NAN, |n| n as f64));
        gauge!("pgward_wal_ready_scan_failing")
            .set(f64::from(u8::from(archiver.scan_error.is_some())));
        counter!("pgward_wal_ready_scan_errors_total").absolute(archiver.scan_errors_total);
        if let Some(at) = archiver.last_archived_at {
            gauge!("pgward_wal_last_archived_age_seconds").set((secs(now) - at).max(0.0));
        }
    }
    for job in snapshot.jobs {
        let name = job.name.clone();
        if let Some(at) = job.last_start {
            gauge!("pgward_job_last_run_timestamp_seconds", "job_name" => name.clone())
                .set(secs(at));
        }
        if let Some(at) = job.last_success {
            gauge!("pgward_job_last_success_timestamp_seconds", "job_name" => name.clone())
                .set(secs(at));
        }
        if let Some(d) = job.last_duration_seconds {
            gauge!("pgward_job_last_duration_seconds", "job_name" => name.clone()).set(d);
        }
        counter!("pgward_job_runs_total", "job_name" => name.clone()).absolute(job.runs_total);
        counter!("pgward_job_failures_total", "job_name" => name.clone())
            .absolute(job.failures_total);
        gauge!("pgward_job_running", "job_name" => name.clone()).set(job.running as f64);
        let stuck = match (job.running_since, job.timeout_seconds) {
            (Some(since), Some(limit)) => (now - since).num_milliseconds() as f64 / 1000.0 > limit,
            _ => false,
        };
        gauge!("pgward_job_stuck", "job_name" => name).set(f64::from(u8::from(stuck)));
    }
    let failed_backup = snapshot
        .jobs
        .iter()
        .filter(|j| j.kind == "backup")
        .filter_map(|j| j.last_failure)
        .max();
    if let Some(at) = failed_backup {
        gauge!("pgward_backup_last_failure_timestamp_seconds").set(secs(at));
    }
    let restore_test = snapshot
        .jobs
        .iter()
        .filter(|j| j.kind == "restore-test" && j.last_end.is_some())
        .max_by_key(|j| j.last_end);
    if let Some(job) = restore_test {
        let ok = job.last_result == Some(RunStatus::Success);
        gauge!("pgward_restore_test_last_success").set(f64::from(u8::from(ok)));
        if let Some(at) = job.last_end {
            gauge!("pgward_restore_test_last_timestamp_seconds").set(secs(at));
        }
        if let Some(d) = job.last_duration_seconds {
            gauge!("pgward_restore_test_last_duration_seconds").set(d);
        }
    }
    for request in crate::repo::counted::snapshot() {
        counter!(
            "pgward_storage_requests_total",
            "op" => request.op.as_str(),
            "result" => request.result.as_str()
        )
        .absolute(request.count);
    }
    gauge!("pgward_backup_min_redundancy").set(f64::from(snapshot.min_redundancy));
    if let Some(facts) = watchers.backups() {
        update_backups(&facts.manifests, now);
    }
    if let Some(checks) = watchers.checks() {
        for check in checks {
            gauge!("pgward_check_ok", "check" => check.name).set(f64::from(u8::from(check.ok)));
        }
    }
}

fn update_backups(manifests: &[Manifest], now: DateTime<Utc>) {
    let secs = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    for (kind, label) in [
        (BackupKind::Full, "full"),
        (BackupKind::Incremental, "incremental"),
    ] {
        let n = manifests.iter().filter(|m| m.kind == kind).count();
        gauge!("pgward_backups", "kind" => label).set(n as f64);
    }
    let Some(newest) = manifests.iter().max_by_key(|m| m.stop_time) else {
        return;
    };
    gauge!("pgward_backup_last_success_timestamp_seconds").set(secs(newest.stop_time));
    gauge!("pgward_backup_last_age_seconds")
        .set(((now - newest.stop_time).num_milliseconds() as f64 / 1000.0).max(0.0));
    gauge!("pgward_backup_last_size_bytes").set(newest.size as f64);
    gauge!("pgward_backup_last_stored_bytes").set(newest.stored_size as f64);
    gauge!("pgward_backup_last_duration_seconds")
        .set((newest.stop_time - newest.start_time).num_milliseconds() as f64 / 1000.0);
    let bad: usize = newest.files.iter().map(|f| f.bad_blocks.len()).sum();
    gauge!("pgward_backup_bad_blocks").set(bad as f64);
    if let Some(oldest) = manifests.iter().map(|m| m.start_time).min() {
        gauge!("pgward_backup_first_recoverability_timestamp_seconds").set(secs(oldest));
        gauge!("pgward_backup_recovery_window_seconds")
            .set(((now - oldest).num_milliseconds() as f64 / 1000.0).max(0.0));
    }
}

/// Returns the free memory of the allocator's arenas to the system: a scrape of many
/// databases builds and drops thousands of labelled samples, and glibc would keep their pages
/// (bench/exporter.sh: 30 MB after scrapes of 100 databases without it, 18 MB with it).
/// Fixed mmap and trim thresholds would give large buffers back at once too, but then every
/// WAL upload faults its buffers in afresh and push latency rose by half: trimming after a
/// scrape costs nothing on that path. Blocking for a moment: on a blocking thread.
pub async fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; safe at any time.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
}

/// The exit code in a supervisor's "exit code N" / "killed by SIGX" text.
fn exit_code(text: &str) -> Option<i32> {
    if let Some(code) = text.strip_prefix("exit code ") {
        return code.trim().parse().ok();
    }
    let name = text.strip_prefix("killed by ")?;
    let signal: nix::sys::signal::Signal = name.trim().parse().ok()?;
    Some(128 + signal as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_texts_become_codes() {
        assert_eq!(exit_code("exit code 3"), Some(3));
        assert_eq!(exit_code("killed by SIGKILL"), Some(137));
        assert_eq!(exit_code("running"), None);
    }
}
