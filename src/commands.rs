//! Client commands that talk to the running daemon.

use anyhow::{bail, Result};

use crate::config::Config;
use crate::control::{client, Request, Response};

/// `pgward status [--json]`: exit 0 when the daemon answered.
pub async fn status(config: &Config, json: bool) -> Result<i32> {
    let status = match client::call(&config.control.socket, &Request::Status).await? {
        Response::Status(status) => status,
        Response::Error { message } => bail!("the daemon refused: {message}"),
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
    Ok(0)
}

fn format_secs(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}
