//! pgward: PID 1 of a PostgreSQL container.
//!
//! # Layout
//! - [`cli`]: the command tree; `main.rs` stays thin (CLI → logging → config → runtime →
//!   `app::run` → exit code).
//! - [`app`]: wiring only: builds postgres and services from config, owns shutdown order.
//! - [`commands`]: client commands that talk to the daemon (`status`); [`jobs_commands`]:
//!   `jobs list` and `jobs run`.
//! - [`config`]: one YAML file → validated typed config (interpolation, secrets,
//!   `file:line:col` errors, redaction).
//! - [`init`]: PID-1 duties off the async runtime: signal thread, the one reaper, subreaper.
//! - [`process`]: spawning children (privilege drop, process group, parent-death signal,
//!   output relay), registered with the reaper.
//! - [`supervisor`]: a pure state machine per service, its executor, ordered start and stop.
//! - [`postgres`]: binaries, bootstrap like the official image, server command line, readiness;
//!   WAL names and LSNs, WAL page headers, `pg_control`.
//! - [`wal`]: `wal-push` / `wal-fetch` and the daemon's archiver (look-ahead uploads) and
//!   fetcher (prefetch spool).
//! - [`control`]: the unix-socket protocol between CLI clients and the daemon.
//! - [`repo`]: the repository on object storage (file, S3, GCS, Azure): object format,
//!   codecs, key layout, `repo.json`, create-only puts, retries.
//! - [`scheduler`]: cron jobs, their policies and reports, the built-in actions.
//! - [`metrics`]: the exporter (postgres and pgward metrics) and its HTTP endpoints.
//! - [`fsutil`]: durable local writes.
//! - [`logging`]: pgward's own log records.
//!
//! Leaves (`config`, `init`, `fsutil`, `postgres`, `process`) know nothing of each other's
//! callers; only `app` wires subsystems together.

pub mod app;
pub mod backup;
pub mod backup_commands;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod fsutil;
pub mod init;
pub mod jobs_commands;
pub mod logging;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod repo;
pub mod restore;
pub mod scheduler;
pub mod supervisor;
pub mod wal;
