//! Supervision: postgres and the extra services, each a state machine ([`state`]) run by an
//! executor ([`runner`]), started in dependency order and stopped in reverse: services first,
//! postgres last.
//!
//! Never imports `repo/`: what a service is comes in as a [`runner::Launcher`].

pub mod runner;
pub mod service;
pub mod state;

use std::time::Instant;

use futures_util::future::select_all;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use runner::{Command, Launcher, Snapshot};
pub use state::{Policy, State, StopStep};

/// The name postgres is supervised under (reserved for services).
pub const POSTGRES: &str = "postgres";

/// One supervised unit as the orchestrator holds it.
struct Unit {
    name: String,
    after: Vec<String>,
    commands: mpsc::UnboundedSender<Command>,
    snapshot: watch::Receiver<Snapshot>,
    task: JoinHandle<()>,
}

/// What to supervise: a name, its launcher and policy, and what must be ready first.
pub struct UnitSpec {
    pub name: String,
    pub launcher: Box<dyn Launcher>,
    pub policy: Policy,
    pub after: Vec<String>,
}

/// The running supervisor.
pub struct Supervisor {
    /// Postgres first, then services in config order.
    units: Vec<Unit>,
    view: View,
}

/// A cheap, cloneable read-only view of every unit, for status requests.
#[derive(Clone)]
pub struct View {
    units: Vec<(String, watch::Receiver<Snapshot>)>,
    started: Instant,
}

/// A unit's state as the outside sees it (`pgward status`, metrics, probes): the
/// [`State`] without its data, written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Pending,
    /// Spawned, readiness not yet passed.
    Starting,
    /// Readiness passed, not yet counted as started.
    Ready,
    Running,
    Backoff,
    Stopping,
    Exited,
    Stopped,
    Fatal,
}

impl UnitState {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Starting => "starting",
            UnitState::Ready => "ready",
            UnitState::Running => "running",
            UnitState::Backoff => "backoff",
            UnitState::Stopping => "stopping",
            UnitState::Exited => "exited",
            UnitState::Stopped => "stopped",
            UnitState::Fatal => "fatal",
        }
    }

    /// Its process is up and passed its readiness check.
    pub fn is_up(self) -> bool {
        matches!(self, UnitState::Ready | UnitState::Running)
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so table columns (`{:<10}`) line up.
        f.pad(self.as_str())
    }
}

/// How a unit looks from the outside (`pgward status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatus {
    pub name: String,
    pub state: UnitState,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub uptime_seconds: Option<f64>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
}

impl Supervisor {
    /// Starts every unit's executor; each starts its process once everything in its `after`
    /// list is ready. `units[0]` must be postgres.
    pub fn start(specs: Vec<UnitSpec>) -> Supervisor {
        let mut units: Vec<Unit> = Vec::new();
        for spec in specs {
            let (commands, rx) = mpsc::unbounded_channel();
            let (snapshot_tx, snapshot) = watch::channel(Snapshot {
                state: State::Pending,
                counters: Default::default(),
                started_at: None,
                last_error: None,
            });
            let task = tokio::spawn(runner::run(
                spec.name.clone(),
                spec.launcher,
                spec.policy,
                rx,
                snapshot_tx,
            ));
            units.push(Unit {
                name: spec.name,
                after: spec.after,
                commands,
                snapshot,
                task,
            });
        }
        for unit in &units {
            let deps: Vec<_> = unit
                .after
                .iter()
                .filter_map(|dep| {
                    units
                        .iter()
                        .find(|u| &u.name == dep)
                        .map(|u| u.snapshot.clone())
                })
                .collect();
            let commands = unit.commands.clone();
            let name = unit.name.clone();
            tokio::spawn(async move {
                for mut dep in deps {
                    // An error means the dependency's executor ended: it was stopped, so this
                    // unit must not start either.
                    if dep.wait_for(|s| s.state.is_ready()).await.is_err() {
                        return;
                    }
                }
                tracing::debug!(service = %name, "dependencies ready; starting");
                let _ = commands.send(Command::Start);
            });
        }
        let view = View {
            units: units
                .iter()
                .map(|u| (u.name.clone(), u.snapshot.clone()))
                .collect(),
            started: Instant::now(),
        };
        Supervisor { units, view }
    }

    /// Watches postgres's state.
    pub fn postgres(&self) -> watch::Receiver<Snapshot> {
        self.units[0].snapshot.clone()
    }

    /// Sends a signal to postgres if it runs (SIGHUP = reload configuration).
    pub fn signal_postgres(&self, signal: nix::sys::signal::Signal) {
        let _ = self.units[0].commands.send(Command::Signal(signal));
    }

    /// Resolves when some unit's executor task ended without being asked to (a panic): the
    /// caller must shut down rather than limp on.
    pub async fn crashed(&mut self) -> String {
        let tasks = self.units.iter_mut().map(|u| {
            let name = u.name.clone();
            Box::pin(async move {
                let result = (&mut u.task).await;
                (name, result)
            })
        });
        let ((name, result), _, _) = select_all(tasks).await;
        match result {
            Err(e) if e.is_panic() => format!("supervisor task of {name} panicked"),
            _ => format!("supervisor task of {name} ended unexpectedly"),
        }
    }

    /// Stops services (all at once), then postgres, each walking its stop ladder. A message
    /// on `escalate` skips every stopping unit to its next rung.
    pub async fn shutdown(&mut self, escalate: &mut mpsc::UnboundedReceiver<()>) {
        let (postgres, services) = self.units.split_at_mut(1);
        stop_all(services, escalate).await;
        stop_all(postgres, escalate).await;
    }

    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Units that failed for good: gave up restarting, or exited with an error under a policy
    /// that does not restart them.
    pub fn failed_units(&self) -> Vec<String> {
        self.units
            .iter()
            .filter(|u| match &u.snapshot.borrow().state {
                State::Fatal { .. } => true,
                State::Exited { status } => !status.success(),
                _ => false,
            })
            .map(|u| u.name.clone())
            .collect()
    }

    /// How postgres's last process ended, if it did.
    pub fn postgres_exit(&self) -> Option<crate::init::ExitInfo> {
        match &self.units[0].snapshot.borrow().state {
            State::Stopped { status } => *status,
            State::Exited { status } => Some(*status),
            _ => None,
        }
    }
}

impl View {
    /// Status of every unit, postgres first.
    pub fn status(&self) -> Vec<UnitStatus> {
        self.units
            .iter()
            .map(|(name, snapshot)| {
                let snap = snapshot.borrow();
                let running = snap.state.pid().is_some();
                UnitStatus {
                    name: name.clone(),
                    state: snap.state.unit_state(),
                    pid: snap.state.pid(),
                    restarts: snap.counters.restarts,
                    uptime_seconds: snap
                        .started_at
                        .filter(|_| running)
                        .map(|t| t.elapsed().as_secs_f64()),
                    last_exit: snap.counters.last_exit.map(|e| e.to_string()),
                    last_error: snap.last_error.clone(),
                }
            })
            .collect()
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

async fn stop_all(units: &mut [Unit], escalate: &mut mpsc::UnboundedReceiver<()>) {
    let commands: Vec<_> = units.iter().map(|u| u.commands.clone()).collect();
    for c in &commands {
        let _ = c.send(Command::Stop);
    }
    loop {
        let all_down = units.iter().all(|u| {
            let state = &u.snapshot.borrow().state;
            state.is_final() || u.task.is_finished()
        });
        if all_down {
            return;
        }
        // Only units still running can change; a finished executor's channel would resolve at
        // once and spin this loop.
        let changes: Vec<_> = units
            .iter_mut()
            .filter(|u| !u.task.is_finished() && !u.snapshot.borrow().state.is_final())
            .map(|u| Box::pin(async move { u.snapshot.changed().await }))
            .collect();
        // The last ones may have ended since the check above: look again (`select_all` of
        // nothing panics).
        if changes.is_empty() {
            continue;
        }
        tokio::select! {
            _ = select_all(changes) => {}
            Some(()) = escalate.recv() => {
                for c in &commands {
                    let _ = c.send(Command::Escalate);
                }
            }
        }
    }
}
