//! Writing objects: streamed uploads of a local file (or ranges of one) and small puts from
//! memory, create-only or overwriting. See the module documentation of [`super`] for the
//! memory bound and for what create-only guarantees on each kind of store.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Digest};
use super::gate::Permit;
use super::{
    blocking, ranges, Checksum, PutMode, PutOutcome, Repo, RepoError, CHANNEL_DEPTH, CHUNK,
    PARTS_IN_FLIGHT, PART_SIZE, SINGLE_PUT_MAX,
};

/// Where an upload's encoded chunks go.
pub(super) enum Target {
    /// Held in memory for one put, while they fit in `SINGLE_PUT_MAX`.
    Buffer,
    /// Sent as parts of a multipart upload.
    Multipart(WriteMultipart),
    /// Dropped: the object appeared meanwhile, with this checksum; the encoder runs on only
    /// to tell whether the content is the same.
    Discard(Checksum),
}

impl Repo {
    /// Streams the local file `src`, compressed, into `key`, create-only: when `key` exists
    /// already under the repository's codec, `src`'s checksum is compared with the stored
    /// trailer (a range read): identical gives [`PutOutcome::AlreadyIdentical`], different
    /// [`RepoError::Conflict`]. Nothing is asked before the upload: the conditional put is
    /// the existence check (one request for an object up to [`SINGLE_PUT_MAX`]), and the
    /// comparison costs a read only when it refuses. An object stored under another codec's
    /// name (written before `storage.compression` changed) is not looked for.
    ///
    /// Cancel safety: cancelling (or dropping the future) leaves no object, or a complete one.
    pub async fn put_file_create(
        &self,
        key: &str,
        src: &Path,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let file = {
            let src = src.to_owned();
            blocking(move || std::fs::File::open(&src).map_err(|e| RepoError::io(&src, e))).await?
        };
        self.put_opened_create(key, &file, src, cancel).await
    }

    /// [`Repo::put_file_create`] of a file already open (named `src` in messages), read from
    /// its start through a duplicate of the descriptor: what is stored is what was opened,
    /// whatever its path names by now. Reads of the same descriptor must not overlap.
    pub async fn put_opened_create(
        &self,
        key: &str,
        src_file: &std::fs::File,
        src: &Path,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let path = self.path(key, self.inner.codec)?;
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        let rewound = || -> Result<std::fs::File, RepoError> {
            use std::io::Seek;
            let mut file = src_file.try_clone().map_err(|e| RepoError::io(src, e))?;
            file.rewind().map_err(|e| RepoError::io(src, e))?;
            Ok(file)
        };
        let file = rewound()?;
        let outcome = self
            .upload(
                key,
                path.clone(),
                file,
                src.to_owned(),
                PutMode::Create,
                cancel,
            )
            .await?;
        self.make_durable(key, &path, &outcome).await?;
        Ok(outcome)
    }

    /// Streams `ranges` of the local file `src`, concatenated and compressed, into `key`,
    /// create-only like [`Repo::put_file_create`]. A range cut short by the end of the file
    /// ends the content (see [`ranges::RangesReader`]); the ranges actually stored are
    /// returned with the outcome.
    ///
    /// Cancel safety: as [`Repo::put_file_create`].
    pub async fn put_ranges_create(
        &self,
        key: &str,
        src: &Path,
        ranges: Vec<ranges::Range>,
        cancel: &CancellationToken,
    ) -> Result<(PutOutcome, Vec<ranges::Range>), RepoError> {
        let path = self.path(key, self.inner.codec)?;
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        let open = {
            let src = src.to_owned();
            move || std::fs::File::open(&src).map_err(|e| RepoError::io(&src, e))
        };
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let file = blocking(open).await?;
        let reader = ranges::RangesReader::new(file, ranges.clone(), total.clone());
        let outcome = self
            .upload(
                key,
                path.clone(),
                reader,
                src.to_owned(),
                PutMode::Create,
                cancel,
            )
            .await?;
        self.make_durable(key, &path, &outcome).await?;
        let read = total.load(Ordering::Relaxed);
        Ok((outcome, ranges::read_prefix(&ranges, read)))
    }

    /// Stores `bytes` (small: manifests) under `key`; create-only as [`Repo::put_file_create`].
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<PutOutcome, RepoError> {
        let (codec, level) = (self.inner.codec, self.inner.level);
        let (digest, encoded) = blocking(move || {
            frame::encode_bytes(&bytes, codec, level).map_err(|e| RepoError::io("<memory>", e))
        })
        .await?;
        let path = self.path(key, codec)?;
        let outcome = self
            .put_encoded(key, &path, vec![Bytes::from(encoded)], digest, mode)
            .await?;
        self.make_durable(key, &path, &outcome).await?;
        Ok(outcome)
    }

    /// Encodes `file` on a blocking thread and uploads the result to `path`.
    pub(super) async fn upload(
        &self,
        key: &str,
        path: ObjectPath,
        file: impl Read + Send + 'static,
        src: PathBuf,
        mode: PutMode,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let (codec, level) = (self.inner.codec, self.inner.level);
        let encode = move |sink: ChunkSink| {
            let mut src_reader = frame::Tracked::new(file);
            match frame::encode(&mut src_reader, codec, level, sink) {
                Ok((digest, _)) => Ok((digest, ())),
                Err(e) => Err(RepoError::io(&src, src_reader.failed.unwrap_or(e))),
            }
        };
        let (outcome, ()) = self.upload_with(key, path, mode, cancel, encode).await?;
        Ok(outcome)
    }

    /// Runs `encode` on a blocking thread, writing a whole object (header, payload, trailer)
    /// into the sink it is given, and uploads what it writes to `path`: one put while it fits
    /// in [`SINGLE_PUT_MAX`], else a multipart upload. Returns the put's outcome and what
    /// `encode` returned besides the content's digest. An upload failure wins over the
    /// encoder's (which then only saw its sink close).
    pub(super) async fn upload_with<T: Send + 'static>(
        &self,
        key: &str,
        path: ObjectPath,
        mode: PutMode,
        cancel: &CancellationToken,
        encode: impl FnOnce(ChunkSink) -> Result<(Digest, T), RepoError> + Send + 'static,
    ) -> Result<(PutOutcome, T), RepoError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let encoder_cancel = cancel.clone();
        let gate = self.encoders.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            encode(ChunkSink {
                tx,
                buf: BytesMut::with_capacity(CHUNK),
                cancel: encoder_cancel,
                permit: Permit::take(gate),
            })
        });
        // Buffer up to SINGLE_PUT_MAX; past that, switch to a multipart upload.
        let mut buffered: Vec<Bytes> = Vec::new();
        let mut buffered_len = 0usize;
        let mut target = Target::Buffer;
        let mut stored = 0u64;
        let upload_result: Result<(), RepoError> = async {
            loop {
                let chunk = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(RepoError::Cancelled),
                    chunk = rx.recv() => chunk,
                };
                let Some(chunk) = chunk else { return Ok(()) };
                stored += chunk.len() as u64;
                match &mut target {
                    Target::Multipart(upload) => upload_part(upload, chunk, key, cancel).await?,
                    // Only the checksum is still wanted.
                    Target::Discard(_) => {}
                    Target::Buffer => {
                        buffered_len += chunk.len();
                        buffered.push(chunk);
                        if buffered_len > SINGLE_PUT_MAX {
                            target = self.start_multipart(key, &path, mode).await?;
                            if let Target::Multipart(upload) = &mut target {
                                for chunk in buffered.drain(..) {
                                    upload_part(upload, chunk, key, cancel).await?;
                                }
                            }
                            buffered = Vec::new();
                        }
                    }
                }
            }
        }
        .await;
        drop(rx);
        let encoded = encoder
            .await
            .map_err(|e| RepoError::io(key, io::Error::other(e)))?;
        let outcome = match (upload_result, encoded) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(done)) => Ok(done),
        };
        let (digest, extra) = match outcome {
            Ok(done) => done,
            Err(e) => {
                if let Target::Multipart(upload) = target {
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(key, "failed to abort a multipart upload: {abort}");
                    }
                }
                return Err(e);
            }
        };
        let outcome = match target {
            Target::Buffer => self.put_encoded(key, &path, buffered, digest, mode).await?,
            Target::Discard(existing) => compare(key, existing, digest.checksum)?,
            Target::Multipart(upload) => {
                self.finish_multipart(key, &path, upload, digest, stored, mode, cancel)
                    .await?
            }
        };
        Ok((outcome, extra))
    }

    /// Completes a multipart upload; in create mode, reads the trailer back, since a
    /// multipart upload cannot be conditional.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_multipart(
        &self,
        key: &str,
        path: &ObjectPath,
        upload: WriteMultipart,
        digest: Digest,
        stored_bytes: u64,
        mode: PutMode,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(RepoError::Cancelled),
            r = upload.finish() => r.map_err(|e| RepoError::storage(key, e))?,
        };
        if mode == PutMode::Create {
            // A writer that finished after this one replaced it: say so rather than pass over.
            if let Some(found) = self.read_trailer(key, path).await? {
                if found.checksum != digest.checksum {
                    return Err(RepoError::Conflict {
                        key: key.to_owned(),
                        existing: found.checksum,
                        new: digest.checksum,
                    });
                }
            }
        }
        Ok(PutOutcome::Created {
            checksum: digest.checksum,
            stored_bytes,
        })
    }

    /// Starts a multipart upload; in create mode, only after checking that the object is
    /// still absent (a multipart upload cannot be conditional).
    pub(super) async fn start_multipart(
        &self,
        key: &str,
        path: &ObjectPath,
        mode: PutMode,
    ) -> Result<Target, RepoError> {
        if mode == PutMode::Create {
            match self.read_trailer(key, path).await {
                Ok(Some(existing)) => return Ok(Target::Discard(existing.checksum)),
                Ok(None) => {}
                // Never acknowledged (see `incomplete`): replaced by this upload.
                Err(RepoError::Corrupt { reason, .. }) => {
                    self.remove_incomplete(key, path, &reason).await?
                }
                Err(e) => return Err(e),
            }
        }
        let upload = self
            .inner
            .bulk
            .put_multipart(path)
            .await
            .map_err(|e| RepoError::storage(key, e))?;
        Ok(Target::Multipart(WriteMultipart::new_with_chunk_size(
            upload, PART_SIZE,
        )))
    }

    /// Stores an encoded object held in memory with one put.
    pub(super) async fn put_encoded(
        &self,
        key: &str,
        path: &ObjectPath,
        chunks: Vec<Bytes>,
        digest: Digest,
        mode: PutMode,
    ) -> Result<PutOutcome, RepoError> {
        let payload = PutPayload::from_iter(chunks);
        let stored_bytes = payload.content_length() as u64;
        let created = PutOutcome::Created {
            checksum: digest.checksum,
            stored_bytes,
        };
        if mode == PutMode::Overwrite {
            self.inner
                .bulk
                .put(path, payload)
                .await
                .map_err(|e| RepoError::storage(key, e))?;
            return Ok(created);
        }
        self.put_create_only(key, path, payload, created, || async {
            Ok(self.read_trailer(key, path).await?.map(|d| d.checksum))
        })
        .await
    }

    /// A create-only put of `payload` at `path`, which would be `created`: a conditional
    /// create where the store has one, else a read before the write (a writer racing within
    /// that window is overwritten). An object already there is compared by the checksum
    /// `existing` reads: identical is success, different a conflict.
    pub(super) async fn put_create_only<F, Fut>(
        &self,
        key: &str,
        path: &ObjectPath,
        payload: PutPayload,
        created: PutOutcome,
        existing: F,
    ) -> Result<PutOutcome, RepoError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Checksum>, RepoError>>,
    {
        // A put carries up to `SINGLE_PUT_MAX` of content.
        let store = &self.inner.bulk;
        let new = created.checksum();
        if !self.inner.no_conditional_put.load(Ordering::Relaxed) {
            let options = object_store::PutOptions::from(object_store::PutMode::Create);
            match store.put_opts(path, payload.clone(), options).await {
                Ok(_) => return Ok(created),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    return match existing().await {
                        // Never acknowledged (see `incomplete`): replace it, once.
                        Err(RepoError::Corrupt { reason, .. }) => {
                            self.replace_incomplete(key, path, payload, created, &reason, &existing)
                                .await
                        }
                        found => settle(key, found?, new),
                    };
                }
                Err(object_store::Error::NotImplemented { .. })
                | Err(object_store::Error::NotSupported { .. }) => {
                    tracing::debug!(repo = %self.inner.describe,
                        "the store has no create-only put; checking before writing instead");
                    self.inner.no_conditional_put.store(true, Ordering::Relaxed);
                }
                // A store may refuse a conditional put before reading its body and close the
                // connection, which reads as a broken request (even one the client retried)
                // rather than as the refusal; and a put may succeed with its answer lost. The
                // object there tells which.
                Err(e) => {
                    return match existing().await {
                        Ok(Some(found)) => compare(key, found, new),
                        // An object store's put is whole or absent, so an incomplete object
                        // is not this put's: it was there, and the store hung up on it.
                        Err(RepoError::Corrupt { reason, .. }) => {
                            self.replace_incomplete(key, path, payload, created, &reason, &existing)
                                .await
                        }
                        _ => Err(RepoError::storage(key, e)),
                    };
                }
            }
        }
        // Race window: a writer between this check and the put is overwritten.
        match existing().await {
            Ok(Some(existing)) => return compare(key, existing, new),
            Ok(None) => {}
            // Never acknowledged (see `incomplete`): overwritten by this put.
            Err(RepoError::Corrupt { reason, .. }) => {
                self.remove_incomplete(key, path, &reason).await?
            }
            Err(e) => return Err(e),
        }
        store
            .put(path, payload)
            .await
            .map_err(|e| RepoError::storage(key, e))?;
        Ok(created)
    }
}

impl Repo {
    /// Replaces the incomplete object at `path` (its trailer unreadable: `reason`) by a
    /// create-only put of `payload`, once. A writer that stores the key in between is
    /// compared as any object already there.
    async fn replace_incomplete<F, Fut>(
        &self,
        key: &str,
        path: &ObjectPath,
        payload: PutPayload,
        created: PutOutcome,
        reason: &str,
        existing: &F,
    ) -> Result<PutOutcome, RepoError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Checksum>, RepoError>>,
    {
        self.remove_incomplete(key, path, reason).await?;
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        match self.inner.bulk.put_opts(path, payload, options).await {
            Ok(_) => Ok(created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                settle(key, existing().await?, created.checksum())
            }
            Err(e) => Err(RepoError::storage(key, e)),
        }
    }
}

/// What a create-only put that met an object ends with: `found` (its checksum, `None` when
/// it is gone again) compared with the `new` content.
fn settle(key: &str, found: Option<Checksum>, new: Checksum) -> Result<PutOutcome, RepoError> {
    match found {
        Some(existing) => compare(key, existing, new),
        // Deleted in between: a retry will create it.
        None => Err(RepoError::storage(
            key,
            object_store::Error::Generic {
                store: "repo",
                source: "object vanished after a create conflict".into(),
            },
        )),
    }
}

pub(super) fn compare(
    key: &str,
    existing: Checksum,
    new: Checksum,
) -> Result<PutOutcome, RepoError> {
    if existing == new {
        Ok(PutOutcome::AlreadyIdentical { checksum: new })
    } else {
        Err(RepoError::Conflict {
            key: key.to_owned(),
            existing,
            new,
        })
    }
}

pub(super) async fn upload_part(
    upload: &mut WriteMultipart,
    chunk: Bytes,
    key: &str,
    cancel: &CancellationToken,
) -> Result<(), RepoError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(RepoError::Cancelled),
        r = upload.wait_for_capacity(PARTS_IN_FLIGHT) => {
            r.map_err(|e| RepoError::storage(key, e))?
        }
    }
    upload.put(chunk);
    Ok(())
}

/// The encoder's output, cut into [`CHUNK`]s for the uploader.
pub(super) struct ChunkSink {
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) buf: BytesMut,
    pub(super) cancel: CancellationToken,
    /// The encoder thread's permit to compress (see `gate`), given back while it waits for
    /// the upload to take a chunk.
    pub(super) permit: Permit,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.cancel.is_cancelled() {
            // Not `Interrupted`: writers retry that.
            return Err(io::Error::other("cancelled"));
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        let tx = &self.tx;
        self.permit
            .released_while(|| tx.blocking_send(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends what is buffered (the encoder flushes once, at the end).
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
