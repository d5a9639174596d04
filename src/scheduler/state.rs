//! What the scheduler remembers across restarts: per job, its last runs, so that catch-up
//! knows which fire time was missed and `status` can show the last result after a restart.
//!
//! Kept in `<data_dir>/pgward.jobs.json`, beside the cluster it is about: a fresh cluster
//! (or a restored one) starts with no history, and the file goes wherever the data volume
//! goes. It is pgward's, not the cluster's: backups leave it out (`backup::exclude`). The
//! only I/O of the scheduler's pure parts is here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil::AtomicFile;

/// Name of the state file in the data directory.
pub const STATE_FILE: &str = crate::postgres::data_dir::JOBS_STATE_FILE;

/// Version of the file's layout; a file of another version is refused rather than misread.
const FORMAT_VERSION: u32 = 1;

/// Where the state of the jobs of the cluster in `data_dir` is kept.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum RunResult {
    Success,
    /// `reason` as [`failure_reason`](super::policy::failure_reason) gives it.
    Failure {
        reason: String,
    },
}

/// What is remembered of one job. Every time is UTC; `None` until it first happens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobState {
    /// The scheduled fire time of the last run started on schedule (not of `jobs run`, not of
    /// retries): catch-up looks for a fire time missed after it.
    pub last_fire: Option<DateTime<Utc>>,
    /// When the last run (of any kind) started.
    pub last_start: Option<DateTime<Utc>>,
    /// When the last run ended.
    pub last_end: Option<DateTime<Utc>>,
    /// When the last successful run ended.
    pub last_success: Option<DateTime<Utc>>,
    /// When the last failed run ended.
    pub last_failure: Option<DateTime<Utc>>,
    pub last_result: Option<RunResult>,
    /// From `last_start` to `last_end`.
    pub last_duration_secs: Option<f64>,
}

impl JobState {
    /// A run started at `start`; `fire` is its scheduled time when it was started on
    /// schedule (including a catch-up run).
    pub fn record_start(&mut self, fire: Option<DateTime<Utc>>, start: DateTime<Utc>) {
        if fire.is_some() {
            self.last_fire = fire;
        }
        self.last_start = Some(start);
    }

    /// The run last recorded as started ended at `end` with `result`.
    pub fn record_end(&mut self, end: DateTime<Utc>, result: RunResult) {
        self.last_end = Some(end);
        self.last_duration_secs = self
            .last_start
            .and_then(|start| (end - start).to_std().ok())
            .map(|d| d.as_secs_f64());
        match result {
            RunResult::Success => self.last_success = Some(end),
            RunResult::Failure { .. } => self.last_failure = Some(end),
        }
        self.last_result = Some(result);
    }
}

/// The state of every job, by job name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStates {
    pub jobs: BTreeMap<String, JobState>,
}

/// The file's layout.
#[derive(Serialize, Deserialize)]
struct OnDisk {
    format_version: u32,
    jobs: BTreeMap<String, JobState>,
}

impl JobStates {
    /// Reads the file at `path`; a missing file is an empty state. A file that cannot be read
    /// or parsed is an error naming it: the caller logs it and starts empty, since the state
    /// only makes catch-up and `status` better, and must not keep jobs from running.
    /// Blocking.
    pub fn load(path: &Path) -> Result<JobStates> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JobStates::default()),
            Err(e) => return Err(e).with_context(|| format!("read job state {}", path.display())),
        };
        let on_disk: OnDisk = serde_json::from_slice(&text)
            .with_context(|| format!("parse job state {}", path.display()))?;
        if on_disk.format_version != FORMAT_VERSION {
            bail!(
                "job state {} has format_version {}, this pgward reads {FORMAT_VERSION}",
                path.display(),
                on_disk.format_version
            );
        }
        Ok(JobStates { jobs: on_disk.jobs })
    }

    /// Replaces the file at `path` durably: a crash leaves the old state or the new one,
    /// never a torn file that would lose every job's history. Blocking (fsyncs).
    ///
    /// When pgward runs as root, the file is given to the data directory's owner: a file in
    /// the data directory that postgres cannot read makes `pg_basebackup` fail.
    pub fn save(&self, path: &Path) -> Result<()> {
        let write = || -> Result<()> {
            let on_disk = OnDisk {
                format_version: FORMAT_VERSION,
                jobs: self.jobs.clone(),
            };
            let mut file = AtomicFile::create(path)?;
            serde_json::to_writer_pretty(&mut file, &on_disk)?;
            file.write_all(b"\n")?;
            give_to_dir_owner(&file, path)?;
            file.commit()?;
            Ok(())
        };
        write().with_context(|| format!("write job state {}", path.display()))
    }

    /// The state of job `name`, created empty if it has none yet.
    pub fn job_mut(&mut self, name: &str) -> &mut JobState {
        self.jobs.entry(name.to_owned()).or_default()
    }

    /// Forgets jobs not in `names` (removed from the config).
    pub fn retain_jobs<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = names.into_iter().collect();
        self.jobs.retain(|name, _| keep.contains(name.as_str()));
    }
}

/// chowns the temp file to the owner of the directory it will live in, when we are root
/// and they differ.
fn give_to_dir_owner(file: &AtomicFile, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let owner = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    let mine = file.as_file().metadata().context("stat temp file")?;
    if (mine.uid(), mine.gid()) != (owner.uid(), owner.gid()) {
        std::os::unix::fs::fchown(file.as_file(), Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("give the file to the owner of {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::schedule::at;

    #[test]
    fn path_is_in_the_data_directory() {
        assert_eq!(
            state_path(Path::new("/var/lib/postgresql/data")),
            Path::new("/var/lib/postgresql/data/pgward.jobs.json")
        );
    }

    #[test]
    fn records_runs() {
        let mut job = JobState::default();
        job.record_start(
            Some(at("2026-05-15T01:00:00Z")),
            at("2026-05-15T01:00:00.2Z"),
        );
        job.record_end(
            at("2026-05-15T01:00:30.7Z"),
            RunResult::Failure {
                reason: "exit status 3".into(),
            },
        );
        // A manual run keeps the last fire time; its success keeps the last failure.
        job.record_start(None, at("2026-05-15T02:00:00Z"));
        job.record_end(at("2026-05-15T02:00:02Z"), RunResult::Success);
        assert_eq!(
            job,
            JobState {
                last_fire: Some(at("2026-05-15T01:00:00Z")),
                last_start: Some(at("2026-05-15T02:00:00Z")),
                last_end: Some(at("2026-05-15T02:00:02Z")),
                last_success: Some(at("2026-05-15T02:00:02Z")),
                last_failure: Some(at("2026-05-15T01:00:30.7Z")),
                last_result: Some(RunResult::Success),
                last_duration_secs: Some(2.0),
            }
        );
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = state_path(dir.path());
        assert_eq!(
            JobStates::load(&path).expect("missing is empty"),
            JobStates::default()
        );

        let mut states = JobStates::default();
        let nightly = states.job_mut("nightly");
        nightly.record_start(Some(at("2026-05-15T01:00:00Z")), at("2026-05-15T01:00:01Z"));
        nightly.record_end(
            at("2026-05-15T01:02:01.5Z"),
            RunResult::Failure {
                reason: "killed by SIGKILL after the 30s timeout".into(),
            },
        );
        states.job_mut("never-ran");
        states.save(&path).expect("save");
        assert_eq!(JobStates::load(&path).expect("load"), states);

        let text = std::fs::read_to_string(&path).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["format_version"], 1);
        assert_eq!(json["jobs"]["nightly"]["last_fire"], "2026-05-15T01:00:00Z");
        assert_eq!(json["jobs"]["nightly"]["last_duration_secs"], 120.5);
        assert_eq!(
            json["jobs"]["nightly"]["last_result"],
            serde_json::json!({
                "outcome": "failure",
                "reason": "killed by SIGKILL after the 30s timeout"
            })
        );

        // Saving again replaces the file; nothing else is left in the directory.
        states.retain_jobs(["nightly"]);
        states.save(&path).expect("save again");
        assert_eq!(JobStates::load(&path).expect("load"), states);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn corrupt_or_foreign_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = state_path(dir.path());
        std::fs::write(&path, b"{\"format_version\": 1, \"jobs\": {").expect("write");
        let e = format!("{:#}", JobStates::load(&path).unwrap_err());
        assert!(
            e.starts_with(&format!("parse job state {}: ", path.display())),
            "{e}"
        );
        std::fs::write(&path, b"{\"format_version\": 2, \"jobs\": {}}").expect("write");
        assert_eq!(
            format!("{:#}", JobStates::load(&path).unwrap_err()),
            format!(
                "job state {} has format_version 2, this pgward reads 1",
                path.display()
            )
        );
    }

    #[test]
    fn fields_missing_or_added_by_other_versions_are_tolerated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = state_path(dir.path());
        std::fs::write(
            &path,
            b"{\"format_version\": 1, \"jobs\": {\"j\": {\"last_fire\": \"2026-05-15T01:00:00Z\", \
              \"next_feature\": true}}}",
        )
        .expect("write");
        let states = JobStates::load(&path).expect("load");
        assert_eq!(
            states.jobs["j"],
            JobState {
                last_fire: Some(at("2026-05-15T01:00:00Z")),
                ..JobState::default()
            }
        );
    }

    #[test]
    fn save_names_the_file_when_it_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing-dir").join(STATE_FILE);
        let e = format!("{:#}", JobStates::default().save(&path).unwrap_err());
        assert!(
            e.starts_with(&format!("write job state {}: ", path.display())),
            "{e}"
        );
    }
}
