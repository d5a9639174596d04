//! Raw serde model → typed [`Config`]: interpolation, defaults, parsing and every check.
//!
//! Each raw struct is destructured without `..`, so a field added to `raw.rs` does not compile
//! until it is handled here. Problems are collected, never returned early, so one run of
//! `config check` shows all of them, each at the key or value it is about.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::image_env::{self, EnvProblem};
use super::interpolate::{interpolate, Env};
use super::locate::{Locator, Pos};
use super::raw::*;
use super::schedule::{parse_schedule, parse_timezone};
use super::secret::read_secret_file;
use super::size::parse_size;
use super::*;
use crate::repo::layout::BackupId;

/// Built-in actions a job may run.
pub(crate) const ACTIONS: &[&str] = &["backup", "expire", "verify", "check", "sql", "restore-test"];
/// Signals a service may be stopped with.
const STOP_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGKILL,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Label of problems that come from `POSTGRES_*` variables rather than from the file.
pub(crate) const ENV_FILE: &str = "<env>";

/// State shared by the checks: where problems are reported and what they are resolved against.
pub(crate) struct Cx<'a> {
    pub file: String,
    pub loc: &'a Locator,
    pub env: Env<'a>,
    pub problems: Vec<Problem>,
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

    /// A string map with every value interpolated.
    fn map(&mut self, path: &str, raw: BTreeMap<String, Text>) -> BTreeMap<String, String> {
        raw.into_iter()
            .filter_map(|(k, v)| {
                let value = self.text(&super::locate::join(path, &k), v)?;
                Some((k, value))
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
            (Some(value), None) => self.text(path, value).map(Secret::new),
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
    let postgres = validate_postgres(postgres, cx);
    let services = validate_services(services, cx);
    let jobs = validate_jobs(jobs, cx);
    let log = validate_log(log, cx);
    let control = validate_control(control, &postgres.socket_dir, cx);
    let storage = validate_storage(storage, cx);
    let wal = validate_wal(wal, cx);
    let backup = validate_backup(backup, cx);
    let metrics = validate_metrics(metrics, cx);
    check_archive_parameters(&postgres, &wal, cx);
    Config {
        source: None,
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

fn validate_metrics(raw: RawMetrics, cx: &mut Cx<'_>) -> MetricsConfig {
    let RawMetrics {
        enabled,
        listen,
        username,
        password,
        password_file,
        tls,
        ready_in_recovery,
        queries_file,
        scrape_timeout,
        statement_timeout,
        lock_timeout,
    } = raw;
    let username = cx.string("metrics.username", username);
    let password = cx.secret("metrics.password", password, password_file);
    match (&username, &password) {
        (Some(_), None) => cx.at_value(
            "metrics.username",
            "metrics.username needs metrics.password (or password_file)",
        ),
        (None, Some(_)) => cx.at_value(
            "metrics.password",
            "metrics.password needs metrics.username",
        ),
        _ => {}
    }
    let RawTls {
        cert_file,
        key_file,
    } = tls;
    let tls = match (
        cx.path("metrics.tls.cert_file", cert_file),
        cx.path("metrics.tls.key_file", key_file),
    ) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(_), None) => {
            cx.at_value("metrics.tls", "metrics.tls needs key_file too");
            None
        }
        (None, Some(_)) => {
            cx.at_value("metrics.tls", "metrics.tls needs cert_file too");
            None
        }
    };
    MetricsConfig {
        enabled: cx.bool("metrics.enabled", enabled).unwrap_or(true),
        listen: cx
            .parse("metrics.listen", listen, |s| {
                s.parse::<std::net::SocketAddr>().map_err(|_| {
                    format!("invalid listen address {s:?} (use host:port, e.g. 0.0.0.0:9187)")
                })
            })
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 9187))),
        username,
        password,
        tls,
        ready_in_recovery: cx
            .bool("metrics.ready_in_recovery", ready_in_recovery)
            .unwrap_or(false),
        queries_file: cx.path("metrics.queries_file", queries_file),
        scrape_timeout: cx
            .duration("metrics.scrape_timeout", scrape_timeout)
            .unwrap_or(Duration::from_secs(10)),
        statement_timeout: cx
            .duration("metrics.statement_timeout", statement_timeout)
            .unwrap_or(Duration::from_secs(5)),
        lock_timeout: cx
            .duration("metrics.lock_timeout", lock_timeout)
            .unwrap_or(Duration::from_secs(1)),
    }
}

fn validate_postgres(raw: RawPostgres, cx: &mut Cx<'_>) -> PostgresConfig {
    let RawPostgres {
        data_dir,
        port,
        socket_dir,
        user,
        bin_dir,
        parameters,
        init,
        stop,
        restart,
    } = raw;
    let data_dir = match data_dir {
        Some(raw) => cx.path("postgres.data_dir", Some(raw)),
        None => image_env::var(cx.env, "PGDATA").map(PathBuf::from),
    }
    .unwrap_or_else(|| PathBuf::from("/var/lib/postgresql/data"));
    let port = cx.parse("postgres.port", port, parse_port).unwrap_or(5432);
    let socket_dir = cx
        .path("postgres.socket_dir", socket_dir)
        .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
    let user = cx
        .string("postgres.user", user)
        .unwrap_or_else(|| "postgres".to_owned());
    let bin_dir = cx.path("postgres.bin_dir", bin_dir);
    let parameters = validate_parameters(parameters, cx);
    PostgresConfig {
        data_dir,
        port,
        socket_dir,
        user,
        bin_dir,
        parameters,
        init: validate_init(init, cx),
        stop: validate_stop(stop, cx),
        restart: validate_restart(
            "postgres.restart",
            restart,
            RestartConfig {
                start_secs: Duration::from_secs(10),
                start_retries: 5,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30),
            },
            cx,
        ),
    }
}

/// Settings pgward passes itself; setting them twice would silently lose one.
const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    ("port", "postgres.port"),
    ("data_directory", "postgres.data_dir"),
];

fn validate_parameters(raw: BTreeMap<String, Text>, cx: &mut Cx<'_>) -> BTreeMap<String, String> {
    for name in raw.keys() {
        let path = format!("postgres.parameters.{name}");
        if !is_parameter_name(name) {
            cx.at_key(&path, format!("invalid parameter name {name:?}"));
        } else if let Some((_, key)) = MANAGED_PARAMETERS.iter().find(|(n, _)| n == name) {
            cx.at_key(&path, format!("set {key} instead"));
        }
    }
    cx.map("postgres.parameters", raw)
}

fn validate_init(raw: RawInit, cx: &mut Cx<'_>) -> InitConfig {
    let RawInit {
        superuser,
        password,
        password_file,
        database,
        initdb_args,
        waldir,
        host_auth_method,
        scripts_dir,
        from_backup,
    } = raw;
    let superuser = match superuser {
        Some(raw) => cx.string("postgres.init.superuser", Some(raw)),
        None => cx.file_env("POSTGRES_USER"),
    }
    .unwrap_or_else(|| "postgres".to_owned());
    let password = match (password, password_file) {
        (None, None) => cx.file_env("POSTGRES_PASSWORD").map(Secret::new),
        (value, file) => cx.secret("postgres.init.password", value, file),
    };
    let database = match database {
        Some(raw) => cx.string("postgres.init.database", Some(raw)),
        None => cx.file_env("POSTGRES_DB"),
    }
    .unwrap_or_else(|| superuser.clone());
    let initdb_args = match initdb_args {
        Some(raw) => cx.list("postgres.init.initdb_args", raw),
        // Unquoted in the image's script, so the shell splits it on whitespace.
        None => cx
            .file_env("POSTGRES_INITDB_ARGS")
            .map(|args| args.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let waldir = match waldir {
        Some(raw) => cx.path("postgres.init.waldir", Some(raw)),
        None => image_env::var(cx.env, "POSTGRES_INITDB_WALDIR").map(PathBuf::from),
    };
    let host_auth_method = match host_auth_method {
        Some(raw) => cx.string("postgres.init.host_auth_method", Some(raw)),
        None => image_env::var(cx.env, "POSTGRES_HOST_AUTH_METHOD"),
    };
    let scripts_dir = cx
        .path("postgres.init.scripts_dir", scripts_dir)
        .unwrap_or_else(|| PathBuf::from("/docker-entrypoint-initdb.d"));
    let from_backup = cx.parse("postgres.init.from_backup", from_backup, |s| {
        match s == "none" || s == "latest" || BackupId::parse(s).is_ok()
        {
            true => Ok(s.to_owned()),
            false => Err(format!(
                "invalid from_backup {s:?} (use none, latest or a backup id such as 20261130T035500F)"
            )),
        }
    })
    // `none`, the default written out: what an image's `${PGWARD_FROM_BACKUP:-none}` gives.
    .filter(|s| s != "none");
    InitConfig {
        superuser,
        password,
        database,
        initdb_args,
        waldir,
        host_auth_method,
        scripts_dir,
        from_backup,
    }
}

fn validate_stop(raw: RawStop, cx: &mut Cx<'_>) -> StopConfig {
    let RawStop {
        mode,
        timeout,
        kill_timeout,
    } = raw;
    StopConfig {
        mode: cx
            .parse("postgres.stop.mode", mode, |s| match s {
                "smart" => Ok(StopMode::Smart),
                "fast" => Ok(StopMode::Fast),
                _ => Err(format!("invalid stop mode {s:?} (use smart or fast)")),
            })
            .unwrap_or(StopMode::Fast),
        timeout: cx
            .duration("postgres.stop.timeout", timeout)
            .unwrap_or(Duration::from_secs(60)),
        kill_timeout: cx
            .duration("postgres.stop.kill_timeout", kill_timeout)
            .unwrap_or(Duration::from_secs(10)),
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
    if policy.max_backoff < policy.backoff {
        cx.at_value(
            &path("max_backoff"),
            format!(
                "max_backoff ({}) is shorter than backoff ({})",
                humantime::format_duration(policy.max_backoff),
                humantime::format_duration(policy.backoff)
            ),
        );
    }
    policy
}

fn validate_services(raw: Vec<RawService>, cx: &mut Cx<'_>) -> Vec<ServiceConfig> {
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut services = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let base = format!("services[{i}]");
        let service = validate_service(&base, raw, cx);
        let name_path = format!("{base}.name");
        if service.name == "postgres" {
            cx.at_value(
                &name_path,
                "\"postgres\" is reserved for the supervised server; pick another name",
            );
        } else if let Some(first) = first_seen.get(&service.name) {
            let first_at = cx.loc.value(&format!("services[{first}].name"));
            cx.at_value(
                &name_path,
                format!(
                    "duplicate service name {:?} (first defined at line {})",
                    service.name, first_at.line
                ),
            );
        } else if !service.name.is_empty() {
            first_seen.insert(service.name.clone(), i);
        }
        services.push(service);
    }
    check_after(&services, &first_seen, cx);
    services
}

fn validate_service(base: &str, raw: RawService, cx: &mut Cx<'_>) -> ServiceConfig {
    let RawService {
        name,
        command,
        env,
        user,
        working_dir,
        restart,
        start_secs,
        start_retries,
        backoff,
        max_backoff,
        stop_signal,
        stop_timeout,
        after,
    } = raw;
    let path = |key: &str| super::locate::join(base, key);
    let name = required_name(cx, &path("name"), name, "service");
    let command = required_command(cx, &path("command"), command);
    let env = cx.map(&path("env"), env);
    let user = cx.string(&path("user"), user);
    let working_dir = cx.path(&path("working_dir"), working_dir);
    let restart = cx
        .parse(&path("restart"), restart, |s| match s {
            "always" => Ok(RestartMode::Always),
            "on-failure" => Ok(RestartMode::OnFailure),
            "never" => Ok(RestartMode::Never),
            _ => Err(format!(
                "invalid restart mode {s:?} (use always, on-failure or never)"
            )),
        })
        .unwrap_or(RestartMode::OnFailure);
    let restart_policy = validate_restart(
        base,
        RawRestart {
            start_secs,
            start_retries,
            backoff,
            max_backoff,
        },
        RestartConfig {
            start_secs: Duration::from_secs(1),
            start_retries: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        },
        cx,
    );
    let stop_signal = cx
        .parse(&path("stop_signal"), stop_signal, parse_signal)
        .unwrap_or(StopSignal(Signal::SIGTERM));
    let stop_timeout = cx
        .duration(&path("stop_timeout"), stop_timeout)
        .unwrap_or(Duration::from_secs(10));
    let after = cx.list(&path("after"), after.0);
    ServiceConfig {
        name,
        command,
        env,
        user,
        working_dir,
        restart,
        restart_policy,
        stop_signal,
        stop_timeout,
        after,
    }
}

/// `after:` must name `postgres` or a service, and services must not wait on each other in a
/// circle (none would ever start).
fn check_after(services: &[ServiceConfig], index: &HashMap<String, usize>, cx: &mut Cx<'_>) {
    for (i, service) in services.iter().enumerate() {
        for (j, dep) in service.after.iter().enumerate() {
            if dep != "postgres" && !index.contains_key(dep) {
                let mut known: Vec<&str> = vec!["postgres"];
                known.extend(services.iter().map(|s| s.name.as_str()));
                cx.at_value(
                    &format!("services[{i}].after[{j}]"),
                    format!("unknown service {dep:?} (known: {})", known.join(", ")),
                );
            }
        }
    }
    // Depth-first search; an edge back into the current path closes a cycle, reported once at
    // that edge.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        services: &[ServiceConfig],
        index: &HashMap<String, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        cx: &mut Cx<'_>,
    ) {
        marks[i] = Mark::Active;
        stack.push(i);
        for (j, dep) in services[i].after.iter().enumerate() {
            let Some(&k) = index.get(dep) else { continue };
            match marks[k] {
                Mark::New => visit(k, services, index, marks, stack, cx),
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == k).unwrap_or(0);
                    let mut names: Vec<&str> = stack[start..]
                        .iter()
                        .map(|&s| services[s].name.as_str())
                        .collect();
                    names.push(&services[k].name);
                    cx.at_value(
                        &format!("services[{i}].after[{j}]"),
                        format!("dependency cycle: {}", names.join(" -> ")),
                    );
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
    }
    let mut marks = vec![Mark::New; services.len()];
    for i in 0..services.len() {
        // Only the first definition of a name takes part in the graph.
        if marks[i] == Mark::New && index.get(&services[i].name) == Some(&i) {
            visit(i, services, index, &mut marks, &mut Vec::new(), cx);
        }
    }
}

fn validate_jobs(raw: Vec<RawJob>, cx: &mut Cx<'_>) -> Vec<JobConfig> {
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let base = format!("jobs[{i}]");
        let job = validate_job(&base, raw, cx);
        if let Some(first) = first_seen.get(&job.name) {
            let first_at = cx.loc.value(&format!("jobs[{first}].name"));
            cx.at_value(
                &format!("{base}.name"),
                format!(
                    "duplicate job name {:?} (first defined at line {})",
                    job.name, first_at.line
                ),
            );
        } else if !job.name.is_empty() {
            first_seen.insert(job.name.clone(), i);
        }
        jobs.push(job);
    }
    jobs
}

fn validate_job(base: &str, raw: RawJob, cx: &mut Cx<'_>) -> JobConfig {
    let RawJob {
        name,
        schedule,
        timezone,
        action,
        options,
        command,
        env,
        user,
        working_dir,
        concurrency,
        timeout,
        kill_timeout,
        retries,
        fails_when,
        enabled,
        catch_up,
        wait_for_postgres,
        output_lines,
        on_failure,
        on_success,
    } = raw;
    let path = |key: &str| super::locate::join(base, key);
    let name = required_name(cx, &path("name"), name, "job");
    let schedule = if schedule.is_none() {
        cx.at_value(&path("schedule"), "missing schedule");
        String::new()
    } else {
        cx.parse(&path("schedule"), schedule, |s| {
            parse_schedule(s).map(|_| s.to_owned())
        })
        .unwrap_or_default()
    };
    let timezone = cx
        .parse(&path("timezone"), timezone, |s| {
            parse_timezone(s).map(|_| s.to_owned())
        })
        .unwrap_or_else(|| "UTC".to_owned());
    let timeout = cx.duration(&path("timeout"), timeout);
    let task = match (action, command) {
        (Some(_), Some(_)) => {
            cx.at_key(
                &path("command"),
                "action and command are exclusive; set one",
            );
            JobTask::Check
        }
        (None, None) => {
            cx.at_value(base, "either action or command is required");
            JobTask::Check
        }
        (None, Some(command)) => {
            if options.is_some() {
                cx.at_key(
                    &path("options"),
                    "options are for actions; a command takes none",
                );
            }
            JobTask::Command {
                command: command_line(cx, &path("command"), command),
            }
        }
        (Some(action), None) => {
            let action_path = path("action");
            let action = cx.parse(&action_path, Some(action), |s| {
                if ACTIONS.contains(&s) {
                    Ok(s.to_owned())
                } else {
                    Err(format!("unknown action {s:?} (use {})", ACTIONS.join(", ")))
                }
            });
            match action {
                Some(action) => job_action(
                    cx,
                    &path("options"),
                    &action,
                    options.unwrap_or_default(),
                    timeout,
                ),
                None => JobTask::Check,
            }
        }
    };
    let concurrency = cx
        .parse(&path("concurrency"), concurrency, |s| match s {
            "allow" => Ok(ConcurrencyPolicy::Allow),
            "forbid" => Ok(ConcurrencyPolicy::Forbid),
            "replace" => Ok(ConcurrencyPolicy::Replace),
            _ => Err(format!(
                "invalid concurrency policy {s:?} (use allow, forbid or replace)"
            )),
        })
        .unwrap_or(ConcurrencyPolicy::Forbid);
    let retries = {
        let RawRetries {
            max,
            initial_delay,
            multiplier,
            max_delay,
        } = retries;
        let retries_path = path("retries");
        let at = |key: &str| super::locate::join(&retries_path, key);
        RetryConfig {
            max: cx.parse(&at("max"), max, parse_count).unwrap_or(0),
            initial_delay: cx
                .duration(&at("initial_delay"), initial_delay)
                .unwrap_or(Duration::from_secs(30)),
            multiplier: cx
                .parse(&at("multiplier"), multiplier, |s| match s.parse::<f64>() {
                    Ok(m) if m.is_finite() && (1.0..=100.0).contains(&m) => Ok(Multiplier(m)),
                    _ => Err(format!(
                        "invalid multiplier {s:?} (use a number from 1 to 100)"
                    )),
                })
                .unwrap_or(Multiplier(2.0)),
            max_delay: cx
                .duration(&at("max_delay"), max_delay)
                .unwrap_or(Duration::from_secs(600)),
        }
    };
    let fails_when = {
        let RawFailsWhen {
            nonzero_exit,
            produces_stdout,
            produces_stderr,
            always,
        } = fails_when;
        let fails_path = path("fails_when");
        let at = |key: &str| super::locate::join(&fails_path, key);
        FailsWhen {
            nonzero_exit: cx.bool(&at("nonzero_exit"), nonzero_exit).unwrap_or(true),
            produces_stdout: cx
                .bool(&at("produces_stdout"), produces_stdout)
                .unwrap_or(false),
            produces_stderr: cx
                .bool(&at("produces_stderr"), produces_stderr)
                .unwrap_or(false),
            always: cx.bool(&at("always"), always).unwrap_or(false),
        }
    };
    JobConfig {
        name,
        schedule,
        timezone,
        task,
        env: cx.map(&path("env"), env),
        user: cx.string(&path("user"), user),
        working_dir: cx.path(&path("working_dir"), working_dir),
        concurrency,
        timeout,
        kill_timeout: cx
            .duration(&path("kill_timeout"), kill_timeout)
            .unwrap_or(Duration::from_secs(30)),
        retries,
        fails_when,
        enabled: cx.bool(&path("enabled"), enabled).unwrap_or(true),
        catch_up: cx.bool(&path("catch_up"), catch_up).unwrap_or(false),
        wait_for_postgres: cx
            .bool(&path("wait_for_postgres"), wait_for_postgres)
            .unwrap_or(true),
        output_lines: cx
            .parse(&path("output_lines"), output_lines, parse_count)
            .unwrap_or(50),
        on_failure: on_failure.map(|r| report(cx, &path("on_failure"), r)),
        on_success: on_success.map(|r| report(cx, &path("on_success"), r)),
    }
}

/// A job's built-in `action` with its `options`; keys the action does not take are refused.
fn job_action(
    cx: &mut Cx<'_>,
    base: &str,
    action: &str,
    options: RawJobOptions,
    job_timeout: Option<Duration>,
) -> JobTask {
    let RawJobOptions {
        kind,
        backup,
        sql,
        database,
        statement_timeout,
        target,
        scratch_dir,
    } = options;
    let path = |key: &str| super::locate::join(base, key);
    let allowed: &[&str] = match action {
        "backup" => &["type"],
        "verify" => &["backup"],
        "sql" => &["sql", "database", "statement_timeout"],
        "restore-test" => &["backup", "target", "sql", "database", "scratch_dir"],
        _ => &[],
    };
    for (key, given) in [
        ("type", kind.is_some()),
        ("backup", backup.is_some()),
        ("sql", sql.is_some()),
        ("database", database.is_some()),
        ("statement_timeout", statement_timeout.is_some()),
        ("target", target.is_some()),
        ("scratch_dir", scratch_dir.is_some()),
    ] {
        if given && !allowed.contains(&key) {
            let takes = if allowed.is_empty() {
                "no options".to_owned()
            } else {
                allowed.join(", ")
            };
            cx.at_key(
                &path(key),
                format!("action {action} takes no option {key:?} (it takes {takes})"),
            );
        }
    }
    let backup_id = |cx: &mut Cx<'_>, raw| {
        cx.parse(&path("backup"), raw, |s| {
            if s == "latest" {
                return Ok(s.to_owned());
            }
            BackupId::parse(s)
                .map(|id| id.to_string())
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| "latest".to_owned())
    };
    match action {
        "backup" => JobTask::Backup {
            incremental: cx
                .parse(&path("type"), kind, |s| match s {
                    "full" => Ok(false),
                    "incremental" => Ok(true),
                    _ => Err(format!(
                        "invalid backup type {s:?} (use full or incremental)"
                    )),
                })
                .unwrap_or(false),
        },
        "expire" => JobTask::Expire,
        "check" => JobTask::Check,
        "verify" => JobTask::Verify {
            backup: backup_id(cx, backup),
        },
        "sql" => {
            if sql.is_none() {
                cx.at_value(base, "action sql needs options.sql");
            }
            JobTask::Sql {
                sql: cx.string(&path("sql"), sql).unwrap_or_default(),
                database: cx
                    .string(&path("database"), database)
                    .unwrap_or_else(|| "postgres".to_owned()),
                statement_timeout: cx
                    .duration(&path("statement_timeout"), statement_timeout)
                    .or(job_timeout)
                    .unwrap_or(Duration::from_secs(3600)),
            }
        }
        "restore-test" => JobTask::RestoreTest(RestoreTestConfig {
            backup: backup_id(cx, backup),
            target: cx
                .parse(&path("target"), target, |s| match s {
                    "consistent" => Ok(RestoreTestTarget::Consistent),
                    "latest" => Ok(RestoreTestTarget::Latest),
                    _ => Err(format!(
                        "invalid restore test target {s:?} (use consistent or latest)"
                    )),
                })
                .unwrap_or(RestoreTestTarget::Consistent),
            sql: cx.string(&path("sql"), sql),
            database: cx
                .string(&path("database"), database)
                .unwrap_or_else(|| "postgres".to_owned()),
            scratch_dir: cx.path(&path("scratch_dir"), scratch_dir),
        }),
        other => unreachable!("action {other} passed the ACTIONS check"),
    }
}

/// `command:` of a job or report: argv, or a shell line.
fn command_line(cx: &mut Cx<'_>, path: &str, raw: RawCommandLine) -> CommandLine {
    match raw {
        RawCommandLine::Argv(argv) => CommandLine::Argv(required_command(cx, path, Some(argv))),
        RawCommandLine::Shell(line) => {
            CommandLine::Shell(cx.string(path, Some(line)).unwrap_or_default())
        }
    }
}

/// `on_failure:` / `on_success:`.
fn report(cx: &mut Cx<'_>, base: &str, raw: RawReport) -> ReportConfig {
    let RawReport { command, webhook } = raw;
    let path = |key: &str| super::locate::join(base, key);
    if command.is_none() && webhook.is_none() {
        cx.at_value(base, "a report needs a command, a webhook or both");
    }
    let webhook = webhook.map(|raw| {
        let RawWebhook {
            url,
            headers,
            timeout,
        } = raw;
        let hook = path("webhook");
        let at = |key: &str| super::locate::join(&hook, key);
        if url.is_none() {
            cx.at_value(&hook, "a webhook needs a url");
        }
        WebhookConfig {
            url: cx
                .parse(&at("url"), url, |s| {
                    if s.starts_with("http://") || s.starts_with("https://") {
                        Ok(s.to_owned())
                    } else {
                        Err(format!(
                            "invalid webhook url {s:?} (use http:// or https://)"
                        ))
                    }
                })
                .unwrap_or_default(),
            headers: cx
                .map(&at("headers"), headers)
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
            timeout: cx
                .duration(&at("timeout"), timeout)
                .unwrap_or(Duration::from_secs(10)),
        }
    });
    ReportConfig {
        command: command.map(|c| command_line(cx, &path("command"), c)),
        webhook,
    }
}

fn validate_log(raw: RawLog, cx: &mut Cx<'_>) -> LogConfig {
    let RawLog {
        format,
        level,
        max_line_bytes,
    } = raw;
    LogConfig {
        format: cx
            .parse("log.format", format, |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("invalid log format {s:?} (use text or json)")),
            })
            .unwrap_or(LogFormat::Text),
        level: cx
            .parse("log.level", level, |s| {
                tracing_subscriber::EnvFilter::try_new(s)
                    .map(|_| s.to_owned())
                    .map_err(|e| format!("invalid log level {s:?}: {e}"))
            })
            .unwrap_or_else(|| "info".to_owned()),
        max_line_bytes: cx
            .parse(
                "log.max_line_bytes",
                max_line_bytes,
                |s| match parse_size(s)? {
                    0 => Err("max_line_bytes must be at least 1".to_owned()),
                    n => Ok(n),
                },
            )
            .unwrap_or(64 * 1024),
    }
}

fn validate_control(raw: RawControl, socket_dir: &Path, cx: &mut Cx<'_>) -> ControlConfig {
    let RawControl { socket } = raw;
    let given = socket.is_some();
    let socket = cx
        .path("control.socket", socket)
        .unwrap_or_else(|| socket_dir.join("pgward.sock"));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        let key = if given {
            "control.socket"
        } else {
            "postgres.socket_dir"
        };
        cx.at_value(
            key,
            format!(
                "control socket path {} is {len} bytes; unix sockets allow at most \
                 {MAX_SOCKET_PATH}",
                socket.display()
            ),
        );
    }
    ControlConfig { socket }
}

/// The default repository: a local directory, so a container archives WAL out of the box
/// (mount a volume there, or point `storage.url` at object storage).
const DEFAULT_STORAGE_URL: &str = "file:///var/lib/pgward/repo";

fn validate_storage(raw: RawStorage, cx: &mut Cx<'_>) -> StorageConfig {
    let RawStorage {
        url,
        s3,
        gcs,
        azure,
        compression,
        compression_level,
        retry,
    } = raw;
    let url = cx
        .parse("storage.url", url, StorageUrl::parse)
        .unwrap_or_else(|| {
            StorageUrl::parse(DEFAULT_STORAGE_URL).expect("the default storage url parses")
        });
    let level_given = compression_level.is_some();
    let compression = cx
        .parse("storage.compression", compression, |s| {
            Codec::from_name(s)
                .ok_or_else(|| format!("invalid compression {s:?} (use zstd, lz4 or none)"))
        })
        .unwrap_or(Codec::Zstd);
    let compression_level = cx
        .parse(
            "storage.compression_level",
            compression_level,
            |s| match s.trim().parse::<i32>() {
                Ok(n @ 1..=19) => Ok(n),
                _ => Err(format!(
                    "invalid zstd level {s:?} (use an integer from 1 to 19)"
                )),
            },
        )
        .unwrap_or(3);
    if level_given && compression != Codec::Zstd {
        cx.at_key(
            "storage.compression_level",
            format!(
                "compression_level applies to zstd only, but compression is {}",
                compression.name()
            ),
        );
    }
    StorageConfig {
        url,
        s3: validate_s3(s3, cx),
        gcs: validate_gcs(gcs, cx),
        azure: validate_azure(azure, cx),
        compression,
        compression_level,
        retry: validate_storage_retry(retry, cx),
    }
}

/// An `http://` or `https://` URL; plain http only when `allow_http` (credentials and data
/// would cross the network in clear).
fn check_endpoint(cx: &mut Cx<'_>, path: &str, endpoint: &str, allow_http: bool, base: &str) {
    if endpoint.starts_with("https://") {
        return;
    }
    if endpoint.starts_with("http://") {
        if !allow_http {
            cx.at_value(
                path,
                format!(
                    "plain http endpoint {endpoint:?} is not allowed (use https, or set \
                     {base}.allow_http: true for a server on a trusted network)"
                ),
            );
        }
        return;
    }
    cx.at_value(
        path,
        format!("invalid endpoint {endpoint:?} (expected an http:// or https:// URL)"),
    );
}

fn validate_s3(raw: RawS3, cx: &mut Cx<'_>) -> S3Config {
    let RawS3 {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        secret_access_key_file,
        session_token,
        session_token_file,
        path_style,
        allow_http,
    } = raw;
    let endpoint = cx.string("storage.s3.endpoint", endpoint);
    let allow_http = cx
        .bool("storage.s3.allow_http", allow_http)
        .unwrap_or(false);
    if let Some(endpoint) = &endpoint {
        check_endpoint(
            cx,
            "storage.s3.endpoint",
            endpoint,
            allow_http,
            "storage.s3",
        );
    }
    S3Config {
        region: cx.string("storage.s3.region", region),
        access_key_id: cx.string("storage.s3.access_key_id", access_key_id),
        secret_access_key: cx.secret(
            "storage.s3.secret_access_key",
            secret_access_key,
            secret_access_key_file,
        ),
        session_token: cx.secret(
            "storage.s3.session_token",
            session_token,
            session_token_file,
        ),
        path_style: cx
            .bool("storage.s3.path_style", path_style)
            // MinIO and the like are addressed by path; an endpoint from the environment
            // (the storage client reads AWS_ENDPOINT_URL) is one of them too.
            .unwrap_or(endpoint.is_some() || image_env::var(cx.env, "AWS_ENDPOINT_URL").is_some()),
        endpoint,
        allow_http,
    }
}

fn validate_gcs(raw: RawGcs, cx: &mut Cx<'_>) -> GcsConfig {
    let RawGcs {
        service_account_key,
        service_account_key_file,
        service_account_path,
    } = raw;
    let key_given = service_account_key.is_some() || service_account_key_file.is_some();
    let service_account_key = cx.secret(
        "storage.gcs.service_account_key",
        service_account_key,
        service_account_key_file,
    );
    if let Some(key) = &service_account_key {
        if serde_json::from_str::<serde_json::Value>(key.expose()).is_err() {
            // Never echo the key: it is a secret even when malformed.
            cx.at_value(
                "storage.gcs.service_account_key",
                "the service account key is not valid JSON",
            );
        }
    }
    let path_given = service_account_path.is_some();
    let service_account_path = cx.path("storage.gcs.service_account_path", service_account_path);
    if key_given && path_given {
        cx.at_key(
            "storage.gcs.service_account_path",
            "service_account_key and service_account_path are exclusive; set one",
        );
    }
    GcsConfig {
        service_account_key,
        service_account_path,
    }
}

fn validate_azure(raw: RawAzure, cx: &mut Cx<'_>) -> AzureConfig {
    let RawAzure {
        account,
        access_key,
        access_key_file,
        endpoint,
        allow_http,
        use_emulator,
    } = raw;
    let endpoint = cx.string("storage.azure.endpoint", endpoint);
    let allow_http = cx
        .bool("storage.azure.allow_http", allow_http)
        .unwrap_or(false);
    let use_emulator = cx
        .bool("storage.azure.use_emulator", use_emulator)
        .unwrap_or(false);
    if let Some(endpoint) = &endpoint {
        // The emulator speaks plain http on localhost only.
        let allow = allow_http || use_emulator;
        check_endpoint(
            cx,
            "storage.azure.endpoint",
            endpoint,
            allow,
            "storage.azure",
        );
    }
    AzureConfig {
        account: cx.string("storage.azure.account", account),
        access_key: cx.secret("storage.azure.access_key", access_key, access_key_file),
        endpoint,
        allow_http,
        use_emulator,
    }
}

fn validate_storage_retry(raw: RawStorageRetry, cx: &mut Cx<'_>) -> StorageRetryConfig {
    let RawStorageRetry {
        max_retries,
        initial_backoff,
        max_backoff,
        timeout,
    } = raw;
    let retry = StorageRetryConfig {
        max_retries: cx
            .parse("storage.retry.max_retries", max_retries, parse_count)
            .unwrap_or(5),
        initial_backoff: cx
            .duration("storage.retry.initial_backoff", initial_backoff)
            .unwrap_or(Duration::from_millis(100)),
        max_backoff: cx
            .duration("storage.retry.max_backoff", max_backoff)
            .unwrap_or(Duration::from_secs(15)),
        timeout: cx
            .parse(
                "storage.retry.timeout",
                timeout,
                |s| match parse_duration(s)? {
                    Duration::ZERO => Err("timeout must be longer than 0s".to_owned()),
                    d => Ok(d),
                },
            )
            .unwrap_or(Duration::from_secs(60)),
    };
    if retry.max_backoff < retry.initial_backoff {
        cx.at_value(
            "storage.retry.max_backoff",
            format!(
                "max_backoff ({}) is shorter than initial_backoff ({})",
                humantime::format_duration(retry.max_backoff),
                humantime::format_duration(retry.initial_backoff)
            ),
        );
    }
    retry
}

fn validate_wal(raw: RawWal, cx: &mut Cx<'_>) -> WalConfig {
    let RawWal {
        archive,
        archive_timeout,
        push_concurrency,
        stage,
        prefetch,
        max_age,
    } = raw;
    WalConfig {
        archive: cx.bool("wal.archive", archive).unwrap_or(true),
        archive_timeout: cx
            .parse("wal.archive_timeout", archive_timeout, |s| {
                let d = parse_duration(s)?;
                // postgres takes whole seconds, at most INT_MAX.
                if d.subsec_nanos() != 0 || d.as_secs() > i32::MAX as u64 {
                    Err(format!(
                        "invalid archive_timeout {s:?} (use whole seconds, e.g. 60s or 5m)"
                    ))
                } else {
                    Ok(d)
                }
            })
            .unwrap_or(Duration::from_secs(60)),
        push_concurrency: cx
            .parse(
                "wal.push_concurrency",
                push_concurrency,
                |s| match parse_count(s)? {
                    n @ 1..=64 => Ok(n),
                    _ => Err(format!(
                        "invalid push_concurrency {s:?} (use an integer from 1 to 64)"
                    )),
                },
            )
            .unwrap_or(4),
        stage: cx.bool("wal.stage", stage).unwrap_or(true),
        prefetch: cx
            .parse("wal.prefetch", prefetch, |s| match parse_count(s)? {
                n @ 0..=256 => Ok(n),
                _ => Err(format!(
                    "invalid prefetch {s:?} (use an integer from 0 to 256)"
                )),
            })
            .unwrap_or(8),
        max_age: cx.parse("wal.max_age", max_age, parse_duration),
    }
}

fn validate_backup(raw: RawBackup, cx: &mut Cx<'_>) -> BackupConfig {
    let RawBackup {
        concurrency,
        wal_wait,
        slice_size,
        max_age,
        min_redundancy,
        retention,
    } = raw;
    BackupConfig {
        concurrency: cx
            .parse("backup.concurrency", concurrency, |s| {
                match parse_count(s)? {
                    n @ 1..=64 => Ok(n),
                    _ => Err(format!(
                        "invalid concurrency {s:?} (use an integer from 1 to 64)"
                    )),
                }
            })
            .unwrap_or(2),
        wal_wait: cx
            .parse("backup.wal_wait", wal_wait, parse_duration)
            .unwrap_or(Duration::from_secs(300)),
        slice_size: cx
            .parse("backup.slice_size", slice_size, |s| {
                let size = parse_size(s)?;
                if size < 1 << 20 || size % 8192 != 0 {
                    return Err(format!(
                        "invalid slice size {s:?} (use a multiple of 8kB of at least 1MB)"
                    ));
                }
                Ok(size)
            })
            .unwrap_or(128 << 20),
        max_age: cx.parse("backup.max_age", max_age, parse_duration),
        min_redundancy: cx
            .parse("backup.min_redundancy", min_redundancy, parse_count)
            .unwrap_or(1),
        retention: validate_retention(retention, cx),
    }
}

fn validate_retention(raw: RawRetention, cx: &mut Cx<'_>) -> RetentionConfig {
    let RawRetention { full, max_age } = raw;
    RetentionConfig {
        full: cx
            .parse("backup.retention.full", full, |s| {
                match s.trim().parse::<u32>() {
                    // 0 reads as "no limit" in many tools; here it would mean "keep none by
                    // count", which the newest full backup overrides anyway: refuse the ambiguity.
                    Ok(0) => Err(format!(
                        "invalid full {s:?}: the newest full backup is always kept (use 1 or \
                     more; to keep backups by age alone, set full: 1 and max_age)"
                    )),
                    Ok(n) => Ok(n),
                    Err(_) => Err(format!("invalid full {s:?} (use an integer of 1 or more)")),
                }
            })
            .unwrap_or(2),
        max_age: cx.parse(
            "backup.retention.max_age",
            max_age,
            |s| match parse_duration(s)? {
                Duration::ZERO => Err("max_age must be longer than 0s".to_owned()),
                d => Ok(d),
            },
        ),
    }
}

/// Parameters pgward sets itself while it archives; a second value would silently lose.
const ARCHIVE_PARAMETERS: &[(&str, &str)] = &[
    ("archive_mode", "wal.archive"),
    ("archive_command", "wal.archive"),
    ("archive_library", "wal.archive"),
    ("archive_timeout", "wal.archive_timeout"),
];

fn check_archive_parameters(postgres: &PostgresConfig, wal: &WalConfig, cx: &mut Cx<'_>) {
    if !wal.archive {
        return;
    }
    for (name, key) in ARCHIVE_PARAMETERS {
        // A command that wraps pgward's own wal-push (timing, logging) still archives through
        // pgward; anything else would bypass it.
        if *name == "archive_command"
            && postgres
                .parameters
                .get(*name)
                .is_some_and(|c| c.contains(" wal-push "))
        {
            continue;
        }
        if postgres.parameters.contains_key(*name) {
            cx.at_key(
                &format!("postgres.parameters.{name}"),
                format!(
                    "pgward sets {name} while wal.archive is true (set {key} instead, or \
                     wal.archive: false to manage archiving yourself; an archive_command may \
                     only wrap `pgward wal-push %p`)"
                ),
            );
        }
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
            Err(format!(
                "invalid {what} name {s:?} (use letters, digits, '_', '.' and '-', starting \
                 with a letter or digit)"
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

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(format!("expected an absolute path, got {s:?}"))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed (use 1 to 65535)".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!(
            "invalid port {s:?} (use an integer from 1 to 65535)"
        )),
    }
}

fn parse_count(s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid count {s:?} (use a non-negative integer)"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_signal(s: &str) -> Result<StopSignal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full)
        .ok()
        .filter(|sig| STOP_SIGNALS.contains(sig))
        .map(StopSignal)
        .ok_or_else(|| {
            format!("unknown stop signal {s:?} (use TERM, INT, QUIT, HUP, KILL, USR1 or USR2)")
        })
}

/// A GUC name as postgres accepts it on the command line (`-c name=value`): letters, digits,
/// `_`, and `.` for extension-qualified names.
fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}
