//! Raw serde model → typed [`Config`]: interpolation, defaults, parsing and every check.
//!
//! Each raw struct is destructured without `..`, so a field added to `raw.rs` does not compile
//! until it is handled here. Problems are collected, never returned early, so one run of
//! `config check` shows all of them, each at the key or value it is about.
//!
//! One file per part of the config file: `postgres` (and the archive parameters it must not
//! set), `services`, `jobs`, `storage`, `wal_backup`, `daemon` (log, control socket, metrics);
//! `values` parses the scalars they share. This file holds what several sections use: the
//! problem collector [`Cx`], names (unique in their list), commands, and the restart knobs of
//! postgres and services.

mod daemon;
mod jobs;
mod postgres;
mod services;
mod storage;
mod values;
mod wal_backup;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::image_env::{self, EnvProblem};
use super::interpolate::{interpolate, Env};
use super::locate::{Locator, Pos};
use super::raw::*;
use super::secret::read_secret_file;
use super::*;
use values::{absolute_path, env_name, non_empty, parse_bool, parse_count, parse_duration};

/// Label of problems that come from `POSTGRES_*` variables rather than from the file.
const ENV_FILE: &str = "<env>";

/// State shared by the checks: where problems are reported and what they are resolved against.
pub(crate) struct Cx<'a> {
    pub file: String,
    pub loc: &'a Locator,
    pub env: Env<'a>,
    /// Whether an OS user exists (the `user` keys of services and jobs).
    pub users: Users<'a>,
    pub problems: Vec<Problem>,
    /// The keys whose secret is written in the file itself (see [`Config::literal_secrets`]).
    pub literal_secrets: Vec<String>,
}

impl Cx<'_> {
    fn problem(&mut self, path: &str, at: Pos, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            key: path.to_owned(),
            reason: reason.into(),
        });
    }

    /// A problem with the value at `path` (or where it would go, when absent).
    fn at_value(&mut self, path: &str, reason: impl Into<String>) {
        let at = self.loc.value(path);
        self.problem(path, at, reason);
    }

    /// A problem with the key of `path` itself (a conflict, a key that should not be there).
    fn at_key(&mut self, path: &str, reason: impl Into<String>) {
        let at = self.loc.key(path);
        self.problem(path, at, reason);
    }

    fn env_problem(&mut self, problem: EnvProblem) {
        self.problems.push(Problem {
            file: ENV_FILE.to_owned(),
            line: 0,
            column: 0,
            key: problem.var,
            reason: problem.reason,
        });
    }

    /// `$name`/`$name_FILE` per the image; problems are reported, the value dropped.
    fn file_env(&mut self, name: &str) -> Option<String> {
        image_env::file_env(self.env, name).unwrap_or_else(|p| {
            self.env_problem(p);
            None
        })
    }

    /// The interpolated text of a scalar; `None` (reported) when interpolation fails.
    fn text(&mut self, path: &str, raw: Text) -> Option<String> {
        match interpolate(&raw.0, self.env) {
            Ok(text) => Some(text),
            Err(reason) => {
                self.at_value(path, reason);
                None
            }
        }
    }

    /// [`text`](Self::text) of a secret: an interpolation error never quotes the value (a
    /// variable that is not set is named; that is all the reason says of the value).
    fn secret_text(&mut self, path: &str, raw: Text) -> Option<String> {
        match interpolate(&raw.0, self.env) {
            Ok(text) => Some(text),
            Err(reason) if reason.starts_with("environment variable ") => {
                self.at_value(path, reason);
                None
            }
            Err(_) => {
                self.at_value(
                    path,
                    "a \"${\" in this secret is not a valid reference (use ${NAME} or \
                     ${NAME:-default}; write \"$$\" for a literal \"$\"); the value is not shown",
                );
                None
            }
        }
    }

    /// Interpolates then parses an optional scalar; `None` when absent or invalid (reported).
    fn parse<T>(
        &mut self,
        path: &str,
        raw: Option<Text>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(path, raw?)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(reason) => {
                self.at_value(path, reason);
                None
            }
        }
    }

    fn string(&mut self, path: &str, raw: Option<Text>) -> Option<String> {
        self.parse(path, raw, non_empty)
    }

    /// The OS user named at `path`, which must exist: a child is never started as another
    /// user (least of all root) because its own was missing.
    fn user(&mut self, path: &str, raw: Option<Text>) -> Option<String> {
        let name = self.string(path, raw)?;
        if let Err(reason) = (self.users)(&name) {
            self.at_value(path, reason);
        }
        Some(name)
    }

    /// Names of environment variables a child inherits from pgward although they are secret
    /// (`inherit_env`): each a variable name, no `=` and no NUL.
    fn env_names(&mut self, path: &str, raw: Vec<Text>) -> Vec<String> {
        let mut names = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(name) = self.parse(&at, Some(item), env_name) {
                names.push(name);
            }
        }
        names
    }

    fn path(&mut self, path: &str, raw: Option<Text>) -> Option<PathBuf> {
        self.parse(path, raw, absolute_path)
    }

    fn duration(&mut self, path: &str, raw: Option<Text>) -> Option<Duration> {
        self.parse(path, raw, parse_duration)
    }

    fn bool(&mut self, path: &str, raw: Option<Text>) -> Option<bool> {
        self.parse(path, raw, parse_bool)
    }

    /// Every element interpolated; failures are reported and dropped.
    fn list(&mut self, path: &str, raw: Vec<Text>) -> Vec<String> {
        raw.into_iter()
            .enumerate()
            .filter_map(|(i, item)| self.text(&format!("{path}[{i}]"), item))
            .collect()
    }

    /// A string map with every value interpolated. A value written in the file that is
    /// secret by its name or its shape ([`crate::redact`]) is noted as a literal secret.
    fn map(&mut self, path: &str, raw: BTreeMap<String, Text>) -> BTreeMap<String, String> {
        raw.into_iter()
            .filter_map(|(k, v)| {
                let key = super::locate::join(path, &k);
                let secret = crate::redact::is_secret_name(&k)
                    || matches!(crate::redact::scrub(&v.0), std::borrow::Cow::Owned(_));
                if !secret {
                    let value = self.text(&key, v)?;
                    return Some((k, value));
                }
                if is_literal(&v) {
                    self.literal_secrets.push(key.clone());
                }
                let value = self.secret_text(&key, v)?;
                Some((k, value))
            })
            .collect()
    }

    /// A map whose every value is a secret (webhook headers).
    fn secret_map(&mut self, path: &str, raw: BTreeMap<String, Text>) -> BTreeMap<String, Secret> {
        raw.into_iter()
            .filter_map(|(k, v)| {
                let key = super::locate::join(path, &k);
                if is_literal(&v) {
                    self.literal_secrets.push(key.clone());
                }
                let value = self.secret_text(&key, v)?;
                Some((k, Secret::new(value)))
            })
            .collect()
    }

    /// A secret given as `x: value` or `x_file: path` (exclusive). `path` names `x`.
    fn secret(&mut self, path: &str, value: Option<Text>, file: Option<Text>) -> Option<Secret> {
        let file_path = format!("{path}_file");
        let leaf = path.rsplit('.').next().unwrap_or(path);
        match (value, file) {
            (Some(_), Some(_)) => {
                self.at_key(
                    &file_path,
                    format!("both {leaf} and {leaf}_file are set (but are exclusive)"),
                );
                None
            }
            (Some(value), None) => {
                if is_literal(&value) {
                    self.literal_secrets.push(path.to_owned());
                }
                self.secret_text(path, value).map(Secret::new)
            }
            (None, Some(file)) => {
                let name = self.text(&file_path, file)?;
                match read_secret_file(Path::new(&name)) {
                    Ok(secret) => Some(Secret::new(secret)),
                    Err(reason) => {
                        self.at_key(&file_path, reason);
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }
}

/// Whether a value is written in the file as it is, rather than taken from the environment
/// (`${VAR}`).
fn is_literal(raw: &Text) -> bool {
    !raw.0.contains("${")
}

/// Converts the raw model, reporting every problem into `cx`. The returned value is only
/// meaningful when `cx.problems` stays empty.
pub(crate) fn validate(raw: RawConfig, cx: &mut Cx<'_>) -> Config {
    let RawConfig {
        postgres,
        services,
        jobs,
        log,
        control,
        storage,
        wal,
        backup,
        metrics,
    } = raw;
    let postgres = postgres::validate_postgres(postgres, cx);
    let services = services::validate_services(services, cx);
    let jobs = jobs::validate_jobs(jobs, cx);
    let log = daemon::validate_log(log, cx);
    let control = daemon::validate_control(control, &postgres.socket_dir, cx);
    let storage = storage::validate_storage(storage, cx);
    let wal = wal_backup::validate_wal(wal, cx);
    let backup = wal_backup::validate_backup(backup, cx);
    let metrics = daemon::validate_metrics(metrics, cx);
    postgres::check_archive_parameters(&postgres, &wal, cx);
    postgres::check_restore_as(&postgres, &wal, &jobs, cx);
    Config {
        source: None,
        // Filled in by the caller, from `cx`, once every section was read.
        literal_secrets: Vec::new(),
        postgres,
        services,
        jobs,
        log,
        control,
        storage,
        wal,
        backup,
        metrics,
    }
}

/// The restart knobs found under `base` (`postgres.restart`, or a service itself).
fn validate_restart(
    base: &str,
    raw: RawRestart,
    defaults: RestartConfig,
    cx: &mut Cx<'_>,
) -> RestartConfig {
    let RawRestart {
        start_secs,
        start_retries,
        backoff,
        max_backoff,
    } = raw;
    let path = |key: &str| super::locate::join(base, key);
    let policy = RestartConfig {
        start_secs: cx
            .duration(&path("start_secs"), start_secs)
            .unwrap_or(defaults.start_secs),
        start_retries: cx
            .parse(&path("start_retries"), start_retries, parse_count)
            .unwrap_or(defaults.start_retries),
        backoff: cx
            .duration(&path("backoff"), backoff)
            .unwrap_or(defaults.backoff),
        max_backoff: cx
            .duration(&path("max_backoff"), max_backoff)
            .unwrap_or(defaults.max_backoff),
    };
    check_order(
        cx,
        &path("max_backoff"),
        ("max_backoff", policy.max_backoff),
        ("backoff", policy.backoff),
    );
    policy
}

/// `{list}[i].name`, checked with [`required_name`]: recorded in `first_seen` the first
/// time, reported as a duplicate of that first entry after.
fn unique_name(
    cx: &mut Cx<'_>,
    list: &str,
    i: usize,
    name: &str,
    what: &str,
    first_seen: &mut HashMap<String, usize>,
) {
    if let Some(first) = first_seen.get(name) {
        let first_at = cx.loc.value(&format!("{list}[{first}].name"));
        cx.at_value(
            &format!("{list}[{i}].name"),
            format!(
                "duplicate {what} name {name:?} (first defined at line {})",
                first_at.line
            ),
        );
    } else if !name.is_empty() {
        first_seen.insert(name.to_owned(), i);
    }
}

/// Reports `{longer}` at `path` when it is shorter than `{shorter}`: `max_backoff (1s) is
/// shorter than backoff (2s)`.
fn check_order(
    cx: &mut Cx<'_>,
    path: &str,
    (longer, max): (&str, Duration),
    (shorter, min): (&str, Duration),
) {
    if max < min {
        cx.at_value(
            path,
            format!(
                "{longer} ({}) is shorter than {shorter} ({})",
                humantime::format_duration(max),
                humantime::format_duration(min)
            ),
        );
    }
}

fn required_name(cx: &mut Cx<'_>, path: &str, raw: Option<Text>, what: &str) -> String {
    if raw.is_none() {
        cx.at_value(path, format!("missing {what} name"));
        return String::new();
    }
    cx.parse(path, raw, |s| {
        let mut chars = s.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(s.to_owned())
        } else {
            Err(values::invalid(
                &format!("{what} name"),
                s,
                "letters, digits, '_', '.' and '-', starting with a letter or digit",
            ))
        }
    })
    .unwrap_or_default()
}

fn required_command(cx: &mut Cx<'_>, path: &str, raw: Option<Vec<Text>>) -> Vec<String> {
    let Some(raw) = raw else {
        cx.at_value(path, "missing command");
        return Vec::new();
    };
    let command = cx.list(path, raw);
    match command.first() {
        None if cx.loc.contains(&format!("{path}[0]")) => {} // element failed, reported
        None => cx.at_value(path, "command must not be empty"),
        Some(program) if program.is_empty() => {
            cx.at_value(&format!("{path}[0]"), "program name must not be empty")
        }
        Some(_) => {}
    }
    command
}
