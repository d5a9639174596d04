//! The restore test: does a backup really restore? The backup is restored into a scratch
//! directory, a throwaway postgres started on it recovers (to the backup's end, or through all
//! the archived WAL) and promotes, a verification query runs, and everything is removed again.
//! Run by `pgward restore-test` and by the scheduler's `restore-test` action.
//!
//! The throwaway server must never touch the real cluster or the repository: it listens on no
//! TCP address, its socket is in the scratch directory, `archive_mode` is off, and its
//! `restore_command` (pgward's `wal-fetch`) is answered by this process through a control
//! socket in the scratch directory, with a fetcher that spools into the scratch `pg_wal`. The
//! daemon's own fetcher serves the real cluster and is not asked. This module owns the scratch
//! directory it makes, and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backup::catalog;
use crate::commands::SOCKET_ENV;
use crate::config::{Config, LogFormat, RestoreTestConfig, RestoreTestTarget};
use crate::control::server::{Answer, ControlServer, Handler};
use crate::control::{Request, Response};
use crate::init::ExitInfo;
use crate::postgres::control_file::ControlFile;
use crate::postgres::ready::{self, Target};
use crate::postgres::server::Server;
use crate::postgres::BinDir;
use crate::process::{self, LogSink, RunAs, Tail};
use crate::repo::{Repo, RetryPolicy};
use crate::restore::target::{RecoverySettings, RecoveryTarget, TargetAction};
use crate::restore::{restore, RestoreOptions};
use crate::wal::fetch::{Fetched, Fetcher};

/// Name of the default scratch directory, beside the data directory.
pub const DEFAULT_SCRATCH_DIR: &str = "pgward-restore-test";

/// How long the throwaway server may take to recover and promote.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `statement_timeout` of the verification query (and how long this side waits for it).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Log prefix of the throwaway server's output.
const SERVER_NAME: &str = "restore-test";

/// Lines of the server's output kept to explain an early exit.
const TAIL_LINES: usize = 40;

/// What one restore test found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreTestReport {
    /// The backup tested: its id, or what was asked for when no backup could be picked.
    pub backup: String,
    pub target: RestoreTestTarget,
    /// This run's scratch directory (removed at the end), or where it would have been made.
    pub scratch_dir: PathBuf,
    /// Seconds spent restoring the backup's files; `None` when the restore did not start.
    pub restore_secs: Option<f64>,
    /// Seconds from starting the server until it was out of recovery (or failed); `None`
    /// when the server did not start.
    pub recovery_secs: Option<f64>,
    /// Seconds for the whole test, clean-up included.
    pub total_secs: f64,
    /// `pg_current_wal_lsn()` of the promoted server.
    pub recovered_to_lsn: Option<String>,
    /// What the query returned; `None` without a query or when it gave no boolean.
    pub sql_result: Option<bool>,
    /// The backup restored, recovered and the query (if any) returned true.
    pub ok: bool,
    /// Why not: the step that failed and the cause.
    pub reason: Option<String>,
}

/// Runs one restore test. `Err` only when the test cannot run as asked (a scratch directory
/// inside the data directory, an unknown `postgres.user`); anything that goes wrong while
/// testing is a report with `ok: false`.
///
/// Cancel safety: cancel through `cancel`, which stops the server and removes the scratch
/// directory before returning. Dropping the future instead kills the server and removes the
/// directory on a best-effort basis.
pub async fn run(
    config: &Config,
    options: &RestoreTestConfig,
    cancel: &CancellationToken,
) -> Result<RestoreTestReport> {
    let started = Instant::now();
    let root = scratch_root(config, options)?;
    let owner = RunAs::for_child(Some(&config.postgres.user))?;
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
            config,
            options,
            owner: owner.as_ref(),
            cancel,
        };
        let outcome = test.attempt(&root, &mut report, &mut scratch).await;
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
    if resolved(&root).starts_with(resolved(&data_dir)) {
        bail!(
            "the restore test's scratch directory {} is inside the data directory {}\n\
             HINT: set scratch_dir (--scratch-dir) to a directory outside postgres.data_dir",
            root.display(),
            data_dir.display()
        );
    }
    Ok(root)
}

/// `path` (absolute) with `.` and `..` folded and the symlinks of its longest existing
/// ancestor resolved.
fn resolved(path: &Path) -> PathBuf {
    let mut folded = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                folded.pop();
            }
            Component::CurDir => {}
            other => folded.push(other),
        }
    }
    let mut missing = Vec::new();
    let mut existing = folded.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return folded,
        }
    }
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
    config: &'a Config,
    options: &'a RestoreTestConfig,
    owner: Option<&'a RunAs>,
    cancel: &'a CancellationToken,
}

impl Test<'_> {
    /// The steps up to the query. Whatever it leaves running or on disk is in `scratch`.
    async fn attempt(
        &self,
        root: &Path,
        report: &mut RestoreTestReport,
        scratch: &mut Option<Scratch>,
    ) -> Result<(), Failed> {
        let config = self.config;
        let sink = LogSink {
            format: config.log.format,
            max_line_bytes: usize::try_from(config.log.max_line_bytes).unwrap_or(usize::MAX),
        };
        let path_var = std::env::var("PATH").ok();
        let bin = BinDir::find(
            config.postgres.bin_dir.as_deref(),
            path_var.as_deref(),
            &sink,
        )
        .await
        .in_step("find the server binaries")?;
        let repo = Repo::open(&config.storage)
            .with_context(|| format!("open repository {}", config.storage.url))
            .in_step("pick the backup")?;
        let manifest = self
            .cancellable(catalog::resolve(&repo, &self.options.backup))
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

        let made = Scratch::make(root, &manifest.id, self.owner, config.postgres.port)
            .in_step("prepare the scratch directory")?;
        let dir = made.dir.clone();
        report.scratch_dir = dir.clone();
        let scratch = scratch.insert(made);
        let data_dir = dir.join("data");
        tracing::info!(
            scratch_dir = %dir.display(),
            "restore test: restoring backup {} (target {})",
            manifest.id,
            target_name(self.options.target)
        );

        // Tablespaces come back inside the scratch directory: their original locations are
        // the real cluster's.
        let tablespace_map: HashMap<u32, PathBuf> = manifest
            .tablespaces
            .iter()
            .map(|t| (t.oid, dir.join("tablespaces").join(t.oid.to_string())))
            .collect();
        let target = match self.options.target {
            RestoreTestTarget::Consistent => RecoveryTarget::Immediate,
            RestoreTestTarget::Latest => RecoveryTarget::EndOfWal,
        };
        let restore_options = RestoreOptions {
            data_dir: data_dir.clone(),
            force: false,
            delta: false,
            concurrency: config.backup.concurrency as usize,
            owner: self.owner.cloned(),
            recovery: RecoverySettings {
                restore_command: format!(
                    "{} wal-fetch %f %p",
                    crate::app::pgward_invocation(config).in_step("restore")?
                ),
                target,
                action: Some(TargetAction::Promote),
                backup_id: manifest.id.clone(),
            },
            tablespace_map,
        };
        let restore_started = Instant::now();
        // Not raced against `cancel`: the restore observes it itself, and stops its writes
        // into the directory before the clean-up removes it.
        let restored = restore(&repo, &manifest, &restore_options, self.cancel).await;
        report.restore_secs = Some(restore_started.elapsed().as_secs_f64());
        restored.in_step("restore")?;

        let wal_dir = data_dir.join("pg_wal");
        let seg_size = {
            let data_dir = data_dir.clone();
            tokio::task::spawn_blocking(move || ControlFile::read(&data_dir))
                .await
                .context("join pg_control reader")
                .and_then(|read| read)
                .in_step("start postgres")?
                .xlog_seg_size
        };
        let fetcher = Fetcher::new(
            repo,
            RetryPolicy::from_config(&config.storage.retry),
            &wal_dir,
            seg_size,
            config.wal.prefetch as usize,
            self.owner.cloned(),
            scratch.stop_serving.clone(),
        );
        scratch
            .serve_wal(fetcher, &data_dir, self.owner)
            .await
            .in_step("start postgres")?;

        let server = Server {
            bin,
            data_dir: data_dir.clone(),
            port: config.postgres.port,
            socket_dir: dir.clone(),
            parameters: throwaway_parameters(&config.postgres.parameters),
            run_as: self.owner.cloned(),
        };
        let spec = server
            .spec(SERVER_NAME, &[])
            .env(SOCKET_ENV, scratch.socket())
            .env(
                crate::logging::FORMAT_ENV,
                match config.log.format {
                    LogFormat::Json => "json",
                    LogFormat::Text => "text",
                },
            );
        let tail = Tail::new(TAIL_LINES);
        let recovery_started = Instant::now();
        let running = process::spawn_keeping_tail(&spec, &sink, &tail).in_step("start postgres")?;
        let pid = running.pid;
        let server = scratch.server.insert(Throwaway {
            pid,
            exit: running.exit,
            exited: None,
            tail,
        });

        let target = Target {
            socket_dir: dir.clone(),
            port: config.postgres.port,
            user: config.postgres.init.superuser.clone(),
            password: config.postgres.init.password.clone(),
            dbname: self.options.database.clone(),
        };
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

        if let Some(sql) = &self.options.sql {
            let result = server
                .during(QUERY_TIMEOUT, self.cancel, query(&client, sql))
                .await
                .in_step("query")?;
            report.sql_result = result;
            match result {
                Some(true) => {}
                Some(false) => return Err(anyhow!("{sql:?} returned false")).in_step("query"),
                None => return Err(anyhow!("{sql:?} returned NULL")).in_step("query"),
            }
        }
        Ok(())
    }

    /// `work`, unless cancelled first.
    async fn cancellable<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => bail!("cancelled"),
        }
    }
}

/// Waits until the server accepts connections and is out of recovery; then a session and
/// `pg_current_wal_lsn()`.
async fn promoted(
    target: &Target,
    data_dir: &Path,
    pid: i32,
) -> Result<(tokio_postgres::Client, String)> {
    // With hot_standby off, the server accepts connections only once recovery has ended.
    ready::wait_open(target, data_dir, pid).await;
    let client = target
        .connect()
        .await
        .with_context(|| format!("connect to database {:?}", target.dbname))?;
    loop {
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .context("ask whether recovery has ended")?
            .get(0);
        if !in_recovery {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("read the WAL position")?
        .get(0);
    Ok((client, lsn))
}

/// Runs `sql` under a statement timeout; the boolean of its one row's first column (`None`
/// for NULL).
async fn query(client: &tokio_postgres::Client, sql: &str) -> Result<Option<bool>> {
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            QUERY_TIMEOUT.as_millis()
        ))
        .await
        .context("set statement_timeout")?;
    let rows = client
        .query(sql, &[])
        .await
        .with_context(|| format!("run {sql:?}"))?;
    let row = match rows.as_slice() {
        [row] => row,
        [] => bail!("{sql:?} returned no row (it must return one row whose first column is true)"),
        more => bail!(
            "{sql:?} returned {} rows (it must return one row whose first column is true)",
            more.len()
        ),
    };
    match row.columns().first().map(|c| c.type_()) {
        Some(&tokio_postgres::types::Type::BOOL) => {}
        Some(other) => bail!("the first column of {sql:?} is of type {other}, not boolean"),
        None => bail!("{sql:?} returned no column"),
    }
    row.try_get(0)
        .with_context(|| format!("read the result of {sql:?}"))
}

/// The parameters of the throwaway server: the configured ones (the data may need their
/// preloaded libraries, locale or limits), less those that reach outside the scratch
/// directory, then the overrides that keep it apart from the real cluster and cheap.
fn throwaway_parameters(configured: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let reaches_out = |name: &str| {
        ["archive_", "recovery_", "primary_", "unix_socket_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "restore_command",
                "promote_trigger_file",
                "external_pid_file",
                "config_file",
                "data_directory",
                "stats_temp_directory",
            ]
            .contains(&name)
    };
    let mut parameters: BTreeMap<String, String> = configured
        .iter()
        .filter(|(name, _)| !reaches_out(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    for (name, value) in [
        // The socket in the scratch directory only.
        ("listen_addresses", ""),
        // Never into the real repository.
        ("archive_mode", "off"),
        // No connection until recovery has ended; and no check that max_connections and
        // the like are at least the original's, which only a hot standby needs.
        ("hot_standby", "off"),
        ("cluster_name", "pgward-restore-test"),
        // Beside the real server: little memory, no huge pages it may need.
        ("shared_buffers", "128MB"),
        ("huge_pages", "off"),
        // The certificates may be the real server's files, and nobody connects over TCP.
        ("ssl", "off"),
        // Output through pgward's relay, tagged `restore-test`.
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
        // A query must not wait for a standby that will never connect.
        ("synchronous_standby_names", ""),
        // A throwaway: no vacuum, and nothing to keep through a crash.
        ("autovacuum", "off"),
        ("fsync", "off"),
    ] {
        parameters.insert(name.to_owned(), value.to_owned());
    }
    parameters
}

/// The scratch directory of one run and what runs in it; torn down at the end, or killed and
/// removed on drop.
struct Scratch {
    dir: PathBuf,
    /// The directory holding `dir` was made by this run: removed too when left empty.
    made_root: Option<PathBuf>,
    /// Stops the WAL control socket and the fetcher's downloads.
    stop_serving: CancellationToken,
    serving: Option<(tokio::task::JoinHandle<()>, Fetcher)>,
    server: Option<Throwaway>,
    torn_down: bool,
}

impl Scratch {
    /// A new directory in `root` (created if missing), given to `owner`. Its unix sockets
    /// must fit in `sun_path`.
    fn make(root: &Path, backup_id: &str, owner: Option<&RunAs>, port: u16) -> Result<Scratch> {
        let made_root = if root.exists() {
            None
        } else {
            std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
            Some(root.to_path_buf())
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{backup_id}-"))
            .tempdir_in(root)
            .with_context(|| format!("create a directory in {}", root.display()))?
            .keep();
        let scratch = Scratch {
            dir,
            made_root,
            stop_serving: CancellationToken::new(),
            serving: None,
            server: None,
            torn_down: false,
        };
        if let Some(owner) = owner {
            owner.chown(&scratch.dir)?;
        }
        // sun_path holds 108 bytes with the terminating NUL.
        let longest = scratch.dir.join(format!(".s.PGSQL.{port}.lock"));
        if longest.as_os_str().len() > 107 {
            bail!(
                "{} is too long a path for a unix socket\nHINT: set scratch_dir (--scratch-dir) \
                 to a shorter path",
                longest.display()
            );
        }
        Ok(scratch)
    }

    /// The control socket the server's `restore_command` asks.
    fn socket(&self) -> PathBuf {
        self.dir.join("pgward.sock")
    }

    /// Serves `wal-fetch` for the throwaway server from `fetcher`.
    async fn serve_wal(
        &mut self,
        fetcher: Fetcher,
        data_dir: &Path,
        owner: Option<&RunAs>,
    ) -> Result<()> {
        let server = ControlServer::bind(&self.socket(), owner).await?;
        let handler = Arc::new(WalOnly {
            fetcher: fetcher.clone(),
            data_dir: data_dir.to_path_buf(),
        });
        let task = tokio::spawn(server.serve(handler, self.stop_serving.clone()));
        self.serving = Some((task, fetcher));
        Ok(())
    }

    /// Stops the server (fast shutdown, then SIGKILL), the WAL service, and removes the
    /// directory.
    async fn tear_down(mut self, stop: &crate::config::StopConfig) -> Result<()> {
        self.torn_down = true;
        if let Some(server) = &mut self.server {
            server.stop(stop.timeout, stop.kill_timeout).await;
        }
        self.stop_serving.cancel();
        if let Some((task, fetcher)) = self.serving.take() {
            let _ = task.await;
            // Downloads in flight write into the directory about to be removed.
            fetcher.settle().await;
        }
        let dir = self.dir.clone();
        let root = self.made_root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
            if let Some(root) = root {
                // Another run may be using it: then it stays.
                let _ = std::fs::remove_dir(root);
            }
            anyhow::Ok(())
        })
        .await
        .context("join the clean-up")?
    }
}

impl Drop for Scratch {
    /// The test's future was dropped mid-way: kill the server's process group and remove
    /// the directory, as well as can be done without waiting (blocking briefly on the way:
    /// this is not the path of a test that ran to its end).
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.stop_serving.cancel();
        if let Some(server) = &self.server {
            if server.exited.is_none() {
                process::signal_group(server.pid, Signal::SIGKILL);
            }
        }
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return,
            }
        }
        tracing::warn!(
            "could not remove the restore test's scratch directory {}; remove it by hand",
            self.dir.display()
        );
    }
}

/// The throwaway server's process.
struct Throwaway {
    pid: i32,
    exit: oneshot::Receiver<ExitInfo>,
    exited: Option<ExitInfo>,
    /// Its last lines of output, to say why it exited.
    tail: Tail,
}

impl Throwaway {
    /// `work`, while the server runs: fails when the server exits first, after `within`, or
    /// when cancelled.
    async fn during<T>(
        &mut self,
        within: Duration,
        cancel: &CancellationToken,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if let Some(status) = self.exited {
            return Err(exited(status, &self.tail).await);
        }
        let tail = self.tail.clone();
        tokio::select! {
            result = work => result,
            status = &mut self.exit => {
                let status = status.expect("the global reaper never drops a registered child");
                self.exited = Some(status);
                Err(exited(status, &tail).await)
            }
            () = tokio::time::sleep(within) => {
                bail!("not done after {}", humantime::format_duration(within))
            }
            () = cancel.cancelled() => bail!("cancelled"),
        }
    }

    /// Fast shutdown (SIGINT), then SIGKILL to its process group after `grace`.
    async fn stop(&mut self, grace: Duration, kill_grace: Duration) {
        if self.exited.is_some() {
            return;
        }
        process::signal(self.pid, Signal::SIGINT);
        if let Ok(status) = tokio::time::timeout(grace, &mut self.exit).await {
            self.exited = status.ok();
            return;
        }
        tracing::warn!(
            pid = self.pid,
            "the restore test's server did not stop within {}; killing it",
            humantime::format_duration(grace)
        );
        process::signal_group(self.pid, Signal::SIGKILL);
        if let Ok(status) = tokio::time::timeout(kill_grace, &mut self.exit).await {
            self.exited = status.ok();
        }
    }
}

/// "postgres exited (exit code 1): <why, from its last lines>".
async fn exited(status: ExitInfo, tail: &Tail) -> anyhow::Error {
    // The exit status can arrive before the relay has read the last lines.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !tail.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = tail.lines();
    match explanation(&lines) {
        Some(why) => anyhow!("postgres exited ({status}): {why}"),
        None => anyhow!("postgres exited ({status}); see its output, tagged [{SERVER_NAME}]"),
    }
}

/// The last lines that say what went wrong (postgres's FATAL and PANIC, pgward's own errors
/// from `wal-fetch`), at most three, else the last line.
fn explanation(lines: &[String]) -> Option<String> {
    let mut picked: Vec<&str> = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .filter(|l| {
            ["FATAL:", "PANIC:", " ERROR ", "\"ERROR\""]
                .iter()
                .any(|m| l.contains(m))
        })
        .take(3)
        .collect();
    picked.reverse();
    if picked.is_empty() {
        return lines
            .last()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty());
    }
    Some(picked.join(" | "))
}

/// Serves `wal-fetch` (into the scratch data directory only) and nothing else: the
/// throwaway server must never archive.
struct WalOnly {
    fetcher: Fetcher,
    data_dir: PathBuf,
}

impl Handler for WalOnly {
    fn handle(&self, request: Request) -> Answer<'_> {
        Box::pin(async move {
            match request {
                Request::WalFetch { name, dest } if dest.starts_with(&self.data_dir) => {
                    match self.fetcher.fetch(&name, &dest).await {
                        Ok(fetched) => Response::WalFetched {
                            found: fetched == Fetched::Found,
                        },
                        Err(e) => Response::Error {
                            message: format!("{e:#}"),
                        },
                    }
                }
                Request::WalFetch { dest, .. } => Response::Error {
                    message: format!(
                        "{} is outside the restore test's data directory",
                        dest.display()
                    ),
                },
                Request::WalPush { .. } => Response::Error {
                    message: "a restore test's server never archives".into(),
                },
                _ => Response::Error {
                    message: "this is a restore test's socket, not the daemon's".into(),
                },
            }
        })
    }
}

/// `consistent` or `latest`, as written in the config.
pub fn target_name(target: RestoreTestTarget) -> &'static str {
    match target {
        RestoreTestTarget::Consistent => "consistent",
        RestoreTestTarget::Latest => "latest",
    }
}

/// The report as text: a verdict line, then the reason or the figures.
pub fn human_report(report: &RestoreTestReport) -> String {
    let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
    let mut out = format!(
        "restore test of backup {} (target {}): {}\n",
        report.backup,
        target_name(report.target),
        if report.ok { "ok" } else { "FAILED" }
    );
    if let Some(reason) = &report.reason {
        out.push_str(reason);
        out.push('\n');
    }
    out.push_str(&format!(
        "restore {}, recovery {}{}{}; {:.1} s in all\n",
        secs(report.restore_secs),
        secs(report.recovery_secs),
        report
            .recovered_to_lsn
            .as_deref()
            .map(|lsn| format!(" to {lsn}"))
            .unwrap_or_default(),
        report
            .sql_result
            .map(|r| format!(", query returned {r}"))
            .unwrap_or_default(),
        report.total_secs
    ));
    out
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

    #[test]
    fn the_throwaway_server_keeps_to_itself() {
        let configured: BTreeMap<String, String> = [
            ("shared_preload_libraries", "pg_stat_statements"),
            ("archive_command", "pgward wal-push %p"),
            ("recovery_target_time", "2026-11-30 03:55:00+00"),
            ("restore_command", "cp /archive/%f %p"),
            ("primary_conninfo", "host=primary"),
            ("external_pid_file", "/run/postgres.pid"),
            ("listen_addresses", "*"),
            ("shared_buffers", "8GB"),
            ("work_mem", "64MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let parameters = throwaway_parameters(&configured);
        for gone in [
            "archive_command",
            "recovery_target_time",
            "restore_command",
            "primary_conninfo",
            "external_pid_file",
        ] {
            assert!(!parameters.contains_key(gone), "{gone}: {parameters:?}");
        }
        let get = |name: &str| parameters.get(name).map(String::as_str);
        assert_eq!(get("shared_preload_libraries"), Some("pg_stat_statements"));
        assert_eq!(get("work_mem"), Some("64MB"));
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("shared_buffers"), Some("128MB"));
        assert_eq!(get("hot_standby"), Some("off"));
    }

    #[test]
    fn an_early_exit_is_explained_by_the_last_errors() {
        let lines: Vec<String> = [
            "2026-11-30 03:55:00.000 UTC [42] LOG:  starting PostgreSQL 16.4",
            "2026-11-30T03:55:01Z ERROR failed to fetch 000000010000000000000003: object wal/00000001/000000010000000000000003 is corrupt",
            "2026-11-30 03:55:01.000 UTC [43] FATAL:  could not restore file \"000000010000000000000003\" from archive: child process exited with exit code 255",
            "2026-11-30 03:55:01.000 UTC [42] LOG:  database system is shut down",
        ]
        .map(String::from)
        .to_vec();
        let why = explanation(&lines).unwrap();
        assert!(
            why.starts_with("2026-11-30T03:55:01Z ERROR failed to fetch"),
            "{why}"
        );
        assert!(
            why.contains(" | 2026-11-30 03:55:01.000 UTC [43] FATAL:  could not restore"),
            "{why}"
        );
        assert_eq!(
            explanation(&["only this".to_owned()]).as_deref(),
            Some("only this")
        );
        assert_eq!(explanation(&[]), None);
    }

    #[test]
    fn the_text_report_says_the_verdict_then_why_or_how_long() {
        let mut report = RestoreTestReport {
            backup: "20261130T035500F".into(),
            target: RestoreTestTarget::Consistent,
            scratch_dir: "/var/lib/postgresql/pgward-restore-test/20261130T035500F-x".into(),
            restore_secs: Some(1.24),
            recovery_secs: Some(2.0),
            total_secs: 3.5,
            recovered_to_lsn: Some("0/3000148".into()),
            sql_result: Some(true),
            ok: true,
            reason: None,
        };
        assert_eq!(
            human_report(&report),
            "restore test of backup 20261130T035500F (target consistent): ok\n\
             restore 1.2 s, recovery 2.0 s to 0/3000148, query returned true; 3.5 s in all\n"
        );
        report.ok = false;
        report.recovery_secs = None;
        report.recovered_to_lsn = None;
        report.sql_result = None;
        report.reason = Some("restore: object backups/x is corrupt".into());
        assert_eq!(
            human_report(&report),
            "restore test of backup 20261130T035500F (target consistent): FAILED\n\
             restore: object backups/x is corrupt\n\
             restore 1.2 s, recovery -; 3.5 s in all\n"
        );
    }
}
