//! The control socket: a unix socket on which the daemon answers requests of short-lived
//! `pgward` clients (`status` now; `wal-push` and others later).
//!
//! Protocol: one JSON request line, one JSON response line, then the connection closes. A
//! request answered as it goes (`job_run`) gets several response lines, the last one final.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use crate::scheduler::{JobStatus, OutputLine, RunSummary};
use crate::supervisor::UnitStatus;
use crate::wal::archiver::ArchiverStatus;
use crate::wal::push::Pushed;

/// Where the daemon listens, as `pgward run` tells the postgres it starts (and so its
/// archive_command and restore_command). With it, a client reaches the daemon without reading
/// the config file, which may hold secrets the server's user cannot read.
pub const SOCKET_ENV: &str = "PGWARD_CONTROL_SOCKET";

/// A request from a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Archive this WAL file (absolute path); answered once stored and verified. From the
    /// server's user, only a WAL file directly in the cluster's `pg_wal` (see `wal::pg_wal`).
    WalPush {
        path: PathBuf,
    },
    /// Fetch this WAL file name into `dest` (absolute path). For the server's user, `dest` is
    /// directly in the cluster's `pg_wal`.
    WalFetch {
        name: String,
        dest: PathBuf,
    },
    /// The jobs and what they did last.
    Jobs,
    /// Run this job now; answered with its output lines ([`Response::JobOutput`]), then
    /// [`Response::JobDone`]. Only for root and pgward's own user.
    JobRun {
        name: String,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    WalPushed {
        outcome: Pushed,
    },
    /// `found: false`: not in the archive.
    WalFetched {
        found: bool,
    },
    Jobs {
        jobs: Vec<JobStatus>,
    },
    /// One line of a running job's output.
    JobOutput {
        line: OutputLine,
    },
    /// The job ran (or could not: `Err`).
    JobDone {
        result: Result<RunSummary, String>,
    },
    /// This daemon does not serve that request (e.g. archiving is off): the client does the
    /// work itself.
    NotServed,
    Error {
        message: String,
    },
}

impl Response {
    /// The answer's kind, as the protocol names it (`wal_pushed`, `status`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Status(_) => "status",
            Response::WalPushed { .. } => "wal_pushed",
            Response::WalFetched { .. } => "wal_fetched",
            Response::Jobs { .. } => "jobs",
            Response::JobOutput { .. } => "job_output",
            Response::JobDone { .. } => "job_done",
            Response::NotServed => "not_served",
            Response::Error { .. } => "error",
        }
    }

    /// The error for an answer the client did not ask for: a daemon of another version.
    pub fn unexpected(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "unexpected answer from the daemon: {}\n{VERSION_HINT}",
            self.kind()
        )
    }
}

/// The hint for a request or an answer one side cannot read: a client and a daemon of two
/// pgward versions (after an upgrade of the binary, before the daemon restarted).
pub const VERSION_HINT: &str = "HINT: is the running daemon the same pgward version as this \
                                command? (`pgward status --json` shows its version)";

/// The error for [`Response::Error`], the daemon's refusal of a request (its message says
/// why, with a hint when it has one).
pub fn refused(message: &str) -> anyhow::Error {
    anyhow::anyhow!("the daemon refused: {message}")
}

/// What `pgward status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pgward_pid: u32,
    pub version: String,
    pub uptime_seconds: f64,
    pub phase: Phase,
    pub services: Vec<UnitStatus>,
    /// Absent when archiving is off.
    pub archiver: Option<ArchiverStatus>,
    /// Present while postgres recovers (a restore, a standby).
    #[serde(default)]
    pub recovery: Option<RecoveryStatus>,
    /// The scheduler's jobs.
    #[serde(default)]
    pub jobs: Vec<JobStatus>,
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// The ordered shutdown has begun.
    Stopping,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        })
    }
}

/// Where a recovering postgres stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryStatus {
    /// `standby` (a hot standby, `standby.signal`) or `recovery` (a restore recovering
    /// towards its target, then promoting).
    #[serde(default = "recovery_role")]
    pub role: String,
    /// Where WAL comes from now: `streaming` (from the primary) or `archive` (the repository,
    /// through `restore_command`).
    #[serde(default)]
    pub source: String,
    /// Replay is paused (at a recovery target with `--target-action pause`, or by hand).
    pub paused: bool,
    /// The last WAL position replayed.
    pub replay_lsn: Option<String>,
    /// WAL received (from the primary, as it last reported its end) but not replayed yet, in
    /// bytes; 0 when nothing is known beyond what was replayed.
    #[serde(default)]
    pub lag_bytes: f64,
    /// How old the last replayed transaction is, in seconds; 0 when replay has caught up with
    /// everything received.
    #[serde(default)]
    pub lag_seconds: f64,
    /// What to do next, for a human.
    pub hint: String,
}

fn recovery_role() -> String {
    "recovery".to_owned()
}
