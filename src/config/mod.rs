//! Configuration: one YAML file → validated [`Config`].
//!
//! Owns parsing, `${VAR}` / `${VAR:-default}` interpolation, `*_file` secrets, validation with
//! `file:line:column` errors, and redaction for `config print`. Knows nothing of processes.

mod model;

pub use model::*;

use std::path::{Path, PathBuf};

/// Where the config file is looked for when neither `--config` nor `PGWARD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/pgward/pgward.yaml";

/// One problem found in a config file, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `<defaults>` for built-in defaults.
    pub file: String,
    /// 1-based; 0 when the problem has no position (e.g. a missing required key).
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Dotted key path, e.g. `services[1].stop_timeout`.
    pub key: String,
    /// One-line reason, lowercase.
    pub reason: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{}:{}: {}: {}", p.file, p.line, p.column, p.key, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads and validates the config at `path`, or the built-in defaults when `path` is `None`.
/// `env` looks up environment variables (interpolation, `$PGDATA`, `POSTGRES_*` defaults).
pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let _ = (path, env);
    todo!("config loader")
}

/// The effective config as YAML with every secret replaced by `<redacted>`.
pub fn redacted_yaml(config: &Config) -> String {
    let _ = config;
    todo!("redaction")
}
