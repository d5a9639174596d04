//! `pgward status [--json]`: services, jobs, recovery and archiver, from the running daemon.

use anyhow::{bail, Result};

use super::format_secs;
use crate::config::Config;
use crate::control::{client, Request, Response};

/// Exit 0 when the daemon answered.
pub async fn status(config: &Config, json: bool) -> Result<i32> {
    let status = match client::call(&config.control.socket, &Request::Status).await? {
        Response::Status(status) => status,
        Response::Error { message } => bail!("the daemon refused: {message}"),
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
            "recovery: {} at {}; {}",
            if r.paused { "PAUSED" } else { "in progress" },
            r.replay_lsn.as_deref().unwrap_or("-"),
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
            a.backlog,
            a.oldest_ready_age_seconds.map_or("-".into(), format_secs),
            a.in_flight,
            a.last_archived.as_deref().unwrap_or("-"),
            a.last_error.as_deref().map(|e| format!("; failing: {e}")).unwrap_or_default(),
        );
    }
    Ok(0)
}
