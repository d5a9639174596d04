//! `pgward [run]`: PID-1 mode. Becomes the subreaper and starts the signal thread before the
//! runtime and before any child (no SIGCHLD may be missed), then runs the daemon (`app`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::site::Site;
use crate::{app, init, logging};

/// `force`: start a successor although its original's heartbeat is fresh (`--force`).
pub fn run(config_path: Option<&Path>, force: bool) -> ExitCode {
    let config = match super::load_checking_users(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    logging::init(config.log.format, &config.log.level);
    init::memory::bound_allocator_arenas();
    if let Err(e) = init::become_subreaper() {
        tracing::warn!(
            "cannot become child subreaper: {e}; orphans of children will not be reaped here"
        );
    }
    let signals = match init::start_signal_thread() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!("failed to install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::with_runtime(true, async move {
        // Inside the runtime: the storage clients may need one.
        let site = Arc::new(Site::new(config));
        match app::run(site, signals, app::RunOptions { force }).await {
            Ok(code) => Ok(code),
            Err(e) => {
                tracing::error!("failed to run: {e:#}");
                Ok(app::EXIT_FAILED)
            }
        }
    })
}
