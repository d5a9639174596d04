//! Can this cluster be recovered right now? A list of checks in the manner of Barman's
//! `check`, each OK or FAILED with the reason: for `pgward check`, the `check` job action and
//! the `pgward_check_ok` gauges. Composes `postgres/`, `repo/` and the backup catalogue; the
//! caller opens what is checked ([`Subject`]).
//!
//! Every check runs even when an earlier one failed (a monitoring run wants the whole
//! picture); those that need the server or the repository say so when it is unreachable.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::catalog;
use crate::backup::manifest::{BackupKind, Manifest};
use crate::backup::take::{
    ARCHIVER_HINT, ARCHIVE_COMMAND_HINT, ARCHIVE_MODE_HINT, POSTGRES_HINT, REPO_WRITE_HINT,
};
use crate::postgres::ready::Target;
use crate::postgres::ClusterIdentity;
use crate::repo::Repo;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed, or what was found.
    pub detail: String,
}

impl CheckResult {
    fn ok(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(name: &'static str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the server said, for the checks that need it.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
    pub checkpoint_timeout: Duration,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// How long the oldest `.ready` file has waited; `Err` (why) when `archive_status`
    /// cannot be scanned.
    pub oldest_ready_age: Result<Option<Duration>, String>,
    pub in_recovery: bool,
    /// The data directory holds `standby.signal`: a hot standby, whose primary archives.
    pub standby: bool,
}

/// Reads [`ServerFacts`] over one session, and the `.ready` files of `data_dir`.
pub async fn server_facts(target: &Target, data_dir: &Path) -> anyhow::Result<ServerFacts> {
    let client = target.connect().await?;
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('archive_mode'), \
             current_setting('archive_command'), \
             extract(epoch FROM current_setting('checkpoint_timeout')::interval)::float8, \
             last_archived_wal, \
             extract(epoch FROM last_archived_time)::float8, \
             last_failed_wal, extract(epoch FROM last_failed_time)::float8, \
             pg_is_in_recovery() \
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    let time =
        |v: Option<f64>| v.and_then(|s| DateTime::<Utc>::from_timestamp(s.trunc() as i64, 0));
    Ok(ServerFacts {
        wal_level: row.get(0),
        archive_mode: row.get(1),
        archive_command: row.get(2),
        checkpoint_timeout: Duration::from_secs_f64(row.get::<_, f64>(3).max(0.0)),
        last_archived_wal: row.get(4),
        last_archived_time: time(row.get(5)),
        last_failed_wal: row.get(6),
        last_failed_time: time(row.get(7)),
        in_recovery: row.get(8),
        standby: crate::postgres::standby::is_standby(data_dir),
        oldest_ready_age: {
            let data_dir = data_dir.to_owned();
            tokio::task::spawn_blocking(move || oldest_ready_age(&data_dir)).await?
        },
    })
}

/// The checks on the server's settings and archiver (pure).
pub fn server_checks(facts: &ServerFacts, wal_max_age: Option<Duration>) -> Vec<CheckResult> {
    let mut out = vec![CheckResult::ok("postgres", "reachable")];
    out.push(match facts.wal_level.as_str() {
        "replica" | "logical" => CheckResult::ok("wal_level", facts.wal_level.clone()),
        other => CheckResult::failed(
            "wal_level",
            format!(
                "{other}: backups need replica or logical\nHINT: set \
                 postgres.parameters.wal_level to replica and restart pgward"
            ),
        ),
    });
    if facts.in_recovery && facts.standby {
        // A hot standby archives nothing of its own: the WAL in the repository is its
        // primary's, whose `pgward check` judges the archiving.
        const STANDBY: &str = "a standby: its primary archives the WAL";
        for name in [
            "archive_mode",
            "archive_command",
            "archiver",
            "wal_archived_age",
        ] {
            out.push(CheckResult::ok(name, STANDBY));
        }
        return out;
    }
    out.push(match facts.archive_mode.as_str() {
        "on" | "always" => CheckResult::ok("archive_mode", facts.archive_mode.clone()),
        other => CheckResult::failed(
            "archive_mode",
            format!("{other}: WAL is not archived\n{ARCHIVE_MODE_HINT}"),
        ),
    });
    out.push(if facts.archive_command.contains(" wal-push ") {
        CheckResult::ok("archive_command", "pgward wal-push")
    } else {
        CheckResult::failed(
            "archive_command",
            format!(
                "{:?} is not pgward's wal-push\n{ARCHIVE_COMMAND_HINT}",
                facts.archive_command
            ),
        )
    });
    let failing = match (facts.last_failed_time, facts.last_archived_time) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    };
    out.push(if failing {
        CheckResult::failed(
            "archiver",
            format!(
                "failing: {} could not be archived (last attempt {})\n{ARCHIVER_HINT}",
                facts.last_failed_wal.as_deref().unwrap_or("?"),
                facts
                    .last_failed_time
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        )
    } else {
        CheckResult::ok("archiver", "no failures since the last success")
    });
    out.push(wal_age_check(facts, wal_max_age));
    out
}

/// Archiving must not lag: the oldest WAL file waiting to be archived (`.ready`) must be
/// younger than the limit. An idle server has nothing waiting, whatever the age of its last
/// archived segment.
fn wal_age_check(facts: &ServerFacts, max_age: Option<Duration>) -> CheckResult {
    const NAME: &str = "wal_archived_age";
    let limit = max_age.unwrap_or(facts.checkpoint_timeout + Duration::from_secs(120));
    let limit_text = humantime::format_duration(limit).to_string();
    let last = facts.last_archived_wal.as_deref().unwrap_or("none yet");
    match &facts.oldest_ready_age {
        Err(e) => CheckResult::failed(
            NAME,
            format!(
                "cannot tell how long WAL has waited: failed to {e}\nHINT: \
                 pg_wal/archive_status must be a directory pgward can read"
            ),
        ),
        Ok(None) => CheckResult::ok(NAME, format!("nothing waiting (last archived: {last})")),
        Ok(Some(age)) => {
            let age = *age;
            let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
            if age > limit {
                CheckResult::failed(
                    NAME,
                    format!(
                        "WAL has waited {age_text} to be archived, above {limit_text} (last \
                         archived: {last})\nHINT: `pgward status` shows the archiver's backlog \
                         and last error; if archiving is only slow, raise wal.push_concurrency"
                    ),
                )
            } else {
                CheckResult::ok(
                    NAME,
                    format!("oldest waiting for {age_text} (limit {limit_text})"),
                )
            }
        }
    }
}

/// Age of the oldest `.ready` file in `data_dir` (blocking; `None` when there is none, `Err`
/// when the directory cannot be read: not knowing is not "nothing waiting").
pub fn oldest_ready_age(data_dir: &std::path::Path) -> Result<Option<Duration>, String> {
    let dir = data_dir.join("pg_wal/archive_status");
    let scan_failed = |e: std::io::Error| format!("scan {}: {e}", dir.display());
    let mut oldest = None;
    for entry in std::fs::read_dir(&dir).map_err(scan_failed)? {
        let entry = entry.map_err(scan_failed)?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".ready"))
        {
            continue;
        }
        // Archived (renamed to .done) since it was listed: not waiting any more.
        let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) else {
            continue;
        };
        oldest = Some(oldest.map_or(modified, |o: std::time::SystemTime| o.min(modified)));
    }
    Ok(oldest.map(|oldest| {
        std::time::SystemTime::now()
            .duration_since(oldest)
            .unwrap_or_default()
    }))
}

/// The checks on the catalogue (pure).
pub fn backup_checks(
    manifests: &[Manifest],
    now: DateTime<Utc>,
    max_age: Option<Duration>,
    min_redundancy: u32,
) -> Vec<CheckResult> {
    let fulls = manifests
        .iter()
        .filter(|m| m.kind == BackupKind::Full)
        .count();
    let mut out = vec![if fulls as u32 >= min_redundancy {
        CheckResult::ok(
            "minimum_redundancy",
            format!(
                "{fulls} full backup{} (at least {min_redundancy})",
                if fulls == 1 { "" } else { "s" }
            ),
        )
    } else {
        CheckResult::failed(
            "minimum_redundancy",
            format!(
                "{fulls} full backups, at least {min_redundancy} wanted\nHINT: take a full \
                 backup (`pgward backup --full`), or lower backup.min_redundancy"
            ),
        )
    }];
    let newest = manifests.iter().max_by_key(|m| m.stop_time);
    out.push(match (newest, max_age) {
        (None, _) => {
            CheckResult::failed("backup_age", format!("no complete backup\n{BACKUP_HINT}"))
        }
        (Some(m), limit) => {
            let age = (now - m.stop_time).to_std().unwrap_or_default();
            let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
            match limit {
                Some(limit) if age > limit => CheckResult::failed(
                    "backup_age",
                    format!(
                        "the newest backup {} is {age_text} old, above {}\n{BACKUP_HINT}",
                        m.id,
                        humantime::format_duration(limit)
                    ),
                ),
                Some(limit) => CheckResult::ok(
                    "backup_age",
                    format!(
                        "{} is {age_text} old (limit {})",
                        m.id,
                        humantime::format_duration(limit)
                    ),
                ),
                None => CheckResult::ok(
                    "backup_age",
                    format!("{} is {age_text} old (no limit)", m.id),
                ),
            }
        }
    });
    out
}

/// What the checks look at, opened by the caller.
pub struct Subject<'a> {
    /// The server, as its superuser.
    pub target: Target,
    pub data_dir: &'a Path,
    /// The repository, or why it cannot be opened.
    pub repo: Result<&'a Repo, String>,
    /// The cluster's identity as checked against the repository's `repo.json`, or why that
    /// failed.
    pub identity: Result<ClusterIdentity, String>,
    /// `wal.max_age`: how long WAL may wait to be archived (default: checkpoint_timeout + 2
    /// minutes).
    pub wal_max_age: Option<Duration>,
    /// `backup.max_age`: how old the newest backup may be.
    pub backup_max_age: Option<Duration>,
    /// `backup.min_redundancy`: how many full backups there must be.
    pub min_redundancy: u32,
}

/// Runs every check on `subject`.
pub async fn run(subject: &Subject<'_>) -> Vec<CheckResult> {
    let now = Utc::now();
    let target = &subject.target;
    let mut out = match server_facts(target, subject.data_dir).await {
        Ok(facts) => server_checks(&facts, subject.wal_max_age),
        Err(e) => vec![CheckResult::failed(
            "postgres",
            format!(
                "cannot connect at {}: {e:#}\n{POSTGRES_HINT}",
                target.socket_dir.display()
            ),
        )],
    };
    out.extend(repository_checks(subject).await);
    match subject.repo {
        Ok(repo) => match catalog::manifests(repo).await {
            Ok(manifests) => out.extend(backup_checks(
                &manifests,
                now,
                subject.backup_max_age,
                subject.min_redundancy,
            )),
            Err(e) => out.push(CheckResult::failed("backups", format!("{e:#}"))),
        },
        Err(ref e) => out.push(CheckResult::failed("backups", e.clone())),
    }
    out
}

/// The repository is reachable, writable, and this cluster's.
async fn repository_checks(subject: &Subject<'_>) -> Vec<CheckResult> {
    let (repo, identity) = match (&subject.repo, &subject.identity) {
        (Ok(repo), Ok(identity)) => (repo, identity),
        (Err(e), _) | (_, Err(e)) => return vec![CheckResult::failed("repository", e.clone())],
    };
    let mut out = vec![CheckResult::ok(
        "system_identifier",
        format!("{} matches {}", identity.system_identifier, repo.describe()),
    )];
    out.push(match repo.probe_writable().await {
        Ok(_) => CheckResult::ok("repository", format!("{} is writable", repo.describe())),
        Err(e) => {
            let e = anyhow::Error::new(e);
            CheckResult::failed(
                "repository",
                format!("cannot write: {e:#}\n{REPO_WRITE_HINT}"),
            )
        }
    });
    out
}

/// What to do when there is no recent backup.
const BACKUP_HINT: &str = "HINT: take one with `pgward backup`; backups on a schedule are a job \
                           with action: backup (`pgward jobs list` shows how its runs went)";

/// Every check passed.
pub fn all_ok(results: &[CheckResult]) -> bool {
    results.iter().all(|r| r.ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn healthy() -> ServerFacts {
        ServerFacts {
            wal_level: "replica".into(),
            archive_mode: "on".into(),
            archive_command: "test -f x || /usr/bin/pgward --config /c wal-push %p".into(),
            checkpoint_timeout: Duration::from_secs(300),
            last_archived_wal: Some("000000010000000000000009".into()),
            last_archived_time: Some(at("2026-11-30T10:00:00Z")),
            last_failed_wal: None,
            last_failed_time: None,
            oldest_ready_age: Ok(None),
            in_recovery: false,
            standby: false,
        }
    }

    #[test]
    fn a_standby_leaves_the_archiving_checks_to_its_primary() {
        let standby = ServerFacts {
            archive_mode: "off".into(),
            archive_command: String::new(),
            in_recovery: true,
            standby: true,
            ..healthy()
        };
        let results = server_checks(&standby, None);
        assert!(failed(&results).is_empty(), "{results:?}");
        assert_eq!(results.len(), server_checks(&healthy(), None).len());
        // A restore still recovering is not a standby: its archiving is checked.
        let recovering = ServerFacts {
            standby: false,
            ..standby
        };
        assert!(failed(&server_checks(&recovering, None)).contains(&"archive_mode"));
    }

    fn failed(results: &[CheckResult]) -> Vec<&'static str> {
        results.iter().filter(|r| !r.ok).map(|r| r.name).collect()
    }

    #[test]
    fn an_idle_healthy_server_passes_however_old_its_last_segment() {
        let results = server_checks(&healthy(), None);
        assert!(failed(&results).is_empty(), "{results:?}");
    }

    #[test]
    fn an_unreadable_archive_status_fails_rather_than_passes_as_nothing_waiting() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("pg_wal")).expect("pg_wal");
        std::fs::write(dir.path().join("pg_wal/archive_status"), b"").expect("a file");
        let mut facts = healthy();
        facts.oldest_ready_age = oldest_ready_age(dir.path());
        let results = server_checks(&facts, None);
        assert_eq!(failed(&results), ["wal_archived_age"]);
        let detail = &results.iter().find(|r| !r.ok).expect("failed").detail;
        assert!(
            detail.starts_with("cannot tell how long WAL has waited: failed to scan "),
            "{detail}"
        );
        std::fs::remove_file(dir.path().join("pg_wal/archive_status")).expect("rm");
        std::fs::create_dir(dir.path().join("pg_wal/archive_status")).expect("mkdir");
        assert_eq!(oldest_ready_age(dir.path()), Ok(None));
    }

    #[test]
    fn wal_waiting_longer_than_the_limit_fails() {
        let mut facts = healthy();
        facts.oldest_ready_age = Ok(Some(Duration::from_secs(419)));
        assert!(failed(&server_checks(&facts, None)).is_empty());
        facts.oldest_ready_age = Ok(Some(Duration::from_secs(421)));
        assert_eq!(failed(&server_checks(&facts, None)), ["wal_archived_age"]);
        facts.oldest_ready_age = Ok(Some(Duration::from_secs(61)));
        let tight = Some(Duration::from_secs(60));
        assert_eq!(failed(&server_checks(&facts, tight)), ["wal_archived_age"]);
    }

    #[test]
    fn settings_and_a_failing_archiver_are_reported() {
        let mut facts = healthy();
        facts.wal_level = "minimal".into();
        facts.archive_mode = "off".into();
        facts.archive_command = "cp %p /x/%f".into();
        facts.last_failed_wal = Some("00000001000000000000000A".into());
        facts.last_failed_time = Some(at("2026-11-30T10:01:00Z"));
        let results = server_checks(&facts, None);
        assert_eq!(
            failed(&results),
            ["wal_level", "archive_mode", "archive_command", "archiver"]
        );
        assert!(results[4].detail.contains("00000001000000000000000A"));
    }

    #[test]
    fn a_failed_check_says_what_to_do() {
        let mut facts = healthy();
        facts.archive_mode = "off".into();
        let results = server_checks(&facts, None);
        let archive_mode = results.iter().find(|r| r.name == "archive_mode").unwrap();
        assert_eq!(
            archive_mode.detail,
            "off: WAL is not archived\n\
             HINT: set wal.archive: true and restart pgward (archive_mode takes effect at server \
             start)"
        );
        let results = backup_checks(&[], at("2026-11-30T10:00:00Z"), None, 0);
        assert_eq!(
            results[1].detail,
            "no complete backup\n\
             HINT: take one with `pgward backup`; backups on a schedule are a job with action: \
             backup (`pgward jobs list` shows how its runs went)"
        );
    }

    #[test]
    fn redundancy_and_backup_age() {
        let results = backup_checks(&[], at("2026-11-30T10:00:00Z"), None, 1);
        assert_eq!(failed(&results), ["minimum_redundancy", "backup_age"]);
    }
}
