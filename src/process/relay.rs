//! Relays a child's stdout/stderr to pgward's own, line by line, tagged with the child's name,
//! each line scrubbed of what looks like a secret ([`crate::redact::scrub`]).
//!
//! One small OS thread per stream: the pipes are plain blocking fds, and a thread that only
//! ever blocks in read(2) costs a few KiB of RSS and no runtime thread.
//!
//! A caller that needs the lines too (the scheduler counts them, keeps the last ones and streams
//! them to `pgward jobs run`) passes a [`Tap`]: each line is logged first, then sent to it. A
//! caller that only needs the last lines, to quote them in an error, passes a [`Tail`].

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::logging::LogFormat;

/// Which of the child's streams a line came from; it goes to the same stream of pgward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// One relayed line, as logged: lossy UTF-8, without its line ending. An overlong line comes
/// as several, split at [`LogSink::max_line_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputLine {
    pub stream: StreamKind,
    pub text: String,
}

/// Where a relay also sends each line. Bounded, so a slow reader slows the child down (its
/// pipe fills) instead of growing pgward's memory; the relay's clone is dropped at EOF, so the
/// receiver sees the channel close once every stream tapped into it has ended. A receiver
/// that goes away only stops the tapping: the lines are still logged.
pub type Tap = mpsc::Sender<OutputLine>;

/// How relayed lines are written.
#[derive(Debug, Clone, Copy)]
pub struct LogSink {
    pub format: LogFormat,
    /// Longer lines are split into records of this many bytes, so a child that never writes a
    /// newline cannot make pgward buffer without bound.
    pub max_line_bytes: usize,
}

/// The last lines a child wrote, kept beside the relay so that an error can quote them (a
/// server that exits during start-up says why in its last lines). Bounded: `keep` lines.
#[derive(Debug, Clone)]
pub struct Tail {
    state: Arc<Mutex<TailState>>,
    keep: usize,
}

#[derive(Debug, Default)]
struct TailState {
    lines: VecDeque<String>,
    /// Streams still relayed into it.
    open: usize,
}

impl Tail {
    pub fn new(keep: usize) -> Tail {
        Tail {
            state: Arc::default(),
            keep,
        }
    }

    /// The kept lines, oldest first, without their line ends.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Whether every stream relayed into it has ended: the child and whatever inherited its
    /// output have exited, and their last lines are in.
    pub fn is_closed(&self) -> bool {
        self.lock().open == 0
    }

    fn push(&self, line: &str) {
        let mut state = self.lock();
        if state.lines.len() == self.keep {
            state.lines.pop_front();
        }
        if self.keep > 0 {
            state.lines.push_back(line.to_owned());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TailState> {
        // Single updates: a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogSink {
    /// Starts relaying `reader` until EOF (the child closed it or exited).
    pub fn relay<R: Read + Send + 'static>(&self, name: &str, kind: StreamKind, reader: R) {
        self.relay_tapped(name, kind, reader, None);
    }

    /// Like [`relay`](Self::relay), and sends each line to `tap` after logging it.
    pub fn relay_tapped<R: Read + Send + 'static>(
        &self,
        name: &str,
        kind: StreamKind,
        reader: R,
        tap: Option<Tap>,
    ) {
        self.relay_observed(name, kind, reader, tap, None);
    }

    /// [`relay`](Self::relay), also keeping the last lines in `tail`.
    pub fn relay_keeping<R: Read + Send + 'static>(
        &self,
        name: &str,
        kind: StreamKind,
        reader: R,
        tail: Option<Tail>,
    ) {
        self.relay_observed(name, kind, reader, None, tail);
    }

    /// [`relay`](Self::relay) with both observers.
    pub fn relay_observed<R: Read + Send + 'static>(
        &self,
        name: &str,
        kind: StreamKind,
        reader: R,
        tap: Option<Tap>,
        tail: Option<Tail>,
    ) {
        let sink = *self;
        let owned = name.to_owned();
        if let Some(tail) = &tail {
            tail.lock().open += 1;
        }
        let closing = tail.clone();
        let spawned = thread::Builder::new()
            .name(format!("relay-{name}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                sink.pump(&owned, kind, reader, tap, tail.as_ref());
                if let Some(tail) = tail {
                    tail.lock().open -= 1;
                }
            });
        if let Err(e) = spawned {
            if let Some(tail) = closing {
                tail.lock().open -= 1;
            }
            // Without a reader the child would block on a full pipe: better to say so loudly.
            // The tap went down with the closure, so its receiver is not left waiting.
            tracing::error!(service = %name, "cannot start output relay thread: {e}");
        }
    }

    fn pump<R: Read>(
        &self,
        name: &str,
        kind: StreamKind,
        reader: R,
        mut tap: Option<Tap>,
        tail: Option<&Tail>,
    ) {
        let mut reader = BufReader::with_capacity(8 * 1024, reader);
        let mut line = Vec::new();
        loop {
            match read_bounded_line(&mut reader, &mut line, self.max_line_bytes) {
                Ok(0) => return,
                Ok(_) => {
                    let lossy = String::from_utf8_lossy(&line);
                    // Scrubbed before anything sees it: the log, the tail kept for `status`
                    // and reports, a `jobs run` client.
                    let scrubbed = crate::redact::scrub(trim_line_end(&lossy));
                    let text = scrubbed.as_ref();
                    self.write_record(name, kind, text);
                    if let Some(tail) = tail {
                        tail.push(text);
                    }
                    if let Some(sender) = &tap {
                        let line = OutputLine {
                            stream: kind,
                            text: text.to_owned(),
                        };
                        // This is a plain thread, never a runtime one, so blocking is allowed.
                        if sender.blocking_send(line).is_err() {
                            tap = None;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Writes one record. A failed write to our own stdout/stderr has nowhere to be reported.
    pub fn emit(&self, name: &str, kind: StreamKind, line: &[u8]) {
        let lossy = String::from_utf8_lossy(line);
        self.write_record(name, kind, &crate::redact::scrub(trim_line_end(&lossy)));
    }

    fn write_record(&self, name: &str, kind: StreamKind, text: &str) {
        let record = match self.format {
            LogFormat::Text => format!("[{name}] {text}\n"),
            LogFormat::Json => {
                let stream = match kind {
                    StreamKind::Stdout => "stdout",
                    StreamKind::Stderr => "stderr",
                };
                let value = serde_json::json!({
                    "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                    "service": name,
                    "stream": stream,
                    "message": text,
                });
                format!("{value}\n")
            }
        };
        let _ = match kind {
            StreamKind::Stdout => io::stdout().lock().write_all(record.as_bytes()),
            StreamKind::Stderr => io::stderr().lock().write_all(record.as_bytes()),
        };
    }
}

fn trim_line_end(text: &str) -> &str {
    text.trim_end_matches(['\n', '\r'])
}

/// Reads up to and including the next `\n`, or `max` bytes, whichever comes first, into `buf`
/// (cleared first). Returns the byte count; 0 at EOF.
fn read_bounded_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    buf.clear();
    while buf.len() < max {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let room = max - buf.len();
        let window = &available[..available.len().min(room)];
        let (take, done) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        buf.extend_from_slice(&window[..take]);
        reader.consume(take);
        if done {
            break;
        }
    }
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while read_bounded_line(&mut reader, &mut buf, max).unwrap() > 0 {
            out.push(String::from_utf8(buf.clone()).unwrap());
        }
        out
    }

    #[test]
    fn splits_on_newlines_and_keeps_a_final_partial_line() {
        assert_eq!(lines(b"a\nbc\nd", 100), vec!["a\n", "bc\n", "d"]);
    }

    #[test]
    fn a_tail_keeps_the_last_lines() {
        let tail = Tail::new(2);
        let sink = LogSink {
            format: LogFormat::Text,
            max_line_bytes: 100,
        };
        sink.relay_keeping(
            "t",
            StreamKind::Stderr,
            &b"one\ntwo\r\nthree"[..],
            Some(tail.clone()),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tail.is_closed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never ended"
            );
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(tail.lines(), vec!["two", "three"]);
    }

    #[test]
    fn relayed_lines_are_scrubbed_before_anyone_sees_them() {
        let sink = LogSink {
            format: LogFormat::Text,
            max_line_bytes: 1000,
        };
        let (tap, mut lines) = mpsc::channel(4);
        let tail = Tail::new(4);
        sink.relay_observed(
            "scrub-test",
            StreamKind::Stdout,
            &b"PGPASSWORD=pw1\nconnecting to postgresql://app:pw2@db/app\nplain\n"[..],
            Some(tap),
            Some(tail.clone()),
        );
        let mut got = Vec::new();
        while let Some(line) = lines.blocking_recv() {
            got.push(line.text);
        }
        let expected = vec![
            "PGPASSWORD=<redacted>",
            "connecting to postgresql://app:…@db/app",
            "plain",
        ];
        assert_eq!(got, expected);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tail.is_closed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never ended"
            );
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(tail.lines(), expected);
    }

    #[test]
    fn splits_overlong_lines_at_the_bound() {
        assert_eq!(lines(b"abcdefg\nh\n", 3), vec!["abc", "def", "g\n", "h\n"]);
    }

    #[test]
    fn a_tap_gets_each_line_as_logged_and_closes_at_eof() {
        let sink = LogSink {
            format: LogFormat::Text,
            max_line_bytes: 8,
        };
        let (tap, mut lines) = mpsc::channel(1);
        sink.relay_tapped(
            "tap-test",
            StreamKind::Stderr,
            &b"one\r\ntoolong-line\nlast"[..],
            Some(tap),
        );
        let mut got = Vec::new();
        while let Some(line) = lines.blocking_recv() {
            assert_eq!(line.stream, StreamKind::Stderr);
            got.push(line.text);
        }
        assert_eq!(got, vec!["one", "toolong-", "line", "last"]);
    }
}
