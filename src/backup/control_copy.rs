//! `global/pg_control` in a backup: read last, after every other file was stored (as
//! pg_basebackup sends it last) and before backup mode ends (a standby's stop takes its
//! minimum recovery point from the file, so the copy must not be newer), and only a copy
//! whose CRC checks. It is stored while backup mode ends. postgres rewrites the file in place at
//! every checkpoint, so a read may catch it half-written (a torn read); such a copy would
//! make the restored cluster refuse to start, or start from a wrong checkpoint. A bad CRC is
//! read again, as PostgreSQL's own tools do, and the backup fails if it never checks.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::copy::stored_outcome;
use super::manifest::{file_key, FileEntry};
use super::walk::Source;
use crate::postgres::control_file::ControlFile;
use crate::repo::{retry, PutMode, Repo, RetryPolicy};

/// Reads of `pg_control` before a bad CRC fails the backup.
const READ_ATTEMPTS: u32 = 10;
/// Pause between two reads: a checkpoint's rewrite of 8 KiB is long over by then.
const REREAD_DELAY: Duration = Duration::from_millis(50);

/// `global/pg_control` as read, with a valid CRC, to be stored.
pub(super) struct ControlCopy {
    source: Source,
    bytes: Vec<u8>,
    meta: std::fs::Metadata,
}

/// Reads `source` (the data directory's `global/pg_control`) until its CRC checks.
pub(super) async fn read_control_file(source: Source) -> Result<ControlCopy> {
    let abs = source.abs.clone();
    let (bytes, meta) = tokio::task::spawn_blocking(move || {
        let bytes = read_checked(&abs)?;
        let meta = std::fs::metadata(&abs).with_context(|| format!("stat {}", abs.display()))?;
        anyhow::Ok((bytes, meta))
    })
    .await
    .context("join a pg_control read")??;
    Ok(ControlCopy {
        source,
        bytes,
        meta,
    })
}

/// Stores the copy of `pg_control` that [`read_control_file`] made.
pub(super) async fn store_control_file(
    repo: &Repo,
    id: &str,
    copy: ControlCopy,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<FileEntry> {
    let ControlCopy {
        source,
        bytes,
        meta,
    } = copy;
    let key = file_key(id, &source.path);
    let size = bytes.len() as u64;
    let op = format!("back up {}", source.path);
    let outcome = retry(policy, cancel, &op, || {
        repo.put_bytes(&key, bytes.clone(), PutMode::Create)
    })
    .await
    .with_context(|| op.clone())?;
    let (checksum, stored_size) = stored_outcome(outcome);
    Ok(FileEntry {
        bundle: None,
        path: source.path,
        size,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        mode: source.mode,
        checksum,
        stored_size,
        stored_in: id.to_owned(),
        bad_blocks: Vec::new(),
        parts: Vec::new(),
    })
}

/// The content of the `pg_control` at `path`, read until its CRC checks. Blocking.
fn read_checked(path: &Path) -> Result<Vec<u8>> {
    let mut last = None;
    for attempt in 1..=READ_ATTEMPTS {
        #[allow(unused_mut)]
        let mut bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        #[cfg(feature = "failpoints")]
        if crate::failpoint::reached("backup-pg-control-torn") {
            // As a read that caught a rewrite halfway: a byte the CRC covers differs.
            if let Some(byte) = bytes.get_mut(24) {
                *byte ^= 0xff;
            }
        }
        match ControlFile::parse(&bytes) {
            Ok(_) => return Ok(bytes),
            Err(e) => {
                #[cfg(feature = "failpoints")]
                if crate::failpoint::reached("backup-pg-control-unchecked") {
                    // Stores the copy as it is, as a backup before this check did.
                    return Ok(bytes);
                }
                tracing::info!(
                    attempt,
                    "{} read while postgres rewrote it? {e}; reading it again",
                    path.display()
                );
                last = Some(e);
            }
        }
        std::thread::sleep(REREAD_DELAY);
    }
    let last = last.expect("a failed read before this point");
    bail!(
        "{} has a bad checksum in each of {READ_ATTEMPTS} reads ({last}); no backup is \
         stored with it\nHINT: the server's pg_control may be damaged: check the server's log \
         and run pg_controldata on the data directory",
        path.display()
    )
}
