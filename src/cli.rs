//! The command tree. Names are the public interface (see the README).

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
    Run,
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
    /// Ask the running daemon for the state of every service.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Exit 0 if the config is valid; print every problem as file:line:column and exit 2 if not.
    Check,
    /// Print the effective config (defaults applied, secrets redacted).
    Print,
}
