//! The validated, typed configuration every other module reads.
//!
//! Values here are final: durations parsed, environment interpolated, secrets read from their
//! files, defaults applied. Nothing outside `config/` ever sees the raw YAML model.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The file this came from; `None` when built-in defaults were used.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub postgres: PostgresConfig,
    pub services: Vec<ServiceConfig>,
    pub jobs: Vec<JobConfig>,
    pub log: LogConfig,
    pub control: ControlConfig,
}

/// `postgres:` — the supervised server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostgresConfig {
    /// Data directory. Default: `$PGDATA`, else `/var/lib/postgresql/data`.
    pub data_dir: PathBuf,
    /// TCP port. Default 5432.
    pub port: u16,
    /// Unix socket directory. Default `/var/run/postgresql`.
    pub socket_dir: PathBuf,
    /// OS user postgres runs as when pgward is root. Default `postgres`.
    pub user: String,
    /// Directory holding `postgres`, `initdb`, `pg_ctl`. Default: found on `PATH`, else the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<PathBuf>,
    /// Server parameters passed as `-c name=value`, in name order. Scalars are stringified.
    pub parameters: BTreeMap<String, String>,
    pub init: InitConfig,
    pub stop: StopConfig,
    pub restart: RestartConfig,
}

/// `postgres.init:` — first-start bootstrap, same inputs as the official image's entrypoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitConfig {
    /// Superuser name. Default `${POSTGRES_USER:-postgres}`.
    pub superuser: String,
    /// Superuser password. Default `$POSTGRES_PASSWORD` or the file named by
    /// `$POSTGRES_PASSWORD_FILE` (both set is an error, as in the image).
    pub password: Option<Secret>,
    /// Database created after initdb. Default `${POSTGRES_DB:-<superuser>}`.
    pub database: String,
    /// Extra initdb arguments. Default: `$POSTGRES_INITDB_ARGS` split on whitespace.
    pub initdb_args: Vec<String>,
    /// Separate WAL directory (`initdb --waldir`). Default `$POSTGRES_INITDB_WALDIR`.
    pub waldir: Option<PathBuf>,
    /// Auth method for the `host all all all` pg_hba line. Default `$POSTGRES_HOST_AUTH_METHOD`,
    /// else the server's `password_encryption` (scram-sha-256).
    pub host_auth_method: Option<String>,
    /// Scripts run once against a socket-only server after initdb. Default
    /// `/docker-entrypoint-initdb.d`.
    pub scripts_dir: PathBuf,
}

/// `postgres.stop:` — how postgres is stopped on SIGTERM/SIGINT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopConfig {
    /// `smart` or `fast`. Default `fast`.
    pub mode: StopMode,
    /// Grace period for `mode` before escalating to immediate. Default 60s.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Grace period for immediate shutdown before SIGKILL. Default 10s.
    #[serde(serialize_with = "ser_duration")]
    pub kill_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    Smart,
    Fast,
}

/// Restart policy knobs shared by postgres and services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartConfig {
    /// A run that lasts this long (for postgres: that became ready) resets the failure count.
    /// Default 10s (postgres), 1s (services).
    #[serde(serialize_with = "ser_duration")]
    pub start_secs: Duration,
    /// Consecutive failed starts tolerated before giving up for good. Default 5 (postgres), 3
    /// (services).
    pub start_retries: u32,
    /// First restart delay, doubled after each consecutive failure. Default 1s.
    #[serde(serialize_with = "ser_duration")]
    pub backoff: Duration,
    /// Upper bound of the restart delay. Default 30s.
    #[serde(serialize_with = "ser_duration")]
    pub max_backoff: Duration,
}

/// `services[]:` — a supervisord-style extra program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceConfig {
    /// Unique name (also the log prefix).
    pub name: String,
    /// argv; the first word is looked up on `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// OS user to run as (only when pgward is root). Default: pgward's own user.
    pub user: Option<String>,
    /// Working directory. Default: pgward's own.
    pub working_dir: Option<PathBuf>,
    /// `always`, `on-failure` or `never`. Default `on-failure`.
    pub restart: RestartMode,
    #[serde(flatten)]
    pub restart_policy: RestartConfig,
    /// Signal sent to stop it. Default SIGTERM.
    pub stop_signal: StopSignal,
    /// Grace period after `stop_signal` before SIGKILL. Default 10s.
    #[serde(serialize_with = "ser_duration")]
    pub stop_timeout: Duration,
    /// What must be up first: `postgres` (ready) or other service names (started).
    pub after: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    Always,
    OnFailure,
    Never,
}

/// A signal name accepted in config (`TERM`, `SIGTERM`, `INT`, `QUIT`, `HUP`, `KILL`, `USR1`,
/// `USR2`), kept as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(pub nix::sys::signal::Signal);

impl Serialize for StopSignal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// `jobs[]:` — cron-style jobs. Validated here; run by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobConfig {
    pub name: String,
    /// Five-field cron expression or `@hourly`/`@daily`/`@midnight`/`@weekly`/`@monthly`/
    /// `@yearly`/`@annually`, as written; turn it into a schedule with
    /// [`parse_schedule`](super::parse_schedule).
    pub schedule: String,
    /// Built-in action (`backup`, `expire`, `verify`, `check`); exclusive with `command`.
    pub action: Option<String>,
    /// argv of a command to run; exclusive with `action`.
    pub command: Option<Vec<String>>,
    /// IANA zone name the schedule is evaluated in. Default UTC.
    pub timezone: String,
    /// Kill the job after this long. Default: none.
    #[serde(serialize_with = "ser_opt_duration")]
    pub timeout: Option<Duration>,
}

/// `log:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// tracing filter directive (`info`, `debug`, `pgward=debug`...). Default `info`.
    pub level: String,
    /// Longest child output line relayed as one record; longer lines are split. Default 64KiB.
    pub max_line_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `control:` — the daemon's unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlConfig {
    /// Default `<postgres.socket_dir>/pgward.sock`.
    pub socket: PathBuf,
}

/// A secret value: never printed by `Debug`, serialized as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The clear text, for the one place that must hand it on (initdb's pwfile, a client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
