//! Continuous WAL archiving and fetching: `archive_command` / `restore_command` and the
//! daemon-side work behind them.
//!
//! Composes leaves: `postgres` (WAL names, page headers, pg_control) and `repo` (storage).
//! The short-lived `pgward wal-push` / `wal-fetch` processes are thin clients of the daemon
//! (one storage client, parallel uploads, look-ahead, prefetch) and do the work themselves when
//! no daemon answers.

pub mod archived_marks;
pub mod archiver;
pub mod awaited;
pub mod fetch;
pub mod heartbeat;
pub mod pg_wal;
pub mod push;
mod ready_scan;
mod ready_watch;
pub mod stage;
pub mod timelines;
