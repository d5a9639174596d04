//! `jobs[]:`: cron jobs, each a built-in action (with its options) or a command, with their
//! policies (concurrency, timeout, retries, what fails a run) and reports.

use super::values::{choice, invalid, parse_count};
use super::*;
use crate::repo::layout::BackupId;

/// Built-in actions a job may run.
const ACTIONS: &[&str] = &["backup", "expire", "verify", "check", "sql", "restore-test"];

pub(super) fn validate_jobs(raw: Vec<RawJob>, cx: &mut Cx<'_>) -> Vec<JobConfig> {
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let job = validate_job(&format!("jobs[{i}]"), raw, cx);
        unique_name(cx, "jobs", i, &job.name, "job", &mut first_seen);
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
        inherit_env,
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
    let task = job_task(cx, base, (action, options, command), timeout);
    let concurrency = cx
        .parse(&path("concurrency"), concurrency, |s| {
            let policies = [
                ("allow", ConcurrencyPolicy::Allow),
                ("forbid", ConcurrencyPolicy::Forbid),
                ("replace", ConcurrencyPolicy::Replace),
            ];
            choice("concurrency policy", s, &policies)
        })
        .unwrap_or(ConcurrencyPolicy::Forbid);
    let retries = validate_retries(cx, &path("retries"), retries);
    let fails_when = validate_fails_when(cx, &path("fails_when"), fails_when);
    JobConfig {
        name,
        schedule,
        timezone,
        task,
        env: cx.map(&path("env"), env),
        inherit_env: cx.env_names(&path("inherit_env"), inherit_env),
        user: cx.user(&path("user"), user),
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

/// What the job at `base` runs: its `action` (with `options`) or its `command`, exactly one.
/// A job that cannot say is given `check` (the problem is reported).
fn job_task(
    cx: &mut Cx<'_>,
    base: &str,
    (action, options, command): (Option<Text>, Option<RawJobOptions>, Option<RawCommandLine>),
    timeout: Option<Duration>,
) -> JobTask {
    let path = |key: &str| super::locate::join(base, key);
    match (action, command) {
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
            let action = cx.parse(&path("action"), Some(action), |s| {
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
    }
}

/// `retries:` of a job.
fn validate_retries(cx: &mut Cx<'_>, base: &str, raw: RawRetries) -> RetryConfig {
    let RawRetries {
        max,
        initial_delay,
        multiplier,
        max_delay,
    } = raw;
    let at = |key: &str| super::locate::join(base, key);
    RetryConfig {
        max: cx.parse(&at("max"), max, parse_count).unwrap_or(0),
        initial_delay: cx
            .duration(&at("initial_delay"), initial_delay)
            .unwrap_or(Duration::from_secs(30)),
        multiplier: cx
            .parse(&at("multiplier"), multiplier, |s| match s.parse::<f64>() {
                Ok(m) if m.is_finite() && (1.0..=100.0).contains(&m) => Ok(Multiplier(m)),
                _ => Err(invalid("multiplier", s, "a number from 1 to 100")),
            })
            .unwrap_or(Multiplier(2.0)),
        max_delay: cx
            .duration(&at("max_delay"), max_delay)
            .unwrap_or(Duration::from_secs(600)),
    }
}

/// `fails_when:` of a job.
fn validate_fails_when(cx: &mut Cx<'_>, base: &str, raw: RawFailsWhen) -> FailsWhen {
    let RawFailsWhen {
        nonzero_exit,
        produces_stdout,
        produces_stderr,
        always,
    } = raw;
    let at = |key: &str| super::locate::join(base, key);
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
}

/// A job's built-in `action` with its `options`; keys the action does not take are refused.
fn job_action(
    cx: &mut Cx<'_>,
    base: &str,
    action: &str,
    options: RawJobOptions,
    job_timeout: Option<Duration>,
) -> JobTask {
    refuse_foreign_options(cx, base, action, &options);
    let RawJobOptions {
        kind,
        backup,
        sql,
        database,
        statement_timeout,
        target,
        scratch_dir,
        at_start,
    } = options;
    let path = |key: &str| super::locate::join(base, key);
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
    let database_or_default = |cx: &mut Cx<'_>, raw| {
        cx.string(&path("database"), raw)
            .unwrap_or_else(|| "postgres".to_owned())
    };
    match action {
        "backup" => JobTask::Backup {
            incremental: cx
                .parse(&path("type"), kind, |s| {
                    choice("backup type", s, &[("full", false), ("incremental", true)])
                })
                .unwrap_or(false),
            at_start_if_none: cx
                .parse(&path("at_start"), at_start, |s| {
                    choice("at_start", s, &[("never", false), ("if_none", true)])
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
                database: database_or_default(cx, database),
                statement_timeout: cx
                    .duration(&path("statement_timeout"), statement_timeout)
                    .or(job_timeout)
                    .unwrap_or(Duration::from_secs(3600)),
            }
        }
        "restore-test" => JobTask::RestoreTest(RestoreTestConfig {
            backup: backup_id(cx, backup),
            target: cx
                .parse(&path("target"), target, |s| {
                    let targets = [
                        ("consistent", RestoreTestTarget::Consistent),
                        ("latest", RestoreTestTarget::Latest),
                    ];
                    choice("restore test target", s, &targets)
                })
                .unwrap_or(RestoreTestTarget::Consistent),
            sql: cx.string(&path("sql"), sql),
            database: database_or_default(cx, database),
            scratch_dir: cx.path(&path("scratch_dir"), scratch_dir),
        }),
        other => unreachable!("action {other} passed the ACTIONS check"),
    }
}

/// Reports each option given under `base` that `action` does not take.
fn refuse_foreign_options(cx: &mut Cx<'_>, base: &str, action: &str, options: &RawJobOptions) {
    let allowed: &[&str] = match action {
        "backup" => &["type", "at_start"],
        "verify" => &["backup"],
        "sql" => &["sql", "database", "statement_timeout"],
        "restore-test" => &["backup", "target", "sql", "database", "scratch_dir"],
        _ => &[],
    };
    let given = [
        ("type", options.kind.is_some()),
        ("backup", options.backup.is_some()),
        ("sql", options.sql.is_some()),
        ("database", options.database.is_some()),
        ("statement_timeout", options.statement_timeout.is_some()),
        ("target", options.target.is_some()),
        ("scratch_dir", options.scratch_dir.is_some()),
        ("at_start", options.at_start.is_some()),
    ];
    for (key, _) in given
        .iter()
        .filter(|(key, given)| *given && !allowed.contains(key))
    {
        let takes = if allowed.is_empty() {
            "no options".to_owned()
        } else {
            allowed.join(", ")
        };
        cx.at_key(
            &super::locate::join(base, key),
            format!("action {action} takes no option {key:?} (it takes {takes})"),
        );
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
                        Err(invalid("webhook url", s, "http:// or https://"))
                    }
                })
                .unwrap_or_default(),
            headers: cx.secret_map(&at("headers"), headers),
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
