//! The control socket: a unix socket on which the daemon answers requests of short-lived
//! `pgward` clients (`status` now; `wal-push` and others later).
//!
//! Protocol: one JSON request line, one JSON response line, then the connection closes.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::supervisor::UnitStatus;

/// A request from a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Error { message: String },
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
}
