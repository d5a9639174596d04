//! The commands of the command line, one file per family: each parses its arguments, calls
//! the domain, prints, and returns the exit code. `main.rs` dispatches to them; this file
//! holds what they share: finding and loading the config, logging, the async runtime.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod config;
pub mod expire;
pub mod health;
pub mod jobs;
pub mod promote;
pub mod restore;
pub mod restore_test;
pub mod run;
pub mod status;
pub mod verify;
pub mod wal;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use futures_util::future::LocalBoxFuture;

use crate::config::{Config, ConfigError};
use crate::logging;
use crate::site::Site;

/// Exit code for a bad config or bad usage.
pub const EXIT_CONFIG: u8 = 2;

/// `--config`/`PGWARD_CONFIG` must exist; the default path is used only if it does.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(crate::config::DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

/// Loads the config; on problems prints them and returns exit code 2.
pub fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    report_problems(crate::config::load(path, &|name| std::env::var(name).ok()))
}

/// [`load`], with the `user` keys of services and jobs looked up in this system's user
/// database: for `config check` and the commands that start those children.
pub fn load_checking_users(path: Option<&Path>) -> Result<Config, ExitCode> {
    report_problems(crate::config::load_with_users(
        path,
        &|name| std::env::var(name).ok(),
        &crate::config::system_user,
    ))
}

fn report_problems(loaded: Result<Config, ConfigError>) -> Result<Config, ExitCode> {
    loaded.map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{}", crate::redact::scrub(&e.to_string())),
            ConfigError::Read { .. } => {
                eprintln!("error: {}", crate::redact::scrub(&e.to_string()))
            }
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// A command that asks the daemon: the config (exit 2 on problems), quiet logging, then
/// `work` on a single-threaded runtime.
pub fn client<F>(path: Option<&Path>, work: F) -> ExitCode
where
    F: for<'a> FnOnce(&'a Config) -> LocalBoxFuture<'a, anyhow::Result<i32>>,
{
    match load(path) {
        Ok(config) => {
            logging::init(config.log.format, "warn");
            with_runtime(false, work(&config))
        }
        Err(code) => code,
    }
}

/// A one-shot command on the config alone, logging at `log.level`.
pub fn with_config<F>(path: Option<&Path>, work: F) -> ExitCode
where
    F: for<'a> FnOnce(&'a Config) -> LocalBoxFuture<'a, anyhow::Result<i32>>,
{
    match load(path) {
        Ok(config) => {
            logging::init(config.log.format, &config.log.level);
            with_runtime(false, work(&config))
        }
        Err(code) => code,
    }
}

/// A one-shot command on the cluster's [`Site`], logging at `log.level`; `parallel` for the
/// commands that move data (a multi-threaded runtime).
pub fn with_site<F>(path: Option<&Path>, parallel: bool, work: F) -> ExitCode
where
    F: for<'a> FnOnce(&'a Site) -> LocalBoxFuture<'a, anyhow::Result<i32>>,
{
    match load(path) {
        Ok(config) => {
            logging::init(config.log.format, &config.log.level);
            // Inside the runtime: the storage clients may need one.
            with_runtime(parallel, async move {
                let site = Site::new(config);
                work(&site).await
            })
        }
        Err(code) => code,
    }
}

/// Runs `work` to its end on a new runtime: multi-threaded (two workers) when `parallel`;
/// its result as the exit code, an error printed and exit 1.
pub fn with_runtime(parallel: bool, work: impl Future<Output = anyhow::Result<i32>>) -> ExitCode {
    let mut builder = if parallel {
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
            eprintln!(
                "error: {}",
                crate::redact::scrub(&crate::repo::with_hint(&e))
            );
            ExitCode::FAILURE
        }
    }
}

/// `secs` as a human duration, whole seconds.
pub(crate) fn format_secs(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}

/// A stand-in for the daemon: answers the first request on its socket with `answer` (raw
/// lines; empty: closes the connection without a word).
#[cfg(test)]
pub(crate) async fn fake_daemon(answer: &'static str) -> (tempfile::TempDir, Config) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("pgward.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, mut write) = stream.into_split();
        let mut request = String::new();
        BufReader::new(read)
            .read_line(&mut request)
            .await
            .expect("read");
        write.write_all(answer.as_bytes()).await.expect("write");
    });
    let mut config = crate::config::load(None, &|_| None).expect("the built-in defaults are valid");
    config.control.socket = socket;
    (dir, config)
}
