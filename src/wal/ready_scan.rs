//! The scan of `pg_wal/archive_status` for `.ready` markers, and what its failures mean: a
//! scan that fails says nothing about the backlog, so it is reported as a failing scan (in
//! `pgward status`, `/status` and the metrics), never as an empty backlog.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// One `.ready` marker.
pub(super) struct Ready {
    /// The WAL file's name (the marker without `.ready`).
    pub(super) name: String,
    pub(super) modified: Option<SystemTime>,
}

/// The ready files, in archive order: history files first (a new timeline's history must be
/// archived before its segments are useful), then by name, which is WAL order. Blocking.
pub(super) fn scan_ready(status_dir: &Path) -> Result<Vec<Ready>> {
    list_ready(status_dir).with_context(|| {
        format!(
            "scan {} for WAL files ready to archive",
            status_dir.display()
        )
    })
}

fn list_ready(status_dir: &Path) -> Result<Vec<Ready>> {
    crate::failpoint!("archiver-scan");
    let mut ready = Vec::new();
    for entry in std::fs::read_dir(status_dir)? {
        let entry = entry?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".ready"))
            .map(str::to_owned)
        else {
            continue;
        };
        // Renamed to .done meanwhile: no age, still counted (it was ready when listed).
        let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
        ready.push(Ready { name, modified });
    }
    ready.sort_by(|a, b| {
        let key = |r: &Ready| (!r.name.ends_with(".history"), r.name.clone());
        key(a).cmp(&key(b))
    });
    Ok(ready)
}

/// Whether the scans work: the last failure (cleared by a scan that works), how many failed,
/// and when that was last said in the log.
#[derive(Debug, Default)]
pub(super) struct ScanHealth {
    pub(super) error: Option<String>,
    pub(super) errors_total: u64,
    last_warning: Option<Instant>,
}

/// A failing scan is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl ScanHealth {
    /// Records how a scan went.
    pub(super) fn record<T>(&mut self, result: &Result<T>) {
        match result {
            Ok(_) => {
                if self.error.take().is_some() {
                    tracing::info!("the scan of archive_status works again");
                    self.last_warning = None;
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                self.errors_total += 1;
                let changed = self.error.as_deref() != Some(message.as_str());
                if changed || self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        "failed to {message}: the archiving backlog is unknown, and files \
                         postgres marked ready are archived only when it asks\nHINT: \
                         pg_wal/archive_status must be a directory the daemon can read"
                    );
                    self.last_warning = Some(Instant::now());
                }
                self.error = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_files_come_history_first_then_in_wal_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in [
            "000000020000000000000003.ready",
            "000000010000000000000002.ready",
            "00000002.history.ready",
            "000000010000000000000001.done",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("marker");
        }
        let names: Vec<String> = scan_ready(dir.path())
            .expect("scan")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "00000002.history",
                "000000010000000000000002",
                "000000020000000000000003"
            ]
        );
    }

    #[test]
    fn a_failing_scan_is_an_error_recorded_until_one_works() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_a_dir = dir.path().join("archive_status");
        std::fs::write(&not_a_dir, b"").expect("a file where the directory belongs");
        let mut health = ScanHealth::default();
        let failed = scan_ready(&not_a_dir);
        health.record(&failed);
        health.record(&failed);
        let error = health.error.clone().expect("the failure is kept");
        assert!(
            error.starts_with(&format!("scan {}", not_a_dir.display())),
            "{error}"
        );
        assert_eq!(health.errors_total, 2);
        health.record(&scan_ready(dir.path()));
        assert_eq!(health.error, None);
        assert_eq!(health.errors_total, 2);
    }
}
