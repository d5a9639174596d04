//! What a restore test found: the report (`--json`, the job's summary) and its text.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::RestoreTestTarget;

/// What one restore test found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreTestReport {
    /// The backup tested: its id, or what was asked for when no backup could be picked.
    pub backup: String,
    pub target: RestoreTestTarget,
    /// This run's scratch directory (removed at the end), or where it would have been made.
    pub scratch_dir: PathBuf,
    /// Seconds spent restoring the backup's files; `None` when the restore did not start.
    pub restore_secs: Option<f64>,
    /// Seconds from starting the server until it was out of recovery (or failed); `None`
    /// when the server did not start.
    pub recovery_secs: Option<f64>,
    /// Seconds for the whole test, clean-up included.
    pub total_secs: f64,
    /// `pg_current_wal_lsn()` of the promoted server.
    pub recovered_to_lsn: Option<String>,
    /// What the query returned; `None` without a query or when it gave no boolean.
    pub sql_result: Option<bool>,
    /// The backup restored, recovered and the query (if any) returned true.
    pub ok: bool,
    /// Why not: the step that failed and the cause.
    pub reason: Option<String>,
}

/// `consistent` or `latest`, as written in the config.
pub fn target_name(target: RestoreTestTarget) -> &'static str {
    match target {
        RestoreTestTarget::Consistent => "consistent",
        RestoreTestTarget::Latest => "latest",
    }
}

/// The report as text: a verdict line, then the reason or the figures.
pub fn human_report(report: &RestoreTestReport) -> String {
    let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
    let mut out = format!(
        "restore test of backup {} (target {}): {}\n",
        report.backup,
        target_name(report.target),
        if report.ok { "ok" } else { "FAILED" }
    );
    if let Some(reason) = &report.reason {
        out.push_str(reason);
        out.push('\n');
    }
    out.push_str(&format!(
        "restore {}, recovery {}{}{}; {:.1} s in all\n",
        secs(report.restore_secs),
        secs(report.recovery_secs),
        report
            .recovered_to_lsn
            .as_deref()
            .map(|lsn| format!(" to {lsn}"))
            .unwrap_or_default(),
        report
            .sql_result
            .map(|r| format!(", query returned {r}"))
            .unwrap_or_default(),
        report.total_secs
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_report_says_the_verdict_then_why_or_how_long() {
        let mut report = RestoreTestReport {
            backup: "20261130T035500F".into(),
            target: RestoreTestTarget::Consistent,
            scratch_dir: "/var/lib/postgresql/pgward-restore-test/20261130T035500F-x".into(),
            restore_secs: Some(1.24),
            recovery_secs: Some(2.0),
            total_secs: 3.5,
            recovered_to_lsn: Some("0/3000148".into()),
            sql_result: Some(true),
            ok: true,
            reason: None,
        };
        assert_eq!(
            human_report(&report),
            "restore test of backup 20261130T035500F (target consistent): ok\n\
             restore 1.2 s, recovery 2.0 s to 0/3000148, query returned true; 3.5 s in all\n"
        );
        report.ok = false;
        report.recovery_secs = None;
        report.recovered_to_lsn = None;
        report.sql_result = None;
        report.reason = Some("restore: object backups/x is corrupt".into());
        assert_eq!(
            human_report(&report),
            "restore test of backup 20261130T035500F (target consistent): FAILED\n\
             restore: object backups/x is corrupt\n\
             restore 1.2 s, recovery -; 3.5 s in all\n"
        );
    }
}
