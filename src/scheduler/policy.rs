//! A job's policies as pure decisions, with the meaning yacron gives them: what to do when a
//! run is due while others still run (`concurrency:`), how long to wait before a retry
//! (`retries:`), and whether a finished run failed (`fails_when:`, `timeout:`). No clock, no
//! processes: the scheduler loop gathers the facts and acts on the answers.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{ConcurrencyPolicy, FailsWhen, RetryConfig};

/// What to do with a run that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Start it.
    Start,
    /// Do not start it: the previous run goes on (`forbid`).
    Skip,
    /// Stop the running ones (as a timeout would: SIGTERM, then SIGKILL after
    /// `kill_timeout`), then start it (`replace`).
    ReplaceThenStart,
}

/// The decision for a run of a job with `policy` that is due while `running` of its runs are
/// still going.
pub fn on_due(policy: ConcurrencyPolicy, running: usize) -> Due {
    match (policy, running) {
        (_, 0) | (ConcurrencyPolicy::Allow, _) => Due::Start,
        (ConcurrencyPolicy::Forbid, _) => Due::Skip,
        (ConcurrencyPolicy::Replace, _) => Due::ReplaceThenStart,
    }
}

/// The delay before retry number `attempt` (1 for the first retry after the first failed
/// run): `initial_delay * multiplier^(attempt - 1)`, at most `max_delay`. `None` when no
/// such retry is made: `attempt` is 0 or more than `retries.max`.
pub fn retry_delay(retries: &RetryConfig, attempt: u32) -> Option<Duration> {
    if attempt == 0 || attempt > retries.max {
        return None;
    }
    // The multiplier is at least 1 (checked when the config is read), so this grows with
    // `attempt`; an exponent past i32::MAX is far beyond any cap anyway.
    let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
    let secs = retries.initial_delay.as_secs_f64() * retries.multiplier.0.powi(exponent);
    // Infinite or too large for a Duration: the cap applies.
    let delay = Duration::try_from_secs_f64(secs).unwrap_or(retries.max_delay);
    Some(delay.min(retries.max_delay))
}

/// How a run ended, as much as [`failure_reason`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunFacts {
    /// The exit status, when the process exited. A built-in action reports `Some(0)` when it
    /// succeeded and `Some(1)` when it failed (see [`RunFacts::action`]).
    pub exit_code: Option<i32>,
    /// The signal that killed the process, when one did.
    pub signal: Option<i32>,
    /// `Some(timeout)` when the run was stopped for lasting longer than the job's `timeout`.
    pub timed_out: Option<Duration>,
    /// Lines written to stdout (a last line without a newline counts).
    pub stdout_lines: u64,
    /// Lines written to stderr (a last line without a newline counts).
    pub stderr_lines: u64,
}

impl RunFacts {
    /// The facts of a built-in action that finished on its own: it succeeded or not, and
    /// wrote nothing to the job's stdout or stderr (it logs through pgward's log).
    pub fn action(succeeded: bool) -> RunFacts {
        RunFacts {
            exit_code: Some(if succeeded { 0 } else { 1 }),
            ..RunFacts::default()
        }
    }
}

/// Why a run counts as a failure under `fails_when`, or `None` when it succeeded. A run
/// stopped by its timeout always failed. When several conditions hold they are all given,
/// most telling first: `"exit status 3; wrote 2 lines to stderr"`.
pub fn failure_reason(fails_when: &FailsWhen, facts: &RunFacts) -> Option<String> {
    let mut reasons = Vec::new();
    if let Some(timeout) = facts.timed_out {
        let timeout = humantime::format_duration(timeout);
        reasons.push(match (facts.signal, facts.exit_code) {
            (Some(signal), _) => {
                format!(
                    "killed by {} after the {timeout} timeout",
                    signal_name(signal)
                )
            }
            (None, Some(code)) => {
                format!("stopped after the {timeout} timeout (exit status {code})")
            }
            (None, None) => format!("stopped after the {timeout} timeout"),
        });
    } else if fails_when.nonzero_exit {
        match (facts.signal, facts.exit_code) {
            (Some(signal), _) => reasons.push(format!("killed by {}", signal_name(signal))),
            (None, Some(0)) => {}
            (None, Some(code)) => reasons.push(format!("exit status {code}")),
            // The runner always knows one or the other; if not, success cannot be claimed.
            (None, None) => reasons.push("no exit status".to_owned()),
        }
    }
    if fails_when.produces_stdout && facts.stdout_lines > 0 {
        reasons.push(format!("wrote {} to stdout", lines(facts.stdout_lines)));
    }
    if fails_when.produces_stderr && facts.stderr_lines > 0 {
        reasons.push(format!("wrote {} to stderr", lines(facts.stderr_lines)));
    }
    if fails_when.always {
        reasons.push("fails_when.always".to_owned());
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// `SIGKILL`, or `signal 64` for a number this system does not name.
fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(signal) => signal.as_str().to_owned(),
        Err(_) => format!("signal {signal}"),
    }
}

fn lines(n: u64) -> String {
    if n == 1 {
        "1 line".to_owned()
    } else {
        format!("{n} lines")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Multiplier;

    #[test]
    fn concurrency() {
        use ConcurrencyPolicy::*;
        let cases = [
            (Allow, 0, Due::Start),
            (Allow, 2, Due::Start),
            (Forbid, 0, Due::Start),
            (Forbid, 1, Due::Skip),
            (Replace, 0, Due::Start),
            (Replace, 1, Due::ReplaceThenStart),
        ];
        for (policy, running, due) in cases {
            assert_eq!(on_due(policy, running), due, "{policy:?} {running}");
        }
    }

    fn retries(max: u32, initial: u64, multiplier: f64, max_delay: u64) -> RetryConfig {
        RetryConfig {
            max,
            initial_delay: Duration::from_secs(initial),
            multiplier: Multiplier(multiplier),
            max_delay: Duration::from_secs(max_delay),
        }
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let r = retries(6, 30, 2.0, 600);
        let delays: Vec<_> = (0..=7).map(|a| retry_delay(&r, a)).collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            delays,
            [
                None,
                secs(30),
                secs(60),
                secs(120),
                secs(240),
                secs(480),
                secs(600),
                None
            ]
        );
        // Fractional multiplier, and a constant delay.
        let r = retries(3, 10, 1.5, 600);
        assert_eq!(retry_delay(&r, 3), Some(Duration::from_secs_f64(22.5)));
        let r = retries(3, 10, 1.0, 600);
        assert_eq!(retry_delay(&r, 3), secs(10));
        // No retries by default; an initial delay above the cap is capped.
        assert_eq!(retry_delay(&retries(0, 30, 2.0, 600), 1), None);
        assert_eq!(retry_delay(&retries(1, 900, 2.0, 600), 1), secs(600));
        // Huge attempts saturate at the cap instead of overflowing.
        let r = retries(u32::MAX, 30, 10.0, 600);
        assert_eq!(retry_delay(&r, u32::MAX), secs(600));
        assert_eq!(retry_delay(&r, 400), secs(600));
    }

    const DEFAULT: FailsWhen = FailsWhen {
        nonzero_exit: true,
        produces_stdout: false,
        produces_stderr: false,
        always: false,
    };

    fn exited(code: i32) -> RunFacts {
        RunFacts {
            exit_code: Some(code),
            ..RunFacts::default()
        }
    }

    #[test]
    fn exit_status_and_signals() {
        assert_eq!(failure_reason(&DEFAULT, &exited(0)), None);
        assert_eq!(
            failure_reason(&DEFAULT, &exited(3)).as_deref(),
            Some("exit status 3")
        );
        let killed = RunFacts {
            signal: Some(libc::SIGKILL),
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&DEFAULT, &killed).as_deref(),
            Some("killed by SIGKILL")
        );
        let odd = RunFacts {
            signal: Some(200),
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&DEFAULT, &odd).as_deref(),
            Some("killed by signal 200")
        );
        let lenient = FailsWhen {
            nonzero_exit: false,
            ..DEFAULT
        };
        assert_eq!(failure_reason(&lenient, &exited(3)), None);
        assert_eq!(failure_reason(&lenient, &killed), None);
    }

    #[test]
    fn a_timeout_is_always_a_failure() {
        let lenient = FailsWhen {
            nonzero_exit: false,
            ..DEFAULT
        };
        let timeout = Some(Duration::from_secs(30));
        let killed = RunFacts {
            signal: Some(libc::SIGKILL),
            timed_out: timeout,
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&lenient, &killed).as_deref(),
            Some("killed by SIGKILL after the 30s timeout")
        );
        let exited_on_term = RunFacts {
            exit_code: Some(0),
            timed_out: timeout,
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&DEFAULT, &exited_on_term).as_deref(),
            Some("stopped after the 30s timeout (exit status 0)")
        );
        let action = RunFacts {
            timed_out: Some(Duration::from_secs(5400)),
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&DEFAULT, &action).as_deref(),
            Some("stopped after the 1h 30m timeout")
        );
    }

    #[test]
    fn output_and_always() {
        let strict = FailsWhen {
            nonzero_exit: true,
            produces_stdout: true,
            produces_stderr: true,
            always: false,
        };
        let chatty = RunFacts {
            exit_code: Some(0),
            stdout_lines: 1,
            stderr_lines: 2,
            ..RunFacts::default()
        };
        assert_eq!(
            failure_reason(&strict, &chatty).as_deref(),
            Some("wrote 1 line to stdout; wrote 2 lines to stderr")
        );
        assert_eq!(failure_reason(&DEFAULT, &chatty), None);
        assert_eq!(
            failure_reason(
                &strict,
                &RunFacts {
                    exit_code: Some(2),
                    ..chatty
                }
            )
            .as_deref(),
            Some("exit status 2; wrote 1 line to stdout; wrote 2 lines to stderr")
        );
        let always = FailsWhen {
            always: true,
            ..DEFAULT
        };
        assert_eq!(
            failure_reason(&always, &exited(0)).as_deref(),
            Some("fails_when.always")
        );
    }

    #[test]
    fn actions() {
        assert_eq!(failure_reason(&DEFAULT, &RunFacts::action(true)), None);
        assert_eq!(
            failure_reason(&DEFAULT, &RunFacts::action(false)).as_deref(),
            Some("exit status 1")
        );
    }
}
