//! Wiring only: builds postgres and the services from config, starts the control socket and the
//! supervisor, waits for a signal or a failure, and shuts down in order.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::server::{ControlServer, Handler};
use crate::control::{Request, Response, Status};
use crate::init::ForwardedSignal;
use crate::postgres::ready::{self, Target};
use crate::postgres::server::Server;
use crate::postgres::{bootstrap, BinDir};
use crate::process::{LogSink, RunAs};
use crate::supervisor::service::{postgres_policy, service_policy, service_spec, SpecLauncher};
use crate::supervisor::{State, Supervisor, UnitSpec, View, POSTGRES};

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
    let server = Server {
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

    let control = ControlServer::bind(&config.control.socket, run_as.as_ref()).await?;
    let mut supervisor = Supervisor::start(units(&config, &server, &sink)?);
    let cancel_control = CancellationToken::new();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = Arc::new(StatusHandler {
        view: supervisor.view(),
        stopping: stopping.clone(),
    });
    let mut control_task = tokio::spawn(control.serve(handler, cancel_control.clone()));

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
        }
    };
    ready_logger.abort();
    match &stop {
        Stop::Signal(n) => tracing::info!("received {}; shutting down", signal_name(*n)),
        Stop::PostgresFailed => tracing::error!("postgres failed for good; shutting down"),
        Stop::Crashed(message) => tracing::error!("{message}; shutting down"),
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);

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
    let target = Target {
        socket_dir: pg.socket_dir.clone(),
        port: pg.port,
        user: pg.init.superuser.clone(),
        password: pg.init.password.clone(),
        dbname: "postgres".into(),
    };
    let data_dir = pg.data_dir.clone();
    let mut units = vec![UnitSpec {
        name: POSTGRES.into(),
        launcher: Box::new(SpecLauncher {
            spec: server.spec(POSTGRES, &[]),
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

struct StatusHandler {
    view: View,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for StatusHandler {
    fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Status {
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
            }),
        }
    }
}

fn signal_name(n: i32) -> &'static str {
    Signal::try_from(n).map(|s| s.as_str()).unwrap_or("signal")
}
