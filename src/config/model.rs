//! The validated, typed configuration every other module reads.
//!
//! Values here are final: durations parsed, environment interpolated, secrets read from their
//! files, defaults applied. Nothing outside `config/` ever sees the raw YAML model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

// The sections whose typed form belongs to the leaf that uses it, under the names config has
// always given them.
pub use crate::logging::LogFormat;
pub use crate::postgres::bootstrap::{InitConfig, RestoreAs};
pub use crate::postgres::standby::StandbyConfig;
pub use crate::repo::{
    AzureConfig, Codec, GcsConfig, S3Config, StorageConfig, StorageRetryConfig, StorageUrl,
};
pub use crate::secret::Secret;

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The file this came from; `None` when built-in defaults were used.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The keys whose secret is written in the file itself, not read from a `_file` or from
    /// the environment (`${VAR}`): `config check` warns when others can read the file.
    #[serde(skip)]
    pub literal_secrets: Vec<String>,
    pub postgres: PostgresConfig,
    pub services: Vec<ServiceConfig>,
    pub jobs: Vec<JobConfig>,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub storage: StorageConfig,
    pub wal: WalConfig,
    pub backup: BackupConfig,
    pub metrics: MetricsConfig,
}

impl Config {
    /// The clear text of every secret the config holds (whether written in the file, read
    /// from a `*_file`, or taken from the environment), and the storage access key id that
    /// goes with the secret key: a child's environment must not hold any of them (see
    /// `Site::child_env`). Empty values are left out. Keep in step with the [`Secret`]
    /// fields.
    pub fn secret_values(&self) -> Vec<&str> {
        let storage = &self.storage;
        let mut values: Vec<&str> = [
            self.postgres.init.password.as_ref(),
            storage.s3.secret_access_key.as_ref(),
            storage.s3.session_token.as_ref(),
            storage.gcs.service_account_key.as_ref(),
            storage.azure.access_key.as_ref(),
            self.metrics.password.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect();
        values.extend(storage.s3.access_key_id.as_deref());
        for job in &self.jobs {
            for report in [&job.on_failure, &job.on_success].into_iter().flatten() {
                if let Some(webhook) = &report.webhook {
                    values.extend(webhook.headers.values().map(Secret::expose));
                }
            }
        }
        values.retain(|v| !v.is_empty());
        values
    }
}

/// `metrics:` — the HTTP endpoints: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// Default true.
    pub enabled: bool,
    /// Address and port. Default `0.0.0.0:9187` (postgres_exporter's port).
    pub listen: std::net::SocketAddr,
    /// Basic auth for every endpoint when set (with `password`/`password_file`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS for every endpoint when set: PEM certificate chain and private key.
    pub tls: Option<TlsConfig>,
    /// `/readyz` answers 200 while postgres recovers (a standby). Default false.
    pub ready_in_recovery: bool,
    /// Custom queries in postgres_exporter's `queries.yaml` format. Default: none.
    pub queries_file: Option<PathBuf>,
    /// A whole scrape's deadline. Default 10s.
    #[serde(serialize_with = "ser_duration")]
    pub scrape_timeout: Duration,
    /// `statement_timeout` of every metrics query. Default 5s.
    #[serde(serialize_with = "ser_duration")]
    pub statement_timeout: Duration,
    /// `lock_timeout` of every metrics query. Default 1s.
    #[serde(serialize_with = "ser_duration")]
    pub lock_timeout: Duration,
}

/// `metrics.tls:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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
    /// Replication access to this cluster (`pg_hba.conf` lines written at bootstrap).
    pub replication: ReplicationConfig,
    /// A hot standby of a primary (with `init.from_backup`); `None`: a primary.
    pub standby: Option<StandbyConfig>,
}

/// `postgres.replication:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReplicationConfig {
    /// Networks standbys may connect from for replication, as `address/prefix`: each gets a
    /// `host replication all <network> <method>` line when the data directory is bootstrapped.
    pub allow: Vec<String>,
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
    /// Variables of pgward's environment the service gets although they are secret (see
    /// `Site::child_env`). Default: none.
    pub inherit_env: Vec<String>,
    /// OS user to run as (only when pgward is root); it exists (checked when the config was
    /// read). Default: pgward's own user.
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

/// `jobs[]:` — cron-style jobs run by the scheduler. The policies mean what yacron's do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobConfig {
    pub name: String,
    /// Cron expression (five fields, or six with seconds first) or `@hourly`/`@daily`/
    /// `@midnight`/`@weekly`/`@monthly`/`@yearly`/`@annually`/`@reboot`, as written; turn it
    /// into a schedule with [`parse_schedule`](super::parse_schedule).
    pub schedule: String,
    /// IANA zone name the schedule is evaluated in. Default UTC.
    pub timezone: String,
    /// What the job does: `action:` (with its `options:`) or `command:`.
    pub task: JobTask,
    /// Added to the environment of a command (and of its report command).
    pub env: BTreeMap<String, String>,
    /// Variables of pgward's environment a command (and its report command) gets although
    /// they are secret (see `Site::child_env`). Default: none.
    pub inherit_env: Vec<String>,
    /// OS user a command (and its report command) runs as when pgward is root; it existed
    /// when the config was read. Default: `postgres.user` (root only when written).
    pub user: Option<String>,
    /// Working directory of a command. Default: the user's home, else `/`.
    pub working_dir: Option<PathBuf>,
    /// A run due while the previous one still runs: `allow` both, `forbid` the new one
    /// (skipped), `replace` the old one (stopped). Default `forbid`.
    pub concurrency: ConcurrencyPolicy,
    /// A run still going after this long is stopped (SIGTERM to its process group, then
    /// SIGKILL after `kill_timeout`) and failed. Default: none.
    #[serde(serialize_with = "ser_opt_duration")]
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL. Default 30s.
    #[serde(serialize_with = "ser_duration")]
    pub kill_timeout: Duration,
    pub retries: RetryConfig,
    pub fails_when: FailsWhen,
    /// `false` keeps the job listed but never run on schedule (`jobs run` still runs it).
    /// Default true.
    pub enabled: bool,
    /// A run missed while pgward was not running runs once at start. Default false.
    pub catch_up: bool,
    /// Runs wait until postgres accepts connections. Default true (built-in actions other
    /// than `check` cannot work without it).
    pub wait_for_postgres: bool,
    /// Lines of a command's output kept for `status` and reports. Default 50.
    pub output_lines: u32,
    /// Reported after a run that failed (retries exhausted).
    pub on_failure: Option<ReportConfig>,
    /// Reported after a run that succeeded.
    pub on_success: Option<ReportConfig>,
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum JobTask {
    /// `command:` — a program (argv) or a `/bin/sh -c` string.
    Command { command: CommandLine },
    /// `action: backup`, `options: {type: full|incremental, at_start: never|if_none}`
    /// (default full, never).
    Backup {
        incremental: bool,
        /// Also run once as soon as postgres is ready after pgward starts, when the repository
        /// holds no complete backup of this cluster's lineage.
        at_start_if_none: bool,
    },
    /// `action: expire`: apply `backup.retention`.
    Expire,
    /// `action: verify`, `options: {backup: latest|<id>}`.
    Verify { backup: String },
    /// `action: check`: `pgward check`, failing when any item fails.
    Check,
    /// `action: sql`, `options: {sql, database, statement_timeout}`.
    Sql {
        sql: String,
        /// Default `postgres`.
        database: String,
        /// Default: the job's `timeout`, else 1h.
        #[serde(serialize_with = "ser_duration")]
        statement_timeout: Duration,
    },
    /// `action: restore-test`.
    RestoreTest(RestoreTestConfig),
}

impl JobTask {
    /// Whether the job may also run at start, as the action decides (`at_start: if_none`).
    pub fn runs_at_start(&self) -> bool {
        matches!(
            self,
            JobTask::Backup {
                at_start_if_none: true,
                ..
            }
        )
    }

    /// The action's name, or `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            JobTask::Command { .. } => "command",
            JobTask::Backup { .. } => "backup",
            JobTask::Expire => "expire",
            JobTask::Verify { .. } => "verify",
            JobTask::Check => "check",
            JobTask::Sql { .. } => "sql",
            JobTask::RestoreTest(_) => "restore-test",
        }
    }
}

/// `options:` of `action: restore-test`: restore a backup into a scratch directory, start a
/// throwaway server on it, recover, run `sql`, clean up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreTestConfig {
    /// `latest` or a backup id. Default `latest`.
    pub backup: String,
    /// `consistent` (recover to the backup's end) or `latest` (replay all archived WAL).
    /// Default `consistent`.
    pub target: RestoreTestTarget,
    /// Must return one row whose first column is true. Default: none (reaching consistency
    /// and accepting a connection is the test).
    pub sql: Option<String>,
    /// Database `sql` runs in. Default `postgres`.
    pub database: String,
    /// Where the scratch data directory is made (and removed). Default: beside
    /// `postgres.data_dir`, `<parent>/pgward-restore-test`.
    pub scratch_dir: Option<PathBuf>,
}

/// How far a restore test recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreTestTarget {
    Consistent,
    Latest,
}

/// `command:` as written: a list is the argv, a string runs under `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CommandLine {
    Argv(Vec<String>),
    Shell(String),
}

/// `concurrency:` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    Allow,
    Forbid,
    Replace,
}

/// `retries:` — a failed run is tried again after `initial_delay`, each delay `multiplier`
/// times the previous, at most `max_delay`, up to `max` more times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryConfig {
    /// Default 0: no retry.
    pub max: u32,
    /// Default 30s.
    #[serde(serialize_with = "ser_duration")]
    pub initial_delay: Duration,
    /// Default 2.
    pub multiplier: Multiplier,
    /// Default 10m.
    #[serde(serialize_with = "ser_duration")]
    pub max_delay: Duration,
}

/// A backoff multiplier: finite, at least 1 (checked when read), so equality is total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Multiplier(pub f64);

impl Eq for Multiplier {}

/// `fails_when:` — what makes a run a failure (any that is set and true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailsWhen {
    /// A non-zero exit status (or death by a signal, or a timeout). Default true.
    pub nonzero_exit: bool,
    /// Anything written to stdout. Default false.
    pub produces_stdout: bool,
    /// Anything written to stderr. Default false (yacron's default is true; PostgreSQL's
    /// tools print notices there).
    pub produces_stderr: bool,
    /// Every run. Default false.
    pub always: bool,
}

/// `on_failure:` / `on_success:` — how a run is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportConfig {
    /// Run with `PGWARD_JOB_*` variables describing the run.
    pub command: Option<CommandLine>,
    /// POSTed a JSON description of the run.
    pub webhook: Option<WebhookConfig>,
}

/// A webhook a report is POSTed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra request headers (e.g. `Authorization`); values are secrets, never printed.
    pub headers: BTreeMap<String, Secret>,
    /// Default 10s.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
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

/// `control:` — the daemon's unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlConfig {
    /// Default `<postgres.socket_dir>/pgward.sock`.
    pub socket: PathBuf,
}

/// `wal:` — WAL archiving and fetching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalConfig {
    /// Archive WAL to the repository: pgward sets postgres's `archive_mode` and
    /// `archive_command`. Default true.
    pub archive: bool,
    /// Becomes postgres's `archive_timeout`: a partly filled segment is switched and archived
    /// after this long. `0s` disables it. Default 60s.
    #[serde(serialize_with = "ser_duration")]
    pub archive_timeout: Duration,
    /// Segments uploaded in parallel. Default 4.
    pub push_concurrency: u32,
    /// Compress and store the segment being written as its pages complete, so that archiving
    /// it costs only its last pages. Default true.
    pub stage: bool,
    /// Segments fetched ahead of the one postgres asks for during recovery; 0 disables
    /// prefetching. Default 8.
    pub prefetch: u32,
    /// `pgward check` fails when WAL waits longer than this to be archived. Default: the
    /// server's `checkpoint_timeout` plus 2 minutes.
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_age: Option<Duration>,
}

/// `backup:` — base backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupConfig {
    /// Files read, compressed and uploaded (or downloaded, at restore; checked, at verify) at
    /// once; in a backup, threads compressing at once. Default 2.
    pub concurrency: u32,
    /// Objects a backup uploads at once, of which `concurrency` compress at a time (the
    /// others wait for the network). Default 8.
    pub transfers: u32,
    /// How long a backup waits for its WAL (every segment from its start to its stop) to
    /// reach the archive. Default 5m.
    #[serde(serialize_with = "ser_duration")]
    pub wal_wait: Duration,
    /// Where the scheduler's backup jobs run (`pgward backup` by hand runs on either).
    /// Default `primary`.
    pub on: BackupOn,
    /// The backup lease (one backup of a repository at a time) expires this long after its
    /// holder's last renewal (every third of it); a crashed backup's lease is taken over, and
    /// its objects deleted by `expire`, only after that. Default 5m.
    #[serde(serialize_with = "ser_duration")]
    pub lease_ttl: Duration,
    /// Files larger than this are stored (and restored) in slices of this size, in
    /// parallel. A multiple of 8 KiB, at least 1 MiB. Default 128 MiB.
    pub slice_size: u64,
    /// Bytes an incremental backup's map of changed blocks may hold (in pgward's memory);
    /// past it, the relations with the most changed blocks are copied whole, and the backup
    /// says so. Default 128 MiB (about 8 million changed blocks, 64 GiB of changed pages).
    pub incremental_memory: u64,
    /// Files (and an incremental's changed blocks of a file) of at most `bundle_file_max`
    /// bytes are packed into bundle objects of up to this many bytes: a few requests for
    /// thousands of small files. 0: one object per file. Default 64 MiB.
    pub bundle_size: u64,
    /// Largest file packed into a bundle. Default 1 MiB.
    pub bundle_file_max: u64,
    /// `pgward check` fails when the newest complete backup is older. Default: no limit.
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_age: Option<Duration>,
    /// `pgward check` fails with fewer complete full backups. Default 1.
    pub min_redundancy: u32,
    pub retention: RetentionConfig,
}

/// `backup.on`: the role a server must have for the scheduler's backup jobs to run there; on
/// the other, a job skips with a log line instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupOn {
    /// Not on a standby (a restore still recovering is waited for, until it is promoted).
    #[default]
    Primary,
    /// Only on a hot standby.
    Standby,
    /// On either.
    Any,
}

impl BackupOn {
    /// The name the config gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupOn::Primary => "primary",
            BackupOn::Standby => "standby",
            BackupOn::Any => "any",
        }
    }
}

/// `backup.retention:` — what `pgward expire` keeps. A backup is expired only when no rule
/// keeps it; the newest full backup and backups marked `--keep` are always kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionConfig {
    /// Keep the newest `full` full backups, each with the incremental backups built on it.
    /// At least 1. Default 2.
    pub full: u32,
    /// Also keep every backup needed to restore to any point of the last `max_age`. Default:
    /// none (no backup is kept for its age).
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_age: Option<Duration>,
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
