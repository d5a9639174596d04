//! pgward's own log records (tracing), to stderr as text or JSON lines.
//!
//! A leaf: owns [`LogFormat`] (config's `log.format` is this type), which the output relay
//! of `process` uses too.

use std::io::IsTerminal;

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
        .with_writer(std::io::stderr)
        // Colours only for a human at a terminal; container log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    // A second init (tests calling in twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
