//! The job scheduler: `jobs[]` of the config run on cron schedules inside the daemon, with
//! yacron's policies (concurrency, timeout and kill, retries with backoff, `fails_when`),
//! catch-up of runs missed while pgward was down, reports on failure and success, and the
//! built-in actions (backup, expire, verify, check, sql, restore-test).
pub mod restore_test;
