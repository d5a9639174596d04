//! What the daemon answers: requests on the control socket (WAL pushes and fetches from
//! postgres's archive and restore commands, `status`, `jobs`), and the metrics endpoints'
//! `/metrics`, `/healthz`, `/readyz` and `/status`, with where a recovering postgres stands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;

use super::wal::{WalServices, WalSlot};
use crate::control::server::{Answer, Caller, Handler};
use crate::control::{Phase, RecoveryStatus, Request, Response, Status};
use crate::metrics::pgward as pgward_metrics;
use crate::metrics::pgward::Watchers;
use crate::metrics::postgres::PostgresCollector;
use crate::metrics::server::{Readiness, Source};
use crate::postgres::ready::{self, Target};
use crate::postgres::standby::{is_standby, LAG_BYTES_SQL, STREAMING_SQL};
use crate::scheduler::Scheduler;
use crate::supervisor::{UnitState, View, POSTGRES};
use crate::wal::archiver::Archiver;
use crate::wal::fetch::Fetched;
use crate::wal::pg_wal::Scope;

pub(super) struct DaemonHandler {
    pub(super) view: View,
    pub(super) stopping: Arc<AtomicBool>,
    /// The WAL services, once open (without an archiver when archiving is off: pushes are
    /// then left to the clients).
    pub(super) wal: WalSlot,
    /// Where to ask postgres whether it recovers.
    pub(super) target: Target,
    /// The data directory: while it holds `standby.signal`, recovery is a standby's.
    pub(super) data_dir: PathBuf,
    pub(super) scheduler: Scheduler,
}

/// Whether postgres recovers, and where (`None` when it does not, or cannot say now). A
/// standby is told by the `standby.signal` in `data_dir` (postgres removes it at promotion).
async fn recovery_status(target: &Target, data_dir: &Path) -> Option<RecoveryStatus> {
    let query = async {
        let client = target.connect().await.ok()?;
        let sql = format!(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
             pg_last_wal_replay_lsn()::text, {STREAMING_SQL}, {LAG_BYTES_SQL}::float8, \
             CASE WHEN pg_last_wal_receive_lsn() IS NULL \
                    OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 \
                  ELSE coalesce(greatest(0, extract(epoch FROM \
                    now() - pg_last_xact_replay_timestamp())), 0) END::float8"
        );
        let row = client.query_one(&sql, &[]).await.ok()?;
        let (in_recovery, paused, lsn): (bool, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let (streaming, lag_bytes, lag_seconds): (bool, f64, f64) =
            (row.get(3), row.get(4), row.get(5));
        let standby = is_standby(data_dir);
        let source = match streaming {
            true => "streaming",
            false => "archive",
        };
        in_recovery.then(|| RecoveryStatus {
            role: match standby {
                true => "standby",
                false => "recovery",
            }
            .into(),
            source: source.into(),
            paused,
            replay_lsn: lsn,
            lag_bytes,
            lag_seconds,
            hint: if paused {
                "replay is paused (at the recovery target?): check the data, then run \
                 `pgward promote` (or SELECT pg_wal_replay_resume();) to end recovery and \
                 promote, or restore again with another target"
                    .into()
            } else if standby && streaming {
                "a hot standby, streaming from its primary; `pgward promote` makes it a primary"
                    .into()
            } else if standby {
                "a hot standby, replaying WAL from the archive (not streaming: is the primary \
                 up, and does it let this standby connect for replication?); `pgward promote` \
                 makes it a primary"
                    .into()
            } else {
                "replaying WAL from the archive".into()
            },
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
        let archiver = match self.wal.get().and_then(|w| w.archiver.as_ref()) {
            Some(archiver) => Some(archiver.status().await),
            None => None,
        };
        let postgres_ready = self
            .view
            .status()
            .iter()
            .any(|s| s.name == POSTGRES && s.state == UnitState::Ready);
        let recovery = match postgres_ready {
            true => recovery_status(&self.target, &self.data_dir).await,
            false => None,
        };
        Status {
            pgward_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.view.uptime().as_secs_f64(),
            phase: match self.stopping.load(Ordering::Relaxed) {
                true => Phase::Stopping,
                false => Phase::Running,
            },
            services: self.view.status(),
            archiver,
            recovery,
            jobs: self.scheduler.list(),
        }
    }

    fn wal(&self) -> Result<&WalServices, WalUnavailable> {
        self.wal.get().ok_or(WalUnavailable::NotOpen)
    }

    /// The archiver, when this daemon archives.
    fn archiver(&self) -> Result<&Archiver, WalUnavailable> {
        self.wal()?
            .archiver
            .as_ref()
            .ok_or(WalUnavailable::NotServed)
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
                message: "the WAL repository is not open yet; postgres will retry\nHINT: \
                          pgward's log says why storage.url cannot be opened"
                    .into(),
            },
        }
    }
}

/// What a caller may name for the daemon to read or write: anything for root and pgward's
/// own user, only the cluster's `pg_wal` for the server's user (see `wal::pg_wal`).
fn scope(caller: &Caller) -> Scope {
    match caller.is_trusted() {
        true => Scope::Anywhere,
        false => Scope::PgWal,
    }
}

impl Handler for DaemonHandler {
    fn stream(
        &self,
        caller: Caller,
        request: &Request,
    ) -> Option<mpsc::UnboundedReceiver<Response>> {
        let Request::JobRun { name } = request else {
            return None;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // A job acts (as root, with the repository's credentials): only for those who could
        // run it themselves.
        if !caller.is_trusted() {
            let _ = tx.send(caller.refuse_untrusted("job_run"));
            return Some(rx);
        }
        if let Some(why) = self.scheduler.refusal(name) {
            let _ = tx.send(caller.refuse("job_run", &why));
            return Some(rx);
        }
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

    fn handle(&self, caller: Caller, request: Request) -> Answer<'_> {
        Box::pin(async move {
            match request {
                Request::WalPush { path } => match self.archiver() {
                    Ok(archiver) => match archiver.open(&path, scope(&caller)) {
                        Ok(file) => match archiver.push(file).await {
                            Ok(outcome) => Response::WalPushed { outcome },
                            Err(message) => Response::Error { message },
                        },
                        Err(refused) => caller.refuse("wal_push", &refused.0),
                    },
                    Err(why) => why.into(),
                },
                Request::WalFetch { name, dest } => match self.wal() {
                    Ok(wal) => match wal.fetcher.destination(&dest, scope(&caller)) {
                        Ok(dest) => match wal.fetcher.fetch(&name, &dest).await {
                            Ok(fetched) => Response::WalFetched {
                                found: fetched == Fetched::Found,
                            },
                            Err(e) => Response::Error {
                                message: format!("{e:#}"),
                            },
                        },
                        Err(refused) => caller.refuse("wal_fetch", &refused.0),
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
pub(super) struct DaemonMetrics {
    pub(super) daemon: Arc<DaemonHandler>,
    pub(super) handle: PrometheusHandle,
    pub(super) watchers: Watchers,
    pub(super) postgres: PostgresCollector,
    pub(super) min_redundancy: u32,
}

impl Source for DaemonMetrics {
    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let archiver = match self.daemon.wal.get().and_then(|w| w.archiver.as_ref()) {
                Some(archiver) => Some(archiver.status().await),
                None => None,
            };
            let services = self.daemon.view.status();
            let jobs = self.daemon.scheduler.list();
            pgward_metrics::update(
                &pgward_metrics::Snapshot {
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
            tokio::spawn(pgward_metrics::give_back_memory());
            body
        })
    }

    fn healthy(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let services = self.daemon.view.status();
            match services.iter().find(|s| s.name == POSTGRES) {
                Some(pg) if pg.state == UnitState::Fatal => Err(format!(
                    "postgres failed for good ({})",
                    pg.last_error.as_deref().unwrap_or("see the log")
                )),
                Some(_) => Ok(()),
                None => Err("postgres is not supervised".into()),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            if self.daemon.stopping.load(Ordering::Relaxed) {
                return Readiness::NotReady("pgward is shutting down".into());
            }
            let services = self.daemon.view.status();
            let Some(pg) = services.iter().find(|s| s.name == POSTGRES) else {
                return Readiness::NotReady("postgres is not supervised".into());
            };
            if !pg.state.is_up() {
                return Readiness::NotReady(format!(
                    "postgres is {} (restarts: {})",
                    pg.state, pg.restarts
                ));
            }
            if let Err(e) = ready::probe(&self.daemon.target).await {
                return Readiness::NotReady(format!("postgres does not accept connections: {e}"));
            }
            match recovery_status(&self.daemon.target, &self.daemon.data_dir).await {
                Some(_) => Readiness::InRecovery,
                None => Readiness::Ready,
            }
        })
    }

    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            let status = self.daemon.status().await;
            let mut value = serde_json::to_value(status).unwrap_or_default();
            // The endpoints may face the network, with no auth: a job's output is whatever
            // it printed, so it stays on the control socket.
            if let Some(jobs) = value.get_mut("jobs").and_then(|j| j.as_array_mut()) {
                for job in jobs {
                    if let Some(job) = job.as_object_mut() {
                        job.remove("last_output");
                    }
                }
            }
            value
        })
    }
}
