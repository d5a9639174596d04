//! The job scheduler: `jobs[]` of the config run on cron schedules inside the daemon, with
//! yacron's policies (concurrency, timeout and kill, retries with backoff, `fails_when`),
//! catch-up of runs missed while pgward was down, reports on failure and success, and the
//! built-in actions (backup, expire, verify, check, sql, restore-test).
//!
//! - [`schedule`]: when a job fires, in its time zone, through DST changes (pure).
//! - [`policy`]: concurrency, retry delays, what makes a run a failure (pure).
//! - [`state`]: what survives a restart (last runs, for catch-up and status), kept in the
//!   data directory.
//! - [`command`]: one attempt of a command job (process group, timeout and kill, output).
//! - [`report`]: `on_failure` / `on_success` (command and webhook).
//! - [`restore_test`]: a backup restored, started, recovered and queried in a scratch
//!   directory.

pub mod command;
pub mod policy;
pub mod report;
pub mod restore_test;
pub mod schedule;
pub mod state;
