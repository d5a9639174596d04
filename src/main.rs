//! The entry point: the command line, dispatched to `cmd::<command>`, which loads the config,
//! sets up logging and runs the command (`pgward run`: the daemon) to its exit code.

use std::process::ExitCode;

use clap::Parser;

use pgward::cli::{self, Cli, Command, JobsCommand};
use pgward::cmd;

fn main() -> ExitCode {
    limit_malloc_arenas();
    // archive_command's common cases (a mark, or the daemon's answer), before the command
    // tree is even built.
    if let Some(path) = cli::plain_wal_push_path(std::env::args_os()) {
        if cmd::wal::push_quick(&path).is_some() {
            return ExitCode::SUCCESS;
        }
    }
    let cli = Cli::parse();
    let config_path = cmd::config_path(cli.config.as_deref());
    let path = config_path.as_deref();
    match cli.command.unwrap_or(Command::Run { force: false }) {
        Command::Run { force } => cmd::run::run(path, force),
        Command::Config(command) => cmd::config::run(command, path),
        // archive_command and restore_command: the config is read only if no daemon does the
        // work (see `control::SOCKET_ENV`); the daemon passes its log format along.
        Command::WalPush { path: file } => cmd::wal::push(config_path, &file),
        Command::WalFetch { name, dest } => cmd::wal::fetch(config_path, &name, &dest),
        Command::Status { json } => {
            cmd::client(path, |config| Box::pin(cmd::status::status(config, json)))
        }
        Command::Jobs(JobsCommand::List { json }) => {
            cmd::client(path, |config| Box::pin(cmd::jobs::list(config, json)))
        }
        Command::Jobs(JobsCommand::Run { name }) => cmd::client(path, move |config| {
            Box::pin(async move { cmd::jobs::run(config, &name).await })
        }),
        Command::Health { ready } => {
            cmd::with_config(path, |config| Box::pin(cmd::health::health(config, ready)))
        }
        Command::Backup {
            full: _,
            incremental,
            annotations,
            keep,
        } => cmd::with_site(path, true, move |site| {
            Box::pin(
                async move { cmd::backup::backup(site, incremental, &annotations, keep).await },
            )
        }),
        Command::Promote => {
            cmd::with_site(path, false, |site| Box::pin(cmd::promote::promote(site)))
        }
        Command::SwitchWal { wait } => cmd::with_site(path, false, move |site| {
            Box::pin(async move { cmd::wal::switch(site, wait).await })
        }),
        Command::List { json } => {
            cmd::with_site(path, false, |site| Box::pin(cmd::catalog::list(site, json)))
        }
        Command::Show { backup, json } => cmd::with_site(path, false, move |site| {
            Box::pin(async move { cmd::catalog::show(site, &backup, json).await })
        }),
        Command::Check { json } => {
            cmd::with_site(path, false, |site| Box::pin(cmd::check::check(site, json)))
        }
        Command::Expire { dry_run, json } => cmd::with_site(path, false, |site| {
            Box::pin(cmd::expire::expire(site, dry_run, json))
        }),
        Command::Restore(request) => cmd::with_site(path, true, move |site| {
            Box::pin(async move { cmd::restore::restore(site, &request).await })
        }),
        Command::Verify { backup, json } => cmd::with_site(path, true, move |site| {
            Box::pin(async move { cmd::verify::verify(site, &backup, json).await })
        }),
        Command::RestoreTest(args) => cmd::restore_test::run(path, &args),
    }
}

/// glibc's allocator gives each thread that contends for it an arena of its own (up to eight
/// per core), and an arena keeps what was freed in it. A backup frees and allocates transfer
/// buffers of megabytes on many threads, so its peak memory followed the number of arenas,
/// not what was in flight: at 100,000 files two arenas took a third off the peak at the same
/// speed. Called before any thread starts; `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
