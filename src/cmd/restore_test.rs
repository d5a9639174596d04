//! `pgward restore-test [<id|latest>] [--target consistent|latest] [--sql SQL] [--database DB]
//! [--scratch-dir DIR] [--json]`: restore into a scratch directory, recover on a throwaway
//! server, run a query that must return true, clean up.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::cli::RestoreTestArgs;
use crate::config::{RestoreTestConfig, RestoreTestTarget};
use crate::init::{self, ForwardedSignal};
use crate::logging;
use crate::restore_test::human_report;
use crate::site::Site;

/// Exit code when the test cannot run as asked.
const EXIT_USAGE: i32 = 2;

/// Exit 0 when the backup restored, recovered and the query returned true, 1 when not, 2 when
/// the test cannot run as asked.
pub fn run(config_path: Option<&Path>, args: &RestoreTestArgs) -> ExitCode {
    let config = match super::load(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    logging::init(config.log.format, &config.log.level);
    // The throwaway server is a child: the reaper must run, and a stop signal must stop it
    // and clean up rather than kill pgward.
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
    super::with_runtime(true, async move {
        let site = Site::new(config);
        restore_test(&site, args, signals).await
    })
}

/// A stop signal (`signals`) ends the test early, cleaning up.
async fn restore_test(
    site: &Site,
    args: &RestoreTestArgs,
    mut signals: UnboundedReceiver<ForwardedSignal>,
) -> Result<i32> {
    if args.backup != "latest" {
        if let Err(e) = crate::backup::catalog::check_id(&args.backup) {
            eprintln!(
                "error: {}",
                crate::redact::scrub(&crate::repo::with_hint(&e))
            );
            return Ok(EXIT_USAGE);
        }
    }
    let options = RestoreTestConfig {
        backup: args.backup.clone(),
        target: match args.target.as_str() {
            "latest" => RestoreTestTarget::Latest,
            _ => RestoreTestTarget::Consistent,
        },
        sql: args.sql.clone(),
        database: args.database.clone(),
        scratch_dir: args.scratch_dir.clone(),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        while let Some(signal) = signals.recv().await {
            if let ForwardedSignal::Terminate(_) = signal {
                tracing::warn!("stop requested: ending the restore test and cleaning up");
                on_signal.cancel();
            }
        }
    });
    let report = match site.restore_test(&options, &cancel).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!(
                "error: {}",
                crate::redact::scrub(&crate::repo::with_hint(&e))
            );
            return Ok(EXIT_USAGE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_report(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}
