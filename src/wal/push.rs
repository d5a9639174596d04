//! Archiving one WAL file: the unit of work of the daemon and of the standalone client.
//!
//! A file is acknowledged only after the repository stored it (create-only) and a read-back of
//! the stored object's checksum matched what was read from disk. Segments are checked against
//! the repository's system identifier and their own name before anything is uploaded, so a
//! misconfigured archive_command that points two clusters at one repository fails on the
//! first segment instead of mixing their WAL. A segment of a timeline the repository's history
//! has left (a successor took over; see [`super::timelines`]) is refused the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::postgres::wal::{WalFileName, WalSegSize};
use crate::postgres::wal_header::{read_segment_header_of, ExpectedHeader};
use crate::postgres::ClusterIdentity;
use crate::repo::{layout, retry, PutOutcome, Repo, RetryPolicy, StagedObject};

use super::pg_wal::WalFile;
use super::stage::SegmentStager;
use super::timelines::DivergenceGuard;

/// What to do when the storage does not hold what was just uploaded.
const STORAGE_KEEPS_HINT: &str = "HINT: the storage did not keep what pgward wrote: check what \
                                  stands in front of it (a proxy or cache) and its consistency";

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pushed {
    /// Stored now.
    Created,
    /// The archive already held this file with identical content (a retry after a lost ack).
    AlreadyArchived,
}

/// What a push needs: the repository and the identity WAL must match.
#[derive(Clone)]
pub struct PushContext {
    pub repo: Repo,
    pub retry: RetryPolicy,
    pub system_identifier: u64,
    pub seg_size: WalSegSize,
    /// What is known of the timelines that left the one archived (shared by clones).
    pub divergence: Arc<DivergenceGuard>,
}

impl PushContext {
    /// A context for the cluster `identity`, whose repository was checked to be this
    /// cluster's (`repo.json`).
    pub fn new(repo: Repo, retry: RetryPolicy, identity: ClusterIdentity) -> PushContext {
        PushContext {
            repo,
            retry,
            system_identifier: identity.system_identifier,
            seg_size: identity.seg_size,
            divergence: Arc::default(),
        }
    }

    /// Archives the opened WAL file `wal` (a segment, partial segment, timeline history or
    /// backup history file), read from its descriptor only.
    pub async fn push(&self, wal: &WalFile, cancel: &CancellationToken) -> Result<Pushed> {
        let name = wal.name.clone();
        let path = wal.path.as_path();
        // Segments carry a page header to check; history and backup history files are text.
        let segment = match wal.kind {
            WalFileName::Segment(segment) | WalFileName::Partial(segment) => Some(segment),
            WalFileName::History { .. } | WalFileName::BackupHistory { .. } => None,
        };
        if let Some(segment) = segment {
            let expected = ExpectedHeader {
                system_id: self.system_identifier,
                tli: segment.tli(),
                segno: segment.segno(self.seg_size)?,
                seg_size: self.seg_size,
            };
            let header = read_segment_header_of(&wal.file, path)
                .with_context(|| format!("read the header of WAL segment {name}"))?;
            header
                .check(&expected)
                .with_context(|| format!("refusing to archive WAL segment {name}"))?;
        }
        self.divergence
            .check(&self.repo, &wal.kind, self.seg_size)
            .await?;
        let key = layout::wal_key(&name)?;
        let started = std::time::Instant::now();
        let outcome = retry(&self.retry, cancel, &format!("archive {name}"), || {
            self.repo.put_opened_create(&key, &wal.file, path, cancel)
        })
        .await
        .with_context(|| format!("archive {name} to {}", self.repo.describe()))?;
        self.acknowledge(&name, &key, outcome, started, cancel)
            .await
    }

    /// Archives the finished segment at `path` from its stage: the staged pages are compared
    /// with the file and only the rest is read and compressed now. `Ok(None)` when the file
    /// differs from what was staged; the caller then archives it whole. No retries: the whole
    /// upload is the fallback.
    pub async fn push_staged(
        &self,
        stager: &SegmentStager,
        wal: &WalFile,
        cancel: &CancellationToken,
    ) -> Result<Option<Pushed>> {
        let name = wal.name.clone();
        self.divergence
            .check(&self.repo, &wal.kind, self.seg_size)
            .await?;
        let started = std::time::Instant::now();
        let (owned_stager, file, path) = (
            stager.clone(),
            wal.file
                .try_clone()
                .context("duplicate the WAL file's descriptor")?,
            wal.path.clone(),
        );
        // For a file:// repository everything happens on one blocking thread (see
        // `StagedObject::commit_local`); an object store gets the object after this.
        let completed = tokio::task::spawn_blocking(move || {
            complete_stage(&owned_stager, &name_of(&path)?, &file, &path)
        })
        .await
        .context("join WAL stage completion")?
        .with_context(|| format!("archive {name} to {}", self.repo.describe()))?;
        let outcome = match completed {
            Completed::NotStaged | Completed::Changed => return Ok(None),
            Completed::Stored(PutOutcome::AlreadyIdentical { .. }) => {
                return Ok(Some(Pushed::AlreadyArchived))
            }
            // Read back on the blocking thread already.
            Completed::Stored(PutOutcome::Created { .. }) => return Ok(Some(Pushed::Created)),
            Completed::ToUpload(object) => object
                .commit(cancel)
                .await
                .with_context(|| format!("archive {name} to {}", self.repo.describe()))?,
        };
        let key = layout::wal_key(&name)?;
        self.acknowledge(&name, &key, outcome, started, cancel)
            .await
            .map(Some)
    }

    /// [`PushContext::push_staged`] on the calling thread, for a `file://` repository
    /// (blocking; `Ok(None)` for other repositories, or when the file was not staged or
    /// differs from its stage). Used where postgres's `.ready` is noticed, so a segment is
    /// archived without any hand-over between threads.
    pub fn push_staged_here(
        &self,
        stager: &SegmentStager,
        wal: &WalFile,
    ) -> Result<Option<Pushed>> {
        if !self.repo.is_local() {
            return Ok(None);
        }
        match self.divergence.check_known(&wal.kind, self.seg_size) {
            // Not known lately: the path that asks the repository takes the file.
            None => return Ok(None),
            Some(checked) => checked?,
        }
        let completed = complete_stage(stager, &wal.name, &wal.file, &wal.path)
            .with_context(|| format!("archive {} to {}", wal.name, self.repo.describe()))?;
        if let Completed::Stored(PutOutcome::Created { .. }) = completed {
            crate::failpoint!("push-after-upload");
        }
        Ok(match completed {
            Completed::Stored(PutOutcome::Created { .. }) => Some(Pushed::Created),
            Completed::Stored(PutOutcome::AlreadyIdentical { .. }) => Some(Pushed::AlreadyArchived),
            Completed::NotStaged | Completed::Changed | Completed::ToUpload(_) => None,
        })
    }

    /// Reads back the checksum of a newly stored object before the push counts as done.
    async fn acknowledge(
        &self,
        name: &str,
        key: &str,
        outcome: PutOutcome,
        started: std::time::Instant,
        cancel: &CancellationToken,
    ) -> Result<Pushed> {
        match outcome {
            PutOutcome::AlreadyIdentical { .. } => Ok(Pushed::AlreadyArchived),
            PutOutcome::Created {
                checksum,
                stored_bytes,
            } => {
                // Stored, neither read back nor acknowledged: postgres asks again after a
                // crash here, and the second push finds the object identical.
                crate::failpoint!("push-after-upload");
                let uploaded = started.elapsed();
                // Read back what the store now holds before acknowledging.
                let stored = retry(&self.retry, cancel, &format!("verify {name}"), || {
                    self.repo.exists(key)
                })
                .await
                .with_context(|| format!("verify archived {name}"))?;
                tracing::debug!(
                    file = %name,
                    stored_bytes,
                    upload_ms = uploaded.as_secs_f64() * 1e3,
                    verify_ms = (started.elapsed() - uploaded).as_secs_f64() * 1e3,
                    "uploaded and verified"
                );
                match stored {
                    Some(stored) if stored == checksum => Ok(Pushed::Created),
                    Some(stored) => bail!(
                        "archived {name} reads back with checksum {stored}, but {checksum} was \
                         uploaded\n{STORAGE_KEEPS_HINT}"
                    ),
                    None => bail!(
                        "archived {name} is not in the repository after upload\n\
                         {STORAGE_KEEPS_HINT}"
                    ),
                }
            }
        }
    }
}

/// Completes the stage of `name`, open as `file` (at `path`), blocking: compares the stage
/// with the finished file and, for a `file://` repository, stores it (read back included).
fn complete_stage(
    stager: &SegmentStager,
    name: &str,
    file: &std::fs::File,
    path: &Path,
) -> Result<Completed> {
    let started = std::time::Instant::now();
    let Some(stage) = stager.take(name) else {
        return Ok(Completed::NotStaged);
    };
    let taken = started.elapsed();
    let (object, buffer) = stage.complete(file, path)?;
    stager.recycle(buffer);
    stager.record(object.is_some());
    let Some(object) = object else {
        return Ok(Completed::Changed);
    };
    let read = started.elapsed();
    if !object.is_local() {
        return Ok(Completed::ToUpload(Box::new(object)));
    }
    let outcome = object.commit_local()?;
    tracing::debug!(
        file = %name,
        take_ms = taken.as_secs_f64() * 1e3,
        complete_ms = (read - taken).as_secs_f64() * 1e3,
        commit_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
        "archived from its stage"
    );
    Ok(Completed::Stored(outcome))
}

/// How completing a stage went, on the blocking thread.
enum Completed {
    /// The stager was not staging this file.
    NotStaged,
    /// The finished file differs from what was staged.
    Changed,
    /// Stored and read back (a `file://` repository).
    Stored(PutOutcome),
    /// Ready to go to an object store.
    ToUpload(Box<StagedObject>),
}

fn name_of(path: &Path) -> Result<String> {
    file_name(path)
}

/// The final path component as UTF-8 (WAL file names are ASCII).
pub fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable file name", path.display()))
}

/// `%p` as postgres passes it is relative to the data directory (postgres's working
/// directory); the daemon needs it absolute.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("read the working directory")?
        .join(path))
}
