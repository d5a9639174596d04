//! The built-in actions a job runs inside the daemon: `backup`, `expire`, `verify`, `check`,
//! `sql` and `restore-test`. Each is the same code as its command (`pgward backup`, ...),
//! returning a one-line summary on success and an error saying why otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::backup_commands;
use crate::config::{Config, JobTask};
use crate::postgres::ready::Target;

/// Runs `task` (not a command) once for job `job`; the summary of what it did.
pub async fn run(
    config: &Config,
    job: &str,
    task: &JobTask,
    cancel: &CancellationToken,
) -> Result<String> {
    match task {
        JobTask::Command { .. } => bail!("job {job} runs a command, not an action"),
        JobTask::Backup { incremental } => {
            let annotations = BTreeMap::from([("job".to_owned(), job.to_owned())]);
            let manifest =
                backup_commands::take_backup(config, *incremental, annotations, false, cancel)
                    .await?;
            let damaged = backup_commands::damaged_files(&manifest);
            if !damaged.is_empty() {
                tracing::warn!(
                    job,
                    backup = %manifest.id,
                    "data page checksum failures, copied as they are on disk: {}",
                    damaged.join(", ")
                );
            }
            Ok(backup_commands::backup_summary(&manifest))
        }
        JobTask::Expire => {
            let (repo, plan) = backup_commands::expire_plan(config).await?;
            crate::backup::expire::execute(&repo, &plan).await?;
            Ok(backup_commands::expire_summary(&plan, false))
        }
        JobTask::Verify { backup } => {
            let report = backup_commands::verify_backup(config, backup, cancel).await?;
            let text = backup_commands::human_report(&report);
            if !report.ok {
                bail!("{}", text.trim_end());
            }
            Ok(text.lines().last().unwrap_or_default().to_owned())
        }
        JobTask::Check => {
            let results = crate::check::run(config).await;
            let failed: Vec<String> = results
                .iter()
                .filter(|r| !r.ok)
                .map(|r| format!("{}: {}", r.name, r.detail))
                .collect();
            if !failed.is_empty() {
                bail!("check failed: {}", failed.join("; "));
            }
            Ok(format!("all {} checks ok", results.len()))
        }
        JobTask::Sql {
            sql,
            database,
            statement_timeout,
        } => run_sql(config, database, sql, *statement_timeout).await,
        JobTask::RestoreTest(options) => {
            let report = super::restore_test::run(config, options, cancel).await?;
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
}

/// Runs `sql` in `database` as the superuser, bounded by `statement_timeout`.
async fn run_sql(
    config: &Config,
    database: &str,
    sql: &str,
    statement_timeout: Duration,
) -> Result<String> {
    let target = Target {
        dbname: database.to_owned(),
        ..Target::superuser_of(&config.postgres)
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
