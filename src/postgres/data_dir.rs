//! What pgward keeps of its own inside a data directory, by name, in one place: whoever
//! writes one of these files and whoever must step around it (a backup leaves them out, a
//! restore checks the bootstrap marker) read the name here, so neither depends on the other.
//!
//! Names only, no I/O. Each starts with `pgward.` so that it cannot be mistaken for one of
//! postgres's own files.

/// At the top of the data directory while a bootstrap (initdb, init scripts, or a restore
/// into an empty directory) is under way: a later start refuses a directory that has it.
pub const INIT_INCOMPLETE_MARKER: &str = "pgward.init-incomplete";

/// At the top of the data directory: the scheduler's memory of its jobs' past runs.
pub const JOBS_STATE_FILE: &str = "pgward.jobs.json";

/// Inside `pg_wal`: marks of the WAL files the daemon archived before postgres asked, when
/// pgward runs as the server's user (as root it keeps them out of that user's reach).
pub const ARCHIVED_MARKS_DIR: &str = "pgward.archived";

/// pgward's files at the top of the data directory, which are not the cluster's: a backup
/// leaves them out. (The marks directory is inside `pg_wal`, which a backup leaves out whole.)
pub const TOP_FILES: &[&str] = &[INIT_INCOMPLETE_MARKER, JOBS_STATE_FILE];
