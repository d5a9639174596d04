//! Reading objects: streamed downloads into a file (or into ranges of one), verification
//! into nothing, small reads into memory, and the trailer read that tells whether (and with
//! what checksum) an object exists. Every read decodes and checks the frame.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, DecodeError, Digest};
use super::{
    blocking, ranges, Checksum, Repo, RepoError, Verified, CHANNEL_DEPTH, GET_BYTES_MAX,
    TRAILER_LEN,
};
use crate::fsutil::Durability;

impl Repo {
    /// Streams `key` into `dest`, decoding and verifying it, and replaces `dest` atomically
    /// (temp file beside it, fsync, rename, fsync directory). `Ok(false)` when `key` is
    /// absent under every codec. `dest`'s directory must exist.
    ///
    /// Cancel safety: cancelling leaves `dest` as it was.
    pub async fn get_to_file(
        &self,
        key: &str,
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        self.get_to_file_as(key, dest, Durability::Now, cancel)
            .await
    }

    /// [`Repo::get_to_file`], `dest` made durable as `durability` says (a restore syncs its
    /// filesystems once at the end).
    pub async fn get_to_file_as(
        &self,
        key: &str,
        dest: &Path,
        durability: Durability,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(false);
        };
        self.download(key, get, dest, durability, cancel).await?;
        Ok(true)
    }

    /// Streams `key`, decoding and verifying it, into the start of the open file `dest`
    /// (named `dest_name` in messages), and fsyncs it; the caller created `dest` (empty) and
    /// puts it in place. `Ok(false)` when `key` is absent under every codec.
    ///
    /// Cancel safety: cancelling leaves `dest` partly written, for the caller to remove.
    pub async fn get_into_file(
        &self,
        key: &str,
        dest: std::fs::File,
        dest_name: &Path,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(false);
        };
        let (key_owned, name) = (key.to_owned(), dest_name.to_owned());
        self.decode_stream(key, get, cancel, move |reader| {
            let mut out = io::BufWriter::with_capacity(256 * 1024, dest);
            frame::decode(reader, &mut out).map_err(|e| decode_error(&key_owned, &name, e))?;
            let file = out
                .into_inner()
                .map_err(|e| RepoError::io(&name, e.into_error()))?;
            file.sync_all().map_err(|e| RepoError::io(&name, e))
        })
        .await?;
        Ok(true)
    }

    /// Streams `key`, decoding and verifying it, into `ranges` of `dest` (positioned writes:
    /// other parts of the same file may be written at the same time). The content must fill
    /// the ranges exactly. `Ok(false)` when `key` is absent. The caller makes `dest` durable.
    pub async fn get_to_ranges(
        &self,
        key: &str,
        dest: std::fs::File,
        dest_name: &Path,
        ranges: Vec<ranges::Range>,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(false);
        };
        let (key_owned, name) = (key.to_owned(), dest_name.to_owned());
        self.decode_stream(key, get, cancel, move |reader| {
            let mut writer = ranges::RangesWriter::new(&dest, &ranges);
            frame::decode(reader, &mut writer).map_err(|e| decode_error(&key_owned, &name, e))?;
            writer.finish().map_err(|e| RepoError::Corrupt {
                key: key_owned.clone(),
                reason: e.to_string(),
            })
        })
        .await?;
        Ok(true)
    }

    /// Starts reading `key` under the first codec it is stored with; `None` when absent
    /// under every codec.
    pub(super) async fn open_object(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<object_store::GetResult>, RepoError> {
        self.open_object_range(key, None, cancel).await
    }

    /// [`Repo::open_object`] of `range` of the stored object only, or of all of it.
    pub(super) async fn open_object_range(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
        cancel: &CancellationToken,
    ) -> Result<Option<object_store::GetResult>, RepoError> {
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        for codec in self.codecs() {
            let path = self.path(key, codec)?;
            let options = GetOptions {
                range: range.clone().map(GetRange::Bounded),
                ..GetOptions::default()
            };
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RepoError::Cancelled),
                r = self.inner.bulk.get_opts(&path, options) => r,
            };
            match result {
                Ok(get) => return Ok(Some(get)),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(RepoError::storage(key, e)),
            }
        }
        Ok(None)
    }

    /// Streams `key` through the decoder into nothing: header, decompression, length and
    /// the trailer's checksum are verified, and what the content is (length, checksum) is
    /// returned, with the stored size. `Ok(None)` when `key` is absent under every codec.
    /// Memory is bounded like a download's.
    ///
    /// Cancel safety: nothing is written; cancelling just stops the read.
    pub async fn verify(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Verified>, RepoError> {
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(None);
        };
        let stored_bytes = get.meta.size;
        let key_owned = key.to_owned();
        let digest = self
            .decode_stream(key, get, cancel, move |reader| {
                frame::decode(reader, io::sink())
                    .map_err(|e| decode_error(&key_owned, Path::new("<sink>"), e))
            })
            .await?;
        Ok(Some(Verified {
            len: digest.len,
            checksum: digest.checksum,
            stored_bytes,
        }))
    }

    /// Reads `key` and hands its content to `parse` as it is downloaded and decoded (on a
    /// thread of its own), never holding it whole: a backup's manifest of many files is tens
    /// of megabytes of JSON. `parse`'s result counts only once the object's checksum checked;
    /// `Ok(None)` when `key` is absent. A read that fails on the way is read again, as
    /// `storage.retry` allows.
    pub async fn get_parsed<T, E>(
        &self,
        key: &str,
        parse: impl Fn(&mut dyn Read) -> Result<T, E> + Clone + Send + 'static,
    ) -> Result<Option<Result<T, E>>, RepoError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let op = format!("read {key}");
        let never = CancellationToken::new();
        super::retry(&self.inner.retry, &never, &op, || {
            self.get_parsed_once(key, parse.clone())
        })
        .await
    }

    async fn get_parsed_once<T, E>(
        &self,
        key: &str,
        parse: impl FnOnce(&mut dyn Read) -> Result<T, E> + Send + 'static,
    ) -> Result<Option<Result<T, E>>, RepoError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let never = CancellationToken::new();
        let Some(get) = self.open_object(key, &never).await? else {
            return Ok(None);
        };
        check_small(key, &get)?;
        let key_owned = key.to_owned();
        self.decode_stream(key, get, &never, move |reader| {
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let parser = std::thread::Builder::new()
                .name("pgward-parse".into())
                .spawn(move || {
                    let mut content = io::BufReader::new(ChannelReader {
                        rx,
                        current: Bytes::new(),
                    });
                    let parsed = parse(&mut content);
                    // The decoder checks the checksum at the end: let it get there.
                    let _ = io::copy(&mut content, &mut io::sink());
                    parsed
                })
                .map_err(|e| RepoError::io("<parser thread>", e))?;
            let mut sent = Sent(tx);
            let decoded = frame::decode(reader, &mut sent);
            if decoded.is_ok() {
                sent.end();
            }
            // Closed before the join, or a parser waiting for more would wait forever.
            drop(sent);
            let parsed = parser.join().map_err(|_| {
                RepoError::io("<parser thread>", io::Error::other("the parser panicked"))
            })?;
            decoded.map_err(|e| decode_error(&key_owned, Path::new("<parser>"), e))?;
            Ok(Some(parsed))
        })
        .await
    }

    /// Reads, decodes and verifies a small object (at most 64 MiB stored: a backup label, the
    /// repository's metadata, a lease) into memory; a read that fails on the way is read again, as
    /// `storage.retry` allows.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let op = format!("read {key}");
        let never = CancellationToken::new();
        super::retry(&self.inner.retry, &never, &op, || self.get_bytes_once(key)).await
    }

    async fn get_bytes_once(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        for codec in self.codecs() {
            let path = self.path(key, codec)?;
            // Object content: over a slow link it takes its time.
            let get = match self.inner.bulk.get(&path).await {
                Ok(get) => get,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(RepoError::storage(key, e)),
            };
            check_small(key, &get)?;
            let encoded = get.bytes().await.map_err(|e| RepoError::storage(key, e))?;
            let key_owned = key.to_owned();
            let content = blocking(move || {
                let mut out = Vec::new();
                frame::decode(&encoded[..], &mut out)
                    .map(|_| out)
                    .map_err(|e| decode_error(&key_owned, Path::new("<memory>"), e))
            })
            .await?;
            return Ok(Some(content));
        }
        Ok(None)
    }

    /// The checksum of `key` stored under the configured codec's name, `None` when not
    /// there: one range read, for polls that wait for what this configuration writes.
    /// [`Repo::exists`] also tries the other codecs' names.
    pub async fn exists_as_configured(&self, key: &str) -> Result<Option<Checksum>, RepoError> {
        let path = self.path(key, self.inner.codec)?;
        Ok(self.read_trailer(key, &path).await?.map(|d| d.checksum))
    }

    /// The checksum of `key` from its trailer (a range read), `None` when absent.
    pub async fn exists(&self, key: &str) -> Result<Option<Checksum>, RepoError> {
        for codec in self.codecs() {
            let path = self.path(key, codec)?;
            if let Some(digest) = self.read_trailer(key, &path).await? {
                return Ok(Some(digest.checksum));
            }
        }
        Ok(None)
    }

    /// The trailer of the object at `path`, `None` when absent.
    pub(super) async fn read_trailer(
        &self,
        key: &str,
        path: &ObjectPath,
    ) -> Result<Option<Digest>, RepoError> {
        let store = &self.inner.store;
        let corrupt = |reason: String| RepoError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        if !self.inner.no_suffix_range.load(Ordering::Relaxed) {
            let options = GetOptions {
                range: Some(GetRange::Suffix(TRAILER_LEN as u64)),
                ..GetOptions::default()
            };
            match store.get_opts(path, options).await {
                Ok(get) => {
                    let bytes = get.bytes().await.map_err(|e| RepoError::storage(key, e))?;
                    return frame::parse_trailer(&bytes).map(Some).map_err(corrupt);
                }
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(object_store::Error::NotSupported { .. }) => {
                    tracing::debug!(repo = %self.inner.describe,
                        "the store refuses suffix ranges; reading trailers with head + range");
                    self.inner.no_suffix_range.store(true, Ordering::Relaxed);
                }
                // Some stores fail a suffix range of an object shorter than it (416, or worse)
                // rather than return what there is: such an object cannot hold a trailer.
                Err(e) => {
                    return match store.head(path).await {
                        Ok(meta) if meta.size < TRAILER_LEN as u64 => Err(corrupt(format!(
                            "object too short for a trailer ({} bytes)",
                            meta.size
                        ))),
                        _ => Err(RepoError::storage(key, e)),
                    };
                }
            }
        }
        let size = match store.head(path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(RepoError::storage(key, e)),
        };
        let len = TRAILER_LEN as u64;
        if size < len {
            return Err(corrupt(format!(
                "object too short for a trailer ({size} bytes)"
            )));
        }
        let bytes = store
            .get_range(path, size - len..size)
            .await
            .map_err(|e| RepoError::storage(key, e))?;
        frame::parse_trailer(&bytes).map(Some).map_err(corrupt)
    }

    /// Feeds a get's body to a decoder thread that writes `dest` atomically.
    async fn download(
        &self,
        key: &str,
        get: object_store::GetResult,
        dest: &Path,
        durability: Durability,
        cancel: &CancellationToken,
    ) -> Result<(), RepoError> {
        let (key_owned, dest_owned) = (key.to_owned(), dest.to_owned());
        self.decode_stream(key, get, cancel, move |reader| {
            let dest = dest_owned;
            let file =
                crate::fsutil::AtomicFile::create(&dest).map_err(|e| RepoError::io(&dest, e))?;
            let mut out = io::BufWriter::with_capacity(256 * 1024, file);
            frame::decode(reader, &mut out).map_err(|e| decode_error(&key_owned, &dest, e))?;
            let file = out
                .into_inner()
                .map_err(|e| RepoError::io(&dest, e.into_error()))?;
            file.commit_as(durability)
                .map_err(|e| RepoError::io(&dest, e))
        })
        .await
    }

    /// Feeds a get's body, through a bounded channel, to `decode` running on a blocking
    /// thread, and returns what it returns. A storage error while reading the body wins over
    /// the decoder's (which then only saw an interrupted stream).
    pub(super) async fn decode_stream<T: Send + 'static>(
        &self,
        key: &str,
        get: object_store::GetResult,
        cancel: &CancellationToken,
        decode: impl FnOnce(ChannelReader) -> Result<T, RepoError> + Send + 'static,
    ) -> Result<T, RepoError> {
        let (tx, rx) = mpsc::channel::<Option<Bytes>>(CHANNEL_DEPTH * 4);
        let decoder = tokio::task::spawn_blocking(move || {
            decode(ChannelReader {
                rx,
                current: Bytes::new(),
            })
        });
        let mut body = get.into_stream();
        let fed: Result<(), RepoError> = async {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(RepoError::Cancelled),
                    next = body.next() => next,
                };
                match next {
                    Some(Ok(chunk)) => {
                        // A closed channel means the decoder stopped; its error tells why.
                        if tx.send(Some(chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(RepoError::storage(key, e)),
                    None => {
                        let _ = tx.send(None).await;
                        return Ok(());
                    }
                }
            }
        }
        .await;
        // Without the end marker the decoder sees an interrupted stream (and a download
        // discards its temp file).
        drop(tx);
        let decoded = decoder
            .await
            .map_err(|e| RepoError::io("<decoder thread>", io::Error::other(e)))?;
        fed?;
        decoded
    }
}

pub(super) fn decode_error(key: &str, dest: &Path, e: DecodeError) -> RepoError {
    match e {
        DecodeError::Corrupt(reason) => RepoError::Corrupt {
            key: key.to_owned(),
            reason,
        },
        DecodeError::Read(source) => RepoError::storage(
            key,
            object_store::Error::Generic {
                store: "repo",
                source: Box::new(source),
            },
        ),
        DecodeError::Write(source) => RepoError::io(dest, source),
    }
}

/// A body fed through a channel as a `Read`: the download on the decoder thread, or the
/// decoded content on a parser's. `None` on the channel marks the end; a channel closed
/// without it is an interrupted stream.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Option<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Some(chunk)) => self.current = chunk,
                Some(None) => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the download stopped",
                    ))
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Refuses an object stored larger than [`GET_BYTES_MAX`]: what is read whole, or parsed
/// whole into memory (a manifest), comes from the repository, which may have been tampered
/// with.
fn check_small(key: &str, get: &object_store::GetResult) -> Result<(), RepoError> {
    if get.meta.size > GET_BYTES_MAX {
        return Err(RepoError::InvalidKey {
            key: key.to_owned(),
            reason: format!(
                "object of {} bytes is too large to read into memory",
                get.meta.size
            ),
        });
    }
    Ok(())
}

/// The decoder's side of the channel to a parser's [`ChannelReader`]: each write is sent on
/// as a chunk, and [`Sent::end`] marks the end of a content decoded whole (without it, the
/// parser reads an interrupted stream).
struct Sent(mpsc::Sender<Option<Bytes>>);

impl Sent {
    fn end(&mut self) {
        let _ = self.0.blocking_send(None);
    }
}

impl io::Write for Sent {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Some(Bytes::copy_from_slice(data)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the parser stopped"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
