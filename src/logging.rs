//! pgward's own log records (tracing), to stderr as text or JSON lines, each scrubbed of what
//! looks like a secret ([`crate::redact`]) on its way out, whatever wrote it.
//!
//! A leaf: owns [`LogFormat`] (config's `log.format` is this type), which the output relay
//! of `process` uses too.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use serde::Serialize;

/// How log records are written: `text` or `json` (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Set by `pgward run` for the processes it starts: the log format its clients should use.
pub const FORMAT_ENV: &str = "PGWARD_LOG_FORMAT";

/// Installs the global subscriber. `PGWARD_LOG` (a tracing filter) overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("PGWARD_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Scrubbing { format })
        // Colours only for a human at a terminal; container log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    // A second init (tests calling in twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Makes the writer of each record: stderr, behind [`ScrubbedRecord`].
struct Scrubbing {
    format: LogFormat,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Scrubbing {
    type Writer = ScrubbedRecord;

    fn make_writer(&'a self) -> ScrubbedRecord {
        ScrubbedRecord {
            format: self.format,
        }
    }
}

/// Writes whole records to stderr, scrubbed. The formatter hands over each record in one
/// `write_all` of the whole text, which this takes in one `write`.
struct ScrubbedRecord {
    format: LogFormat,
}

impl Write for ScrubbedRecord {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let record = scrub_record(self.format, &String::from_utf8_lossy(buf));
        std::io::stderr().lock().write_all(record.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One formatted record (or several lines of them), scrubbed. A JSON line is scrubbed value by
/// value, so that it stays JSON; a line that does not parse is scrubbed as text.
fn scrub_record(format: LogFormat, record: &str) -> String {
    match format {
        LogFormat::Text => crate::redact::scrub(record).into_owned(),
        LogFormat::Json => record
            .split_inclusive('\n')
            .map(|line| {
                // Nothing secret-shaped in the escaped text: nothing in the values either.
                if let Cow::Borrowed(_) = crate::redact::scrub(line) {
                    return line.to_owned();
                }
                let body = line.trim_end_matches('\n');
                match serde_json::from_str::<serde_json::Value>(body) {
                    Ok(mut value) => {
                        if !crate::redact::scrub_json(&mut value) {
                            return line.to_owned();
                        }
                        let mut out = value.to_string();
                        out.push_str(&line[body.len()..]);
                        out
                    }
                    Err(_) => crate::redact::scrub(line).into_owned(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_scrubbed_and_json_stays_json() {
        assert_eq!(
            scrub_record(
                LogFormat::Text,
                "2025-01-01T00:00:00Z ERROR failed to connect: host=h password=pw1 port=5\n"
            ),
            "2025-01-01T00:00:00Z ERROR failed to connect: host=h password=<redacted> port=5\n"
        );
        let json =
            r#"{"level":"ERROR","message":"dsn postgresql://u:pw2@h/d and PGPASSWORD=\"a b\""}"#;
        assert_eq!(
            scrub_record(LogFormat::Json, &format!("{json}\n")),
            "{\"level\":\"ERROR\",\"message\":\"dsn postgresql://u:…@h/d and \
             PGPASSWORD=<redacted>\"}\n"
        );
    }
}
