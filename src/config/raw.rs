//! The config file's shape as serde sees it, before interpolation, defaults and checks.
//!
//! Every leaf is a [`Text`] (the scalar exactly as written) and every key is optional, so that
//! `validate` can tell "absent" from "given", interpolate `${VAR}` in any scalar (numbers and
//! durations included) and report every bad value, not just the first one serde meets. Serde
//! only rejects what no later step could fix: unknown keys and wrong shapes (a string where a
//! list belongs). No `#[serde(flatten)]` or untagged enums here: they make serde_yaml_ng lose
//! the positions its errors carry.
//!
//! A secret field `x` is declared as a pair, `x: Option<Text>` and `x_file: Option<Text>`, and
//! resolved in `validate` with one `Cx::secret` call.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// One YAML scalar as written (`on`, `1.10`, `0x10` stay text), not yet interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
        }
        // serde_yaml_ng hands any scalar's source text to `visit_str` here, which is what keeps
        // `max_connections: 50` and `log_connections: on` exactly as the user wrote them.
        d.deserialize_str(V)
    }
}

// The JSON Schema of the three hand-written shapes below says what their `Deserialize` accepts.
// `config schema` is generated from this module, so the schema follows the model.

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A scalar: a string (where `${VAR}` and `${VAR:-default}` are replaced), a number or a boolean.",
            "type": ["string", "number", "boolean"]
        })
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "OneOrMany".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<Text>();
        json_schema!({
            "anyOf": [one, {"type": "array", "items": one}, {"type": "null"}]
        })
    }
}

impl JsonSchema for RawCommandLine {
    fn schema_name() -> Cow<'static, str> {
        "CommandLine".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let arg = generator.subschema_for::<Text>();
        json_schema!({
            "description": "A list is a program's argv; a string is run by `/bin/sh -c`.",
            "anyOf": [{"type": "string"}, {"type": "array", "items": arg}]
        })
    }
}

/// `after: postgres` or `after: [postgres, other]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OneOrMany(pub(crate) Vec<Text>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![Text(v.to_owned())]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![Text(v.to_string())]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![Text(v.to_string())]))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<Text>()? {
                    names.push(name);
                }
                Ok(OneOrMany(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `key: ~` like an absent key: a section left empty (or nulled) is all defaults.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// pgward's configuration: one YAML file. Every string may use `${VAR}` and `${VAR:-default}`; a secret key `x` may be given as `x_file: PATH`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    /// The PostgreSQL server pgward starts and supervises.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawPostgres>")]
    pub postgres: RawPostgres,
    /// Extra programs supervised beside postgres (supervisord's `[program:x]`). Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<Vec<RawService>>")]
    pub services: Vec<RawService>,
    /// Jobs run on cron schedules: a built-in action or a command. Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<Vec<RawJob>>")]
    pub jobs: Vec<RawJob>,
    /// pgward's own log lines.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawLog>")]
    pub log: RawLog,
    /// The unix socket the daemon answers CLI clients on.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawControl>")]
    pub control: RawControl,
    /// The repository of archived WAL and backups.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawStorage>")]
    pub storage: RawStorage,
    /// WAL archiving and fetching.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawWal>")]
    pub wal: RawWal,
    /// Base backups, their checks and retention.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawBackup>")]
    pub backup: RawBackup,
    /// The HTTP endpoints for Prometheus and probes.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawMetrics>")]
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    /// Serve the endpoints. Default: `true`.
    pub enabled: Option<Text>,
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/status`. Default: `0.0.0.0:9187`.
    pub listen: Option<Text>,
    /// Basic auth user on every endpoint, with `password`. Default: none.
    pub username: Option<Text>,
    /// Basic auth password (secret). Default: none.
    pub password: Option<Text>,
    /// File holding `password`.
    pub password_file: Option<Text>,
    /// Serve every endpoint over TLS. Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawTls>")]
    pub tls: RawTls,
    /// `/readyz` answers 200 while postgres recovers (a standby). Default: `false`.
    pub ready_in_recovery: Option<Text>,
    /// Custom queries in postgres_exporter's `queries.yaml` format. Default: none.
    pub queries_file: Option<Text>,
    /// Deadline of a whole scrape. Default: `10s`.
    pub scrape_timeout: Option<Text>,
    /// `statement_timeout` of every metrics query. Default: `5s`.
    pub statement_timeout: Option<Text>,
    /// `lock_timeout` of every metrics query. Default: `1s`.
    pub lock_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    /// Certificate chain, PEM.
    pub cert_file: Option<Text>,
    /// Private key, PEM.
    pub key_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPostgres {
    /// Data directory, bootstrapped with `init` when empty. Default: `$PGDATA`, else `/var/lib/postgresql/data`.
    pub data_dir: Option<Text>,
    /// TCP port. Default: `5432`.
    pub port: Option<Text>,
    /// Directory of the unix socket. Default: `/var/run/postgresql`.
    pub socket_dir: Option<Text>,
    /// OS user the server runs as when pgward runs as root. Default: `postgres`.
    pub user: Option<Text>,
    /// Where `postgres`, `initdb` and `pg_ctl` are. Default: from `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<Text>,
    /// Server parameters, each passed as `-c name=value`. Default: `{}`.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<BTreeMap<String, Text>>")]
    pub parameters: BTreeMap<String, Text>,
    /// First-start bootstrap, as the official postgres image does it.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawInit>")]
    pub init: RawInit,
    /// How postgres is stopped on SIGTERM or SIGINT.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawStop>")]
    pub stop: RawStop,
    /// What happens when postgres exits on its own.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawRestart>")]
    pub restart: RawRestart,
    /// Replication access to this cluster, written into `pg_hba.conf` when the data directory is bootstrapped.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawReplication>")]
    pub replication: RawReplication,
    /// Make the cluster a hot standby of a primary, filled from the repository by `init.from_backup`: it streams from `primary_conninfo` and falls back to the archive. Default: none (a primary).
    pub standby: Option<RawStandby>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReplication {
    /// Networks (CIDRs, or single addresses) standbys may connect from for replication: a `host replication all <cidr> <init.host_auth_method>` line each, appended to `pg_hba.conf` at bootstrap. Default: none.
    pub allow: Option<Vec<Text>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStandby {
    /// libpq connection string to the primary, without a password, e.g. `host=db-0 port=5432 user=replicator`. Required.
    pub primary_conninfo: Option<Text>,
    /// The replication user's password (secret), kept in a password file in `socket_dir`, never in postgres's settings. Default: none.
    pub password: Option<Text>,
    /// File holding `password`.
    pub password_file: Option<Text>,
    /// Physical replication slot on the primary (`primary_slot_name`). Default: none.
    pub slot: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawInit {
    /// Superuser created by initdb. Default: `${POSTGRES_USER:-postgres}`.
    pub superuser: Option<Text>,
    /// Superuser password (secret). Default: `$POSTGRES_PASSWORD` or `$POSTGRES_PASSWORD_FILE`'s content.
    pub password: Option<Text>,
    /// File holding `password`.
    pub password_file: Option<Text>,
    /// Database created after initdb. Default: `$POSTGRES_DB`, else the superuser's name.
    pub database: Option<Text>,
    /// Extra initdb arguments. Default: `$POSTGRES_INITDB_ARGS` split on whitespace.
    pub initdb_args: Option<Vec<Text>>,
    /// Separate WAL directory (`initdb --waldir`). Default: `$POSTGRES_INITDB_WALDIR`, else none.
    pub waldir: Option<Text>,
    /// Method of the `host all all all` line of `pg_hba.conf`. Default: `$POSTGRES_HOST_AUTH_METHOD`, else `scram-sha-256`.
    pub host_auth_method: Option<Text>,
    /// `*.sh`, `*.sql`, `*.sql.gz` run once after initdb. Default: `/docker-entrypoint-initdb.d`.
    pub scripts_dir: Option<Text>,
    /// `latest` or a backup id: fill an empty data directory from this backup instead of initdb. Default: none.
    pub from_backup: Option<Text>,
    /// What a cluster made by `from_backup` is to the repository: `copy` never writes to it (no archiving, backup or expire into `storage.url`); `successor` replaces the original (disaster recovery) and continues its lineage there, once the original no longer archives. Default: `copy`.
    pub restore_as: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStop {
    /// `smart` or `fast`. Default: `fast`.
    pub mode: Option<Text>,
    /// Grace period of `mode` before an immediate shutdown. Default: `60s`.
    pub timeout: Option<Text>,
    /// Grace period of the immediate shutdown before SIGKILL. Default: `10s`.
    pub kill_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRestart {
    /// A run up this long after ready resets the failure count. Default: `10s`.
    pub start_secs: Option<Text>,
    /// Consecutive failed starts tolerated before pgward exits. Default: `5`.
    pub start_retries: Option<Text>,
    /// First restart delay, doubled after each failure. Default: `1s`.
    pub backoff: Option<Text>,
    /// Upper bound of the restart delay. Default: `30s`.
    pub max_backoff: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawService {
    /// Unique name; prefix of the service's log lines. Required.
    pub name: Option<Text>,
    /// argv; the first word is looked up on `PATH`. Required.
    pub command: Option<Vec<Text>>,
    /// Added to pgward's own environment (secrets removed). Default: `{}`.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<BTreeMap<String, Text>>")]
    pub env: BTreeMap<String, Text>,
    /// Secret variables of pgward's environment the service still gets (e.g. `AWS_SECRET_ACCESS_KEY`). Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<Vec<Text>>")]
    pub inherit_env: Vec<Text>,
    /// OS user to run as, when pgward runs as root; it must exist. Default: pgward's user.
    pub user: Option<Text>,
    /// Working directory. Default: pgward's.
    pub working_dir: Option<Text>,
    /// `always`, `on-failure` or `never`. Default: `on-failure`.
    pub restart: Option<Text>,
    // The restart policy knobs sit beside the other keys (no nested `restart:` map, which is
    // taken by the mode), as in supervisord's `[program:x]`.
    /// A run this long resets the failure count. Default: `1s`.
    pub start_secs: Option<Text>,
    /// Consecutive failed starts tolerated. Default: `3`.
    pub start_retries: Option<Text>,
    /// First restart delay, doubled after each failure. Default: `1s`.
    pub backoff: Option<Text>,
    /// Upper bound of the restart delay. Default: `30s`.
    pub max_backoff: Option<Text>,
    /// `TERM`, `INT`, `QUIT`, `HUP`, `KILL`, `USR1` or `USR2`. Default: `TERM`.
    pub stop_signal: Option<Text>,
    /// Grace period after `stop_signal` before SIGKILL. Default: `10s`.
    pub stop_timeout: Option<Text>,
    /// What must be up first: `postgres` and/or other services. Default: none.
    pub after: OneOrMany,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawJob {
    /// Unique name (`pgward jobs run <name>`). Required.
    pub name: Option<Text>,
    /// Cron expression (5 fields, or 6 with seconds first) or `@daily`, `@hourly`, `@reboot`... Required.
    pub schedule: Option<Text>,
    /// IANA time zone the schedule is read in. Default: `UTC`.
    pub timezone: Option<Text>,
    /// Built-in action: `backup`, `expire`, `verify`, `check`, `sql`, `restore-test`. Exactly one of `action` and `command`.
    pub action: Option<Text>,
    /// Options of the built-in action.
    pub options: Option<RawJobOptions>,
    /// A list is a program's argv; a string runs under `/bin/sh -c`.
    pub command: Option<RawCommandLine>,
    /// Added to a command's environment (secrets removed). Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<BTreeMap<String, Text>>")]
    pub env: BTreeMap<String, Text>,
    /// Secret variables of pgward's environment a command (and its report command) still gets. Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<Vec<Text>>")]
    pub inherit_env: Vec<Text>,
    /// OS user a command runs as when pgward is root (`root` only when written); it must exist. Default: `postgres.user`.
    pub user: Option<Text>,
    /// Working directory of a command. Default: the user's home.
    pub working_dir: Option<Text>,
    /// `allow`, `forbid` or `replace` a run due while one still runs. Default: `forbid`.
    pub concurrency: Option<Text>,
    /// A run still going after this long is stopped and failed. Default: none.
    pub timeout: Option<Text>,
    /// Between SIGTERM and SIGKILL of the job's process group. Default: `30s`.
    pub kill_timeout: Option<Text>,
    /// Retries of a failed run. Default: none.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawRetries>")]
    pub retries: RawRetries,
    /// What makes a run a failure.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawFailsWhen>")]
    pub fails_when: RawFailsWhen,
    /// `false`: never run, on schedule or by `pgward jobs run`. Default: `true`.
    pub enabled: Option<Text>,
    /// A run missed while pgward was down runs once at start. Default: `false`.
    pub catch_up: Option<Text>,
    /// Runs wait until postgres accepts connections. Default: `true`.
    pub wait_for_postgres: Option<Text>,
    /// Lines of output kept for `jobs list`, `status` and reports. Default: `50`.
    pub output_lines: Option<Text>,
    /// Report after a failed run (retries exhausted). Default: none.
    pub on_failure: Option<RawReport>,
    /// Report after a run that succeeded. Default: none.
    pub on_success: Option<RawReport>,
}

/// The options of a job's built-in action: the keys of every action together;
/// `pgward config check` refuses those the job's action does not take.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawJobOptions {
    /// `backup`: `full` or `incremental`. Default: `full`.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    /// `verify`, `restore-test`: `latest` or a backup id. Default: `latest`.
    pub backup: Option<Text>,
    /// `sql`: the statements (required); `restore-test`: a query that must return true.
    pub sql: Option<Text>,
    /// `sql`, `restore-test`: database to connect to. Default: `postgres`.
    pub database: Option<Text>,
    /// `sql`: statement timeout. Default: the job's `timeout`, else `1h`.
    pub statement_timeout: Option<Text>,
    /// `restore-test`: `consistent` or `latest`.
    pub target: Option<Text>,
    /// `restore-test`: where to restore. Default: beside the data directory.
    pub scratch_dir: Option<Text>,
    /// `backup`: `if_none` also runs it as soon as postgres is ready after pgward starts, when
    /// the repository holds no complete backup of this cluster's lineage (a fresh cluster's
    /// first backup); `never` waits for the schedule. Default: `never`.
    pub at_start: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetries {
    /// Retries of a failed run. Default: `0`.
    pub max: Option<Text>,
    /// Delay before the first retry. Default: `30s`.
    pub initial_delay: Option<Text>,
    /// Factor of each next delay, 1 to 100. Default: `2`.
    pub multiplier: Option<Text>,
    /// Upper bound of the delay. Default: `10m`.
    pub max_delay: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFailsWhen {
    /// A non-zero exit fails the run. Default: `true`.
    pub nonzero_exit: Option<Text>,
    /// Any stdout fails the run. Default: `false`.
    pub produces_stdout: Option<Text>,
    /// Any stderr fails the run. Default: `false`.
    pub produces_stderr: Option<Text>,
    /// Every run fails. Default: `false`.
    pub always: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReport {
    /// Command run with `PGWARD_JOB_*` variables: a list (argv) or a string (shell).
    pub command: Option<RawCommandLine>,
    /// A JSON POST.
    pub webhook: Option<RawWebhook>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWebhook {
    /// URL the report is POSTed to.
    pub url: Option<Text>,
    /// Extra request headers (secrets, never printed).
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<BTreeMap<String, Text>>")]
    pub headers: BTreeMap<String, Text>,
    /// Request timeout. Default: `10s`.
    pub timeout: Option<Text>,
}

/// `command: [prog, arg]` (argv) or `command: "a shell line"` (run by `/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawCommandLine {
    Argv(Vec<Text>),
    Shell(Text),
}

impl<'de> Deserialize<'de> for RawCommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommandLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of arguments or a shell command line")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommandLine, E> {
                Ok(RawCommandLine::Shell(Text(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommandLine, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<Text>()? {
                    args.push(arg);
                }
                Ok(RawCommandLine::Argv(args))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    /// `text` or `json`. Default: `text`.
    pub format: Option<Text>,
    /// `error`, `warn`, `info`, `debug`, `trace` or a filter. Default: `info`.
    pub level: Option<Text>,
    /// Longest child output line relayed as one record. Default: `64KiB`.
    pub max_line_bytes: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawControl {
    /// Socket path. Default: `<postgres.socket_dir>/pgward.sock`.
    pub socket: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStorage {
    /// `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`. Default: `file:///var/lib/pgward/repo`.
    pub url: Option<Text>,
    /// Settings for `s3://`.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawS3>")]
    pub s3: RawS3,
    /// Settings for `gs://`.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawGcs>")]
    pub gcs: RawGcs,
    /// Settings for `az://`.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawAzure>")]
    pub azure: RawAzure,
    /// `zstd`, `lz4` or `none`. Default: `zstd`.
    pub compression: Option<Text>,
    /// zstd level, 1 to 19. Default: `3`.
    pub compression_level: Option<Text>,
    /// Retries and timeouts of storage requests.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawStorageRetry>")]
    pub retry: RawStorageRetry,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawS3 {
    /// Endpoint of an S3-compatible server. Default: `$AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<Text>,
    /// Region. Default: `$AWS_REGION`, `$AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<Text>,
    /// Access key id. Default: `$AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<Text>,
    /// Secret access key (secret). Default: `$AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Text>,
    /// File holding `secret_access_key`.
    pub secret_access_key_file: Option<Text>,
    /// Session token (secret). Default: `$AWS_SESSION_TOKEN`.
    pub session_token: Option<Text>,
    /// File holding `session_token`.
    pub session_token_file: Option<Text>,
    /// Path-style requests. Default: `true` when `endpoint` is set.
    pub path_style: Option<Text>,
    /// Allow a plain `http://` endpoint. Default: `false`.
    pub allow_http: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGcs {
    /// Service account key, the JSON text (secret). Default: none.
    pub service_account_key: Option<Text>,
    /// File holding `service_account_key`.
    pub service_account_key_file: Option<Text>,
    /// Path of a service account key file. Default: none.
    pub service_account_path: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAzure {
    /// Storage account name. Default: `$AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<Text>,
    /// Shared access key (secret). Default: `$AZURE_STORAGE_ACCOUNT_KEY`.
    pub access_key: Option<Text>,
    /// File holding `access_key`.
    pub access_key_file: Option<Text>,
    /// Blob endpoint of an emulator or custom deployment. Default: Azure.
    pub endpoint: Option<Text>,
    /// Allow a plain `http://` endpoint. Default: `false`.
    pub allow_http: Option<Text>,
    /// Use the Azurite emulator's account, key and endpoint. Default: `false`.
    pub use_emulator: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStorageRetry {
    /// Retries of a failed request: at most `max_retries + 1` attempts each. Default: `5`.
    pub max_retries: Option<Text>,
    /// First delay between retries; each next one is random, up to twice the previous (jitter).
    /// Default: `100ms`.
    pub initial_backoff: Option<Text>,
    /// Upper bound of the delay. Default: `15s`.
    pub max_backoff: Option<Text>,
    /// Timeout of one request without object content (lists, metadata). Default: `60s`.
    pub timeout: Option<Text>,
    /// Longest an object transfer may go without progress. Default: `60s`.
    pub idle_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWal {
    /// Archive WAL: pgward sets `archive_mode` and `archive_command`. Default: `true`.
    pub archive: Option<Text>,
    /// postgres's `archive_timeout`. Default: `60s`.
    pub archive_timeout: Option<Text>,
    /// Segments uploaded in parallel, 1 to 64. Default: `4`.
    pub push_concurrency: Option<Text>,
    /// Store the segment being written as its pages complete. Default: `true`.
    pub stage: Option<Text>,
    /// Segments fetched ahead during recovery, 0 to 256. Default: `8`.
    pub prefetch: Option<Text>,
    /// `pgward check` fails when a WAL file waited longer to be archived. Default: `checkpoint_timeout` + 2m.
    pub max_age: Option<Text>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBackup {
    /// Files in flight in restore and verify, and threads compressing in a backup, 1 to 64. Default: `2`.
    pub concurrency: Option<Text>,
    /// Objects a backup uploads at once (a few more than `concurrency` keep a remote store busy while the cores compress), 1 to 64. Default: `8`.
    pub transfers: Option<Text>,
    /// How long a backup waits for its WAL (start to stop) to be archived. Default: `5m`.
    pub wal_wait: Option<Text>,
    /// Where the scheduler's backup jobs run: `primary`, `standby` or `any`; on the other role a job skips with a log line. Default: `primary`.
    pub on: Option<Text>,
    /// The backup lease expires this long after its last renewal, at least 1s. Default: `5m`.
    pub lease_ttl: Option<Text>,
    /// Files larger than this are stored in slices. Default: `128MiB`.
    pub slice_size: Option<Text>,
    /// Memory an incremental backup's map of changed blocks may use; past it, the relations with the most changed blocks are copied whole. Default: `128MiB`.
    pub incremental_memory: Option<Text>,
    /// Small files are packed into bundle objects of up to this size; `0` stores one object per file. Default: `64MiB`.
    pub bundle_size: Option<Text>,
    /// Largest file packed into a bundle, at most `bundle_size`. Default: `1MiB`.
    pub bundle_file_max: Option<Text>,
    /// `pgward check` fails when the newest backup is older. Default: none.
    pub max_age: Option<Text>,
    /// `pgward check` fails with fewer full backups. Default: `1`.
    pub min_redundancy: Option<Text>,
    /// What `pgward expire` keeps.
    #[serde(deserialize_with = "null_as_default")]
    #[schemars(with = "Option<RawRetention>")]
    pub retention: RawRetention,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetention {
    /// Keep the newest `full` full backups with their incrementals. Default: `2`.
    pub full: Option<Text>,
    /// Also keep what a restore to any point of this window needs. Default: none.
    pub max_age: Option<Text>,
}
