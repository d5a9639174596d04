//! Configuration: one YAML file → validated [`Config`].
//!
//! Owns parsing, `${VAR}` / `${VAR:-default}` interpolation, `*_file` secrets, validation with
//! `file:line:column` errors, and redaction for `config print`. Knows nothing of processes.

//!
//! Pipeline, one module per step: serde_yaml_ng reads the file into the `raw` model (shape
//! only; unknown keys and wrong shapes stop here with serde's position, worded by `shape`
//! in the file's terms), `validate` turns it
//! into the typed `model` (interpolation, `POSTGRES_*` defaults, secrets, every other check,
//! collected), and `locate` gives those later checks the `line:column` serde no longer has.
//!
//! List indexes in keys are 0-based, as serde_yaml_ng prints them: `services[0]` is the first
//! service.

mod image_env;
mod interpolate;
mod locate;
mod model;
mod raw;
mod redact;
mod schedule;
mod secret;
mod shape;
mod size;
mod target;
mod validate;

pub use model::*;
pub use redact::redacted_yaml;
pub use schedule::{parse_schedule, parse_timezone, ParsedSchedule};

use std::path::{Path, PathBuf};

use locate::Locator;

/// Where the config file is looked for when neither `--config` nor `PGWARD_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/pgward/pgward.yaml";

/// One problem found in a config file, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, `<defaults>` for built-in defaults, or `<env>` for a `POSTGRES_*` variable.
    pub file: String,
    /// 1-based; 0 when the problem has no position (e.g. a missing required key).
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Dotted key path with 0-based indexes, e.g. `services[1].stop_timeout`; for `<env>`, the
    /// variable's name.
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
        .map(Problem::to_string_line)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Problem {
    /// The problem as one line: `file:line:column: key: reason`.
    pub fn to_string_line(&self) -> String {
        format!(
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.reason
        )
    }
}

/// The JSON Schema (draft 2020-12) of the config file, pretty-printed with a final newline, as
/// `pgward config schema` prints it. Generated from the `raw` model that reads the file, so it
/// names exactly the keys serde accepts; values are checked further by `validate`, which the
/// schema does not repeat (a duration is a string to it).
pub fn json_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<raw::RawConfig>();
    let mut schema = schema.to_value();
    schema["title"] = "pgward configuration".into();
    // The built-in defaults, as `config print` shows them with no file and no environment,
    // become the schema's `default`s: the values come from `validate`, not from a second list.
    let defaults = from_str("", DEFAULTS_FILE, &|_| None).expect("the built-in defaults are valid");
    let defaults: serde_json::Value =
        serde_yaml_ng::from_str(&redacted_yaml(&defaults)).expect("config print is YAML");
    add_defaults(&mut schema, &defaults);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is plain JSON");
    text.push('\n');
    text
}

/// Sets `default` on each property of the root object schema whose built-in value is a
/// scalar, following `$ref`s into `$defs` for nested sections. Lists and maps (`services`,
/// `parameters`) and unset values (`null`) get none, and so do the keys whose default follows
/// the environment or another key (their descriptions say how), where one value would mislead.
fn add_defaults(schema: &mut serde_json::Value, defaults: &serde_json::Value) {
    use serde_json::Value;
    // (`$defs` name or `None` for the root, defaults of that section).
    let mut todo: Vec<(Option<String>, &Value)> = vec![(None, defaults)];
    while let Some((def, values)) = todo.pop() {
        let node = match &def {
            None => &mut *schema,
            Some(name) => &mut schema["$defs"][name.as_str()],
        };
        let Some(Value::Object(props)) = node.get_mut("properties") else {
            continue;
        };
        for (key, prop) in props.iter_mut() {
            match values.get(key) {
                Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)))
                    if !DERIVED_DEFAULTS.contains(&key.as_str()) =>
                {
                    prop["default"] = v.clone();
                }
                Some(v @ Value::Object(_)) => {
                    if let Some(name) = section_ref(prop) {
                        todo.push((Some(name), v));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Keys whose built-in value depends on the environment (`$PGDATA`, `POSTGRES_*`) or on
/// another key (`control.socket` on `postgres.socket_dir`, `storage.s3.path_style` on
/// `endpoint`).
const DERIVED_DEFAULTS: &[&str] = &["data_dir", "superuser", "database", "socket", "path_style"];

/// The `$defs` name a property refers to, directly or as the non-null branch of an `anyOf`.
fn section_ref(prop: &serde_json::Value) -> Option<String> {
    let direct = prop.get("$ref").into_iter();
    let branches = prop
        .get("anyOf")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("$ref"));
    direct
        .chain(branches)
        .filter_map(|r| r.as_str()?.strip_prefix("#/$defs/"))
        .find(|name| name.starts_with("Raw"))
        .map(str::to_owned)
}

/// Label of the built-in defaults in problems, when no file is loaded.
const DEFAULTS_FILE: &str = "<defaults>";

/// Loads and validates the config at `path`, or the built-in defaults when `path` is `None`.
/// `env` looks up environment variables (interpolation, `$PGDATA`, `POSTGRES_*` defaults).
/// The `user` keys of services and jobs are taken as written: the commands that start
/// children (`pgward run`) and `config check` use [`load_with_users`].
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    load_with_users(path, env, &any_user)
}

/// [`load`], with the `user` keys of services and jobs looked up in `users` (e.g.
/// [`system_user`]): a user that does not exist is a problem at that key.
pub fn load_with_users(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    users: Users<'_>,
) -> Result<Config, ConfigError> {
    let Some(path) = path else {
        return from_str_with_users("", DEFAULTS_FILE, env, users);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config = from_str_with_users(&text, &path.display().to_string(), env, users)?;
    config.source = Some(path.to_owned());
    Ok(config)
}

/// Parses and validates YAML `text`; `file` names it in problems. [`Config::source`] is left
/// `None`. The `user` keys are taken as written (see [`load`]).
pub fn from_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    from_str_with_users(text, file, env, &any_user)
}

/// Whether the OS user `name` exists: `Err` with the one-line reason when it does not, or
/// when the lookup fails. The `user` keys of services and jobs are checked with it.
pub type Users<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// [`Users`] of this system: its user database (`/etc/passwd`, NSS), where the children
/// will be started.
pub fn system_user(name: &str) -> Result<(), String> {
    match crate::process::RunAs::lookup(name) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("no such user {name:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// [`Users`] that takes every name as written, for the commands that start no child.
fn any_user(_: &str) -> Result<(), String> {
    Ok(())
}

/// [`from_str`] with the users looked up in `users`.
pub fn from_str_with_users(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    users: Users<'_>,
) -> Result<Config, ConfigError> {
    let locator = Locator::new(text);
    // serde_yaml_ng reads an empty document (or one holding only comments) as null, which the
    // all-optional raw model takes as "everything default".
    let raw: raw::RawConfig = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::Invalid(vec![shape::problem(&e, file, &locator)]))?;
    let mut cx = validate::Cx {
        file: file.to_owned(),
        loc: &locator,
        env,
        users,
        problems: Vec::new(),
        literal_secrets: Vec::new(),
    };
    let mut config = validate::validate(raw, &mut cx);
    config.literal_secrets = std::mem::take(&mut cx.literal_secrets);
    if cx.problems.is_empty() {
        Ok(config)
    } else {
        // File order reads best; environment problems (no position) come first.
        cx.problems.sort_by_key(|p| (p.line, p.column));
        Err(ConfigError::Invalid(cx.problems))
    }
}

#[cfg(test)]
mod tests;
