//! `pgward status [--json]`: services, jobs, recovery and archiver, from the running daemon.

use anyhow::Result;

use super::format_secs;
use crate::config::Config;
use crate::control::{self, client, Request, Response};

/// Exit 0 when the daemon answered.
pub async fn status(config: &Config, json: bool) -> Result<i32> {
    let status = match client::call(&config.control.socket, &Request::Status).await? {
        Response::Status(status) => status,
        Response::Error { message } => return Err(control::refused(&message)),
        other => return Err(other.unexpected()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    println!(
        "pgward {} (pid {}), up {}, {}",
        status.version,
        status.pgward_pid,
        format_secs(status.uptime_seconds),
        status.phase
    );
    println!(
        "{:<16} {:<10} {:>8} {:>9} {:>10}  LAST EXIT",
        "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME"
    );
    for s in &status.services {
        println!(
            "{:<16} {:<10} {:>8} {:>9} {:>10}  {}",
            s.name,
            s.state,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.restarts,
            s.uptime_seconds.map_or("-".into(), format_secs),
            s.last_exit.as_deref().unwrap_or("-"),
        );
    }
    if !status.jobs.is_empty() {
        print!("{}", super::jobs::table(&status.jobs));
    }
    if let Some(r) = &status.recovery {
        println!(
            "{}: {} at {} (from the {}; {} bytes, {:.1}s behind); {}",
            r.role,
            if r.paused { "PAUSED" } else { "replaying" },
            r.replay_lsn.as_deref().unwrap_or("-"),
            match r.source.as_str() {
                "streaming" => "primary, streaming",
                _ => "archive",
            },
            r.lag_bytes,
            r.lag_seconds,
            r.hint
        );
    }
    if let Some(a) = &status.archiver {
        println!(
            "archiver: {} archived ({} answered ahead), {} already archived, {} failed; backlog {} (oldest {}), {} in flight; last {}{}",
            a.archived_total,
            a.answered_ahead_total,
            a.already_archived_total,
            a.failed_total,
            a.backlog.map_or_else(
                || "UNKNOWN (archive_status cannot be scanned)".to_owned(),
                |n| n.to_string()
            ),
            a.oldest_ready_age_seconds.map_or("-".into(), format_secs),
            a.in_flight,
            a.last_archived.as_deref().unwrap_or("-"),
            a.last_error.as_deref().map(|e| format!("; failing: {e}")).unwrap_or_default(),
        );
        if let Some(e) = &a.scan_error {
            println!(
                "archiver: failed to {e} ({} scans failed)",
                a.scan_errors_total
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::fake_daemon;

    async fn error_of(answer: &'static str) -> String {
        let (_dir, config) = fake_daemon(answer).await;
        format!("{:#}", status(&config, false).await.unwrap_err())
    }

    #[tokio::test]
    async fn a_refusal_or_an_answer_of_another_version_says_what_to_check() {
        assert_eq!(
            error_of("{\"response\":\"error\",\"message\":\"bad request: unknown variant\"}\n")
                .await,
            "the daemon refused: bad request: unknown variant"
        );
        assert_eq!(
            error_of("{\"response\":\"not_served\"}\n").await,
            "unexpected answer from the daemon: not_served\n\
             HINT: is the running daemon the same pgward version as this command? (`pgward \
             status --json` shows its version)"
        );
        assert_eq!(
            error_of("{\"response\":\"status\",\"pgward_pid\":1}\n").await,
            "bad answer from the daemon: \"{\\\"response\\\":\\\"status\\\",\\\"pgward_pid\\\":1}\" \
             (missing field `version`)\n\
             HINT: is the running daemon the same pgward version as this command? (`pgward \
             status --json` shows its version)"
        );
        assert_eq!(
            error_of("").await,
            "the daemon closed the connection without answering\n\
             HINT: pgward's log says why (was it shutting down?)"
        );
    }

    #[tokio::test]
    async fn no_daemon_means_no_pgward_run_on_this_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::config::load(None, &|_| None).expect("defaults");
        config.control.socket = dir.path().join("pgward.sock");
        assert_eq!(
            format!("{:#}", status(&config, false).await.unwrap_err()),
            format!(
                "cannot reach the pgward daemon at {}: No such file or directory (os error 2)\n\
                 HINT: is `pgward run` running with the same config (control.socket)?",
                config.control.socket.display()
            )
        );
    }
}
