//! Wiring only: builds postgres and the services from config, starts the control socket and the
//! supervisor, waits for a signal or a failure, and shuts down in order.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commands;
use crate::config::Config;
use crate::control::server::{Answer, ControlServer, Handler};
use crate::control::{Request, Response, Status};
use crate::init::ForwardedSignal;
use crate::postgres::ready::{self, Target};
use crate::postgres::server::Server;
use crate::postgres::{bootstrap, BinDir};
use crate::process::{LogSink, RunAs};
use crate::scheduler::Scheduler;
use crate::supervisor::service::{postgres_policy, service_policy, service_spec, SpecLauncher};
use crate::supervisor::{State, Supervisor, UnitSpec, View, POSTGRES};
use crate::wal::archived_marks::{ArchivedMarks, MARKS_DIR};
use crate::wal::archiver::{Archiver, ArchiverOptions};
use crate::wal::fetch::{Fetched, Fetcher};

/// Exit code when a supervised process failed for good (or pgward itself could not go on).
pub const EXIT_FAILED: i32 = 1;

/// Why the main loop ended.
enum Stop {
    Signal(i32),
    PostgresFailed,
    Crashed(String),
}

/// Runs pgward until it is told to stop; returns the process exit code.
pub async fn run(
    config: Config,
    mut signals: mpsc::UnboundedReceiver<ForwardedSignal>,
) -> Result<i32> {
    let started = Instant::now();
    let sink = LogSink {
        format: config.log.format,
        max_line_bytes: usize::try_from(config.log.max_line_bytes).unwrap_or(usize::MAX),
    };
    let pg = &config.postgres;
    let run_as = RunAs::for_child(Some(&pg.user))?;
    // Before anything records a metric; and the port is taken (or a TLS file bad) now or
    // never: a daemon without its endpoints is not started.
    let exporter = match config.metrics.enabled {
        true => Some((
            crate::metrics::pgward::install()?,
            crate::metrics::server::Server::bind(&config.metrics).await?,
            crate::metrics::postgres::PostgresCollector::new(
                Target::superuser_of(pg),
                &config.metrics,
            )?,
        )),
        false => None,
    };
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
        run_as: run_as.clone(),
    };
    server.prepare_dirs()?;
    bootstrap::check_not_half_initialized(&server.data_dir)?;
    if server.is_initialized() {
        server.check_version()?;
    } else if let Some(which) = &pg.init.from_backup {
        // A disaster-recovery host (or a copy) in one command: the backup comes back, and
        // postgres recovers from the archive when it starts, then promotes.
        tokio::select! {
            result = crate::backup_commands::bootstrap_from_backup(&config, which, run_as.clone()) => {
                result.with_context(|| format!("bootstrap from backup {which} failed"))?
            }
            Some(ForwardedSignal::Terminate(n)) = signals.recv() => {
                tracing::warn!("stop requested during the restore; abandoning it");
                return Ok(128 + n);
            }
        }
    } else {
        // A stop request during bootstrap abandons it; the marker left in the data directory
        // makes the next start refuse rather than run on a half-made cluster.
        tokio::select! {
            result = bootstrap::bootstrap(&server, &pg.init, &sink) => result.context("bootstrap of the data directory failed")?,
            Some(ForwardedSignal::Terminate(n)) = signals.recv() => {
                tracing::warn!("stop requested during bootstrap; abandoning it");
                return Ok(128 + n);
            }
        }
    }

    // Archiving starts with the real server, not the bootstrap one: WAL from before the
    // first base backup cannot be used for recovery anyway.
    if config.wal.archive {
        archive_parameters(&config, &mut server.parameters)?;
        // Marks of an earlier run vouch for that run's repository: gone before postgres
        // can look for them.
        let owner = run_as.as_ref().map(|u| (u.uid, u.gid));
        ArchivedMarks::reset(&server.data_dir.join("pg_wal"), owner).with_context(|| {
            format!(
                "prepare {}",
                server.data_dir.join("pg_wal").join(MARKS_DIR).display()
            )
        })?;
    }

    let control = ControlServer::bind(&config.control.socket, run_as.as_ref()).await?;
    let cancel_control = CancellationToken::new();
    let wal = config.wal.archive.then(|| Arc::new(OnceLock::new()));
    if let Some(slot) = &wal {
        tokio::spawn(open_wal_services(
            config.clone(),
            run_as.clone(),
            slot.clone(),
            cancel_control.clone(),
        ));
    }
    let mut supervisor = Supervisor::start(units(&config, &server, &sink)?);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let mut ready_watch = supervisor.postgres();
    let ready_relay = tokio::spawn(async move {
        // Jobs wait for postgres: whether it accepts connections, as the supervisor sees it.
        loop {
            let ready = ready_watch.borrow_and_update().state.is_ready();
            ready_tx.send_if_modified(|r| std::mem::replace(r, ready) != ready);
            if ready_watch.changed().await.is_err() {
                return;
            }
        }
    });
    let cancel_jobs = CancellationToken::new();
    let scheduler = Scheduler::start(
        Arc::new(config.clone()),
        sink,
        ready_rx,
        cancel_jobs.clone(),
    );
    let handler = Arc::new(DaemonHandler {
        view: supervisor.view(),
        stopping: stopping.clone(),
        wal,
        target: Target::superuser_of(&config.postgres),
        scheduler: scheduler.clone(),
    });
    let mut control_task = tokio::spawn(control.serve(handler.clone(), cancel_control.clone()));
    let cancel_metrics = CancellationToken::new();
    let mut metrics_task = match exporter {
        Some((handle, server, postgres)) => {
            tracing::info!(address = %server.local_addr(), "metrics endpoints listening");
            let source = Arc::new(DaemonMetrics {
                daemon: handler.clone(),
                handle,
                watchers: crate::metrics::pgward::Watchers::start(
                    Arc::new(config.clone()),
                    cancel_metrics.clone(),
                ),
                postgres,
                min_redundancy: config.backup.min_redundancy,
            });
            tokio::spawn(server.serve(source, cancel_metrics.clone()))
        }
        None => tokio::spawn(std::future::pending()),
    };

    let mut postgres = supervisor.postgres();
    let ready_logger = tokio::spawn(async move {
        if postgres.wait_for(|s| s.state.is_ready()).await.is_ok() {
            tracing::info!(
                "postgres ready {:.0} ms after pgward started",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
    });
    let mut postgres = supervisor.postgres();
    let stop = loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Some(ForwardedSignal::Terminate(n)) => break Stop::Signal(n),
                Some(ForwardedSignal::Reload) => {
                    tracing::info!("SIGHUP: reloading postgres configuration");
                    supervisor.signal_postgres(Signal::SIGHUP);
                }
                None => break Stop::Crashed("the signal thread ended".into()),
            },
            _ = postgres.wait_for(|s| matches!(s.state, State::Fatal { .. })) => break Stop::PostgresFailed,
            message = supervisor.crashed() => break Stop::Crashed(message),
            result = &mut control_task => break Stop::Crashed(match result {
                Err(e) if e.is_panic() => "the control socket server panicked".into(),
                _ => "the control socket server ended".into(),
            }),
            result = &mut metrics_task => break Stop::Crashed(match result {
                Err(e) if e.is_panic() => "the metrics server panicked".into(),
                Ok(Err(e)) => format!("the metrics server failed: {e:#}"),
                _ => "the metrics server ended".into(),
            }),
        }
    };
    ready_logger.abort();
    match &stop {
        Stop::Signal(n) => tracing::info!("received {}; shutting down", signal_name(*n)),
        Stop::PostgresFailed => tracing::error!("postgres failed for good; shutting down"),
        Stop::Crashed(message) => tracing::error!("{message}; shutting down"),
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    // Jobs first: a backup or a restore test needs postgres until it ends.
    scheduler.shutdown().await;
    ready_relay.abort();

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
    supervisor.shutdown(&mut escalate).await;
    cancel_control.cancel();
    cancel_metrics.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), metrics_task).await;
    if !control_task.is_finished() {
        let _ = control_task.await;
    }

    let failed = supervisor.failed_units();
    let code = if !failed.is_empty() || !matches!(stop, Stop::Signal(_)) {
        if !failed.is_empty() {
            tracing::error!("failed for good: {}", failed.join(", "));
        }
        EXIT_FAILED
    } else {
        match supervisor.postgres_exit() {
            Some(status) if !status.success() => status.as_exit_code(),
            _ => 0,
        }
    };
    tracing::info!(exit_code = code, "pgward stopped");
    Ok(code)
}

/// Postgres first, then the services in config order.
fn units(config: &Config, server: &Server, sink: &LogSink) -> Result<Vec<UnitSpec>> {
    let pg = &config.postgres;
    let target = Target::superuser_of(pg);
    let data_dir = pg.data_dir.clone();
    let mut units = vec![UnitSpec {
        name: POSTGRES.into(),
        launcher: Box::new(SpecLauncher {
            spec: server
                .spec(POSTGRES, &[])
                .env(commands::SOCKET_ENV, &config.control.socket)
                .env(
                    crate::logging::FORMAT_ENV,
                    match config.log.format {
                        crate::config::LogFormat::Json => "json",
                        crate::config::LogFormat::Text => "text",
                    },
                ),
            sink: *sink,
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
        units.push(UnitSpec {
            name: service.name.clone(),
            launcher: Box::new(SpecLauncher {
                spec: service_spec(service).with_context(|| format!("service {}", service.name))?,
                sink: *sink,
                readiness: None,
            }),
            policy: service_policy(service),
            after: service.after.clone(),
        });
    }
    Ok(units)
}

/// Sets `archive_mode`, `archive_command` (this binary's `wal-push`) and `archive_timeout`.
///
/// The command first looks for the daemon's mark of the file (see `wal::archived_marks`) with
/// the shell's built-in `test`: a segment the daemon archived before postgres asked then costs
/// postgres no process beyond its shell.
fn archive_parameters(config: &Config, parameters: &mut BTreeMap<String, String>) -> Result<()> {
    parameters.insert("archive_mode".into(), "on".into());
    parameters.insert(
        "archive_timeout".into(),
        format!("{}s", config.wal.archive_timeout.as_secs()),
    );
    if let Some(own) = parameters.get("archive_command") {
        // Config validation allowed it: it wraps pgward's own wal-push.
        tracing::info!("archive_command as configured: {own}");
        return Ok(());
    }

    let command = format!(
        "test -f pg_wal/{MARKS_DIR}/%f || {} wal-push %p",
        pgward_invocation(config)?
    );
    parameters.insert("archive_command".into(), command);
    Ok(())
}

/// This pgward with this config, quoted for /bin/sh: the start of the archive and restore
/// commands postgres runs.
pub(crate) fn pgward_invocation(config: &Config) -> Result<String> {
    let exe = std::env::current_exe().context("find the pgward executable")?;
    let mut command = shell_quote(&exe.to_string_lossy());
    if let Some(file) = &config.source {
        let file = std::path::absolute(file).context("make the config path absolute")?;
        command.push_str(&format!(
            " --config {}",
            shell_quote(&file.to_string_lossy())
        ));
    }
    Ok(command)
}

/// Quotes `word` for /bin/sh, which runs archive_command.
fn shell_quote(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The archiver and fetcher of the daemon, once the repository could be opened.
struct WalServices {
    archiver: Archiver,
    fetcher: Fetcher,
}

/// Opens the repository in the background, retrying while storage is unreachable: postgres
/// must start even during a storage outage (its WAL waits in pg_wal; wal-push fails and
/// postgres retries until this succeeds).
async fn open_wal_services(
    config: Config,
    owner: Option<RunAs>,
    slot: Arc<OnceLock<WalServices>>,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    let mut logged = false;
    loop {
        match commands::push_context(&config, owner.as_ref()).await {
            Ok(ctx) => {
                let data_dir = &config.postgres.data_dir;
                let owner_ids = owner.as_ref().map(|u| (u.uid, u.gid));
                let fetcher = Fetcher::new(
                    ctx.repo.clone(),
                    ctx.retry,
                    &data_dir.join("pg_wal"),
                    ctx.seg_size,
                    config.wal.prefetch as usize,
                    owner,
                    cancel.clone(),
                );
                tracing::info!(repository = %ctx.repo.describe(), "WAL archiving to the repository");
                let options = ArchiverOptions {
                    concurrency: config.wal.push_concurrency as usize,
                    stage: config.wal.stage,
                    owner: owner_ids,
                };
                let archiver = Archiver::start(ctx, data_dir, options, cancel);
                let _ = slot.set(WalServices { archiver, fetcher });
                return;
            }
            Err(e) => {
                if logged {
                    tracing::warn!(
                        "repository still unavailable, retrying in {}: {e:#}",
                        humantime::format_duration(delay)
                    );
                } else {
                    tracing::error!("failed to open the WAL repository (archiving waits, nothing is lost): {e:#}");
                    logged = true;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

struct DaemonHandler {
    view: View,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// `None` when archiving is off: WAL requests are then left to the clients.
    wal: Option<Arc<OnceLock<WalServices>>>,
    /// Where to ask postgres whether it recovers.
    target: Target,
    scheduler: Scheduler,
}

/// Whether postgres recovers, and where (`None` when it does not, or cannot say now).
async fn recovery_status(target: &Target) -> Option<crate::control::RecoveryStatus> {
    let query = async {
        let client = target.connect().await.ok()?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
                 pg_last_wal_replay_lsn()::text",
                &[],
            )
            .await
            .ok()?;
        let (in_recovery, paused, lsn): (bool, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        in_recovery.then(|| crate::control::RecoveryStatus {
            paused,
            hint: if paused {
                "replay is paused (at the recovery target?): check the data, then run \
                 SELECT pg_wal_replay_resume(); to end recovery and promote, or restore \
                 again with another target"
                    .into()
            } else {
                "replaying WAL from the archive".into()
            },
            replay_lsn: lsn,
        })
    };
    tokio::time::timeout(Duration::from_secs(3), query)
        .await
        .ok()
        .flatten()
}

impl DaemonHandler {
    /// What `pgward status` (and the exporter's `/status`) shows.
    async fn status(&self) -> Status {
        let archiver = match self.wal.as_ref().and_then(|w| w.get()) {
            Some(wal) => Some(wal.archiver.status().await),
            None => None,
        };
        let postgres_ready = self
            .view
            .status()
            .iter()
            .any(|s| s.name == POSTGRES && s.state == "ready");
        let recovery = match postgres_ready {
            true => recovery_status(&self.target).await,
            false => None,
        };
        Status {
            pgward_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.view.uptime().as_secs_f64(),
            phase: if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                "stopping"
            } else {
                "running"
            }
            .into(),
            services: self.view.status(),
            archiver,
            recovery,
            jobs: self.scheduler.list(),
        }
    }

    fn wal(&self) -> Result<&WalServices, WalUnavailable> {
        let slot = self.wal.as_ref().ok_or(WalUnavailable::NotServed)?;
        slot.get().ok_or(WalUnavailable::NotOpen)
    }
}

/// Why a WAL request cannot be served by the daemon.
enum WalUnavailable {
    /// Archiving is off: the client does the work itself.
    NotServed,
    /// The repository could not be opened yet.
    NotOpen,
}

impl From<WalUnavailable> for Response {
    fn from(why: WalUnavailable) -> Response {
        match why {
            WalUnavailable::NotServed => Response::NotServed,
            WalUnavailable::NotOpen => Response::Error {
                message:
                    "the WAL repository is not open yet (see pgward's log); postgres will retry"
                        .into(),
            },
        }
    }
}

impl Handler for DaemonHandler {
    fn stream(&self, request: &Request) -> Option<mpsc::UnboundedReceiver<Response>> {
        let Request::JobRun { name } = request else {
            return None;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let scheduler = self.scheduler.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let run = scheduler.run_now(&name, lines_tx);
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    result = &mut run => break result,
                    Some(line) = lines.recv() => {
                        let _ = tx.send(Response::JobOutput { line });
                    }
                }
            };
            while let Ok(line) = lines.try_recv() {
                let _ = tx.send(Response::JobOutput { line });
            }
            let _ = tx.send(Response::JobDone { result });
        });
        Some(rx)
    }

    fn handle(&self, request: Request) -> Answer<'_> {
        Box::pin(async move {
            match request {
                Request::WalPush { path } => match self.wal() {
                    Ok(wal) => match wal.archiver.push(&path).await {
                        Ok(outcome) => Response::WalPushed { outcome },
                        Err(message) => Response::Error { message },
                    },
                    Err(why) => why.into(),
                },
                Request::WalFetch { name, dest } => match self.wal() {
                    Ok(wal) => match wal.fetcher.fetch(&name, &dest).await {
                        Ok(fetched) => Response::WalFetched {
                            found: fetched == Fetched::Found,
                        },
                        Err(e) => Response::Error {
                            message: format!("{e:#}"),
                        },
                    },
                    Err(why) => why.into(),
                },
                Request::Status => Response::Status(Box::new(self.status().await)),
                Request::Jobs => Response::Jobs {
                    jobs: self.scheduler.list(),
                },
                Request::JobRun { .. } => Response::Error {
                    message: "job runs are answered as a stream".into(),
                },
            }
        })
    }
}

/// What the metrics endpoints serve: the daemon's state, pgward's metrics and postgres's.
struct DaemonMetrics {
    daemon: Arc<DaemonHandler>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    watchers: crate::metrics::pgward::Watchers,
    postgres: crate::metrics::postgres::PostgresCollector,
    min_redundancy: u32,
}

impl crate::metrics::server::Source for DaemonMetrics {
    fn metrics(&self) -> futures_util::future::BoxFuture<'_, String> {
        Box::pin(async move {
            let archiver = match self.daemon.wal.as_ref().and_then(|w| w.get()) {
                Some(wal) => Some(wal.archiver.status().await),
                None => None,
            };
            let services = self.daemon.view.status();
            let jobs = self.daemon.scheduler.list();
            crate::metrics::pgward::update(
                &crate::metrics::pgward::Snapshot {
                    services: &services,
                    archiver: archiver.as_ref(),
                    jobs: &jobs,
                    min_redundancy: self.min_redundancy,
                    now: chrono::Utc::now(),
                },
                &self.watchers,
            );
            let mut body = self.handle.render();
            self.postgres.scrape().await.render_into(&mut body);
            // After the answer is on its way, not before: the trim takes a moment.
            tokio::spawn(crate::metrics::pgward::give_back_memory());
            body
        })
    }

    fn healthy(&self) -> futures_util::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let services = self.daemon.view.status();
            match services.iter().find(|s| s.name == POSTGRES) {
                Some(pg) if pg.state == "fatal" => Err(format!(
                    "postgres failed for good ({})",
                    pg.last_error.as_deref().unwrap_or("see the log")
                )),
                Some(_) => Ok(()),
                None => Err("postgres is not supervised".into()),
            }
        })
    }

    fn ready(&self) -> futures_util::future::BoxFuture<'_, crate::metrics::server::Readiness> {
        use crate::metrics::server::Readiness;
        Box::pin(async move {
            if self
                .daemon
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Readiness::NotReady("pgward is shutting down".into());
            }
            let services = self.daemon.view.status();
            let Some(pg) = services.iter().find(|s| s.name == POSTGRES) else {
                return Readiness::NotReady("postgres is not supervised".into());
            };
            if !matches!(pg.state.as_str(), "ready" | "running") {
                return Readiness::NotReady(format!(
                    "postgres is {} (restarts: {})",
                    pg.state, pg.restarts
                ));
            }
            if let Err(e) = ready::probe(&self.daemon.target).await {
                return Readiness::NotReady(format!("postgres does not accept connections: {e}"));
            }
            match recovery_status(&self.daemon.target).await {
                Some(_) => Readiness::InRecovery,
                None => Readiness::Ready,
            }
        })
    }

    fn status(&self) -> futures_util::future::BoxFuture<'_, serde_json::Value> {
        Box::pin(
            async move { serde_json::to_value(self.daemon.status().await).unwrap_or_default() },
        )
    }
}

fn signal_name(n: i32) -> &'static str {
    Signal::try_from(n).map(|s| s.as_str()).unwrap_or("signal")
}
