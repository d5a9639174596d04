//! Progress of a long transfer: bytes done of total, rate and time left, as a line rewritten
//! in place on a terminal, or a log line every 10 seconds otherwise (containers).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Interval of progress log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Interval of redraws on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(250);

/// Shared by the parallel workers of one transfer.
pub struct Progress {
    what: String,
    total: u64,
    started: Instant,
    terminal: bool,
    state: Mutex<State>,
}

struct State {
    done: u64,
    last_report: Instant,
}

impl Progress {
    /// `what` names the transfer in the lines (a backup id).
    pub fn new(what: &str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what: what.to_owned(),
            total,
            started: now,
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                done: 0,
                last_report: now,
            }),
        }
    }

    /// Counts `bytes` more as done and reports when it is time.
    pub fn add(&self, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.done += bytes;
        let every = if self.terminal { DRAW_EVERY } else { LOG_EVERY };
        if state.last_report.elapsed() >= every {
            state.last_report = Instant::now();
            self.report(state.done);
        }
    }

    /// Ends the line on a terminal.
    pub fn finish(&self) {
        let done = self.state.lock().unwrap_or_else(|p| p.into_inner()).done;
        if self.terminal {
            self.report(done);
            eprintln!();
        }
    }

    fn report(&self, done: u64) {
        let line = progress_line(done, self.total, self.started.elapsed());
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}: {line}   ", self.what);
            let _ = err.flush();
        } else {
            tracing::info!(target: "pgward::progress", "{}: {line}", self.what);
        }
    }
}

/// `1.2 GiB of 3.4 GiB (35%), 180 MiB/s, 12s left`.
pub fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let left = if rate > 0.0 && total > done {
        format!(
            ", {} left",
            humantime::format_duration(Duration::from_secs(((total - done) as f64 / rate) as u64))
        )
    } else {
        String::new()
    };
    format!(
        "{} of {} ({percent:.0}%), {}/s{left}",
        human_bytes(done),
        human_bytes(total),
        human_bytes(rate as u64)
    )
}

/// Binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_done_total_rate_and_time_left() {
        assert_eq!(
            progress_line(512 << 20, 2 << 30, Duration::from_secs(2)),
            "512.0 MiB of 2.0 GiB (25%), 256.0 MiB/s, 6s left"
        );
        assert_eq!(
            progress_line(10, 10, Duration::from_secs(1)),
            "10 B of 10 B (100%), 10 B/s"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
