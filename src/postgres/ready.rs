//! Readiness: postgres is ready when a real connection gets an answer from the server.
//!
//! Like `pg_isready`, a server that answers with an authentication or "database does not
//! exist" error is accepting connections; one that answers "the database system is starting
//! up" (SQLSTATE 57P03) or does not answer at all is not.
//!
//! Connection attempts during start-up each leave a FATAL line in the server log, and crash
//! recovery can take minutes, so the server's own status line in `postmaster.pid` (what
//! `pg_ctl -w` watches) is polled first, and only a server that says it accepts connections is
//! tried for real.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::secret::Secret;

/// Where and as whom to connect over the unix socket.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
}

impl Target {
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgward")
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config
    }

    /// Opens a session, spawning its connection task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection closed: {e}");
            }
        });
        Ok(client)
    }
}

/// Whether the server `client` is connected to is in recovery (a standby, or a restore not
/// yet promoted).
pub async fn in_recovery(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    use anyhow::Context;
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .context("ask the server whether it is in recovery")?
        .get(0))
}

/// One readiness check.
pub async fn probe(target: &Target) -> Result<(), String> {
    match target.config().connect(NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            // Let the session end cleanly instead of leaving a "connection reset" in the log.
            let _ = connection.await;
            Ok(())
        }
        Err(e) => match e.as_db_error() {
            Some(db) if *db.code() == SqlState::CANNOT_CONNECT_NOW => Err(db.message().to_owned()),
            Some(_) => Ok(()),
            None => Err(e.to_string()),
        },
    }
}

/// Polls until the postmaster `pid` of `data_dir` is ready: every 10 ms for the first second
/// (start-up of a small cluster takes a few tens of ms, and this delay adds directly to
/// time-to-ready), then every 100 ms.
pub async fn wait_ready(target: &Target, data_dir: &Path, pid: i32) {
    wait_for_status(target, data_dir, pid, &["ready", "standby"]).await
}

/// [`wait_ready`] for a server that is out of recovery (`ready`). A warm standby (recovery
/// with `hot_standby` off) says `standby` but refuses connections: trying it would only
/// leave a FATAL line in its log at every poll.
pub async fn wait_open(target: &Target, data_dir: &Path, pid: i32) {
    wait_for_status(target, data_dir, pid, &["ready"]).await
}

async fn wait_for_status(target: &Target, data_dir: &Path, pid: i32, accepted: &[&str]) {
    let start = tokio::time::Instant::now();
    let pid_file = data_dir.join("postmaster.pid");
    loop {
        if says(&pid_file, pid, accepted) && probe(target).await.is_ok() {
            return;
        }
        let pause = if start.elapsed() < Duration::from_secs(1) {
            10
        } else {
            100
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Whether `postmaster.pid` belongs to `pid` and its status line (the 8th) says the server
/// accepts connections: `ready`, or `standby` for a hot standby.
#[cfg(test)]
fn says_ready(pid_file: &Path, pid: i32) -> bool {
    says(pid_file, pid, &["ready", "standby"])
}

/// Whether `postmaster.pid` belongs to `pid` and its status line (the 8th) is one of
/// `accepted`.
fn says(pid_file: &Path, pid: i32, accepted: &[&str]) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let mut lines = text.lines();
    let owner = lines.next().and_then(|l| l.trim().parse::<i32>().ok());
    let status = lines.nth(6).map(str::trim);
    owner == Some(pid) && status.is_some_and(|s| accepted.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_postmaster_status_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postmaster.pid");
        let write = |status: &str| {
            std::fs::write(
                &file,
                format!("42\n/data\n1700000000\n5432\n/run\n*\n  1 2\n{status}\n"),
            )
            .unwrap()
        };
        write("starting");
        assert!(!says_ready(&file, 42));
        write("ready   ");
        assert!(says_ready(&file, 42));
        assert!(!says_ready(&file, 43), "another postmaster's file");
        write("standby ");
        assert!(says_ready(&file, 42));
        assert!(!says(&file, 42, &["ready"]), "a warm standby is not open");
        assert!(!says_ready(&dir.path().join("missing"), 42));
    }
}
