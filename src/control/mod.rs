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

/// A request from a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Archive this WAL file (absolute path); answered once stored and verified.
    WalPush {
        path: PathBuf,
    },
    /// Fetch this WAL file name into `dest` (absolute path).
    WalFetch {
        name: String,
        dest: PathBuf,
    },
    /// The jobs and what they did last.
    Jobs,
    /// Run this job now; answered with its output lines ([`Response::JobOutput`]), then
    /// [`Response::JobDone`].
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

/// What `pgward status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pgward_pid: u32,
    pub version: String,
    pub uptime_seconds: f64,
    /// `running` or `stopping`.
    pub phase: String,
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

/// Where a recovering postgres stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryStatus {
    /// Replay is paused (at a recovery target with `--target-action pause`, or by hand).
    pub paused: bool,
    /// The last WAL position replayed.
    pub replay_lsn: Option<String>,
    /// What to do next, for a human.
    pub hint: String,
}
