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

use std::collections::BTreeMap;
use std::fmt;

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
                f.write_str("a scalar")
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub postgres: RawPostgres,
    #[serde(deserialize_with = "null_as_default")]
    pub services: Vec<RawService>,
    #[serde(deserialize_with = "null_as_default")]
    pub jobs: Vec<RawJob>,
    #[serde(deserialize_with = "null_as_default")]
    pub log: RawLog,
    #[serde(deserialize_with = "null_as_default")]
    pub control: RawControl,
    #[serde(deserialize_with = "null_as_default")]
    pub storage: RawStorage,
    #[serde(deserialize_with = "null_as_default")]
    pub wal: RawWal,
    #[serde(deserialize_with = "null_as_default")]
    pub backup: RawBackup,
    #[serde(deserialize_with = "null_as_default")]
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub enabled: Option<Text>,
    pub listen: Option<Text>,
    pub username: Option<Text>,
    pub password: Option<Text>,
    pub password_file: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub tls: RawTls,
    pub ready_in_recovery: Option<Text>,
    pub queries_file: Option<Text>,
    pub scrape_timeout: Option<Text>,
    pub statement_timeout: Option<Text>,
    pub lock_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub cert_file: Option<Text>,
    pub key_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPostgres {
    pub data_dir: Option<Text>,
    pub port: Option<Text>,
    pub socket_dir: Option<Text>,
    pub user: Option<Text>,
    pub bin_dir: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub parameters: BTreeMap<String, Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub init: RawInit,
    #[serde(deserialize_with = "null_as_default")]
    pub stop: RawStop,
    #[serde(deserialize_with = "null_as_default")]
    pub restart: RawRestart,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawInit {
    pub superuser: Option<Text>,
    pub password: Option<Text>,
    pub password_file: Option<Text>,
    pub database: Option<Text>,
    pub initdb_args: Option<Vec<Text>>,
    pub waldir: Option<Text>,
    pub host_auth_method: Option<Text>,
    pub scripts_dir: Option<Text>,
    pub from_backup: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStop {
    pub mode: Option<Text>,
    pub timeout: Option<Text>,
    pub kill_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRestart {
    pub start_secs: Option<Text>,
    pub start_retries: Option<Text>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawService {
    pub name: Option<Text>,
    pub command: Option<Vec<Text>>,
    #[serde(deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, Text>,
    pub user: Option<Text>,
    pub working_dir: Option<Text>,
    pub restart: Option<Text>,
    /// The restart policy knobs sit beside the other keys (no nested `restart:` map, which is
    /// taken by the mode), as in supervisord's `[program:x]`.
    pub start_secs: Option<Text>,
    pub start_retries: Option<Text>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
    pub stop_signal: Option<Text>,
    pub stop_timeout: Option<Text>,
    pub after: OneOrMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawJob {
    pub name: Option<Text>,
    pub schedule: Option<Text>,
    pub timezone: Option<Text>,
    pub action: Option<Text>,
    pub options: Option<RawJobOptions>,
    pub command: Option<RawCommandLine>,
    #[serde(deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, Text>,
    pub user: Option<Text>,
    pub working_dir: Option<Text>,
    pub concurrency: Option<Text>,
    pub timeout: Option<Text>,
    pub kill_timeout: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub retries: RawRetries,
    #[serde(deserialize_with = "null_as_default")]
    pub fails_when: RawFailsWhen,
    pub enabled: Option<Text>,
    pub catch_up: Option<Text>,
    pub wait_for_postgres: Option<Text>,
    pub output_lines: Option<Text>,
    pub on_failure: Option<RawReport>,
    pub on_success: Option<RawReport>,
}

/// `options:` of a built-in action: the union of every action's keys; `validate` refuses
/// those the job's action does not take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawJobOptions {
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    pub backup: Option<Text>,
    pub sql: Option<Text>,
    pub database: Option<Text>,
    pub statement_timeout: Option<Text>,
    pub target: Option<Text>,
    pub scratch_dir: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetries {
    pub max: Option<Text>,
    pub initial_delay: Option<Text>,
    pub multiplier: Option<Text>,
    pub max_delay: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFailsWhen {
    pub nonzero_exit: Option<Text>,
    pub produces_stdout: Option<Text>,
    pub produces_stderr: Option<Text>,
    pub always: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReport {
    pub command: Option<RawCommandLine>,
    pub webhook: Option<RawWebhook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWebhook {
    pub url: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub headers: BTreeMap<String, Text>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub format: Option<Text>,
    pub level: Option<Text>,
    pub max_line_bytes: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawControl {
    pub socket: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStorage {
    pub url: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub s3: RawS3,
    #[serde(deserialize_with = "null_as_default")]
    pub gcs: RawGcs,
    #[serde(deserialize_with = "null_as_default")]
    pub azure: RawAzure,
    pub compression: Option<Text>,
    pub compression_level: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub retry: RawStorageRetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawS3 {
    pub endpoint: Option<Text>,
    pub region: Option<Text>,
    pub access_key_id: Option<Text>,
    pub secret_access_key: Option<Text>,
    pub secret_access_key_file: Option<Text>,
    pub session_token: Option<Text>,
    pub session_token_file: Option<Text>,
    pub path_style: Option<Text>,
    pub allow_http: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGcs {
    pub service_account_key: Option<Text>,
    pub service_account_key_file: Option<Text>,
    pub service_account_path: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAzure {
    pub account: Option<Text>,
    pub access_key: Option<Text>,
    pub access_key_file: Option<Text>,
    pub endpoint: Option<Text>,
    pub allow_http: Option<Text>,
    pub use_emulator: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStorageRetry {
    pub max_retries: Option<Text>,
    pub initial_backoff: Option<Text>,
    pub max_backoff: Option<Text>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWal {
    pub archive: Option<Text>,
    pub archive_timeout: Option<Text>,
    pub push_concurrency: Option<Text>,
    pub stage: Option<Text>,
    pub prefetch: Option<Text>,
    pub max_age: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBackup {
    pub concurrency: Option<Text>,
    pub wal_wait: Option<Text>,
    pub slice_size: Option<Text>,
    pub max_age: Option<Text>,
    pub min_redundancy: Option<Text>,
    #[serde(deserialize_with = "null_as_default")]
    pub retention: RawRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetention {
    pub full: Option<Text>,
    pub max_age: Option<Text>,
}
