//! `pgward jobs list` and `pgward jobs run <name>`: the scheduler's jobs, from the daemon (or,
//! for `list` when no daemon runs, from the config and the state file).

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::control::{self, client, Request, Response};
use crate::scheduler::{self, JobStatus, OutputLine, OutputStream};

/// `pgward jobs list [--json]`.
pub async fn list(config: &Config, json: bool) -> Result<i32> {
    let jobs = match client::connect_if_running(&config.control.socket).await? {
        Some(stream) => {
            match client::exchange(stream, &Request::Jobs, std::time::Duration::from_secs(30))
                .await?
            {
                Response::Jobs { jobs } => jobs,
                Response::Error { message } => return Err(control::refused(&message)),
                other => return Err(other.unexpected()),
            }
        }
        // No daemon: what the config schedules and what the last runs left.
        None => scheduler::offline_status(config, Utc::now()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        print!("{}", table(&jobs));
    }
    Ok(0)
}

/// The jobs as a table (also part of `pgward status`).
pub fn table(jobs: &[JobStatus]) -> String {
    if jobs.is_empty() {
        return "no jobs configured\n".into();
    }
    let mut out = format!(
        "{:<16} {:<14} {:<16} {:<38} {:<8} {:>7}  {}\n",
        "JOB", "SCHEDULE", "KIND", "NEXT RUN (JOB'S ZONE / UTC)", "LAST", "RUNNING", "LAST RUN"
    );
    for job in jobs {
        let next = match (job.enabled, job.next_run) {
            (false, _) => "disabled".to_owned(),
            (true, None) => "-".to_owned(),
            (true, Some(at)) => format!(
                "{} / {}",
                in_zone(at, &job.timezone),
                at.format("%m-%d %H:%M:%S")
            ),
        };
        let last_run = match (job.last_start, job.last_duration_seconds) {
            (Some(at), Some(secs)) => {
                format!("{} ({secs:.1} s)", at.format("%Y-%m-%d %H:%M:%S UTC"))
            }
            (Some(at), None) => at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            _ => "never".into(),
        };
        out.push_str(&format!(
            "{:<16} {:<14} {:<16} {:<38} {:<8} {:>7}  {}{}\n",
            job.name,
            job.schedule,
            job.kind,
            next,
            job.last_result.map_or("-", |r| r.as_str()),
            job.running,
            last_run,
            job.last_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        ));
    }
    out
}

/// `at` in the zone `timezone`, with the zone's abbreviation.
fn in_zone(at: DateTime<Utc>, timezone: &str) -> String {
    match timezone.parse::<chrono_tz::Tz>() {
        Ok(tz) => at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

/// `pgward jobs run <name>`: the run's output as it comes, then its exit code.
pub async fn run(config: &Config, name: &str) -> Result<i32> {
    let mut result = None;
    let request = Request::JobRun {
        name: name.to_owned(),
    };
    client::call_streaming(
        &config.control.socket,
        &request,
        |response| match response {
            Response::JobOutput {
                line: OutputLine { stream, text },
            } => match stream {
                OutputStream::Stderr => eprintln!("{text}"),
                OutputStream::Pgward => eprintln!("pgward: {text}"),
                OutputStream::Stdout => println!("{text}"),
            },
            Response::JobDone { result: done } => result = Some(done),
            Response::Error { message } => result = Some(Err(message)),
            other => result = Some(Err(format!("{:#}", other.unexpected()))),
        },
    )
    .await?;
    match result {
        None => bail!(
            "the daemon closed the connection before the job ended\nHINT: pgward's log says \
             why (was the daemon stopped?); `pgward jobs list` shows how the run ended"
        ),
        Some(Err(message)) => bail!("{message}"),
        Some(Ok(summary)) if summary.success => Ok(0),
        Some(Ok(summary)) => Ok(summary.exit_code.filter(|&c| c != 0).unwrap_or(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::fake_daemon;

    #[tokio::test]
    async fn a_run_cut_short_by_the_daemon_says_where_to_look() {
        let (_dir, config) = fake_daemon("").await;
        assert_eq!(
            format!("{:#}", run(&config, "nightly").await.unwrap_err()),
            "the daemon closed the connection before the job ended\n\
             HINT: pgward's log says why (was the daemon stopped?); `pgward jobs list` shows \
             how the run ended"
        );
        let (_dir, config) = fake_daemon(
            "{\"response\":\"job_done\",\"result\":{\"Err\":\"no job named \\\"x\\\" (jobs: none)\"}}\n",
        )
        .await;
        assert_eq!(
            format!("{:#}", run(&config, "x").await.unwrap_err()),
            "no job named \"x\" (jobs: none)"
        );
    }
}
