//! The repository: one storage layer over `object_store` for WAL and backups.
//!
//! Owns the object format (`frame`: header, compressed payload, trailer with length and
//! BLAKE3), the few objects stored as is for humans to read (`plain`), codecs, the key layout,
//! `repo.json`, create-only semantics and the retry helper.
//! It knows nothing of postgres processes, WAL queues or backup logic (callers in `wal/`,
//! `backup/`, `restore/` compose it), and never touches a data directory except the one
//! destination file a download writes.
//!
//! # Streaming and memory
//!
//! Compression, decompression and hashing run in `spawn_blocking`, connected to the async
//! side by bounded channels, so a file is never held whole in memory. Per transfer:
//! - upload: the encoder's output in chunks of [`CHUNK`] through a channel of
//!   [`CHANNEL_DEPTH`]; objects that encode to at most [`SINGLE_PUT_MAX`] are buffered (up to
//!   that much) and stored with one `put`; larger ones go up as a multipart upload of
//!   [`PART_SIZE`] parts with at most [`PARTS_IN_FLIGHT`] in flight. Bound: about
//!   `CHUNK × CHANNEL_DEPTH + PART_SIZE × (PARTS_IN_FLIGHT + 1)` ≈ 28 MiB, plus the zstd
//!   window (a few MiB at the default levels).
//! - download: the body's chunks (as the store delivers them, typically ≤ 64 KiB) through a
//!   channel of [`CHANNEL_DEPTH`] × 4 to a decoder thread, which writes a temp file beside the
//!   destination (see [`crate::fsutil::AtomicFile`]). [`Repo::verify`] is the same download
//!   into a sink that discards.
//!
//! # Create-only
//!
//! WAL is written once: [`Repo::put_file_create`] never replaces an object. A small object is
//! stored with `PutMode::Create` (atomic on every store; for S3 as `If-None-Match`). A
//! multipart upload cannot be conditional, so for large objects (and for stores that answer
//! `NotImplemented` to a conditional put) the check is a read before the write, and a second
//! writer racing within that window may replace the object; the trailer is read back after a
//! multipart upload, so such a race is reported as a conflict rather than passed over.

mod codec;
mod error;
mod frame;
pub mod layout;
mod meta;
mod plain;
pub mod ranges;
pub mod retry;
pub mod settings;
mod staged;
mod store;
mod url;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use codec::Codec;
pub use error::RepoError;
pub use frame::{Checksum, TRAILER_LEN};
pub use layout::{wal_key, REPO_META};
pub use meta::{RepoMeta, FORMAT_VERSION};
pub use retry::{retry, RetryPolicy};
pub use settings::{AzureConfig, GcsConfig, S3Config, StorageConfig, StorageRetryConfig};
pub use staged::StagedObject;
pub use url::StorageUrl;

use frame::{DecodeError, Digest};

/// Size of the encoder's output chunks sent to the uploader.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued between a blocking codec thread and the async side.
pub const CHANNEL_DEPTH: usize = 4;
/// Largest encoded object stored with a single `put`.
pub const SINGLE_PUT_MAX: usize = 8 << 20;
/// Part size of multipart uploads (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Multipart parts uploading at once, per object.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Largest object [`Repo::get_bytes`] accepts.
const GET_BYTES_MAX: u64 = 64 << 20;

/// A handle on one repository. Cheap to clone; clones share the client.
#[derive(Clone)]
pub struct Repo {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Without leading or trailing `/`; empty for the store's root.
    prefix: String,
    codec: Codec,
    level: i32,
    describe: String,
    /// The store refused a suffix range (Azure); read the trailer with head + range.
    no_suffix_range: AtomicBool,
    /// The store refused `PutMode::Create`; check with a read before writing.
    no_conditional_put: AtomicBool,
    /// Root directory of a `file://` repository. Object stores make a completed put durable;
    /// a local filesystem does not until the file and its directories are fsynced, which
    /// object_store's `LocalFileSystem` does not do.
    local_root: Option<PathBuf>,
    /// Directories of a local repository whose entry in their parent is known durable.
    synced_dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// `(uid, gid)` that new files and directories of a local repository are given.
    local_owner: Option<(u32, u32)>,
}

/// One object of a [`Repo::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    /// Relative to the repository, codec extension stripped.
    pub key: String,
    /// Stored (encoded) size in bytes.
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// What [`Repo::verify`] found in a well-formed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Length of the decoded content.
    pub len: u64,
    /// BLAKE3 of the decoded content (equal to the trailer's, or the object is corrupt).
    pub checksum: Checksum,
    /// Stored (encoded) size.
    pub stored_bytes: u64,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written; `stored_bytes` is its encoded size.
    Created {
        checksum: Checksum,
        stored_bytes: u64,
    },
    /// Create-only, and the object was there already with the same content.
    AlreadyIdentical { checksum: Checksum },
}

impl PutOutcome {
    pub fn checksum(&self) -> Checksum {
        match self {
            PutOutcome::Created { checksum, .. } | PutOutcome::AlreadyIdentical { checksum } => {
                *checksum
            }
        }
    }
}

/// Where an upload's encoded chunks go.
enum Target {
    /// Held in memory for one put, while they fit in `SINGLE_PUT_MAX`.
    Buffer,
    /// Sent as parts of a multipart upload.
    Multipart(WriteMultipart),
    /// Dropped: the object appeared meanwhile, with this checksum; the encoder runs on only
    /// to tell whether the content is the same.
    Discard(Checksum),
}

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Never replace: identical content is success, different content a conflict.
    Create,
    /// Replace whatever is there.
    Overwrite,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.inner.describe)
            .field("codec", &self.inner.codec)
            .finish()
    }
}

impl Repo {
    /// Builds the client `cfg` describes (offline: no request is made).
    pub fn open(cfg: &StorageConfig) -> Result<Repo, RepoError> {
        let (store, prefix) = store::build(cfg)?;
        let mut repo =
            Repo::open_with_store(store, &prefix, cfg.compression, cfg.compression_level);
        let inner = Arc::get_mut(&mut repo.inner).expect("a new repo is not shared yet");
        inner.describe = store::describe(cfg);
        if let url::StorageUrl::File(root) = &cfg.url {
            inner.local_root = Some(root.clone());
        }
        Ok(repo)
    }

    /// A repository on any store, e.g. `InMemory` in tests. `level` is zstd's.
    pub fn open_with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        codec: Codec,
        level: i32,
    ) -> Repo {
        let prefix = prefix.trim_matches('/').to_owned();
        let describe = if prefix.is_empty() {
            store.to_string()
        } else {
            format!("{store}/{prefix}")
        };
        Repo {
            inner: Arc::new(Inner {
                store,
                prefix,
                codec,
                level,
                describe,
                no_suffix_range: AtomicBool::new(false),
                no_conditional_put: AtomicBool::new(false),
                local_root: None,
                synced_dirs: Default::default(),
                local_owner: None,
            }),
        }
    }

    /// Gives what this process writes into a `file://` repository (and its root) to
    /// `owner`: a daemon running as root keeps the repository writable for the server's user.
    /// Call before the repository is shared.
    pub fn with_local_owner(mut self, owner: Option<(u32, u32)>) -> Repo {
        if let (Some(root), Some((uid, gid))) = (&self.inner.local_root, owner) {
            // The root exists: the store was built with it.
            if let Err(e) = std::os::unix::fs::chown(root, Some(uid), Some(gid)) {
                tracing::warn!("cannot give {} to uid {uid}: {e}", root.display());
            }
        }
        Arc::get_mut(&mut self.inner)
            .expect("with_local_owner is called before the repository is shared")
            .local_owner = owner;
        self
    }

    /// Where the repository is, without secrets, for logs.
    pub fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    /// The codec new objects are written with.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// The repo's codec first, then the others: a repository may hold objects written
    /// under an earlier `storage.compression`.
    fn codecs(&self) -> impl Iterator<Item = Codec> {
        let own = self.inner.codec;
        std::iter::once(own).chain(Codec::ALL.into_iter().filter(move |c| *c != own))
    }

    /// The stored name of `key` under `codec`.
    fn path(&self, key: &str, codec: Codec) -> Result<ObjectPath, RepoError> {
        self.stored_path(key, &format!(".{}", codec.extension()))
    }

    /// The stored name of `key`: under the prefix, `suffix` appended (empty for plain objects).
    fn stored_path(&self, key: &str, suffix: &str) -> Result<ObjectPath, RepoError> {
        let invalid = |reason: String| RepoError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
            return Err(invalid("must be a relative path naming an object".into()));
        }
        let full = if self.inner.prefix.is_empty() {
            format!("{key}{suffix}")
        } else {
            format!("{}/{key}{suffix}", self.inner.prefix)
        };
        ObjectPath::parse(&full).map_err(|e| invalid(e.to_string()))
    }

    /// Streams the local file `src`, compressed, into `key`, create-only: when `key` exists
    /// already (under any codec), `src`'s checksum is compared with the stored trailer (a
    /// range read, no download): identical gives [`PutOutcome::AlreadyIdentical`], different
    /// [`RepoError::Conflict`]. The check before the upload costs one small read per codec
    /// when the object is absent.
    ///
    /// Cancel safety: cancelling (or dropping the future) leaves no object, or a complete one.
    pub async fn put_file_create(
        &self,
        key: &str,
        src: &Path,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let path = self.path(key, self.inner.codec)?;
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        if let Some(existing) = self.exists(key).await? {
            let src_owned = src.to_owned();
            let digest = blocking(move || {
                let file =
                    std::fs::File::open(&src_owned).map_err(|e| RepoError::io(&src_owned, e))?;
                frame::digest(file).map_err(|e| RepoError::io(&src_owned, e))
            })
            .await?;
            return compare(key, existing, digest.checksum);
        }
        let file = {
            let src = src.to_owned();
            blocking(move || std::fs::File::open(&src).map_err(|e| RepoError::io(&src, e))).await?
        };
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
        self.make_durable(&path, &outcome).await?;
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
        if let Some(existing) = self.exists(key).await? {
            let (open, wanted, total) = (open.clone(), ranges.clone(), total.clone());
            let src_owned = src.to_owned();
            let digest = blocking(move || {
                let reader = ranges::RangesReader::new(open()?, wanted, total);
                frame::digest(reader).map_err(|e| RepoError::io(&src_owned, e))
            })
            .await?;
            let outcome = compare(key, existing, digest.checksum)?;
            return Ok((outcome, ranges::read_prefix(&ranges, digest.len)));
        }
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
        self.make_durable(&path, &outcome).await?;
        let read = total.load(Ordering::Relaxed);
        Ok((outcome, ranges::read_prefix(&ranges, read)))
    }

    /// Stores `bytes` (small: manifests) under `key`.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<PutOutcome, RepoError> {
        let path = self.path(key, self.inner.codec)?;
        if mode == PutMode::Create {
            if let Some(existing) = self.exists(key).await? {
                let digest = blocking(move || {
                    frame::digest(&bytes[..]).map_err(|e| RepoError::io("<memory>", e))
                })
                .await?;
                return compare(key, existing, digest.checksum);
            }
        }
        let (codec, level) = (self.inner.codec, self.inner.level);
        let (digest, encoded) = blocking(move || {
            frame::encode_bytes(&bytes, codec, level).map_err(|e| RepoError::io("<memory>", e))
        })
        .await?;
        let outcome = self
            .put_encoded(key, &path, vec![Bytes::from(encoded)], digest, mode)
            .await?;
        self.make_durable(&path, &outcome).await?;
        Ok(outcome)
    }

    /// For a `file://` repository, fsyncs a newly written object (stored at `path`) and its
    /// directory, and each ancestor up to the repository root once per process: a directory's
    /// entry in its parent only changes when the directory is created, and fsyncs are what a
    /// put costs on a busy disk.
    async fn make_durable(&self, path: &ObjectPath, outcome: &PutOutcome) -> Result<(), RepoError> {
        let (Some(root), PutOutcome::Created { .. }) = (&self.inner.local_root, outcome) else {
            return Ok(());
        };
        let stored = root.join(path.as_ref());
        let this = self.clone();
        blocking(move || this.make_local_entry_durable(&stored, true)).await
    }

    /// The blocking body of [`Repo::make_durable`] for the object stored at `stored` in this
    /// `file://` repository; `sync_file` false when the writer synced the file before
    /// publishing it.
    fn make_local_entry_durable(&self, stored: &Path, sync_file: bool) -> Result<(), RepoError> {
        let Some(root) = &self.inner.local_root else {
            return Ok(());
        };
        let root = root.as_path();
        if sync_file {
            std::fs::File::open(stored)
                .and_then(|f| f.sync_all())
                .map_err(|e| RepoError::io(stored, e))?;
        }
        if let Some((uid, gid)) = self.inner.local_owner {
            // The file and the directories a put may have created (not the root's parent).
            let mut path = Some(stored);
            while let Some(p) = path.filter(|p| *p != root) {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| RepoError::io(p, e))?;
                path = p.parent();
            }
        }
        let sync = |d: &Path| {
            crate::fsutil::sync_dir(d)
                .map_err(|e| RepoError::io(d, io::Error::other(format!("{e:#}"))))
        };
        let Some(parent) = stored.parent() else {
            return Ok(());
        };
        sync(parent)?;
        let mut dir = Some(parent);
        while let Some(d) = dir.filter(|d| *d != root) {
            let up = d.parent();
            if let Some(up) = up {
                let first_time = self
                    .inner
                    .synced_dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(d.to_owned());
                if first_time {
                    sync(up)?;
                }
            }
            dir = up;
        }
        Ok(())
    }

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
        let Some(get) = self.open_object(key, cancel).await? else {
            return Ok(false);
        };
        self.download(key, get, dest, cancel).await?;
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
    async fn open_object(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<object_store::GetResult>, RepoError> {
        if cancel.is_cancelled() {
            return Err(RepoError::Cancelled);
        }
        for codec in self.codecs() {
            let path = self.path(key, codec)?;
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RepoError::Cancelled),
                r = self.inner.store.get(&path) => r,
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

    /// Reads, decodes and verifies a small object (at most 64 MiB stored) into memory.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        for codec in self.codecs() {
            let path = self.path(key, codec)?;
            let get = match self.inner.store.get(&path).await {
                Ok(get) => get,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(RepoError::storage(key, e)),
            };
            if get.meta.size > GET_BYTES_MAX {
                return Err(RepoError::InvalidKey {
                    key: key.to_owned(),
                    reason: format!(
                        "object of {} bytes is too large to read into memory",
                        get.meta.size
                    ),
                });
            }
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

    /// Objects under `prefix` (a directory-like key prefix such as `wal/00000001`, or empty
    /// for everything), sorted by key. Keys are relative to the repository with the codec
    /// extension stripped; objects without a codec extension are not pgward's and are
    /// skipped.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, RepoError> {
        let prefix = prefix.trim_matches('/');
        let full = match (self.inner.prefix.as_str(), prefix) {
            ("", p) => p.to_owned(),
            (r, "") => r.to_owned(),
            (r, p) => format!("{r}/{p}"),
        };
        let full_path = if full.is_empty() {
            None
        } else {
            Some(ObjectPath::parse(&full).map_err(|e| RepoError::InvalidKey {
                key: prefix.to_owned(),
                reason: e.to_string(),
            })?)
        };
        let strip = if self.inner.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.inner.prefix)
        };
        let mut stream = self.inner.store.list(full_path.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| RepoError::storage(prefix, e))?;
            let location = meta.location.as_ref();
            let Some(relative) = location.strip_prefix(strip.as_str()) else {
                continue;
            };
            let Some((key, ext)) = relative.rsplit_once('.') else {
                continue;
            };
            if Codec::from_extension(ext).is_none() {
                tracing::debug!(
                    object = location,
                    "skipping an object without a codec extension"
                );
                continue;
            }
            out.push(ObjectSummary {
                key: key.to_owned(),
                size: meta.size,
                last_modified: meta.last_modified,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Writes and deletes a small object (`check/probe-<pid>`): whether this process can
    /// write to the repository at all, asked before work that would fail half-way.
    pub async fn probe_writable(&self) -> Result<(), RepoError> {
        let probe = format!("check/probe-{}", std::process::id());
        let written = self
            .put_bytes(&probe, b"pgward probe".to_vec(), PutMode::Overwrite)
            .await;
        let _ = self.delete(&probe).await;
        written.map(|_| ())
    }

    /// Deletes `key` under every codec; deleting an absent key succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), RepoError> {
        for codec in Codec::ALL {
            let path = self.path(key, codec)?;
            match self.inner.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(RepoError::storage(key, e)),
            }
        }
        Ok(())
    }

    /// For a `file://` repository, removes the directories left empty under `prefix`, and
    /// `prefix` itself when it ends up empty: deleting objects leaves their directories
    /// behind. Object stores have no directories; there it does nothing. Only for prefixes
    /// nothing writes into any more (an expired backup's): a put racing with the removal
    /// could find its directory gone.
    pub async fn remove_empty_dirs(&self, prefix: &str) -> Result<(), RepoError> {
        let Some(root) = &self.inner.local_root else {
            return Ok(());
        };
        let top = root.join(self.stored_path(prefix, "")?.as_ref());
        blocking(move || {
            fn prune(dir: &Path) -> io::Result<()> {
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        prune(&entry.path())?;
                    }
                }
                match std::fs::remove_dir(dir) {
                    // Not empty: something other than empty directories is left in it.
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
                    other => other,
                }
            }
            match prune(&top) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(|e| RepoError::io(&top, e)),
            }
        })
        .await
    }

    /// The trailer of the object at `path`, `None` when absent.
    async fn read_trailer(
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
                Err(e) => return Err(RepoError::storage(key, e)),
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

    /// Encodes `file` on a blocking thread and uploads the result to `path`.
    async fn upload(
        &self,
        key: &str,
        path: ObjectPath,
        file: impl Read + Send + 'static,
        src: PathBuf,
        mode: PutMode,
        cancel: &CancellationToken,
    ) -> Result<PutOutcome, RepoError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let (codec, level) = (self.inner.codec, self.inner.level);
        let encoder_cancel = cancel.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let sink = ChunkSink {
                tx,
                buf: BytesMut::with_capacity(CHUNK),
                cancel: encoder_cancel,
            };
            let mut src_reader = frame::Tracked::new(file);
            let result = frame::encode(&mut src_reader, codec, level, sink);
            (result.map(|(digest, _)| digest), src_reader.failed)
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
        let (encoded, src_failed) = encoder
            .await
            .map_err(|e| RepoError::io(&src, io::Error::other(e)))?;
        let outcome = match (upload_result, encoded) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(RepoError::io(&src, src_failed.unwrap_or(e))),
            (Ok(()), Ok(digest)) => Ok(digest),
        };
        let digest = match outcome {
            Ok(digest) => digest,
            Err(e) => {
                if let Target::Multipart(upload) = target {
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(key, "failed to abort a multipart upload: {abort}");
                    }
                }
                return Err(e);
            }
        };
        let upload = match target {
            Target::Buffer => {
                return self.put_encoded(key, &path, buffered, digest, mode).await;
            }
            Target::Discard(existing) => return compare(key, existing, digest.checksum),
            Target::Multipart(upload) => upload,
        };
        self.finish_multipart(key, &path, upload, digest, stored, mode, cancel)
            .await
    }

    /// Completes a multipart upload; in create mode, reads the trailer back, since a
    /// multipart upload cannot be conditional.
    #[allow(clippy::too_many_arguments)]
    async fn finish_multipart(
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
    async fn start_multipart(
        &self,
        key: &str,
        path: &ObjectPath,
        mode: PutMode,
    ) -> Result<Target, RepoError> {
        if mode == PutMode::Create {
            if let Some(existing) = self.read_trailer(key, path).await? {
                return Ok(Target::Discard(existing.checksum));
            }
        }
        let upload = self
            .inner
            .store
            .put_multipart(path)
            .await
            .map_err(|e| RepoError::storage(key, e))?;
        Ok(Target::Multipart(WriteMultipart::new_with_chunk_size(
            upload, PART_SIZE,
        )))
    }

    /// Stores an encoded object held in memory with one put.
    async fn put_encoded(
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
                .store
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
    async fn put_create_only<F, Fut>(
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
        let store = &self.inner.store;
        let new = created.checksum();
        if !self.inner.no_conditional_put.load(Ordering::Relaxed) {
            let options = object_store::PutOptions::from(object_store::PutMode::Create);
            match store.put_opts(path, payload.clone(), options).await {
                Ok(_) => return Ok(created),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    return match existing().await? {
                        Some(existing) => compare(key, existing, new),
                        // Deleted in between: a retry will create it.
                        None => Err(RepoError::storage(
                            key,
                            object_store::Error::Generic {
                                store: "repo",
                                source: "object vanished after a create conflict".into(),
                            },
                        )),
                    };
                }
                Err(object_store::Error::NotImplemented { .. })
                | Err(object_store::Error::NotSupported { .. }) => {
                    tracing::debug!(repo = %self.inner.describe,
                        "the store has no create-only put; checking before writing instead");
                    self.inner.no_conditional_put.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(RepoError::storage(key, e)),
            }
        }
        // Race window: a writer between this check and the put is overwritten.
        if let Some(existing) = existing().await? {
            return compare(key, existing, new);
        }
        store
            .put(path, payload)
            .await
            .map_err(|e| RepoError::storage(key, e))?;
        Ok(created)
    }

    /// Feeds a get's body to a decoder thread that writes `dest` atomically.
    async fn download(
        &self,
        key: &str,
        get: object_store::GetResult,
        dest: &Path,
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
            file.commit().map_err(|e| RepoError::io(&dest, e))
        })
        .await
    }

    /// Feeds a get's body, through a bounded channel, to `decode` running on a blocking
    /// thread, and returns what it returns. A storage error while reading the body wins over
    /// the decoder's (which then only saw an interrupted stream).
    async fn decode_stream<T: Send + 'static>(
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

fn compare(key: &str, existing: Checksum, new: Checksum) -> Result<PutOutcome, RepoError> {
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

fn decode_error(key: &str, dest: &Path, e: DecodeError) -> RepoError {
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

async fn upload_part(
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

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, RepoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::io("<blocking task>", io::Error::other(e)))?
}

/// The encoder's output, cut into [`CHUNK`]s for the uploader.
struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    cancel: CancellationToken,
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
        self.tx
            .blocking_send(chunk)
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

/// The download body as a `Read` on the decoder thread. `None` on the channel marks the end;
/// a channel closed without it is an interrupted download.
struct ChannelReader {
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

#[cfg(test)]
mod tests;
