//! The command tree. Names are the public interface (see the README).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// PID 1 of a PostgreSQL container: supervision, and the jobs around postgres, from one YAML file.
#[derive(Debug, Parser)]
#[command(name = "pgward", version, about)]
pub struct Cli {
    /// Config file [default: /etc/pgward/pgward.yaml; built-in defaults if it does not exist]
    #[arg(long, global = true, env = "PGWARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as the container's main process: start and supervise postgres and services
    /// (the default when no command is given).
    Run {
        /// Start a successor (`postgres.init.restore_as: successor`) although the original's
        /// heartbeat in the repository is fresh: only when the original is known to be gone.
        #[arg(long)]
        force: bool,
    },
    /// Validate or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// archive_command: archive one WAL file; exit 0 only once it is stored and verified.
    WalPush {
        /// The file, as postgres passes it (`%p`).
        path: PathBuf,
    },
    /// restore_command: fetch one WAL file. Exit 0 fetched, 1 not in the archive, 255 error
    /// (postgres then aborts recovery rather than end it early).
    WalFetch {
        /// The file name postgres wants (`%f`).
        name: String,
        /// Where to put it (`%p`).
        dest: PathBuf,
    },
    /// Promote the server (a standby, or a restore paused at its target) to a primary, and
    /// wait until it is one; refused on a primary.
    Promote,
    /// Close the server's current WAL segment (pg_switch_wal), so that it is archived now
    /// rather than when it fills or at archive_timeout.
    SwitchWal {
        /// Exit 0 only once the segment is in the repository (at most backup.wal_wait); 1
        /// when it is not by then.
        #[arg(long)]
        wait: bool,
    },
    /// Take a base backup of the running cluster into the repository.
    Backup {
        /// A full backup (the default).
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        /// Store only the files changed since the latest backup (full when there is none).
        #[arg(long)]
        incremental: bool,
        /// Attach `key=value` to the backup (repeatable).
        #[arg(long = "annotate", value_name = "KEY=VALUE")]
        annotations: Vec<String>,
        /// Never expire this backup.
        #[arg(long)]
        keep: bool,
    },
    /// List the complete backups, oldest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one backup: kind, parent, start and stop, WAL range, sizes, annotations.
    Show {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete the backups `backup.retention` no longer keeps, the objects of interrupted
    /// backups, and the archived WAL no kept backup needs.
    Expire {
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a data directory and set up recovery from the WAL archive.
    Restore(RestoreArgs),
    /// Check a backup without restoring it: every object against its checksum, and the WAL
    /// it needs in the archive. Exit 0 when it restores, 1 when anything it needs is wrong.
    Verify {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Print JSON instead of a report.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a scratch directory, start a throwaway postgres on it, recover,
    /// run a query, clean up. Exit 0 when it restored, recovered and the query returned true,
    /// 1 when not (with the reason).
    RestoreTest(RestoreTestArgs),
    /// Health checks (server, archiving, repository, backups), each OK or FAILED; exit 1 when
    /// any failed.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon's `/healthz` (or `/readyz`) on `metrics.listen`: exit 0 when it
    /// answers 200, 1 otherwise. For a container's HEALTHCHECK, without curl in the image.
    Health {
        /// Ask `/readyz` (postgres accepts connections) instead of `/healthz` (pgward is alive
        /// and postgres has not failed for good).
        #[arg(long)]
        ready: bool,
    },
    /// Ask the running daemon for the state of every service.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The scheduler's jobs: list them, or run one now.
    #[command(subcommand)]
    Jobs(JobsCommand),
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Every job: schedule, next run (in its time zone and in UTC), last result, running.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a job now through the daemon, streaming its output; exit with its exit code (0
    /// when it succeeded, the command's code or 1 when it failed).
    Run {
        /// The job's name.
        name: String,
    },
}

/// `pgward restore`'s arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RestoreArgs {
    /// A backup id, or `latest`.
    #[arg(default_value = "latest")]
    pub backup: String,
    /// Where to restore [default: postgres.data_dir from the config].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stop recovery at this time (as postgres reads it, e.g. `2026-11-30 03:55:00+00`).
    #[arg(long, group = "target", value_name = "TIME")]
    pub target_time: Option<String>,
    /// Stop recovery at this LSN.
    #[arg(long, group = "target", value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Stop recovery after this transaction id.
    #[arg(long, group = "target", value_name = "XID")]
    pub target_xid: Option<u64>,
    /// Stop recovery at this restore point (`pg_create_restore_point`).
    #[arg(long, group = "target", value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop recovery as soon as the backup is consistent.
    #[arg(long, group = "target")]
    pub target_immediate: bool,
    /// What postgres does at the target: pause (postgres's default), promote or shutdown.
    #[arg(long, value_name = "ACTION")]
    pub target_action: Option<String>,
    /// Replace whatever the data directory holds.
    #[arg(long, conflicts_with = "delta")]
    pub force: bool,
    /// Restore over the data directory's content: keep files that already match the
    /// backup (compared by checksum), rewrite the others, remove the rest.
    #[arg(long)]
    pub delta: bool,
    /// Restore tablespace OID into DIR instead of its original location (repeatable).
    #[arg(long = "tablespace-map", value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
}

/// `pgward restore-test`'s arguments: the options of the `restore-test` job action.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreTestArgs {
    /// A backup id, or `latest`.
    #[arg(default_value = "latest")]
    pub backup: String,
    /// `consistent`: recover to the backup's end, then promote; `latest`: replay all the
    /// archived WAL, then promote.
    #[arg(long, default_value = "consistent", value_parser = ["consistent", "latest"])]
    pub target: String,
    /// A query that must return one row whose first column is true.
    #[arg(long, value_name = "SQL")]
    pub sql: Option<String>,
    /// The database the query runs in.
    #[arg(long, default_value = "postgres", value_name = "DB")]
    pub database: String,
    /// Where the scratch data directory is made (and removed) [default: pgward-restore-test
    /// beside postgres.data_dir].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Exit 0 if the config is valid; print every problem as file:line:column and exit 2 if not.
    Check,
    /// Print the effective config (defaults applied, secrets redacted).
    Print,
    /// Print the JSON Schema (draft 2020-12) of the config file, for editors and linters.
    Schema,
}

/// The path of `pgward [--config FILE] wal-push PATH`, recognised without building the command
/// tree: postgres runs this once per WAL segment, and the call is often answered by one look
/// at the daemon's mark (see `wal::archived_marks`). Any other shape is `None` and goes
/// through clap.
pub fn plain_wal_push_path(args: impl IntoIterator<Item = OsString>) -> Option<PathBuf> {
    let mut args = args.into_iter().skip(1);
    loop {
        let arg = args.next()?;
        match arg.to_str()? {
            "wal-push" => break,
            "--config" => {
                args.next()?;
            }
            a if a.starts_with("--config=") => {}
            _ => return None,
        }
    }
    let path = args.next()?;
    if path.to_str().is_none_or(|p| p.starts_with('-')) || args.next().is_some() {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(args: &[&str]) -> Option<PathBuf> {
        plain_wal_push_path(args.iter().map(OsString::from))
    }

    #[test]
    fn only_the_plain_wal_push_shapes_skip_the_parser() {
        let p = Some(PathBuf::from("pg_wal/000000010000000000000003"));
        assert_eq!(
            path_of(&["pgward", "wal-push", "pg_wal/000000010000000000000003"]),
            p
        );
        assert_eq!(
            path_of(&[
                "pgward",
                "--config",
                "/c.yaml",
                "wal-push",
                "pg_wal/000000010000000000000003"
            ]),
            p
        );
        assert_eq!(
            path_of(&[
                "pgward",
                "--config=/c.yaml",
                "wal-push",
                "pg_wal/000000010000000000000003"
            ]),
            p
        );
        for other in [
            &["pgward"][..],
            &["pgward", "wal-push"],
            &["pgward", "wal-push", "--help"],
            &["pgward", "wal-push", "a", "b"],
            &["pgward", "wal-fetch", "a", "b"],
            &["pgward", "-v", "wal-push", "a"],
            &["pgward", "--config"],
        ] {
            assert_eq!(path_of(other), None, "{other:?}");
        }
    }
}
