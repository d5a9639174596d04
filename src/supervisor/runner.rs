//! The executor of one service's state machine: turns [`Action`]s into spawns, signals and
//! timers, and process exits, timer expiries, readiness and commands into [`Event`]s.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::state::{step, Action, Counters, Event, Policy, State};
use crate::init::ExitInfo;
use crate::process;

/// A future that resolves once the current process is ready.
pub type Readiness = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How to start one kind of process and tell when it is ready.
pub trait Launcher: Send + 'static {
    /// Starts a new instance.
    fn spawn(&mut self) -> anyhow::Result<process::Running>;
    /// Resolves when the instance with `pid` is ready. The default: at once.
    fn readiness(&self, pid: i32) -> Readiness {
        let _ = pid;
        Box::pin(std::future::ready(()))
    }
}

/// Commands from the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Stop,
    Escalate,
    /// Deliver a signal to the running process (e.g. SIGHUP for a reload).
    Signal(nix::sys::signal::Signal),
}

/// What others may observe of a service.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    pub counters: Counters,
    /// When the current process was spawned.
    pub started_at: Option<Instant>,
    pub last_error: Option<String>,
}

/// Runs the machine until the service is stopped on request (or its commands are dropped and
/// it is down). Cancel safety: must not be dropped while a process runs; the orchestrator
/// always stops it with `Command::Stop` instead.
pub async fn run(
    name: String,
    mut launcher: Box<dyn Launcher>,
    policy: Policy,
    mut commands: mpsc::UnboundedReceiver<Command>,
    snapshot: watch::Sender<Snapshot>,
) {
    let mut state = State::Pending;
    let mut counters = Counters::default();
    let mut timer: Option<tokio::time::Instant> = None;
    let mut exit: Option<oneshot::Receiver<ExitInfo>> = None;
    let mut ready: Option<Readiness> = None;
    let mut started_at = None;
    let mut last_error = None;
    loop {
        let event = tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Start) => Event::Start,
                Some(Command::Stop) => Event::Stop,
                Some(Command::Escalate) => Event::Escalate,
                Some(Command::Signal(signal)) => {
                    if let Some(pid) = state.pid() {
                        process::signal(pid, signal);
                    }
                    continue;
                }
                None if state.pid().is_none() => return,
                None => Event::Stop,
            },
            status = async { exit.as_mut().expect("guarded").await }, if exit.is_some() => {
                exit = None;
                ready = None;
                Event::Exited { status: status.expect("the global reaper never drops a registered child") }
            }
            () = async { tokio::time::sleep_until(timer.expect("guarded")).await }, if timer.is_some() => {
                timer = None;
                Event::Timer
            }
            () = async { ready.as_mut().expect("guarded").await }, if ready.is_some() => {
                ready = None;
                Event::Ready
            }
        };
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let (next, actions) = step(state, &mut counters, event, &policy, Instant::now());
            state = next;
            for action in actions {
                match action {
                    Action::Spawn => match launcher.spawn() {
                        Ok(running) => {
                            started_at = Some(Instant::now());
                            queue.push_back(Event::Spawned { pid: running.pid });
                            exit = Some(running.exit);
                        }
                        Err(e) => {
                            let error = format!("{e:#}");
                            last_error = Some(error.clone());
                            queue.push_back(Event::SpawnFailed { error });
                        }
                    },
                    Action::ProbeReadiness => {
                        if let Some(pid) = state.pid() {
                            ready = Some(launcher.readiness(pid));
                        }
                    }
                    Action::Signal { pid, signal } => {
                        tracing::info!(service = %name, pid, "sending {signal}");
                        if signal == nix::sys::signal::Signal::SIGKILL {
                            // Last resort: take whatever the process left behind with it.
                            process::signal_group(pid, signal);
                        } else {
                            process::signal(pid, signal);
                        }
                    }
                    Action::ArmTimer(after) => timer = Some(deadline(after)),
                    Action::DisarmTimer => timer = None,
                    Action::Log {
                        message,
                        error: true,
                    } => {
                        last_error = Some(message.clone());
                        tracing::error!(service = %name, "{message}");
                    }
                    Action::Log {
                        message,
                        error: false,
                    } => tracing::info!(service = %name, "{message}"),
                }
            }
        }
        let stopped = matches!(state, State::Stopped { .. });
        snapshot.send_replace(Snapshot {
            state: state.clone(),
            counters: counters.clone(),
            started_at,
            last_error: last_error.clone(),
        });
        if stopped {
            return;
        }
    }
}

fn deadline(after: Duration) -> tokio::time::Instant {
    // Saturate: "wait forever" rungs use very long graces.
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or(now + Duration::from_secs(86400 * 365))
}
