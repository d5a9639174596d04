//! Objects written while their content is still growing: the archiver stages the WAL segment
//! postgres is filling, so archiving it once it is finished costs only its last pages.
//!
//! A [`StagedObject`] hashes and compresses what it is given as it comes (blocking calls, from
//! the caller's thread) into a hidden temp file beside the final object (`file://`), or into
//! memory (object stores, which take an object in one request or a multipart upload).
//! [`StagedObject::commit`] ends the frame and publishes the object create-only with the same
//! outcome as [`Repo::put_file_create`]: readers see no object or a complete one, and an
//! object already there is compared by checksum, never replaced. Dropped uncommitted, a
//! staged object leaves nothing behind.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use tokio_util::sync::CancellationToken;

use super::codec::Encoder;
use super::frame::{self, Checksum, Digest};
use super::put::{compare, upload_part, Target};
use super::{blocking, PutMode, PutOutcome, Repo, RepoError, SINGLE_PUT_MAX, TRAILER_LEN};

/// Temp files of staged objects in a `file://` repository are named `.pgward-*.staging`:
/// hidden, and without a codec extension, so listings never see them.
const STAGING_PREFIX: &str = ".pgward-";
const STAGING_SUFFIX: &str = ".staging";
/// Writeback of a local temp file is started every this many bytes, so the fsync at commit
/// finds little left to write.
const WRITEBACK_STEP: u64 = 256 << 10;
/// A staging temp file untouched this long belongs to a process that died.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// An object being written; see the module documentation.
pub struct StagedObject {
    repo: Repo,
    key: String,
    path: ObjectPath,
    hasher: blake3::Hasher,
    len: u64,
    encoder: Encoder<'static, StageSink>,
}

/// Where the encoded bytes of a staged object go until it is committed.
enum StageSink {
    Local {
        tmp: tempfile::NamedTempFile,
        written: u64,
        writeback_started: u64,
    },
    Memory(Vec<u8>),
}

impl Write for StageSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            StageSink::Memory(buf) => {
                buf.extend_from_slice(data);
                Ok(data.len())
            }
            StageSink::Local {
                tmp,
                written,
                writeback_started,
            } => {
                let n = tmp.as_file_mut().write(data)?;
                *written += n as u64;
                if *written - *writeback_started >= WRITEBACK_STEP {
                    start_writeback(tmp.as_file(), *writeback_started, *written);
                    *writeback_started = *written;
                }
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Asks the kernel to start writing `from..to` of `file` to disk without waiting for it: the
/// commit's fsync then waits only for the rest. Advisory; a failure only costs time later.
fn start_writeback(file: &std::fs::File, from: u64, to: u64) {
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        tracing::trace!(
            "sync_file_range: {} (the commit's fsync does the work)",
            io::Error::last_os_error()
        );
    }
}

impl Repo {
    /// Starts an object whose content will be appended piece by piece. Blocking (creates a
    /// temp file in a local repository); call from a blocking thread.
    pub fn stage(&self, key: &str) -> Result<StagedObject, RepoError> {
        let codec = self.inner.codec;
        let path = self.path(key, codec)?;
        let mut sink = match &self.inner.local_root {
            Some(root) => {
                let stored = root.join(path.as_ref());
                let dir = stored.parent().unwrap_or(root).to_owned();
                std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
                let tmp = tempfile::Builder::new()
                    .prefix(STAGING_PREFIX)
                    .suffix(STAGING_SUFFIX)
                    .tempfile_in(&dir)
                    .map_err(|e| RepoError::io(&dir, e))?;
                StageSink::Local {
                    tmp,
                    written: 0,
                    writeback_started: 0,
                }
            }
            None => StageSink::Memory(Vec::with_capacity(1 << 20)),
        };
        sink.write_all(&frame::header(codec))
            .map_err(|e| RepoError::io("<staging>", e))?;
        let encoder = Encoder::new(codec, self.inner.level, sink)
            .map_err(|e| RepoError::io("<staging>", e))?;
        Ok(StagedObject {
            repo: self.clone(),
            key: key.to_owned(),
            path,
            hasher: blake3::Hasher::new(),
            len: 0,
            encoder,
        })
    }

    /// Whether this is a `file://` repository.
    pub fn is_local(&self) -> bool {
        self.inner.local_root.is_some()
    }

    /// Removes staging temp files under `prefix` of a `file://` repository that no process has
    /// touched for a while (left by a process that was killed). Blocking; a no-op elsewhere.
    pub fn remove_stale_staging(&self, prefix: &str) {
        let Some(root) = &self.inner.local_root else {
            return;
        };
        let mut dirs = vec![match self.inner.prefix.as_str() {
            "" => root.join(prefix),
            p => root.join(p).join(prefix),
        }];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(path);
                } else if is_stale_staging(&path, &meta) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => tracing::info!("removed a stale staging file {}", path.display()),
                        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
                    }
                }
            }
        }
    }
}

fn is_stale_staging(path: &Path, meta: &std::fs::Metadata) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with(STAGING_PREFIX)
        && name.ends_with(STAGING_SUFFIX)
        && meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > STALE_AFTER)
}

impl StagedObject {
    /// Appends `content` (hashed, compressed, written out). Blocking.
    pub fn append(&mut self, content: &[u8]) -> Result<(), RepoError> {
        self.hasher.update(content);
        self.len += content.len() as u64;
        self.encoder
            .write_all(content)
            .map_err(|e| RepoError::io(&self.key, e))
    }

    /// Content bytes appended so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the object goes to a `file://` repository, where [`StagedObject::commit_local`]
    /// finishes it on the calling thread.
    pub fn is_local(&self) -> bool {
        self.repo.is_local()
    }

    /// [`StagedObject::commit`] for a `file://` repository, entirely on the calling thread
    /// (blocking): each hand-over between threads costs a scheduler wake-up, and on a busy
    /// machine those are what a commit waits for most. The stored trailer is read back before
    /// `Created` is returned.
    pub fn commit_local(self) -> Result<PutOutcome, RepoError> {
        let Some(root) = self.repo.inner.local_root.clone() else {
            return Err(RepoError::io(
                &self.key,
                io::Error::other("commit_local on a repository that is not file://"),
            ));
        };
        // Another codec's object of the same key (storage.compression changed) counts too.
        for codec in self.repo.codecs() {
            let stored = root.join(self.repo.path(&self.key, codec)?.as_ref());
            let existing = match read_local_trailer(&self.key, &stored) {
                Ok(existing) => existing,
                // Never acknowledged (see `incomplete`): replaced by this object.
                Err(RepoError::Corrupt { reason, .. }) => {
                    remove_incomplete_local(&stored, &reason)?;
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some(existing) = existing {
                let digest = self.hasher.finalize();
                let outcome = compare(&self.key, existing.checksum, Checksum(*digest.as_bytes()))?;
                // Its writer may have died before it fsynced it.
                self.repo.make_local_entry_durable(&stored, true)?;
                return Ok(outcome);
            }
        }
        let Finished {
            repo,
            key,
            path,
            digest,
            sink,
        } = self.finish()?;
        let io_error = |e| RepoError::io(&key, e);
        let StageSink::Local { tmp, written, .. } = sink else {
            unreachable!("is_local was checked by the caller")
        };
        tmp.as_file().sync_data().map_err(io_error)?;
        let stored = root.join(path.as_ref());
        match tmp.persist_noclobber(&stored) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                return match read_local_trailer(&key, &stored)? {
                    Some(existing) => {
                        let outcome = compare(&key, existing.checksum, digest.checksum)?;
                        repo.make_local_entry_durable(&stored, true)?;
                        Ok(outcome)
                    }
                    None => Err(io_error(io::Error::other(
                        "object vanished after a create conflict",
                    ))),
                };
            }
            Err(e) => return Err(RepoError::io(&stored, e.error)),
        }
        // The temp file was synced before it was renamed into place.
        repo.make_local_entry_durable(&stored, false)?;
        match read_local_trailer(&key, &stored)? {
            Some(found) if found.checksum == digest.checksum => Ok(PutOutcome::Created {
                checksum: digest.checksum,
                stored_bytes: written,
            }),
            Some(found) => Err(RepoError::Conflict {
                key,
                existing: found.checksum,
                new: digest.checksum,
            }),
            None => Err(io_error(io::Error::other(
                "the object is not there after it was stored",
            ))),
        }
    }

    /// Ends the frame and stores the object create-only (see [`Repo::put_file_create`] for
    /// the outcomes). A `file://` object is durable when this returns.
    pub async fn commit(self, cancel: &CancellationToken) -> Result<PutOutcome, RepoError> {
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        if self.is_local() {
            return blocking(move || self.commit_local()).await;
        }
        let finished = blocking(move || self.finish()).await?;
        let StageSink::Memory(encoded) = finished.sink else {
            unreachable!("only a file:// repository stages into a local file")
        };
        let (repo, key) = (finished.repo, finished.key);
        repo.put_encoded_any(&key, &finished.path, encoded, finished.digest, cancel)
            .await
    }

    /// Ends the compressed stream and writes the trailer (blocking).
    fn finish(self) -> Result<Finished, RepoError> {
        let StagedObject {
            repo,
            key,
            path,
            hasher,
            len,
            encoder,
        } = self;
        let digest = Digest {
            len,
            checksum: Checksum(*hasher.finalize().as_bytes()),
        };
        let io_error = |e| RepoError::io(&key, e);
        let mut sink = encoder.finish().map_err(io_error)?;
        sink.write_all(&frame::trailer(digest)).map_err(io_error)?;
        Ok(Finished {
            repo,
            key,
            path,
            digest,
            sink,
        })
    }
}

/// A staged object whose frame is complete, ready to be published.
struct Finished {
    repo: Repo,
    key: String,
    path: ObjectPath,
    digest: Digest,
    sink: StageSink,
}

/// Removes the incomplete local object file `stored` (its trailer unreadable: `reason`),
/// which a create-only commit replaces; see the `incomplete` module.
fn remove_incomplete_local(stored: &Path, reason: &str) -> Result<(), RepoError> {
    tracing::warn!(
        object = %stored.display(),
        "replacing the incomplete object {} ({reason}): a writer stopped before it finished \
         it, and it was never acknowledged",
        stored.display()
    );
    match std::fs::remove_file(stored) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RepoError::io(stored, e)),
        _ => Ok(()),
    }
}

/// The trailer of the local object file `stored`, `None` when there is no such file.
fn read_local_trailer(key: &str, stored: &Path) -> Result<Option<Digest>, RepoError> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::File::open(stored) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepoError::io(stored, e)),
    };
    let size = file.metadata().map_err(|e| RepoError::io(stored, e))?.len();
    let corrupt = |reason: String| RepoError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    if size < TRAILER_LEN as u64 {
        return Err(corrupt(format!(
            "object too short for a trailer ({size} bytes)"
        )));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN as u64)
        .map_err(|e| RepoError::io(stored, e))?;
    frame::parse_trailer(&trailer).map(Some).map_err(corrupt)
}

impl Repo {
    /// Stores an encoded object held in memory create-only: one put when it is small, else
    /// a multipart upload after checking that the object is absent.
    async fn put_encoded_any(
        &self,
        key: &str,
        path: &ObjectPath,
        encoded: Vec<u8>,
        digest: Digest,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let stored_bytes = encoded.len() as u64;
        let encoded = Bytes::from(encoded);
        if encoded.len() <= SINGLE_PUT_MAX {
            return self
                .put_encoded(key, path, vec![encoded], digest, PutMode::Create)
                .await;
        }
        let mut upload = match self.start_multipart(key, path, PutMode::Create).await? {
            Target::Multipart(upload) => upload,
            Target::Discard(existing) => return compare(key, existing, digest.checksum),
            Target::Buffer => unreachable!("start_multipart never buffers"),
        };
        let mut rest = encoded;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(super::CHUNK));
            if let Err(e) = upload_part(&mut upload, chunk, key, cancel).await {
                let _ = upload.abort().await;
                return Err(e);
            }
        }
        self.finish_multipart(
            key,
            path,
            upload,
            digest,
            stored_bytes,
            PutMode::Create,
            cancel,
        )
        .await
    }
}
