//! The throwaway server of a restore test: its parameters (apart from the real cluster, and
//! cheap), its process (stopped, or explained when it exits early), waiting for it to recover
//! and promote, and the verification query.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::QUERY_TIMEOUT;
use crate::init::ExitInfo;
use crate::postgres::ready::{self, Target};
use crate::process::{self, Tail};

/// Log prefix of the throwaway server's output.
pub(super) const SERVER_NAME: &str = "restore-test";

/// The throwaway server's process.
pub(super) struct Throwaway {
    pub(super) pid: i32,
    pub(super) exit: oneshot::Receiver<ExitInfo>,
    pub(super) exited: Option<ExitInfo>,
    /// Its last lines of output, to say why it exited.
    pub(super) tail: Tail,
}

impl Throwaway {
    /// `work`, while the server runs: fails when the server exits first, after `within`, or
    /// when cancelled.
    pub(super) async fn during<T>(
        &mut self,
        within: Duration,
        cancel: &CancellationToken,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if let Some(status) = self.exited {
            return Err(exited(status, &self.tail).await);
        }
        let tail = self.tail.clone();
        tokio::select! {
            result = work => result,
            status = &mut self.exit => {
                let status = status.expect("the global reaper never drops a registered child");
                self.exited = Some(status);
                Err(exited(status, &tail).await)
            }
            () = tokio::time::sleep(within) => {
                bail!("not done after {}", humantime::format_duration(within))
            }
            () = cancel.cancelled() => bail!("cancelled by a stop request (the restore test is cleaning up)"),
        }
    }

    /// Fast shutdown (SIGINT), then SIGKILL to its process group after `grace`.
    pub(super) async fn stop(&mut self, grace: Duration, kill_grace: Duration) {
        if self.exited.is_some() {
            return;
        }
        process::signal(self.pid, Signal::SIGINT);
        if let Ok(status) = tokio::time::timeout(grace, &mut self.exit).await {
            self.exited = status.ok();
            return;
        }
        tracing::warn!(
            pid = self.pid,
            "the restore test's server did not stop within {}; killing it",
            humantime::format_duration(grace)
        );
        process::signal_group(self.pid, Signal::SIGKILL);
        if let Ok(status) = tokio::time::timeout(kill_grace, &mut self.exit).await {
            self.exited = status.ok();
        }
    }
}

/// "postgres exited (exit code 1): <why, from its last lines>".
async fn exited(status: ExitInfo, tail: &Tail) -> anyhow::Error {
    // The exit status can arrive before the relay has read the last lines.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !tail.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = tail.lines();
    match explanation(&lines) {
        Some(why) => anyhow!("postgres exited ({status}): {why}"),
        None => anyhow!(
            "postgres exited ({status})\nHINT: its output in pgward's log (lines tagged \
             [{SERVER_NAME}]) says why"
        ),
    }
}

/// The last lines that say what went wrong (postgres's FATAL and PANIC, pgward's own errors
/// from `wal-fetch`), at most three, else the last line.
pub(super) fn explanation(lines: &[String]) -> Option<String> {
    let mut picked: Vec<&str> = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .filter(|l| {
            ["FATAL:", "PANIC:", " ERROR ", "\"ERROR\""]
                .iter()
                .any(|m| l.contains(m))
        })
        .take(3)
        .collect();
    picked.reverse();
    if picked.is_empty() {
        return lines
            .last()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty());
    }
    Some(picked.join(" | "))
}

/// Waits until the server accepts connections and is out of recovery; then a session and
/// `pg_current_wal_lsn()`.
pub(super) async fn promoted(
    target: &Target,
    data_dir: &Path,
    pid: i32,
) -> Result<(tokio_postgres::Client, String)> {
    // With hot_standby off, the server accepts connections only once recovery has ended.
    ready::wait_open(target, data_dir, pid).await;
    let client = target
        .connect()
        .await
        .with_context(|| format!("connect to database {:?}", target.dbname))?;
    loop {
        if !ready::in_recovery(&client)
            .await
            .context("ask whether recovery has ended")?
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("read the WAL position")?
        .get(0);
    Ok((client, lsn))
}

/// Runs `sql` under a statement timeout; the boolean of its one row's first column (`None`
/// for NULL).
pub(super) async fn query(client: &tokio_postgres::Client, sql: &str) -> Result<Option<bool>> {
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            QUERY_TIMEOUT.as_millis()
        ))
        .await
        .context("set statement_timeout")?;
    let rows = client
        .query(sql, &[])
        .await
        .with_context(|| format!("run {sql:?}"))?;
    let row = match rows.as_slice() {
        [row] => row,
        [] => bail!("{sql:?} returned no row (it must return one row whose first column is true)"),
        more => bail!(
            "{sql:?} returned {} rows (it must return one row whose first column is true)",
            more.len()
        ),
    };
    match row.columns().first().map(|c| c.type_()) {
        Some(&tokio_postgres::types::Type::BOOL) => {}
        Some(other) => bail!("the first column of {sql:?} is of type {other}, not boolean"),
        None => bail!("{sql:?} returned no column"),
    }
    row.try_get(0)
        .with_context(|| format!("read the result of {sql:?}"))
}

/// Preloaded libraries whose background workers act outside the server: pg_cron runs
/// scheduled jobs (often against other servers through dblink), pg_partman's background
/// worker runs maintenance, pg_net sends queued HTTP requests, pglogical's workers connect to
/// their providers and subscribers. The throwaway server starts without them.
pub(super) const OUTWARD_LIBRARIES: [&str; 4] =
    ["pg_cron", "pg_partman_bgw", "pg_net", "pglogical"];

/// A library name as `shared_preload_libraries` lists it (`pg_cron`, `'$libdir/pg_cron.so'`)
/// reduced to the library's name.
fn library_name(entry: &str) -> &str {
    let entry = entry.trim().trim_matches('"').trim_matches('\'').trim();
    let base = entry.rsplit('/').next().unwrap_or(entry);
    base.strip_suffix(".so").unwrap_or(base)
}

/// `shared_preload_libraries` (`value`, as the server would read it) split into the
/// libraries the throwaway server keeps, as a value again, and those it leaves out
/// ([`OUTWARD_LIBRARIES`]).
pub(super) fn without_outward_libraries(value: &str) -> (String, Vec<String>) {
    let (mut kept, mut left_out) = (Vec::new(), Vec::new());
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let name = library_name(entry);
        if OUTWARD_LIBRARIES.contains(&name) {
            left_out.push(name.to_owned());
        } else {
            kept.push(entry);
        }
    }
    (kept.join(","), left_out)
}

/// The parameters of the throwaway server: the configured ones (the data may need their
/// preloaded libraries, locale or limits), less those that reach outside the scratch
/// directory, then the overrides that keep it apart from the real cluster and cheap.
/// `preloaded` is `shared_preload_libraries` as the restored data directory and the
/// configuration set it (`postgres -C`), once known: the throwaway server keeps those
/// libraries but the outward ones, and runs TimescaleDB without background jobs.
///
/// What it neutralizes is listed in docs/backup-restore.md (restore tests): keep the two
/// true together.
pub(super) fn throwaway_parameters(
    configured: &BTreeMap<String, String>,
    preloaded: Option<&str>,
) -> BTreeMap<String, String> {
    let reaches_out = |name: &str| {
        ["archive_", "recovery_", "primary_", "unix_socket_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "restore_command",
                "promote_trigger_file",
                "external_pid_file",
                "config_file",
                "data_directory",
                "stats_temp_directory",
            ]
            .contains(&name)
    };
    let mut parameters: BTreeMap<String, String> = configured
        .iter()
        .filter(|(name, _)| !reaches_out(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    for (name, value) in [
        // The socket in the scratch directory only.
        ("listen_addresses", ""),
        // Never into the real repository.
        ("archive_mode", "off"),
        // Commands the original's postgresql.conf (restored with the data) may hold, run at
        // restartpoints and at the end of recovery: never against the real archive.
        ("archive_cleanup_command", ""),
        ("recovery_end_command", ""),
        // No logical replication worker starts (the launcher is not even registered): a
        // restored subscription would connect to its publisher after promotion and move the
        // real subscription's slot past changes the real subscriber has not applied.
        ("max_logical_replication_workers", "0"),
        // No connection until recovery has ended; and no check that max_connections and
        // the like are at least the original's, which only a hot standby needs.
        ("hot_standby", "off"),
        ("cluster_name", "pgward-restore-test"),
        // Beside the real server: little memory, no huge pages it may need.
        ("shared_buffers", "128MB"),
        ("huge_pages", "off"),
        // The certificates may be the real server's files, and nobody connects over TCP.
        ("ssl", "off"),
        // Output through pgward's relay, tagged `restore-test`.
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
        // A query must not wait for a standby that will never connect.
        ("synchronous_standby_names", ""),
        // A throwaway: no vacuum, and nothing to keep through a crash.
        ("autovacuum", "off"),
        ("fsync", "off"),
    ] {
        parameters.insert(name.to_owned(), value.to_owned());
    }
    if let Some(preloaded) = preloaded {
        let (kept, _) = without_outward_libraries(preloaded);
        if kept.split(',').any(|l| library_name(l) == "timescaledb") {
            // Its job scheduler gets no worker: no policy or user-defined job runs.
            parameters.insert("timescaledb.max_background_workers".into(), "0".into());
        }
        parameters.insert("shared_preload_libraries".into(), kept);
    }
    parameters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throwaway_server_keeps_to_itself() {
        let configured: BTreeMap<String, String> = [
            ("shared_preload_libraries", "pg_stat_statements"),
            ("archive_command", "pgward wal-push %p"),
            ("recovery_target_time", "2026-11-30 03:55:00+00"),
            ("restore_command", "cp /archive/%f %p"),
            ("primary_conninfo", "host=primary"),
            ("external_pid_file", "/run/postgres.pid"),
            ("listen_addresses", "*"),
            ("shared_buffers", "8GB"),
            ("work_mem", "64MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let parameters = throwaway_parameters(&configured, None);
        for gone in [
            "archive_command",
            "recovery_target_time",
            "restore_command",
            "primary_conninfo",
            "external_pid_file",
        ] {
            assert!(!parameters.contains_key(gone), "{gone}: {parameters:?}");
        }
        let get = |name: &str| parameters.get(name).map(String::as_str);
        assert_eq!(get("shared_preload_libraries"), Some("pg_stat_statements"));
        assert_eq!(get("work_mem"), Some("64MB"));
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("shared_buffers"), Some("128MB"));
        assert_eq!(get("hot_standby"), Some("off"));
        for (name, value) in [
            ("max_logical_replication_workers", "0"),
            ("archive_cleanup_command", ""),
            ("recovery_end_command", ""),
        ] {
            assert_eq!(get(name), Some(value), "{name}");
        }
        assert_eq!(get("timescaledb.max_background_workers"), None);
    }

    #[test]
    fn libraries_whose_workers_act_outward_are_not_preloaded() {
        assert_eq!(
            without_outward_libraries(
                "pg_stat_statements, pg_cron,'$libdir/pg_partman_bgw.so' ,\"pg_net\",auto_explain,pglogical"
            ),
            (
                "pg_stat_statements,auto_explain".to_owned(),
                vec![
                    "pg_cron".to_owned(),
                    "pg_partman_bgw".to_owned(),
                    "pg_net".to_owned(),
                    "pglogical".to_owned()
                ]
            )
        );
        assert_eq!(without_outward_libraries(""), (String::new(), vec![]));
        let configured: BTreeMap<String, String> =
            [("shared_preload_libraries".to_owned(), "pg_cron".to_owned())].into();
        // The value the data directory's configuration sets wins over nothing configured,
        // and is filtered the same way.
        let parameters = throwaway_parameters(
            &configured,
            Some("timescaledb, pg_cron, pg_stat_statements"),
        );
        let get = |name: &str| parameters.get(name).map(String::as_str);
        assert_eq!(
            get("shared_preload_libraries"),
            Some("timescaledb,pg_stat_statements")
        );
        assert_eq!(get("timescaledb.max_background_workers"), Some("0"));
        let parameters = throwaway_parameters(&BTreeMap::new(), Some("pg_cron"));
        assert_eq!(
            parameters
                .get("shared_preload_libraries")
                .map(String::as_str),
            Some("")
        );
    }

    #[test]
    fn an_early_exit_is_explained_by_the_last_errors() {
        let lines: Vec<String> = [
            "2026-11-30 03:55:00.000 UTC [42] LOG:  starting PostgreSQL 16.4",
            "2026-11-30T03:55:01Z ERROR failed to fetch 000000010000000000000003: object wal/00000001/000000010000000000000003 is corrupt",
            "2026-11-30 03:55:01.000 UTC [43] FATAL:  could not restore file \"000000010000000000000003\" from archive: child process exited with exit code 255",
            "2026-11-30 03:55:01.000 UTC [42] LOG:  database system is shut down",
        ]
        .map(String::from)
        .to_vec();
        let why = explanation(&lines).unwrap();
        assert!(
            why.starts_with("2026-11-30T03:55:01Z ERROR failed to fetch"),
            "{why}"
        );
        assert!(
            why.contains(" | 2026-11-30 03:55:01.000 UTC [43] FATAL:  could not restore"),
            "{why}"
        );
        assert_eq!(
            explanation(&["only this".to_owned()]).as_deref(),
            Some("only this")
        );
        assert_eq!(explanation(&[]), None);
    }
}
