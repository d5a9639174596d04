//! The scheduler's built-in actions: `backup`, `expire`, `verify`, `check`, `sql` and
//! `restore-test`, each the same domain code as its command (`pgward backup`, ...), with a
//! one-line summary on success and an error saying why otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup::{catalog, expire, lineage, summary, verify};
use crate::check::{all_ok, CheckResult};
use crate::config::{BackupOn, JobTask, RestoreTestConfig};
use crate::postgres::ready::in_recovery;
use crate::postgres::ready::Target;
use crate::postgres::standby::is_standby;
use crate::scheduler::{Actions, BoxFuture};
use crate::site::Site;
use serde::de::IgnoredAny;

/// The actions, on the daemon's site.
pub(super) struct SiteActions {
    pub(super) site: Arc<Site>,
}

impl Actions for SiteActions {
    fn run<'a>(
        &'a self,
        job: &'a str,
        task: &'a JobTask,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let result = match task {
                JobTask::Command { .. } => bail!("job {job} runs a command, not an action"),
                JobTask::Backup { incremental, .. } => self.backup(job, *incremental, cancel).await,
                JobTask::Expire => self.expire().await,
                JobTask::Verify { backup } => self.verify(backup, cancel).await,
                JobTask::Check => self.check().await,
                JobTask::Sql {
                    sql,
                    database,
                    statement_timeout,
                } => run_sql(self.site.target(), database, sql, *statement_timeout).await,
                JobTask::RestoreTest(options) => self.restore_test(options, cancel).await,
            };
            crate::init::memory::release_freed_memory();
            result
        })
    }

    /// A backup at start is needed while the repository holds no complete backup on this
    /// cluster's lineage (a fresh cluster, or one restored from a repository whose backups
    /// are all of other branches).
    fn skip_at_start<'a>(&'a self, task: &'a JobTask) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            if !task.runs_at_start() {
                return Ok(Some(format!(
                    "action {} does not run at start",
                    task.kind()
                )));
            }
            let repo = self.site.repo()?;
            let lineage = lineage::of_cluster(repo, self.site.data_dir()).await?;
            let (newest, _) = catalog::newest_on::<IgnoredAny>(repo, &lineage).await?;
            Ok(
                newest
                    .map(|m| format!("{} holds backup {} of this cluster", repo.describe(), m.id)),
            )
        })
    }
}

impl SiteActions {
    async fn backup(
        &self,
        job: &str,
        incremental: bool,
        cancel: &CancellationToken,
    ) -> Result<String> {
        // The role this server has now: a hot standby (standby.signal, removed at
        // promotion), or a primary (or a restore recovering towards one).
        let standby = is_standby(self.site.data_dir());
        let on = self.site.config().backup.on;
        let skip = match (on, standby) {
            (BackupOn::Primary, true) => Some("this server is a standby"),
            (BackupOn::Standby, false) => Some("this server is no standby"),
            _ => None,
        };
        if let Some(why) = skip {
            let said = format!("skipped: {why} (backup.on: {})", on.as_str());
            tracing::info!(job, "{said}");
            return Ok(said);
        }
        if !standby {
            let wait: BoxFuture<'_, _> =
                Box::pin(wait_until_primary(job, self.site.target(), cancel));
            wait.await?;
        }
        let annotations = BTreeMap::from([("job".to_owned(), job.to_owned())]);
        let options = self.site.backup_options(annotations, false);
        let take: BoxFuture<'_, _> = Box::pin(self.site.take_backup(incremental, &options, cancel));
        let completed = take.await?;
        let damaged = summary::damaged_files(&completed);
        if !damaged.is_empty() {
            tracing::warn!(
                job,
                backup = %completed.manifest.id,
                "data page checksum failures, copied as they are on disk: {}",
                damaged.join(", ")
            );
        }
        Ok(summary::one_line(&completed))
    }

    async fn expire(&self) -> Result<String> {
        let repo = self.site.repo()?;
        let policy = self.site.retention();
        let lineage = crate::backup::lineage::of_cluster(repo, self.site.data_dir()).await?;
        let plan: BoxFuture<'_, _> = Box::pin(expire::plan_for(
            repo,
            &policy,
            chrono::Utc::now(),
            Some(&lineage),
        ));
        let plan = plan.await?;
        let execute: BoxFuture<'_, _> = Box::pin(expire::execute(repo, &plan));
        execute.await?;
        Ok(plan.summary(false))
    }

    async fn verify(&self, backup: &str, cancel: &CancellationToken) -> Result<String> {
        let repo = self.site.repo()?;
        let manifest = catalog::resolve_as_stored(repo, backup).await?;
        let options = self.site.verify_options();
        // Boxed as `dyn Send` here, where the lifetimes are concrete: the compiler cannot
        // prove `Send` of this future for every lifetime inside `Actions::run`'s.
        let verify: BoxFuture<'_, _> = Box::pin(verify::verify(repo, &manifest, &options, cancel));
        let report = verify.await?;
        let text = verify::human_report(&report);
        if !report.ok {
            bail!("{}", text.trim_end());
        }
        Ok(text.lines().last().unwrap_or_default().to_owned())
    }

    async fn check(&self) -> Result<String> {
        let checks: BoxFuture<'_, _> = Box::pin(self.site.checks());
        let results = checks.await;
        if !all_ok(&results) {
            bail!("{}", failed_checks(&results));
        }
        Ok(format!("all {} checks ok", results.len()))
    }

    async fn restore_test(
        &self,
        options: &RestoreTestConfig,
        cancel: &CancellationToken,
    ) -> Result<String> {
        let test: BoxFuture<'_, _> = Box::pin(self.site.restore_test(options, cancel));
        let report = test.await?;
        if !report.ok {
            bail!(
                "restore test of backup {} failed: {}",
                report.backup,
                report.reason.as_deref().unwrap_or("no reason given")
            );
        }
        Ok(format!(
            "backup {} restored and recovered in {:.1} s",
            report.backup, report.total_secs
        ))
    }
}

/// The failed checks on one line, each with the first line of its detail; their hints are
/// `pgward check`'s to show, one per check.
fn failed_checks(results: &[CheckResult]) -> String {
    let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.ok).collect();
    let reasons: Vec<String> = failed
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.name,
                r.detail.lines().next().unwrap_or_default()
            )
        })
        .collect();
    let mut out = format!("check failed: {}", reasons.join("; "));
    if failed.iter().any(|r| r.detail.lines().nth(1).is_some()) {
        out.push_str("\nHINT: `pgward check` shows what to do about each");
    }
    out
}

/// How often a scheduled backup asks whether the server has left recovery.
const RECOVERY_POLL: Duration = Duration::from_secs(2);

/// Waits while the server recovers (a restore from the repository not yet promoted): a backup
/// can only be taken of a primary, and a scheduled one that fires during the recovery is taken
/// right after it instead of failing. Bounded by the job's `timeout` and `cancel`.
async fn wait_until_primary(job: &str, target: Target, cancel: &CancellationToken) -> Result<()> {
    let mut said = false;
    loop {
        let client = target
            .connect()
            .await
            .with_context(|| format!("connect to postgres at {}", target.socket_dir.display()))?;
        let recovering = in_recovery(&client).await?;
        drop(client);
        if !recovering {
            return Ok(());
        }
        if !said {
            tracing::info!(
                job,
                "the server is in recovery: the backup waits until it is promoted"
            );
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(RECOVERY_POLL) => {}
            () = cancel.cancelled() => bail!("the backup was stopped while waiting for the end of recovery"),
        }
    }
}

/// Runs `sql` in `database` as the superuser, bounded by `statement_timeout`.
async fn run_sql(
    superuser: Target,
    database: &str,
    sql: &str,
    statement_timeout: Duration,
) -> Result<String> {
    let target = Target {
        dbname: database.to_owned(),
        ..superuser
    };
    let client = target.connect().await.with_context(|| {
        format!(
            "connect to database {database} at {}",
            target.socket_dir.display()
        )
    })?;
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            statement_timeout.as_millis()
        ))
        .await
        .context("set statement_timeout")?;
    client
        .batch_execute(sql)
        .await
        .map_err(|e| match e.as_db_error() {
            // The server's own message ("canceling statement due to statement timeout").
            Some(db) => anyhow::anyhow!("{}: {}", db.severity(), db.message()),
            None => anyhow::Error::new(e),
        })
        .with_context(|| format!("run the job's SQL in database {database}"))?;
    Ok(format!("SQL ran in database {database}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_checks_fit_one_line_and_point_at_pgward_check_for_hints() {
        let results = [
            CheckResult {
                name: "postgres",
                ok: true,
                detail: "reachable".into(),
            },
            CheckResult {
                name: "archive_mode",
                ok: false,
                detail: "off: WAL is not archived\nHINT: set wal.archive: true".into(),
            },
            CheckResult {
                name: "backups",
                ok: false,
                detail: "list backups in file:///r: denied".into(),
            },
        ];
        assert_eq!(
            failed_checks(&results),
            "check failed: archive_mode: off: WAL is not archived; backups: list backups in \
             file:///r: denied\nHINT: `pgward check` shows what to do about each"
        );
        assert_eq!(
            failed_checks(&results[2..]),
            "check failed: backups: list backups in file:///r: denied"
        );
    }
}
