//! Thin entry point: CLI → logging → config → runtime → `app::run` → exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use pgward::cli::{Cli, Command, ConfigCommand, JobsCommand};
use pgward::config::{self, Config, ConfigError, LogFormat};
use pgward::{app, backup_commands, commands, init, jobs_commands, logging};

/// Exit code for a bad config or bad usage.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // archive_command's common cases (a mark, or the daemon's answer), before the command
    // tree is even built.
    if let Some(path) = pgward::cli::plain_wal_push_path(std::env::args_os()) {
        if commands::wal_push_quick(&path).is_some() {
            return ExitCode::SUCCESS;
        }
    }
    let cli = Cli::parse();
    let config_path = config_path(cli.config.as_deref());
    match cli.command.unwrap_or(Command::Run) {
        Command::Config(ConfigCommand::Check) => match load(config_path.as_deref()) {
            Ok(config) => {
                println!("{}: ok", source_name(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Config(ConfigCommand::Print) => match load(config_path.as_deref()) {
            Ok(config) => {
                print!("{}", config::redacted_yaml(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Config(ConfigCommand::Schema) => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Jobs(command) => {
            let config = match load(config_path.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init(config.log.format, "warn");
            match command {
                JobsCommand::List { json } => {
                    with_runtime(false, jobs_commands::list(&config, json))
                }
                JobsCommand::Run { name } => {
                    with_runtime(false, jobs_commands::run(&config, &name))
                }
            }
        }
        Command::Status { json } => {
            let config = match load(config_path.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init(config.log.format, "warn");
            with_runtime(false, commands::status(&config, json))
        }
        // archive_command and restore_command: the config is read only if no daemon does the
        // work (see `commands::SOCKET_ENV`); the daemon passes its log format along.
        Command::WalPush { path } => {
            logging::init(client_log_format(), "info");
            let mut config = commands::LazyConfig::new(config_path);
            with_runtime(false, async move {
                commands::wal_push(&mut config, &path).await.or_else(|e| {
                    tracing::error!("failed to archive {}: {e:#}", path.display());
                    Ok(1)
                })
            })
        }
        Command::WalFetch { name, dest } => {
            logging::init(client_log_format(), "info");
            let mut config = commands::LazyConfig::new(config_path);
            with_runtime(false, async move {
                Ok(commands::wal_fetch(&mut config, &name, &dest).await)
            })
        }
        Command::Backup {
            full: _,
            incremental,
            annotations,
            keep,
        } => with_config(config_path.as_deref(), |config| {
            with_runtime(
                true,
                backup_commands::backup(&config, incremental, &annotations, keep),
            )
        }),
        Command::List { json } => with_config(config_path.as_deref(), |config| {
            with_runtime(false, backup_commands::list(&config, json))
        }),
        Command::Health { ready } => with_config(config_path.as_deref(), |config| {
            with_runtime(false, commands::health(&config, ready))
        }),
        Command::Check { json } => with_config(config_path.as_deref(), |config| {
            with_runtime(false, async move {
                let results = pgward::check::run(&config).await;
                pgward::check::print(&results, json)?;
                Ok(if results.iter().all(|r| r.ok) { 0 } else { 1 })
            })
        }),
        Command::Show { backup, json } => with_config(config_path.as_deref(), |config| {
            with_runtime(false, backup_commands::show(&config, &backup, json))
        }),
        Command::Expire { dry_run, json } => with_config(config_path.as_deref(), |config| {
            with_runtime(false, backup_commands::expire(&config, dry_run, json))
        }),
        Command::Restore(request) => with_config(config_path.as_deref(), |config| {
            with_runtime(true, backup_commands::restore_command(&config, &request))
        }),
        Command::Verify { backup, json } => with_config(config_path.as_deref(), |config| {
            with_runtime(true, backup_commands::verify(&config, &backup, json))
        }),
        Command::RestoreTest(args) => with_config(config_path.as_deref(), |config| {
            // The throwaway server is a child: the reaper must run, and a stop signal must
            // stop it and clean up rather than kill pgward.
            let signals = match init::start_signal_thread() {
                Ok(signals) => signals,
                Err(e) => {
                    tracing::error!("failed to install signal handlers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = init::become_subreaper() {
                tracing::debug!("cannot become child subreaper: {e}");
            }
            with_runtime(true, backup_commands::restore_test(&config, &args, signals))
        }),
        Command::Run => run(config_path.as_deref()),
    }
}

fn run(config_path: Option<&Path>) -> ExitCode {
    let config = match load(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    logging::init(config.log.format, &config.log.level);
    if let Err(e) = init::become_subreaper() {
        tracing::warn!(
            "cannot become child subreaper: {e}; orphans of children will not be reaped here"
        );
    }
    // Before the runtime and before any child: no SIGCHLD may be missed.
    let signals = match init::start_signal_thread() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!("failed to install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    with_runtime(true, async move {
        match app::run(config, signals).await {
            Ok(code) => Ok(code),
            Err(e) => {
                tracing::error!("failed to run: {e:#}");
                Ok(app::EXIT_FAILED)
            }
        }
    })
}

/// The log format `pgward run` passes to the postgres it starts, so its archive and restore
/// commands log like the daemon.
fn client_log_format() -> LogFormat {
    match std::env::var(logging::FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// `--config`/`PGWARD_CONFIG` must exist; the default path is used only if it does.
fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    config::load(path, &|name| std::env::var(name).ok()).map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{e}"),
            ConfigError::Read { .. } => eprintln!("error: {e}"),
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn source_name(config: &Config) -> String {
    match &config.source {
        Some(path) => path.display().to_string(),
        None => "built-in defaults".into(),
    }
}

/// Loads the config (exit 2 on problems), sets up logging for a one-shot command, then runs
/// `work` with it.
fn with_config(config_path: Option<&Path>, work: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match load(config_path) {
        Ok(config) => {
            logging::init(config.log.format, &config.log.level);
            work(config)
        }
        Err(code) => code,
    }
}

fn with_runtime(
    daemon: bool,
    work: impl std::future::Future<Output = anyhow::Result<i32>>,
) -> ExitCode {
    let mut builder = if daemon {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        // Supervision needs little parallelism; compression and uploads use the blocking pool.
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
