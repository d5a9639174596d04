//! The lifecycle of one supervised process as a pure state machine:
//! `step(state, event, policy, now) -> (state, actions)`. No processes, no clocks: the
//! executor in `runner.rs` turns actions into syscalls and timers into events, and the tables
//! below are unit-tested on their own.

use std::time::{Duration, Instant};

use super::UnitState;
use crate::config::RestartMode;
use crate::init::ExitInfo;

/// One rung of the stop ladder: send `signal`, wait `grace` for an exit, then go to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopStep {
    pub signal: nix::sys::signal::Signal,
    pub grace: Duration,
}

/// What the machine needs to know about the service it runs.
#[derive(Debug, Clone)]
pub struct Policy {
    pub restart: RestartMode,
    /// How long a ready process must stay up before it counts as started.
    pub start_secs: Duration,
    /// Consecutive failed starts tolerated; one more is fatal.
    pub start_retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Signals sent in turn on stop; the last rung should be SIGKILL.
    pub stop_ladder: Vec<StopStep>,
}

impl Policy {
    /// Whether an exit with `status` that nobody asked for is followed by a restart.
    pub fn restarts_after(&self, status: ExitInfo) -> bool {
        match self.restart {
            RestartMode::Always => true,
            RestartMode::OnFailure => !status.success(),
            RestartMode::Never => false,
        }
    }

    /// Delay before restart attempt number `failures` (1-based): doubling, capped.
    pub fn backoff_for(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Where the process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not started yet: waiting for the first `Start` (dependencies not up).
    Pending,
    /// Spawned; `ready` once its readiness check passed (postgres: a connection succeeded;
    /// others: at once). Counts as started after `start_secs` of readiness.
    Starting {
        pid: i32,
        since: Instant,
        ready: bool,
    },
    /// Up and counted as started; a later exit is a crash, not a failed start.
    Running { pid: i32, since: Instant },
    /// Exited unexpectedly; restarts when the timer fires.
    Backoff { until: Instant },
    /// A stop was requested; `rung` indexes the stop ladder signal last sent.
    Stopping { pid: i32, rung: usize },
    /// Exited and, by policy, not restarted.
    Exited { status: ExitInfo },
    /// Stopped on request.
    Stopped { status: Option<ExitInfo> },
    /// Gave up: too many failed starts in a row, or it could not be spawned at all.
    Fatal { reason: String },
}

impl State {
    /// The state without its data, as `pgward status` and the metrics show it.
    pub fn unit_state(&self) -> UnitState {
        match self {
            State::Pending => UnitState::Pending,
            State::Starting { ready: false, .. } => UnitState::Starting,
            State::Starting { ready: true, .. } => UnitState::Ready,
            State::Running { .. } => UnitState::Running,
            State::Backoff { .. } => UnitState::Backoff,
            State::Stopping { .. } => UnitState::Stopping,
            State::Exited { .. } => UnitState::Exited,
            State::Stopped { .. } => UnitState::Stopped,
            State::Fatal { .. } => UnitState::Fatal,
        }
    }

    /// The state's name: [`State::unit_state`] as text.
    pub fn name(&self) -> &'static str {
        self.unit_state().as_str()
    }

    pub fn pid(&self) -> Option<i32> {
        match *self {
            State::Starting { pid, .. }
            | State::Running { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Ready for dependents: readiness passed and not stopping.
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            State::Starting { ready: true, .. } | State::Running { .. }
        )
    }

    /// Nothing will happen to it any more without a new `Start`.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            State::Exited { .. } | State::Stopped { .. } | State::Fatal { .. }
        )
    }
}

/// Something that happened to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start it (dependencies are up).
    Start,
    /// The spawn succeeded.
    Spawned { pid: i32 },
    /// The spawn failed (binary missing, bad user...): retried like a failed start.
    SpawnFailed { error: String },
    /// The readiness check passed.
    Ready,
    /// The process exited.
    Exited { status: ExitInfo },
    /// The one timer armed by the last `ArmTimer` fired.
    Timer,
    /// Stop it (orderly shutdown).
    Stop,
    /// Skip to the next rung of the stop ladder at once (a second SIGTERM).
    Escalate,
}

/// What the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Begin probing readiness of the current process.
    ProbeReadiness,
    Signal {
        pid: i32,
        signal: nix::sys::signal::Signal,
    },
    /// Fire `Event::Timer` after this long, replacing any armed timer.
    ArmTimer(Duration),
    DisarmTimer,
    /// Log at INFO (state changes) or ERROR (`error: true`, a human must look).
    Log {
        message: String,
        error: bool,
    },
}

/// Bookkeeping that survives state changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Consecutive failed starts.
    pub failures: u32,
    /// Restarts since pgward started (shown by `status`).
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
}

/// Advances the machine by one event.
pub fn step(
    state: State,
    counters: &mut Counters,
    event: Event,
    policy: &Policy,
    now: Instant,
) -> (State, Vec<Action>) {
    use Action as A;
    use Event as E;
    use State as S;
    match (state, event) {
        (S::Pending | S::Exited { .. } | S::Stopped { .. } | S::Fatal { .. }, E::Start) => {
            (S::Pending, vec![A::Spawn])
        }
        (S::Pending, E::Spawned { pid }) | (S::Backoff { .. }, E::Spawned { pid }) => (
            S::Starting {
                pid,
                since: now,
                ready: false,
            },
            vec![A::ProbeReadiness],
        ),
        (S::Pending | S::Backoff { .. }, E::SpawnFailed { error }) => {
            failed_start(counters, policy, now, format!("cannot start: {error}"))
        }
        (S::Backoff { .. }, E::Timer) => (S::Backoff { until: now }, vec![A::Spawn]),
        (
            S::Starting {
                pid,
                since,
                ready: false,
            },
            E::Ready,
        ) => became_ready(pid, since, policy),
        (
            S::Starting {
                pid, ready: true, ..
            },
            E::Timer,
        ) => {
            counters.failures = 0;
            (S::Running { pid, since: now }, vec![])
        }
        (S::Starting { .. }, E::Exited { status }) if policy.restarts_after(status) => {
            counters.last_exit = Some(status);
            failed_start(
                counters,
                policy,
                now,
                format!("exited during start-up: {status}"),
            )
        }
        (S::Starting { .. } | S::Running { .. }, E::Exited { status }) => {
            exited(counters, policy, now, status)
        }
        (S::Starting { pid, .. } | S::Running { pid, .. }, E::Stop) => stop_rung(pid, 0, policy),
        (S::Stopping { pid, rung }, E::Timer | E::Escalate) => {
            if rung + 1 < policy.stop_ladder.len() {
                stop_rung(pid, rung + 1, policy)
            } else {
                // SIGKILL was sent; only the exit is left to wait for.
                (S::Stopping { pid, rung }, vec![])
            }
        }
        (S::Stopping { .. }, E::Exited { status }) => stopped(counters, status),
        (S::Pending | S::Backoff { .. }, E::Stop) => {
            (S::Stopped { status: None }, vec![A::DisarmTimer])
        }
        // Stops of something already down, stale timers and readiness results for a process
        // that is gone change nothing.
        (state, _) => (state, vec![]),
    }
}

/// `Ready` while starting: the process must stay up `start_secs` longer to count as running.
fn became_ready(pid: i32, since: Instant, policy: &Policy) -> (State, Vec<Action>) {
    (
        State::Starting {
            pid,
            since,
            ready: true,
        },
        vec![
            Action::Log {
                message: format!("ready (pid {pid})"),
                error: false,
            },
            Action::ArmTimer(policy.start_secs),
        ],
    )
}

/// An exit that is not a failed start: restart after the first backoff delay, or stay down,
/// as the restart policy says.
fn exited(
    counters: &mut Counters,
    policy: &Policy,
    now: Instant,
    status: ExitInfo,
) -> (State, Vec<Action>) {
    counters.last_exit = Some(status);
    if policy.restarts_after(status) {
        counters.failures = 1;
        counters.restarts += 1;
        let delay = policy.backoff_for(1);
        (
            State::Backoff { until: now + delay },
            vec![
                Action::Log {
                    message: format!(
                        "{status}; restarting in {}",
                        humantime::format_duration(delay)
                    ),
                    error: false,
                },
                Action::ArmTimer(delay),
            ],
        )
    } else {
        (
            State::Exited { status },
            vec![Action::Log {
                message: format!(
                    "{status}; not restarted (restart: {})",
                    restart_name(policy.restart)
                ),
                error: false,
            }],
        )
    }
}

/// `restart` as the config spells it.
fn restart_name(mode: RestartMode) -> &'static str {
    match mode {
        RestartMode::Always => "always",
        RestartMode::OnFailure => "on-failure",
        RestartMode::Never => "never",
    }
}

/// The exit a stop was waiting for.
fn stopped(counters: &mut Counters, status: ExitInfo) -> (State, Vec<Action>) {
    counters.last_exit = Some(status);
    (
        State::Stopped {
            status: Some(status),
        },
        vec![
            Action::DisarmTimer,
            Action::Log {
                message: format!("stopped: {status}"),
                error: false,
            },
        ],
    )
}

fn failed_start(
    counters: &mut Counters,
    policy: &Policy,
    now: Instant,
    why: String,
) -> (State, Vec<Action>) {
    counters.failures += 1;
    if counters.failures > policy.start_retries {
        let reason = format!(
            "{why}; gave up after {} failed starts in a row",
            counters.failures
        );
        return (
            State::Fatal {
                reason: reason.clone(),
            },
            vec![
                Action::DisarmTimer,
                Action::Log {
                    message: reason,
                    error: true,
                },
            ],
        );
    }
    counters.restarts += 1;
    let delay = policy.backoff_for(counters.failures);
    (
        State::Backoff { until: now + delay },
        vec![
            Action::Log {
                message: format!(
                    "{why}; retry {} of {} in {}",
                    counters.failures,
                    policy.start_retries,
                    humantime::format_duration(delay)
                ),
                error: false,
            },
            Action::ArmTimer(delay),
        ],
    )
}

fn stop_rung(pid: i32, rung: usize, policy: &Policy) -> (State, Vec<Action>) {
    let step = policy.stop_ladder[rung];
    (
        State::Stopping { pid, rung },
        vec![
            Action::Signal {
                pid,
                signal: step.signal,
            },
            Action::ArmTimer(step.grace),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal::{SIGINT, SIGKILL, SIGQUIT};

    fn policy(restart: RestartMode) -> Policy {
        Policy {
            restart,
            start_secs: Duration::from_secs(1),
            start_retries: 2,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            stop_ladder: vec![
                StopStep {
                    signal: SIGINT,
                    grace: Duration::from_secs(60),
                },
                StopStep {
                    signal: SIGQUIT,
                    grace: Duration::from_secs(10),
                },
                StopStep {
                    signal: SIGKILL,
                    grace: Duration::from_secs(3600),
                },
            ],
        }
    }

    /// Runs events through the machine, returning the final state and every action.
    fn run(policy: &Policy, events: Vec<Event>) -> (State, Counters, Vec<Action>) {
        let now = Instant::now();
        let mut state = State::Pending;
        let mut counters = Counters::default();
        let mut all = Vec::new();
        for event in events {
            let (next, actions) = step(state, &mut counters, event, policy, now);
            state = next;
            all.extend(
                actions
                    .into_iter()
                    .filter(|a| !matches!(a, Action::Log { .. })),
            );
        }
        (state, counters, all)
    }

    fn up(pid: i32) -> Vec<Event> {
        vec![
            Event::Start,
            Event::Spawned { pid },
            Event::Ready,
            Event::Timer,
        ]
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy(RestartMode::Always);
        let got: Vec<u64> = (1..=5).map(|n| p.backoff_for(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn start_ready_and_running() {
        let (state, counters, actions) = run(&policy(RestartMode::Always), up(7));
        assert!(matches!(state, State::Running { pid: 7, .. }));
        assert_eq!(counters.failures, 0);
        assert_eq!(
            actions,
            vec![
                Action::Spawn,
                Action::ProbeReadiness,
                Action::ArmTimer(Duration::from_secs(1))
            ]
        );
    }

    #[test]
    fn crash_after_running_restarts_with_initial_backoff() {
        let mut events = up(7);
        events.push(Event::Exited {
            status: ExitInfo::Signal(9),
        });
        let (state, counters, actions) = run(&policy(RestartMode::Always), events);
        assert!(matches!(state, State::Backoff { .. }));
        assert_eq!(counters.restarts, 1);
        assert_eq!(
            actions.last(),
            Some(&Action::ArmTimer(Duration::from_secs(1)))
        );
    }

    #[test]
    fn restart_policies_on_clean_and_failed_exit() {
        let cases = [
            (RestartMode::Always, ExitInfo::Code(0), "backoff"),
            (RestartMode::Always, ExitInfo::Code(1), "backoff"),
            (RestartMode::OnFailure, ExitInfo::Code(0), "exited"),
            (RestartMode::OnFailure, ExitInfo::Code(3), "backoff"),
            (RestartMode::OnFailure, ExitInfo::Signal(9), "backoff"),
            (RestartMode::Never, ExitInfo::Code(1), "exited"),
        ];
        for (mode, status, want) in cases {
            let mut events = up(7);
            events.push(Event::Exited { status });
            let (state, _, _) = run(&policy(mode), events);
            assert_eq!(state.name(), want, "{mode:?} {status}");
        }
    }

    #[test]
    fn an_exit_left_down_names_the_policy_as_the_config_spells_it() {
        let mut counters = Counters::default();
        let policy = policy(RestartMode::OnFailure);
        let (_, actions) = exited(&mut counters, &policy, Instant::now(), ExitInfo::Code(0));
        assert_eq!(
            actions,
            vec![Action::Log {
                message: format!("{}; not restarted (restart: on-failure)", ExitInfo::Code(0)),
                error: false,
            }]
        );
    }

    #[test]
    fn failed_starts_back_off_then_become_fatal() {
        let p = policy(RestartMode::Always);
        let quick_exit = |pid| {
            vec![
                Event::Spawned { pid },
                Event::Exited {
                    status: ExitInfo::Code(1),
                },
            ]
        };
        let mut events = vec![Event::Start];
        events.extend(quick_exit(1));
        events.push(Event::Timer);
        events.extend(quick_exit(2));
        events.push(Event::Timer);
        events.extend(quick_exit(3));
        let (state, counters, actions) = run(&p, events);
        assert!(matches!(state, State::Fatal { .. }), "{state:?}");
        assert_eq!(counters.failures, 3);
        let delays: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::ArmTimer(d) => Some(d.as_secs()),
                _ => None,
            })
            .collect();
        assert_eq!(delays, vec![1, 2]);
    }

    #[test]
    fn an_exit_during_start_up_is_not_restarted_against_the_policy() {
        let cases = [
            (RestartMode::Never, ExitInfo::Code(0), "exited"),
            (RestartMode::Never, ExitInfo::Code(1), "exited"),
            (RestartMode::OnFailure, ExitInfo::Code(0), "exited"),
            (RestartMode::OnFailure, ExitInfo::Code(1), "backoff"),
            (RestartMode::Always, ExitInfo::Code(0), "backoff"),
        ];
        for (mode, status, want) in cases {
            let events = vec![
                Event::Start,
                Event::Spawned { pid: 1 },
                Event::Exited { status },
            ];
            let (state, _, _) = run(&policy(mode), events);
            assert_eq!(state.name(), want, "{mode:?} {status}");
        }
    }

    #[test]
    fn spawn_failure_counts_as_failed_start() {
        let (state, counters, _) = run(
            &policy(RestartMode::Never),
            vec![
                Event::Start,
                Event::SpawnFailed {
                    error: "no such file".into(),
                },
            ],
        );
        assert!(matches!(state, State::Backoff { .. }));
        assert_eq!(counters.failures, 1);
    }

    #[test]
    fn ready_then_quick_crash_is_a_failed_start() {
        let events = vec![
            Event::Start,
            Event::Spawned { pid: 1 },
            Event::Ready,
            Event::Exited {
                status: ExitInfo::Code(1),
            },
        ];
        let (_, counters, _) = run(&policy(RestartMode::Always), events);
        assert_eq!(counters.failures, 1);
    }

    #[test]
    fn stop_walks_the_ladder_on_timeouts_and_escalation() {
        let mut events = up(7);
        events.extend([Event::Stop, Event::Escalate, Event::Timer, Event::Timer]);
        let (state, _, actions) = run(&policy(RestartMode::Always), events);
        assert_eq!(state, State::Stopping { pid: 7, rung: 2 });
        let signals: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { signal, .. } => Some(*signal),
                _ => None,
            })
            .collect();
        assert_eq!(signals, vec![SIGINT, SIGQUIT, SIGKILL]);
    }

    #[test]
    fn exit_while_stopping_is_a_clean_stop() {
        let mut events = up(7);
        events.extend([
            Event::Stop,
            Event::Exited {
                status: ExitInfo::Code(0),
            },
        ]);
        let (state, _, _) = run(&policy(RestartMode::Always), events);
        assert_eq!(
            state,
            State::Stopped {
                status: Some(ExitInfo::Code(0))
            }
        );
    }

    #[test]
    fn stop_during_backoff_or_before_start_needs_no_signal() {
        let mut events = up(7);
        events.extend([
            Event::Exited {
                status: ExitInfo::Code(1),
            },
            Event::Stop,
        ]);
        let (state, _, _) = run(&policy(RestartMode::Always), events);
        assert_eq!(state, State::Stopped { status: None });
        let (state, _, actions) = run(&policy(RestartMode::Always), vec![Event::Stop]);
        assert_eq!(state, State::Stopped { status: None });
        assert_eq!(actions, vec![Action::DisarmTimer]);
    }

    #[test]
    fn stale_timer_and_readiness_are_ignored() {
        let (state, _, actions) = run(
            &policy(RestartMode::Always),
            vec![Event::Start, Event::Spawned { pid: 3 }, Event::Timer],
        );
        assert!(matches!(state, State::Starting { ready: false, .. }));
        assert_eq!(actions, vec![Action::Spawn, Action::ProbeReadiness]);
    }
}
