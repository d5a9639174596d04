//! The restore test: does a backup really restore? The backup is restored into a scratch
//! directory, a throwaway postgres started on it recovers (to the backup's end, or through all
//! the archived WAL) and promotes, a verification query runs, and everything is removed again.
//! Run by `pgward restore-test` and by the scheduler's `restore-test` action; the caller opens
//! what it uses ([`Resources`]).
//!
//! The throwaway server must never touch the real cluster, the repository or anything else
//! outside: it listens on no TCP address, its socket is in the scratch directory,
//! `archive_mode` is off, no logical replication worker starts (a restored subscription would
//! reach its publisher), preloaded libraries whose workers act outward (pg_cron...) are left
//! out and TimescaleDB gets no job worker (`server::throwaway_parameters`), and its
//! `restore_command` (pgward's `wal-fetch`) is answered by this process through a control
//! socket in the scratch directory, with a fetcher that spools into the scratch `pg_wal`. The
//! daemon's own fetcher serves the real cluster and is not asked. This module owns the scratch
//! directory it makes, and nothing else.
//!
//! - `scratch`: the scratch directory, and the control socket answering `wal-fetch` there.
//! - `server`: the throwaway server: its parameters, its process, recovery and the query.
//! - `report`: what a test found, as a report and as text.

mod report;
mod scratch;
mod server;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backup::catalog;
use crate::backup::entries::SpilledManifest;
use crate::config::{Config, RestoreTestConfig, RestoreTestTarget};
use crate::postgres::ready::Target;
use crate::postgres::server::Server;
use crate::postgres::wal::WalSegSize;
use crate::postgres::BinDir;
use crate::process::{self, ChildEnv, LogSink, RunAs, Tail};
use crate::repo::Repo;
use crate::restore::target::{RecoverySettings, RecoveryTarget, TargetAction};
use crate::restore::{restore, RestoreOptions};
use crate::wal::fetch::Fetcher;

pub use report::{human_report, target_name, RestoreTestReport};
use scratch::Scratch;
use server::{
    promoted, query, throwaway_parameters, without_outward_libraries, Throwaway, SERVER_NAME,
};

/// Name of the default scratch directory, beside the data directory.
pub const DEFAULT_SCRATCH_DIR: &str = "pgward-restore-test";

/// How long the throwaway server may take to recover and promote.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `statement_timeout` of the verification query (and how long this side waits for it).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Lines of the server's output kept to explain an early exit.
const TAIL_LINES: usize = 40;

/// What a restore test uses, opened by the caller.
pub struct Resources<'a> {
    pub config: &'a Config,
    /// The repository, or why it cannot be opened (the test then fails, saying so).
    pub repo: Result<&'a Repo, String>,
    /// A fetcher of archived WAL into a `pg_wal` (spooling there), for segments of the given
    /// size; stopped by the token.
    pub fetcher:
        &'a (dyn Fn(&Path, WalSegSize, CancellationToken) -> Result<Fetcher> + Send + Sync),
    /// The server's OS user (when running as root): it owns the scratch directory.
    pub owner: Option<&'a RunAs>,
    /// Where the throwaway server's output goes.
    pub sink: LogSink,
    /// `restore_command` of the restored cluster (pgward's `wal-fetch`), or why there is none.
    pub restore_command: Result<String, String>,
    /// The throwaway server's environment, given the control socket its `restore_command`
    /// must reach.
    pub server_env: &'a (dyn Fn(&Path) -> ChildEnv + Send + Sync),
}

/// Runs one restore test. `Err` only when the test cannot run as asked (a scratch directory
/// inside the data directory); anything that goes wrong while
/// testing is a report with `ok: false`.
///
/// Cancel safety: cancel through `cancel`, which stops the server and removes the scratch
/// directory before returning. Dropping the future instead kills the server and removes the
/// directory on a best-effort basis.
pub async fn run(
    resources: &Resources<'_>,
    options: &RestoreTestConfig,
    cancel: &CancellationToken,
) -> Result<RestoreTestReport> {
    let started = Instant::now();
    let config = resources.config;
    let root = scratch_root(config, options)?;
    let mut report = RestoreTestReport {
        backup: options.backup.clone(),
        target: options.target,
        scratch_dir: root.clone(),
        restore_secs: None,
        recovery_secs: None,
        total_secs: 0.0,
        recovered_to_lsn: None,
        sql_result: None,
        ok: false,
        reason: None,
    };
    let span = tracing::info_span!("restore_test", backup = %options.backup);
    async {
        let mut scratch = None;
        let test = Test {
            resources,
            options,
            cancel,
        };
        // Boxed as `dyn Send` here, where the lifetimes are concrete: the compiler cannot
        // prove `Send` of the steps' borrows for every lifetime of a caller's future.
        let attempt: BoxFuture<'_, _> = Box::pin(test.attempt(&root, &mut report, &mut scratch));
        let outcome = attempt.await;
        let cleanup = match scratch {
            Some(scratch) => scratch.tear_down(&config.postgres.stop).await,
            None => Ok(()),
        };
        match (outcome, cleanup) {
            (Ok(()), Ok(())) => report.ok = true,
            (Ok(()), Err(e)) => report.reason = Some(format!("clean up: {e:#}")),
            (Err(failed), Ok(())) => report.reason = Some(failed.to_string()),
            (Err(failed), Err(e)) => {
                report.reason = Some(format!("{failed}; then clean up: {e:#}"));
            }
        }
        report.total_secs = started.elapsed().as_secs_f64();
        match &report.reason {
            None => tracing::info!(
                total_secs = report.total_secs,
                "restore test passed: backup {} restored and recovered to {}",
                report.backup,
                report.recovered_to_lsn.as_deref().unwrap_or("-")
            ),
            Some(reason) => {
                tracing::info!("restore test of backup {} failed: {reason}", report.backup)
            }
        }
    }
    .instrument(span)
    .await;
    Ok(report)
}

/// Where run directories are made: `scratch_dir`, or `pgward-restore-test` beside the data
/// directory. Refused inside (or equal to) the data directory, symlinks resolved.
pub fn scratch_root(config: &Config, options: &RestoreTestConfig) -> Result<PathBuf> {
    let data_dir = std::path::absolute(&config.postgres.data_dir)
        .with_context(|| format!("make {} absolute", config.postgres.data_dir.display()))?;
    let root = match &options.scratch_dir {
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("make {} absolute", dir.display()))?
        }
        None => data_dir
            .parent()
            .unwrap_or(&data_dir)
            .join(DEFAULT_SCRATCH_DIR),
    };
    if crate::fsutil::resolved(&root).starts_with(crate::fsutil::resolved(&data_dir)) {
        bail!(
            "the restore test's scratch directory {} is inside the data directory {}\n\
             HINT: set scratch_dir (--scratch-dir) to a directory outside postgres.data_dir",
            root.display(),
            data_dir.display()
        );
    }
    Ok(root)
}

/// A step that failed, and why: `restore: object … is corrupt: …`.
#[derive(Debug)]
struct Failed {
    step: &'static str,
    error: anyhow::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.step, self.error)
    }
}

trait InStep<T> {
    fn in_step(self, step: &'static str) -> Result<T, Failed>;
}

impl<T, E: Into<anyhow::Error>> InStep<T> for Result<T, E> {
    fn in_step(self, step: &'static str) -> Result<T, Failed> {
        self.map_err(|e| Failed {
            step,
            error: e.into(),
        })
    }
}

/// One test's inputs.
struct Test<'a> {
    resources: &'a Resources<'a>,
    options: &'a RestoreTestConfig,
    cancel: &'a CancellationToken,
}

impl<'a> Test<'a> {
    /// The steps up to the query. Whatever it leaves running or on disk is in `scratch`.
    async fn attempt(
        &self,
        root: &Path,
        report: &mut RestoreTestReport,
        scratch: &mut Option<Scratch>,
    ) -> Result<(), Failed> {
        let (bin, repo, manifest) = self.pick_backup(report).await?;
        let made = Scratch::make(
            root,
            &manifest.id,
            self.resources.owner,
            self.resources.config.postgres.port,
        )
        .in_step("prepare the scratch directory")?;
        report.scratch_dir = made.dir.clone();
        let scratch = scratch.insert(made);
        tracing::info!(
            scratch_dir = %scratch.dir.display(),
            "restore test: restoring backup {} (target {})",
            manifest.id,
            target_name(self.options.target)
        );
        let data_dir = self.restore(repo, &manifest, &scratch.dir, report).await?;
        self.serve_wal(scratch, &data_dir).await?;
        let target = self.start_server(bin, scratch, &data_dir).await?;
        let server = scratch
            .server
            .as_mut()
            .expect("start_server keeps the server in the scratch directory's record");
        let pid = server.pid;
        let recovery_started = Instant::now();
        let promoted = server
            .during(
                RECOVERY_TIMEOUT,
                self.cancel,
                promoted(&target, &data_dir, pid),
            )
            .await;
        report.recovery_secs = Some(recovery_started.elapsed().as_secs_f64());
        let (client, lsn) = promoted.in_step("recovery")?;
        tracing::info!(
            recovery_secs = report.recovery_secs,
            "restore test: recovered to {lsn} and promoted"
        );
        report.recovered_to_lsn = Some(lsn);
        let Some(sql) = &self.options.sql else {
            return Ok(());
        };
        let result = server
            .during(QUERY_TIMEOUT, self.cancel, query(&client, sql))
            .await
            .in_step("query")?;
        report.sql_result = result;
        match result {
            Some(true) => Ok(()),
            Some(false) => Err(anyhow!("{sql:?} returned false")).in_step("query"),
            None => Err(anyhow!("{sql:?} returned NULL")).in_step("query"),
        }
    }

    /// The server binaries, and the backup to test, which must be of their major version.
    async fn pick_backup(
        &self,
        report: &mut RestoreTestReport,
    ) -> Result<(BinDir, &'a Repo, SpilledManifest), Failed> {
        let config = self.resources.config;
        let path_var = std::env::var("PATH").ok();
        let bin = BinDir::find(
            config.postgres.bin_dir.as_deref(),
            path_var.as_deref(),
            &self.resources.sink,
        )
        .await
        .in_step("find the server binaries")?;
        let repo = self
            .resources
            .repo
            .clone()
            .map_err(|e| anyhow!("{e}"))
            .in_step("pick the backup")?;
        let manifest = self
            .cancellable(catalog::resolve(repo, &self.options.backup))
            .await
            .in_step("pick the backup")?;
        report.backup = manifest.id.clone();
        if manifest.pg_major != bin.major {
            return Err(anyhow!(
                "backup {} is of PostgreSQL {}, the server binaries in {} are PostgreSQL {}\n\
                 HINT: set postgres.bin_dir to binaries of version {}",
                manifest.id,
                manifest.pg_major,
                bin.dir.display(),
                bin.major,
                manifest.pg_major
            ))
            .in_step("pick the backup");
        }
        Ok((bin, repo, manifest))
    }

    /// Restores `manifest` into `dir/data` (tablespaces inside `dir` too: their original
    /// locations are the real cluster's); the data directory.
    async fn restore(
        &self,
        repo: &Repo,
        manifest: &SpilledManifest,
        dir: &Path,
        report: &mut RestoreTestReport,
    ) -> Result<PathBuf, Failed> {
        let data_dir = dir.join("data");
        let tablespace_map: HashMap<u32, PathBuf> = manifest
            .tablespaces
            .iter()
            .map(|t| (t.oid, dir.join("tablespaces").join(t.oid.to_string())))
            .collect();
        let target = match self.options.target {
            RestoreTestTarget::Consistent => RecoveryTarget::Immediate,
            RestoreTestTarget::Latest => RecoveryTarget::EndOfWal,
        };
        let restore_command = self
            .resources
            .restore_command
            .clone()
            .map_err(|e| anyhow!("{e}"))
            .in_step("restore")?;
        let mut options = RestoreOptions::new(
            data_dir.clone(),
            self.resources.config.backup.concurrency as usize,
            self.resources.owner.cloned(),
            RecoverySettings {
                restore_command,
                target,
                action: Some(TargetAction::Promote),
                backup_id: manifest.id.clone(),
                timeline: Default::default(),
                standby: None,
            },
        );
        options.tablespace_map = tablespace_map;
        options.retry = crate::repo::RetryPolicy::from_config(&self.resources.config.storage.retry);
        let restore_started = Instant::now();
        // Not raced against `cancel`: the restore observes it itself, and stops its writes
        // into the directory before the clean-up removes it.
        let restored: BoxFuture<'_, _> = Box::pin(restore(repo, manifest, &options, self.cancel));
        let restored = restored.await;
        report.restore_secs = Some(restore_started.elapsed().as_secs_f64());
        restored.in_step("restore")?;
        Ok(data_dir)
    }

    /// Answers the throwaway server's `wal-fetch` from a fetcher spooling into its `pg_wal`.
    async fn serve_wal(&self, scratch: &mut Scratch, data_dir: &Path) -> Result<(), Failed> {
        let seg_size = crate::postgres::identity::seg_size_of(data_dir)
            .await
            .in_step("start postgres")?;
        let fetcher = (self.resources.fetcher)(
            &data_dir.join("pg_wal"),
            seg_size,
            scratch.stop_serving.clone(),
        )
        .in_step("start postgres")?;
        scratch
            .serve_wal(fetcher, self.resources.owner)
            .await
            .in_step("start postgres")
    }

    /// Starts the throwaway server on `data_dir` (kept in `scratch`); how to reach it.
    async fn start_server(
        &self,
        bin: BinDir,
        scratch: &mut Scratch,
        data_dir: &Path,
    ) -> Result<Target, Failed> {
        let pg = &self.resources.config.postgres;
        let mut server = Server {
            bin,
            data_dir: data_dir.to_path_buf(),
            port: pg.port,
            socket_dir: scratch.dir.clone(),
            parameters: throwaway_parameters(&pg.parameters, None),
            run_as: self.resources.owner.cloned(),
        };
        // The libraries to preload as the restored configuration (postgresql.conf and
        // postgresql.auto.conf of the original) and these parameters set them, less those
        // whose workers act outside.
        let preloaded = self
            .preloaded_libraries(&server)
            .await
            .in_step("start postgres")?;
        let (_, left_out) = without_outward_libraries(&preloaded);
        if !left_out.is_empty() {
            tracing::info!(
                "restore test: starting without {} (preloaded by the original: its workers \
                 act outside the copy)",
                left_out.join(", ")
            );
        }
        server.parameters = throwaway_parameters(&pg.parameters, Some(&preloaded));
        let spec = server
            .spec(SERVER_NAME, &[])
            .child_env(&(self.resources.server_env)(&scratch.socket()));
        let tail = Tail::new(TAIL_LINES);
        let running = process::spawn_keeping_tail(&spec, &self.resources.sink, &tail)
            .in_step("start postgres")?;
        scratch.server = Some(Throwaway {
            pid: running.pid,
            exit: running.exit,
            exited: None,
            tail,
        });
        Ok(Target {
            socket_dir: scratch.dir.clone(),
            port: pg.port,
            user: pg.init.superuser.clone(),
            password: pg.init.password.clone(),
            dbname: self.options.database.clone(),
        })
    }

    /// `shared_preload_libraries` as `server` would read it (`postgres -C`).
    async fn preloaded_libraries(&self, server: &Server) -> Result<String> {
        let spec = server
            .spec("postgres -C", &[])
            .arg("-C")
            .arg("shared_preload_libraries");
        let (status, out) = process::capture(&spec, &self.resources.sink).await?;
        if !status.success() {
            bail!(
                "reading shared_preload_libraries of the restored configuration failed: {status}"
            );
        }
        Ok(out.trim().to_owned())
    }

    /// `work`, unless cancelled first.
    async fn cancellable<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => bail!("cancelled by a stop request (the restore test is cleaning up)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_data_dir(data_dir: &Path) -> Config {
        let mut config =
            crate::config::load(None, &|_| None).expect("the built-in defaults are valid");
        config.postgres.data_dir = data_dir.to_path_buf();
        config
    }

    fn options(scratch_dir: Option<PathBuf>) -> RestoreTestConfig {
        RestoreTestConfig {
            backup: "latest".into(),
            target: RestoreTestTarget::Consistent,
            sql: None,
            database: "postgres".into(),
            scratch_dir,
        }
    }

    #[test]
    fn the_scratch_directory_is_beside_the_data_directory_never_inside() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let config = config_with_data_dir(&data);
        assert_eq!(
            scratch_root(&config, &options(None)).unwrap(),
            dir.path().join(DEFAULT_SCRATCH_DIR)
        );
        let elsewhere = dir.path().join("elsewhere/scratch");
        assert_eq!(
            scratch_root(&config, &options(Some(elsewhere.clone()))).unwrap(),
            elsewhere
        );
        std::os::unix::fs::symlink(&data, dir.path().join("link")).unwrap();
        for inside in [
            data.clone(),
            data.join("scratch"),
            dir.path().join("elsewhere/../data/x"),
            dir.path().join("link/new/scratch"),
        ] {
            let e = scratch_root(&config, &options(Some(inside.clone()))).unwrap_err();
            assert!(
                format!("{e}").contains("is inside the data directory"),
                "{}: {e}",
                inside.display()
            );
        }
    }
}
