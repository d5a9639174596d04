//! The built-in namespaces: postgres_exporter 0.11's default metrics (its metric maps and its
//! `database` and `bgwriter` collectors), its later `stat_checkpointer` collector on
//! PostgreSQL 17 and later, the replication and postmaster queries of its example
//! `queries.yaml`, and `pg_settings`.
//!
//! Names, types, labels and help texts follow postgres_exporter so dashboards and alerts
//! written for it keep working; `docs/metrics.md` lists where pgward differs, and why.

use super::namespace::{Column, Namespace, Usage, VersionRange};
use crate::metrics::text::Families;
use crate::postgres::standby::{LAG_BYTES_SQL, STREAMING_SQL};

use Usage::{Counter, Discard, Gauge, Label};

fn namespace(name: &str, collector: &str, query: &str, columns: Vec<Column>) -> Namespace {
    Namespace {
        name: name.to_owned(),
        collector: collector.to_owned(),
        query: query.to_owned(),
        columns,
        unknown_columns: true,
        cache: None,
        versions: None,
    }
}

/// The `collector` label of `pg_settings_*`.
pub const SETTINGS_COLLECTOR: &str = "settings";

/// `pg_settings` rows postgres_exporter turns into `pg_settings_*`.
pub const SETTINGS_QUERY: &str = "SELECT name, setting, COALESCE(unit, '') AS unit, short_desc, \
     vartype FROM pg_settings WHERE vartype IN ('bool', 'integer', 'real')";

/// The built-in namespaces, in the order they are collected.
pub fn namespaces() -> Vec<Namespace> {
    [databases(), activity(), replication()]
        .into_iter()
        .flatten()
        .collect()
}

/// postgres_exporter's `bgwriter` collector.
fn bgwriter() -> Namespace {
    let mut bgwriter = namespace(
        "pg_stat_bgwriter",
        "bgwriter",
        "SELECT * FROM pg_stat_bgwriter",
        [
            ("checkpoints_timed", "Number of scheduled checkpoints that have been performed"),
            ("checkpoints_req", "Number of requested checkpoints that have been performed"),
            ("checkpoint_write_time", "Total amount of time that has been spent in the portion of checkpoint processing where files are written to disk, in milliseconds"),
            ("checkpoint_sync_time", "Total amount of time that has been spent in the portion of checkpoint processing where files are synchronized to disk, in milliseconds"),
            ("buffers_checkpoint", "Number of buffers written during checkpoints"),
            ("buffers_clean", "Number of buffers written by the background writer"),
            ("maxwritten_clean", "Number of times the background writer stopped a cleaning scan because it had written too many buffers"),
            ("buffers_backend", "Number of buffers written directly by a backend"),
            ("buffers_backend_fsync", "Number of times a backend had to execute its own fsync call (normally the background writer handles those even when the backend does its own write)"),
            ("buffers_alloc", "Number of buffers allocated"),
            ("stats_reset", "Time at which these statistics were last reset"),
        ]
        .iter()
        .map(|(column, help)| {
            Column::named(column, &format!("pg_stat_bgwriter_{column}_total"), Counter, help)
        })
        .collect(),
    );
    // postgres_exporter's bgwriter collector reads a fixed column list.
    bgwriter.unknown_columns = false;
    bgwriter
}

/// postgres_exporter's `stat_checkpointer` collector (0.17 and later). PostgreSQL 17 moved
/// the checkpoint counters out of `pg_stat_bgwriter` into `pg_stat_checkpointer`: without
/// this a server of 17 or later exports no checkpoint counter at all.
fn checkpointer() -> Namespace {
    let mut checkpointer = namespace(
        "pg_stat_checkpointer",
        "stat_checkpointer",
        "SELECT num_timed, num_requested, restartpoints_timed, restartpoints_req, \
            restartpoints_done, write_time, sync_time, buffers_written, stats_reset \
         FROM pg_stat_checkpointer",
        [
            ("num_timed", "Number of scheduled checkpoints due to timeout"),
            ("num_requested", "Number of requested checkpoints that have been performed"),
            ("restartpoints_timed", "Number of scheduled restartpoints due to timeout or after a failed attempt to perform it"),
            ("restartpoints_req", "Number of requested restartpoints"),
            ("restartpoints_done", "Number of restartpoints that have been performed"),
            ("write_time", "Total amount of time that has been spent in the portion of processing checkpoints and restartpoints where files are written to disk, in milliseconds"),
            ("sync_time", "Total amount of time that has been spent in the portion of processing checkpoints and restartpoints where files are synchronized to disk, in milliseconds"),
            ("buffers_written", "Number of buffers written during checkpoints and restartpoints"),
            ("stats_reset", "Time at which these statistics were last reset"),
        ]
        .iter()
        .map(|(column, help)| {
            Column::named(column, &format!("pg_stat_checkpointer_{column}_total"), Counter, help)
        })
        .collect(),
    );
    checkpointer.unknown_columns = false;
    checkpointer.versions = Some(VersionRange::parse(">=17.0.0").expect("a valid range"));
    checkpointer
}

/// postgres_exporter's `database`, `bgwriter` and `stat_checkpointer` collectors and
/// per-database metric maps.
fn databases() -> Vec<Namespace> {
    let db = || {
        vec![
            Column::new("datid", Label, "OID of a database"),
            Column::new("datname", Label, "Name of this database"),
        ]
    };
    vec![
        namespace(
            "pg_database",
            "database",
            "SELECT datname, pg_database_size(datname) AS size_bytes FROM pg_database",
            vec![
                Column::new("datname", Label, "Name of this database"),
                Column::new("size_bytes", Gauge, "Disk space used by the database"),
            ],
        ),
        bgwriter(),
        checkpointer(),
        namespace(
            "pg_stat_database",
            "stat_database",
            "SELECT * FROM pg_stat_database",
            [
                db(),
                vec![
                    Column::new("numbackends", Gauge, "Number of backends currently connected to this database. This is the only column in this view that returns a value reflecting current state; all other columns return the accumulated values since the last reset."),
                    Column::new("xact_commit", Counter, "Number of transactions in this database that have been committed"),
                    Column::new("xact_rollback", Counter, "Number of transactions in this database that have been rolled back"),
                    Column::new("blks_read", Counter, "Number of disk blocks read in this database"),
                    Column::new("blks_hit", Counter, "Number of times disk blocks were found already in the buffer cache, so that a read was not necessary (this only includes hits in the PostgreSQL buffer cache, not the operating system's file system cache)"),
                    Column::new("tup_returned", Counter, "Number of rows returned by queries in this database"),
                    Column::new("tup_fetched", Counter, "Number of rows fetched by queries in this database"),
                    Column::new("tup_inserted", Counter, "Number of rows inserted by queries in this database"),
                    Column::new("tup_updated", Counter, "Number of rows updated by queries in this database"),
                    Column::new("tup_deleted", Counter, "Number of rows deleted by queries in this database"),
                    Column::new("conflicts", Counter, "Number of queries canceled due to conflicts with recovery in this database. (Conflicts occur only on standby servers; see pg_stat_database_conflicts for details.)"),
                    Column::new("temp_files", Counter, "Number of temporary files created by queries in this database. All temporary files are counted, regardless of why the temporary file was created (e.g., sorting or hashing), and regardless of the log_temp_files setting."),
                    Column::new("temp_bytes", Counter, "Total amount of data written to temporary files by queries in this database. All temporary files are counted, regardless of why the temporary file was created, and regardless of the log_temp_files setting."),
                    Column::new("deadlocks", Counter, "Number of deadlocks detected in this database"),
                    Column::new("blk_read_time", Counter, "Time spent reading data file blocks by backends in this database, in milliseconds"),
                    Column::new("blk_write_time", Counter, "Time spent writing data file blocks by backends in this database, in milliseconds"),
                    Column::new("stats_reset", Counter, "Time at which these statistics were last reset"),
                ],
            ]
            .concat(),
        ),
        namespace(
            "pg_stat_database_conflicts",
            "stat_database_conflicts",
            "SELECT * FROM pg_stat_database_conflicts",
            [
                db(),
                vec![
                    Column::new("confl_tablespace", Counter, "Number of queries in this database that have been canceled due to dropped tablespaces"),
                    Column::new("confl_lock", Counter, "Number of queries in this database that have been canceled due to lock timeouts"),
                    Column::new("confl_snapshot", Counter, "Number of queries in this database that have been canceled due to old snapshots"),
                    Column::new("confl_bufferpin", Counter, "Number of queries in this database that have been canceled due to pinned buffers"),
                    Column::new("confl_deadlock", Counter, "Number of queries in this database that have been canceled due to deadlocks"),
                ],
            ]
            .concat(),
        ),
    ]
}

/// Locks, connections and the archiver.
fn activity() -> Vec<Namespace> {
    vec![
        namespace(
            "pg_locks",
            "locks",
            // Every mode of every database, zero when nothing holds it, so a series does
            // not vanish when its locks are released.
            "SELECT d.datname, m.mode, COALESCE(l.count, 0) AS count \
             FROM pg_database d \
             CROSS JOIN (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), \
                ('shareupdateexclusivelock'), ('sharelock'), ('sharerowexclusivelock'), \
                ('exclusivelock'), ('accessexclusivelock'), ('sireadlock')) AS m(mode) \
             LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count FROM pg_locks \
                WHERE database IS NOT NULL GROUP BY database, lower(mode)) l \
               ON l.database = d.oid AND l.mode = m.mode",
            vec![
                Column::new("datname", Label, "Name of this database"),
                Column::new("mode", Label, "Type of Lock"),
                Column::new("count", Gauge, "Number of locks"),
            ],
        ),
        namespace(
            "pg_stat_activity",
            "stat_activity",
            "SELECT d.datname, s.state, COALESCE(a.count, 0) AS count, \
                COALESCE(a.max_tx_duration, 0) AS max_tx_duration \
             FROM pg_database d \
             CROSS JOIN (VALUES ('active'), ('idle'), ('idle in transaction'), \
                ('idle in transaction (aborted)'), ('fastpath function call'), ('disabled')) \
                AS s(state) \
             LEFT JOIN (SELECT datname, state, count(*) AS count, \
                max(extract(epoch FROM now() - xact_start))::float8 AS max_tx_duration \
                FROM pg_stat_activity GROUP BY datname, state) a \
               ON a.datname = d.datname AND a.state = s.state",
            vec![
                Column::new("datname", Label, "Name of this database"),
                Column::new("state", Label, "connection state"),
                Column::new("count", Gauge, "number of connections in this state"),
                Column::new(
                    "max_tx_duration",
                    Gauge,
                    "max duration in seconds any active transaction has been running",
                ),
            ],
        ),
        namespace(
            "pg_stat_archiver",
            "stat_archiver",
            "SELECT *, extract(epoch FROM now() - last_archived_time) AS last_archive_age \
             FROM pg_stat_archiver",
            vec![
                Column::new(
                    "archived_count",
                    Counter,
                    "Number of WAL files that have been successfully archived",
                ),
                Column::new(
                    "last_archived_wal",
                    Discard,
                    "Name of the last WAL file successfully archived",
                ),
                Column::new(
                    "last_archived_time",
                    Discard,
                    "Time of the last successful archive operation",
                ),
                Column::new(
                    "failed_count",
                    Counter,
                    "Number of failed attempts for archiving WAL files",
                ),
                Column::new(
                    "last_failed_wal",
                    Discard,
                    "Name of the WAL file of the last failed archival operation",
                ),
                Column::new(
                    "last_failed_time",
                    Discard,
                    "Time of the last failed archival operation",
                ),
                Column::new(
                    "stats_reset",
                    Discard,
                    "Time at which these statistics were last reset",
                ),
                Column::new(
                    "last_archive_age",
                    Gauge,
                    "Time in seconds since last WAL segment was successfully archived",
                ),
            ],
        ),
    ]
}

/// Replication (senders, slots, a standby's lag) and the postmaster's start time.
fn replication() -> Vec<Namespace> {
    vec![
        namespace(
            "pg_stat_replication",
            "stat_replication",
            // The slot comes from pg_replication_slots: pg_stat_replication has no slot
            // column (postgres_exporter 0.11 labels the pid as slot_name instead).
            // On a cascading standby there is no current WAL position: NULL, so NaN.
            "SELECT r.*, s.slot_name, \
                CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END \
                  AS pg_current_wal_lsn, \
                CASE WHEN pg_is_in_recovery() THEN NULL \
                  ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 END \
                  AS pg_current_wal_lsn_bytes, \
                CASE WHEN pg_is_in_recovery() THEN NULL \
                  ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::float8 END \
                  AS pg_wal_lsn_diff \
             FROM pg_stat_replication r \
             LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid",
            [
                ("pid", Discard, "Process ID of a WAL sender process"),
                ("usesysid", Discard, "OID of the user logged into this WAL sender process"),
                ("usename", Discard, "Name of the user logged into this WAL sender process"),
                ("application_name", Label, "Name of the application that is connected to this WAL sender"),
                ("client_addr", Label, "IP address of the client connected to this WAL sender. If this field is null, it indicates that the client is connected via a Unix socket on the server machine."),
                ("client_hostname", Discard, "Host name of the connected client"),
                ("client_port", Discard, "TCP port number that the client is using for communication with this WAL sender, or -1 if a Unix socket is used"),
                ("backend_start", Discard, "Time when this process was started"),
                ("backend_xmin", Discard, "The current backend's xmin horizon."),
                ("state", Label, "Current WAL sender state"),
                ("sent_lsn", Discard, "Last write-ahead log location sent on this connection"),
                ("write_lsn", Discard, "Last write-ahead log location written to disk by this standby server"),
                ("flush_lsn", Discard, "Last write-ahead log location flushed to disk by this standby server"),
                ("replay_lsn", Discard, "Last write-ahead log location replayed into the database on this standby server"),
                ("write_lag", Discard, "Time elapsed between flushing recent WAL locally and receiving notification that this standby server has written it"),
                ("flush_lag", Discard, "Time elapsed between flushing recent WAL locally and receiving notification that this standby server has written and flushed it"),
                ("replay_lag", Discard, "Time elapsed between flushing recent WAL locally and receiving notification that this standby server has written, flushed and applied it"),
                ("sync_priority", Discard, "Priority of this standby server for being chosen as the synchronous standby"),
                ("sync_state", Discard, "Synchronous state of this standby server"),
                ("slot_name", Label, "A unique, cluster-wide identifier for the replication slot"),
                ("pg_current_wal_lsn", Discard, "pg_current_wal_lsn"),
                ("pg_current_wal_lsn_bytes", Gauge, "WAL position in bytes"),
                ("pg_wal_lsn_diff", Gauge, "Lag in bytes between master and slave"),
            ]
            .iter()
            .map(|(name, usage, help)| Column::new(name, *usage, help))
            .collect(),
        ),
        namespace(
            "pg_replication_slots",
            "replication_slots",
            // A standby may hold slots too (cascading): its position is what it replayed.
            "SELECT slot_name, database, active, pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, restart_lsn) \
                AS pg_wal_lsn_diff \
             FROM pg_replication_slots",
            vec![
                Column::new("slot_name", Label, "Name of the replication slot"),
                Column::new("database", Label, "Name of the database"),
                Column::new("active", Gauge, "Flag indicating if the slot is active"),
                Column::new("pg_wal_lsn_diff", Gauge, "Replication lag in bytes"),
            ],
        ),
        namespace(
            "pg_replication",
            "replication",
            "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 \
                ELSE GREATEST(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp())) \
                END AS lag, \
                CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS is_replica",
            vec![
                Column::new("lag", Gauge, "Replication lag behind master in seconds"),
                Column::new("is_replica", Gauge, "Indicates if the server is a replica"),
            ],
        ),
        // pgward's own: where a server in recovery gets its WAL, and how far replay is
        // behind what it received (no row on a primary).
        namespace(
            "pgward_standby",
            "standby",
            &format!(
                "SELECT CASE WHEN {STREAMING_SQL} THEN 1 ELSE 0 END AS streaming, \
                 {LAG_BYTES_SQL} AS lag_bytes WHERE pg_is_in_recovery()"
            ),
            vec![
                Column::new("streaming", Gauge, "1 while the server in recovery streams WAL from its primary, 0 while it replays from the archive"),
                Column::new("lag_bytes", Gauge, "WAL received (or reported by the primary) but not replayed yet, in bytes"),
            ],
        ),
        namespace(
            "pg_postmaster",
            "postmaster",
            "SELECT extract(epoch FROM pg_postmaster_start_time()) AS start_time_seconds",
            vec![Column::new("start_time_seconds", Gauge, "Time at which postmaster started")],
        ),
    ]
}

/// The `pg_settings_*` families of rows of [`SETTINGS_QUERY`]. A setting whose unit is not
/// known is left out (postgres_exporter would panic).
pub fn settings_families(
    rows: &[tokio_postgres::SimpleQueryRow],
    server: &str,
    out: &mut Families,
) {
    for row in rows {
        let field = |i: usize| row.get(i).unwrap_or("");
        match setting_metric(field(0), field(1), field(2), field(3), field(4)) {
            Ok((family, help, value)) => {
                out.gauge(&family, &help)
                    .sample(&[("server", server)], value);
            }
            Err(e) => tracing::debug!("pg_settings: {e}"),
        }
    }
}

/// One `pg_settings` row as postgres_exporter exposes it: the family name
/// (`pg_settings_<name>`, dots as underscores, `_seconds` or `_bytes` when the unit was
/// converted), its help (`short_desc`, with a note of the conversion) and the value in base
/// units. Booleans are 1 for `on`; -1 ("disabled") is never scaled.
pub fn setting_metric(
    name: &str,
    setting: &str,
    unit: &str,
    short_desc: &str,
    vartype: &str,
) -> Result<(String, String, f64), String> {
    let family = format!("pg_settings_{}", name.replace('.', "_"));
    match vartype {
        "bool" => {
            let value = if setting == "on" { 1.0 } else { 0.0 };
            return Ok((family, short_desc.to_owned(), value));
        }
        "integer" | "real" => {}
        other => return Err(format!("{name}: unsupported vartype {other:?}")),
    }
    let value: f64 = setting
        .parse()
        .map_err(|_| format!("{name}: value {setting:?} is not a number"))?;
    let (base, factor) = match unit {
        "" => return Ok((family, short_desc.to_owned(), value)),
        "ms" => ("seconds", 1e-3),
        "s" => ("seconds", 1.0),
        "min" => ("seconds", 60.0),
        "h" => ("seconds", 3600.0),
        "d" => ("seconds", 86400.0),
        "B" => ("bytes", 1.0),
        "kB" => ("bytes", 1024.0),
        "MB" => ("bytes", 1024.0 * 1024.0),
        "GB" => ("bytes", 1024.0 * 1024.0 * 1024.0),
        "TB" => ("bytes", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        // Block-sized units: "8kB" is pages of 8 kB.
        _ => match unit
            .strip_suffix("kB")
            .map(|n| (n, 1024.0))
            .or_else(|| unit.strip_suffix("MB").map(|n| (n, 1024.0 * 1024.0)))
            .and_then(|(n, scale)| Some(n.parse::<f64>().ok()? * scale))
        {
            Some(factor) => ("bytes", factor),
            None => return Err(format!("{name}: unknown unit {unit:?}")),
        },
    };
    let value = if value == -1.0 { value } else { value * factor };
    Ok((
        format!("{family}_{base}"),
        format!("{short_desc} [Units converted to {base}.]"),
        value,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, setting: &str, unit: &str, vartype: &str) -> (String, f64) {
        let (family, _, value) = setting_metric(name, setting, unit, "d", vartype).unwrap();
        (family, value)
    }

    #[test]
    fn settings_are_converted_to_seconds_and_bytes() {
        let m = |n, s, u, t| metric(n, s, u, t);
        assert_eq!(
            m("shared_buffers", "16384", "8kB", "integer"),
            ("pg_settings_shared_buffers_bytes".into(), 134217728.0)
        );
        assert_eq!(
            m("work_mem", "4096", "kB", "integer"),
            ("pg_settings_work_mem_bytes".into(), 4194304.0)
        );
        assert_eq!(
            m("max_wal_size", "1024", "MB", "integer"),
            ("pg_settings_max_wal_size_bytes".into(), 1073741824.0)
        );
        assert_eq!(
            m("wal_segment_size", "16777216", "B", "integer"),
            ("pg_settings_wal_segment_size_bytes".into(), 16777216.0)
        );
        assert_eq!(m("x", "2", "16MB", "integer").1, 33554432.0);
        assert_eq!(m("x", "1", "32kB", "integer").1, 32768.0);
        assert_eq!(m("x", "1", "GB", "integer").1, 1073741824.0);
        assert_eq!(m("x", "1", "TB", "integer").1, 1099511627776.0);
        assert_eq!(
            m("checkpoint_timeout", "300", "s", "integer"),
            ("pg_settings_checkpoint_timeout_seconds".into(), 300.0)
        );
        assert_eq!(
            m("bgwriter_delay", "200", "ms", "integer"),
            ("pg_settings_bgwriter_delay_seconds".into(), 0.2)
        );
        assert_eq!(
            m("autovacuum_vacuum_cost_delay", "2", "ms", "real").1,
            0.002
        );
        assert_eq!(
            m("log_rotation_age", "1440", "min", "integer"),
            ("pg_settings_log_rotation_age_seconds".into(), 86400.0)
        );
        assert_eq!(m("x", "2", "h", "integer").1, 7200.0);
        assert_eq!(m("x", "1", "d", "integer").1, 86400.0);
        // -1 means "off" or "use the other setting": never scaled.
        assert_eq!(
            m("autovacuum_work_mem", "-1", "kB", "integer"),
            ("pg_settings_autovacuum_work_mem_bytes".into(), -1.0)
        );
        assert_eq!(
            m("max_connections", "100", "", "integer"),
            ("pg_settings_max_connections".into(), 100.0)
        );
        assert_eq!(m("data_directory_mode", "0700", "", "integer").1, 700.0);
        assert_eq!(m("seq_page_cost", "1.5", "", "real").1, 1.5);
        assert_eq!(
            m("fsync", "on", "", "bool"),
            ("pg_settings_fsync".into(), 1.0)
        );
        assert_eq!(m("bonjour", "off", "", "bool").1, 0.0);
        assert_eq!(
            m("pg_stat_statements.max", "5000", "", "integer").0,
            "pg_settings_pg_stat_statements_max"
        );
    }

    #[test]
    fn help_says_when_units_were_converted() {
        let (_, help, _) =
            setting_metric("work_mem", "4096", "kB", "Sets work mem.", "integer").unwrap();
        assert_eq!(help, "Sets work mem. [Units converted to bytes.]");
        let (_, help, _) = setting_metric("fsync", "on", "", "Forces sync.", "bool").unwrap();
        assert_eq!(help, "Forces sync.");
    }

    #[test]
    fn unknown_units_and_types_are_refused() {
        assert!(setting_metric("x", "1", "furlong", "d", "integer").is_err());
        assert!(setting_metric("x", "a", "", "d", "integer").is_err());
        assert!(setting_metric("x", "a", "", "d", "string").is_err());
    }
}
