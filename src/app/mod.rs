//! `pgward run`, the daemon: wiring only. Prepares postgres (bootstrap, or a restore from the
//! repository), starts the control socket, the WAL services, the supervisor, the scheduler
//! and the exporter, waits for a stop signal or a failure, and shuts down in order: jobs,
//! services, postgres, endpoints.
//!
//! - `daemon`: what the daemon answers on the control socket and the metrics endpoints.
//! - `wal`: postgres's archive settings; the archiver and fetcher, opened once the
//!   repository answers.
//! - `actions`: the scheduler's built-in actions.
//!
//! Every long-lived task is critical ([`Critical`]): if one panics or ends unexpectedly,
//! pgward logs it and shuts down in order rather than limp on.

mod actions;
mod daemon;
mod wal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backup::{catalog, lineage};
use crate::config::JobConfig;
use crate::config::RestoreAs;
use crate::control::server::ControlServer;
use crate::init::ForwardedSignal;
use crate::metrics::pgward::{self as pgward_metrics, Watchers};
use crate::metrics::postgres::PostgresCollector;
use crate::postgres::bootstrap::LATEST_OR_INIT;
use crate::postgres::data_dir::Unfinished;
use crate::postgres::ready;
use crate::postgres::server::Server;
use crate::postgres::{bootstrap, BinDir};
use crate::restore::target::{RecoveryTarget, RecoveryTimeline, StandbySettings};
use crate::scheduler::{Runners, Scheduler};
use crate::site::{Child, Site};
use crate::supervisor::service::{postgres_policy, service_policy, service_spec, SpecLauncher};
use crate::supervisor::{State, Supervisor, UnitSpec, POSTGRES};
use crate::tasks::{Critical, Failures};
use crate::wal::archived_marks::{ArchivedMarks, MARKS_DIR};
use crate::wal::heartbeat;
use actions::SiteActions;
use daemon::{DaemonHandler, DaemonMetrics};

/// Exit code when a supervised process failed for good (or pgward itself could not go on).
pub const EXIT_FAILED: i32 = 1;

/// Why the main loop ended.
enum Stop {
    Signal(i32),
    PostgresFailed,
    Crashed(String),
}

/// How `pgward run` was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// `--force`: a successor starts although its original's heartbeat is fresh.
    pub force: bool,
}

/// Runs pgward until it is told to stop; returns the process exit code.
pub async fn run(
    site: Arc<Site>,
    mut signals: mpsc::UnboundedReceiver<ForwardedSignal>,
    options: RunOptions,
) -> Result<i32> {
    let started = Instant::now();
    site.run_as()?;
    // Before anything records a metric; and the port is taken (or a TLS file bad) now or
    // never: a daemon without its endpoints is not started.
    let exporter = Exporter::bind(&site).await?;
    let server = match prepare(&site, &mut signals, options).await? {
        Prepared::Server(server) => server,
        Prepared::Stopped(code) => return Ok(code),
    };
    let (critical, mut failures) = Critical::new();
    let marks = site.archived_marks().ok().filter(|marks| marks.runtime);
    let mut daemon = Daemon::start(site, server, exporter, &critical).await?;
    daemon.log_when_ready(started);
    let stop = daemon.wait(&mut signals, &mut failures).await;
    let code = daemon.shut_down(stop, signals).await;
    if let Some(marks) = marks {
        // postgres has stopped: nobody looks for marks until the next start empties the
        // directory anyway, and /run stays tidy.
        let _ = std::fs::remove_dir_all(&marks.dir);
    }
    Ok(code)
}

/// The exporter's parts, bound before postgres starts.
struct Exporter {
    handle: PrometheusHandle,
    server: crate::metrics::server::Server,
    postgres: PostgresCollector,
}

impl Exporter {
    /// `None` when `metrics.enabled` is false.
    async fn bind(site: &Site) -> Result<Option<Exporter>> {
        let metrics = &site.config().metrics;
        if !metrics.enabled {
            return Ok(None);
        }
        Ok(Some(Exporter {
            handle: pgward_metrics::install()?,
            server: crate::metrics::server::Server::bind(metrics).await?,
            postgres: PostgresCollector::new(site.target(), metrics)?,
        }))
    }
}

/// How preparing the data directory ended.
enum Prepared {
    /// Ready to start.
    Server(Server),
    /// A stop signal came during the bootstrap: exit with this code.
    Stopped(i32),
}

/// Finds the server binaries, bootstraps an empty data directory (initdb, or a restore from
/// the repository) and sets the archive parameters. A stop request abandons a bootstrap; the
/// marker left in the data directory makes the next start refuse rather than run on a
/// half-made cluster, or resume the restore of `postgres.init.from_backup`.
async fn prepare(
    site: &Site,
    signals: &mut mpsc::UnboundedReceiver<ForwardedSignal>,
    options: RunOptions,
) -> Result<Prepared> {
    let pg = &site.config().postgres;
    let run_as = site.run_as()?.cloned();
    let sink = site.sink();
    let path_var = std::env::var("PATH").ok();
    let bin = BinDir::find(pg.bin_dir.as_deref(), path_var.as_deref(), &sink).await?;
    tracing::info!(
        pid = std::process::id(),
        bin_dir = %bin.dir.display(),
        data_dir = %pg.data_dir.display(),
        user = run_as.as_ref().map_or("(self)", |u| u.name.as_str()),
        "pgward {} starting PostgreSQL {}",
        env!("CARGO_PKG_VERSION"),
        bin.major
    );
    let mut server = Server {
        bin,
        data_dir: pg.data_dir.clone(),
        port: pg.port,
        socket_dir: pg.socket_dir.clone(),
        parameters: pg.parameters.clone(),
        run_as,
    };
    server.prepare_dirs()?;
    if let Some(standby) = &pg.standby {
        // Before postgres starts, and at every start: the socket directory may be a tmpfs.
        standby.write_passfile(&pg.socket_dir, server.run_as.as_ref())?;
    }
    // A restore at first start that was interrupted goes on where it stopped; any other
    // unfinished work is refused, saying what to do.
    let resume = match bootstrap::unfinished(&server.data_dir)? {
        Some(marker) if marker.work == Unfinished::FromBackup && pg.init.from_backup.is_some() => {
            true
        }
        Some(marker) => return Err(bootstrap::refusal(&server.data_dir, &marker)),
        None => false,
    };
    if server.is_initialized() && !resume {
        server.check_version()?;
    } else if let Some(which) = backup_to_restore(site, resume).await? {
        // A disaster-recovery host (or a copy) in one command: the backup comes back, and
        // postgres recovers from the archive when it starts, then promotes.
        check_successor_may_start(site, options.force).await?;
        tokio::select! {
            result = bootstrap_from_backup(site, &which, resume) => {
                result.with_context(|| format!("bootstrap from backup {which} failed"))?
            }
            Some(ForwardedSignal::Terminate(n)) = signals.recv() => {
                tracing::warn!("stop requested during the restore; abandoning it (the next start resumes it)");
                return Ok(Prepared::Stopped(128 + n));
            }
        }
    } else {
        let env = site.child_env(Child::Bootstrap);
        tokio::select! {
            result = bootstrap::bootstrap(&server, &pg.init, &pg.replication.allow, &sink, &env) => result.context("bootstrap of the data directory failed")?,
            Some(ForwardedSignal::Terminate(n)) = signals.recv() => {
                tracing::warn!("stop requested during bootstrap; abandoning it");
                return Ok(Prepared::Stopped(128 + n));
            }
        }
    }

    // Archiving starts with the real server, not the bootstrap one: WAL from before the
    // first base backup cannot be used for recovery anyway.
    if site.config().wal.archive {
        wal::archive_parameters(site, &mut server.parameters)?;
        // Marks of an earlier run vouch for that run's repository: gone before postgres
        // can look for them.
        let marks = site.archived_marks()?;
        match ArchivedMarks::reset(&marks.dir, marks.runtime) {
            Ok(_) => {}
            // A runtime directory that cannot be made (a read-only root filesystem) costs
            // only the shortcut: archive_command's `test -f` finds nothing there.
            Err(e) if marks.runtime => tracing::warn!(
                "cannot prepare the archived marks in {}: {e}; every wal-push asks the daemon",
                marks.dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("prepare {}", marks.dir.display())),
        }
        if marks.runtime {
            // Where marks were before they moved out of the server user's reach: whatever
            // is there now is no mark of this daemon's. (Symlink-safe removal.)
            let _ = std::fs::remove_dir_all(server.data_dir.join("pg_wal").join(MARKS_DIR));
        }
    }
    Ok(Prepared::Server(server))
}

/// The backup an empty data directory is restored from (`postgres.init.from_backup`); `None`
/// for initdb. `latest-or-init` is `latest` once the repository holds a complete backup (or
/// when an interrupted restore is resumed), else initdb: a first deployment.
async fn backup_to_restore(site: &Site, resume: bool) -> Result<Option<String>> {
    let Some(which) = &site.config().postgres.init.from_backup else {
        return Ok(None);
    };
    if which != LATEST_OR_INIT {
        return Ok(Some(which.clone()));
    }
    let repo = site.repo()?;
    if resume || !catalog::backup_ids(repo).await?.is_empty() {
        tracing::info!(
            "from_backup: {LATEST_OR_INIT}: {} holds a backup; restoring the latest",
            repo.describe()
        );
        return Ok(Some("latest".to_owned()));
    }
    tracing::info!(
        "from_backup: {LATEST_OR_INIT}: {} holds no complete backup; bootstrapping a new \
         cluster with initdb",
        repo.describe()
    );
    Ok(None)
}

/// A successor (`restore_as: successor`) that will archive into the repository starts only
/// once its original no longer does (see [`heartbeat`]).
async fn check_successor_may_start(site: &Site, force: bool) -> Result<()> {
    let config = site.config();
    if config.postgres.init.restore_as != RestoreAs::Successor || !config.wal.archive {
        return Ok(());
    }
    // A standby starts beside its running primary by design: it archives nothing while in
    // recovery, and only once promoted takes over the repository (whose history then refuses
    // the old primary's WAL past the branch point).
    if config.postgres.standby.is_some() {
        return Ok(());
    }
    let repo = site.repo()?;
    let Some(meta) = repo
        .read_meta()
        .await
        .with_context(|| format!("read repo.json of {}", repo.describe()))?
    else {
        return Ok(());
    };
    let beat = heartbeat::read(repo, meta.system_identifier).await?;
    heartbeat::check_original_stopped(
        beat.as_ref(),
        chrono::Utc::now(),
        force,
        &heartbeat::heartbeat_key(meta.system_identifier),
    )
}

/// `postgres.init.from_backup`: restores `which` into the empty data directory, with
/// recovery to the end of the archive along the repository's newest timeline (the lineage
/// a cluster restored from it continues); with `resume`, over what an interrupted earlier
/// attempt left there.
async fn bootstrap_from_backup(site: &Site, which: &str, resume: bool) -> Result<()> {
    let repo = site.repo()?;
    let lineage = lineage::of_repository(repo).await?;
    let manifest: crate::backup::entries::SpilledManifest =
        catalog::resolve_for(repo, which, &lineage).await?;
    let mut options = site.restore_options(
        site.data_dir().to_path_buf(),
        &manifest.id,
        RecoveryTarget::EndOfWal,
        None,
    )?;
    options.recovery.timeline =
        RecoveryTimeline::pinned(lineage.target_timeline(&manifest), manifest.timeline);
    let pg = &site.config().postgres;
    options.recovery.standby = pg.standby.as_ref().map(|standby| StandbySettings {
        primary_conninfo: standby.conninfo(&pg.socket_dir),
        slot: standby.slot.clone(),
    });
    crate::restore::bootstrap_from_backup(repo, &manifest, &options, resume).await?;
    restored_before_start()
}

/// The backup is back, postgres not started yet: where a test interrupts a first start.
fn restored_before_start() -> Result<()> {
    crate::failpoint!("from-backup-before-start");
    Ok(())
}

/// The running daemon.
struct Daemon {
    supervisor: Supervisor,
    scheduler: Scheduler,
    stopping: Arc<AtomicBool>,
    control_task: JoinHandle<()>,
    cancel_control: CancellationToken,
    metrics_task: JoinHandle<Result<()>>,
    cancel_metrics: CancellationToken,
    /// Tells the scheduler whether postgres accepts connections.
    ready_relay: JoinHandle<()>,
    ready_logger: Option<JoinHandle<()>>,
    /// The WAL services; after its cancel it ends once the heartbeat says stopped.
    wal_task: JoinHandle<()>,
}

impl Daemon {
    /// Starts the control socket, the WAL services, the supervisor (postgres, then the
    /// services), the scheduler and the metrics endpoints.
    async fn start(
        site: Arc<Site>,
        server: Server,
        exporter: Option<Exporter>,
        critical: &Critical,
    ) -> Result<Daemon> {
        let config = site.config();
        let control = ControlServer::bind(&config.control.socket, site.run_as()?).await?;
        let cancel_control = CancellationToken::new();
        // Fetches are served whether or not this cluster archives: the restore command of a
        // cluster restored from the repository runs as the server's user, whose environment
        // holds no storage credentials.
        let wal = Arc::new(OnceLock::new());
        let wal_task = critical.spawn(
            "the WAL services",
            &cancel_control,
            wal::open_wal_services(
                site.clone(),
                wal.clone(),
                cancel_control.clone(),
                critical.clone(),
            ),
        );
        let supervisor = Supervisor::start(units(&site, &server)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = watch::channel(false);
        let ready_relay = relay_readiness(&supervisor, ready_tx);
        let scheduler = Scheduler::start(
            site.shared_config(),
            Runners {
                sink: site.sink(),
                actions: Arc::new(SiteActions { site: site.clone() }),
                child_env: {
                    let site = site.clone();
                    Arc::new(move |job: &JobConfig| {
                        site.child_env(Child::Job {
                            inherit_env: &job.inherit_env,
                        })
                    })
                },
            },
            ready_rx,
            CancellationToken::new(),
            critical,
        );
        let handler = Arc::new(DaemonHandler {
            view: supervisor.view(),
            stopping: stopping.clone(),
            wal,
            target: site.target(),
            data_dir: site.data_dir().to_path_buf(),
            scheduler: scheduler.clone(),
        });
        let control_task = tokio::spawn(control.serve(handler.clone(), cancel_control.clone()));
        let cancel_metrics = CancellationToken::new();
        let metrics_task = match exporter {
            Some(exporter) => serve_metrics(&site, exporter, handler, critical, &cancel_metrics),
            None => tokio::spawn(std::future::pending()),
        };
        Ok(Daemon {
            supervisor,
            scheduler,
            stopping,
            control_task,
            cancel_control,
            metrics_task,
            cancel_metrics,
            ready_relay,
            ready_logger: None,
            wal_task,
        })
    }

    /// Logs how long postgres took to accept connections.
    fn log_when_ready(&mut self, started: Instant) {
        let mut postgres = self.supervisor.postgres();
        self.ready_logger = Some(tokio::spawn(async move {
            if postgres.wait_for(|s| s.state.is_ready()).await.is_ok() {
                tracing::info!(
                    "postgres ready {:.0} ms after pgward started",
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
        }));
    }

    /// Waits for a stop signal (SIGHUP reloads postgres's configuration meanwhile), postgres
    /// failing for good, or a part of the daemon failing.
    async fn wait(
        &mut self,
        signals: &mut mpsc::UnboundedReceiver<ForwardedSignal>,
        failures: &mut Failures,
    ) -> Stop {
        let mut postgres = self.supervisor.postgres();
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(ForwardedSignal::Terminate(n)) => return Stop::Signal(n),
                    Some(ForwardedSignal::Reload) => {
                        tracing::info!("SIGHUP: reloading postgres configuration");
                        self.supervisor.signal_postgres(Signal::SIGHUP);
                    }
                    None => return Stop::Crashed("the signal thread ended".into()),
                },
                _ = postgres.wait_for(|s| matches!(s.state, State::Fatal { .. })) => return Stop::PostgresFailed,
                message = self.supervisor.crashed() => return Stop::Crashed(message),
                message = failures.next() => return Stop::Crashed(message),
                result = &mut self.control_task => return Stop::Crashed(match result {
                    Err(e) if e.is_panic() => "the control socket server panicked".into(),
                    _ => "the control socket server ended".into(),
                }),
                result = &mut self.metrics_task => return Stop::Crashed(match result {
                    Err(e) if e.is_panic() => "the metrics server panicked".into(),
                    Ok(Err(e)) => format!("the metrics server failed: {e:#}"),
                    _ => "the metrics server ended".into(),
                }),
            }
        }
    }

    /// Stops jobs, then services, then postgres, then the endpoints; the exit code.
    async fn shut_down(
        mut self,
        stop: Stop,
        mut signals: mpsc::UnboundedReceiver<ForwardedSignal>,
    ) -> i32 {
        if let Some(logger) = &self.ready_logger {
            logger.abort();
        }
        match &stop {
            Stop::Signal(n) => tracing::info!("received {}; shutting down", signal_name(*n)),
            Stop::PostgresFailed => tracing::error!("postgres failed for good; shutting down"),
            Stop::Crashed(message) => tracing::error!("{message}; shutting down"),
        }
        self.stopping.store(true, Ordering::Relaxed);
        // Jobs first: a backup or a restore test needs postgres until it ends.
        self.scheduler.shutdown().await;
        self.ready_relay.abort();

        // Further stop signals escalate: each skips every stopping unit to its next stop rung.
        let (escalate_tx, mut escalate) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(signal) = signals.recv().await {
                if let ForwardedSignal::Terminate(n) = signal {
                    tracing::warn!("received {} again; escalating shutdown", signal_name(n));
                    let _ = escalate_tx.send(());
                }
            }
        });
        self.supervisor.shutdown(&mut escalate).await;
        self.cancel_control.cancel();
        // The last heartbeat says stopped: a successor need not wait for it to go stale.
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.wal_task).await;
        self.cancel_metrics.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.metrics_task).await;
        if !self.control_task.is_finished() {
            let _ = (&mut self.control_task).await;
        }
        let code = self.exit_code(&stop);
        tracing::info!(exit_code = code, "pgward stopped");
        code
    }

    /// 1 when something failed for good (or the daemon stopped for any reason but a signal);
    /// else postgres's own status when its shutdown was not clean; else 0.
    fn exit_code(&self, stop: &Stop) -> i32 {
        let failed = self.supervisor.failed_units();
        if !failed.is_empty() || !matches!(stop, Stop::Signal(_)) {
            if !failed.is_empty() {
                tracing::error!("failed for good: {}", failed.join(", "));
            }
            return EXIT_FAILED;
        }
        match self.supervisor.postgres_exit() {
            Some(status) if !status.success() => status.as_exit_code(),
            _ => 0,
        }
    }
}

/// Jobs wait for postgres: whether it accepts connections, as the supervisor sees it.
fn relay_readiness(supervisor: &Supervisor, ready: watch::Sender<bool>) -> JoinHandle<()> {
    let mut postgres = supervisor.postgres();
    tokio::spawn(async move {
        loop {
            let is_ready = postgres.borrow_and_update().state.is_ready();
            ready.send_if_modified(|r| std::mem::replace(r, is_ready) != is_ready);
            if postgres.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Serves the metrics endpoints, with the watchers of backups and checks they report.
fn serve_metrics(
    site: &Arc<Site>,
    exporter: Exporter,
    daemon: Arc<DaemonHandler>,
    critical: &Critical,
    cancel: &CancellationToken,
) -> JoinHandle<Result<()>> {
    tracing::info!(address = %exporter.server.local_addr(), "metrics endpoints listening");
    let backups_site = site.clone();
    let checks_site = site.clone();
    let watchers = Watchers::start(
        Arc::new(move || {
            let site = backups_site.clone();
            Box::pin(async move { catalog::manifests(site.repo()?).await })
        }),
        Arc::new(move || {
            let site = checks_site.clone();
            Box::pin(async move { site.checks().await })
        }),
        critical,
        cancel.clone(),
    );
    let source = Arc::new(DaemonMetrics {
        daemon,
        handle: exporter.handle,
        watchers,
        postgres: exporter.postgres,
        min_redundancy: site.config().backup.min_redundancy,
    });
    tokio::spawn(exporter.server.serve(source, cancel.clone()))
}

/// Postgres first, then the services in config order.
fn units(site: &Site, server: &Server) -> Result<Vec<UnitSpec>> {
    let config = site.config();
    let pg = &config.postgres;
    let sink = site.sink();
    let target = site.target();
    let data_dir = pg.data_dir.clone();
    let mut units = vec![UnitSpec {
        name: POSTGRES.into(),
        launcher: Box::new(SpecLauncher {
            spec: server
                .spec(POSTGRES, &[])
                .child_env(&site.child_env(Child::Postgres)),
            sink,
            readiness: Some(Arc::new(move |pid| {
                let target = target.clone();
                let data_dir = data_dir.clone();
                Box::pin(async move { ready::wait_ready(&target, &data_dir, pid).await })
            })),
        }),
        policy: postgres_policy(&pg.restart, &pg.stop),
        after: vec![],
    }];
    for service in &config.services {
        let service_env = site.child_env(Child::Service {
            inherit_env: &service.inherit_env,
        });
        units.push(UnitSpec {
            name: service.name.clone(),
            launcher: Box::new(SpecLauncher {
                spec: service_spec(service)
                    .with_context(|| format!("service {}", service.name))?
                    .child_env(&service_env),
                sink,
                readiness: None,
            }),
            policy: service_policy(service),
            after: service.after.clone(),
        });
    }
    Ok(units)
}

fn signal_name(n: i32) -> &'static str {
    Signal::try_from(n).map(|s| s.as_str()).unwrap_or("signal")
}
