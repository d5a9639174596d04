//! The repository: one storage layer over `object_store` for WAL and backups.
//!
//! Owns the object format (`frame`: header, compressed payload, trailer with length and
//! BLAKE3), the few objects stored as is for humans to read (`plain`), codecs, the key layout
//! (with [`BackupId`](layout::BackupId)), `repo.json`, create-only semantics, the retry helper
//! and its own settings ([`StorageConfig`], which config reads from `storage:`).
//! It knows nothing of postgres processes, WAL queues or backup logic (callers in `wal/`,
//! `backup/`, `restore/` compose it), nor of the config file, and never touches a data
//! directory except the one destination file a download writes.
//!
//! `Repo` is built here (`open`, over `store`'s clients); its operations are spread by kind:
//! `put` (uploads, create-only), `get` (downloads, verify, trailers), `consume` (content
//! streamed to a reader, no local copy), `list` (listing, deleting, the write probe), `local`
//! (what a `file://` repository needs besides), `incomplete` (what a create-only put does with
//! an object a crash left unfinished), `plain` and `meta` (`repo.json`), `staged` (objects
//! written while they grow), `lease` (one holder at a time of a piece of work: one backup at a
//! time), `bundle` (many small files in one object, each a complete object of its own),
//! `counted` (every request made of the store, counted for the metrics).
//!
//! # Streaming and memory
//!
//! Compression, decompression and hashing run in `spawn_blocking`, connected to the async
//! side by bounded channels, so a file is never held whole in memory. Per transfer:
//! - upload: the encoder's output in chunks of [`CHUNK`] through a channel of
//!   [`CHANNEL_DEPTH`]; objects that encode to at most [`SINGLE_PUT_MAX`] are buffered (up to
//!   that much: a whole WAL segment) and stored with one `put`; larger ones go up as a multipart upload of
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

mod bundle;
mod codec;
mod consume;
pub mod counted;
mod error;
mod frame;
mod gate;
mod get;
mod incomplete;
pub mod layout;
pub mod lease;
mod list;
mod local;
mod meta;
mod plain;
mod put;
pub mod ranges;
pub mod retry;
pub mod settings;
mod staged;
mod store;
mod tally;
mod url;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

pub use bundle::{name_list, BundleInput, Member, Packed, PackedBundle};
pub use codec::Codec;
pub use error::{hint_in, with_hint, RepoError};
pub use frame::{Checksum, TRAILER_LEN};
pub use layout::{wal_key, REPO_META};
pub use lease::{Lease, LeaseInfo, LeaseState, Taken};
pub use meta::{RepoMeta, FORMAT_VERSION};
pub use retry::{retry, retry_to_end, RetryPolicy};
pub use settings::{AzureConfig, GcsConfig, S3Config, StorageConfig, StorageRetryConfig};
pub use staged::StagedObject;
pub use url::StorageUrl;

/// Size of the encoder's output chunks sent to the uploader.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued between a blocking codec thread and the async side.
pub const CHANNEL_DEPTH: usize = 4;
/// Largest encoded object stored with a single `put`: a 16 MiB WAL segment, whatever its
/// codec makes of it, is one request.
pub const SINGLE_PUT_MAX: usize = (16 << 20) + (64 << 10);
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
    /// Threads compressing at once, across the uploads of this handle and its clones (see
    /// `gate`); `None`: no limit.
    encoders: Option<Arc<gate::Gate>>,
}

struct Inner {
    /// For requests without object content: listing, metadata, deletes, trailer reads.
    store: Arc<dyn ObjectStore>,
    /// For transfers of object content, bounded by a no-progress timeout rather than a
    /// whole-request one (see `store`); the same client as `store` where timeouts are not
    /// set per client (`file://`, a store given to [`Repo::open_with_store`]).
    bulk: Arc<dyn ObjectStore>,
    /// Whole operations retried inside the repository (listings), as `storage.retry` says.
    retry: RetryPolicy,
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
        let (stores, prefix) = store::build(cfg)?;
        let mut repo = Repo::on_counted_store(
            stores.small,
            &prefix,
            cfg.compression,
            cfg.compression_level,
        );
        let inner = Arc::get_mut(&mut repo.inner).expect("a new repo is not shared yet");
        inner.bulk = stores.bulk;
        inner.retry = RetryPolicy::from_config(&cfg.retry);
        inner.describe = store::describe(cfg);
        if let url::StorageUrl::File(root) = &cfg.url {
            inner.local_root = Some(root.clone());
        }
        Ok(repo)
    }

    /// A repository on any store, e.g. `InMemory` in tests. `level` is zstd's. Its requests
    /// are counted (see [`counted`]).
    pub fn open_with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        codec: Codec,
        level: i32,
    ) -> Repo {
        Repo::on_counted_store(counted::counted(store), prefix, codec, level)
    }

    /// [`Repo::open_with_store`] on a store already counted (what `store::build` makes).
    fn on_counted_store(
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
                bulk: store.clone(),
                store,
                retry: RetryPolicy::default(),
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
            encoders: None,
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

    /// A handle on the same repository whose uploads (and its clones') compress at most
    /// `threads` at once, whatever the number in flight: a thread waiting for the network
    /// gives its turn to another. Other handles are not held back (WAL archiving never waits
    /// for a backup's turn).
    pub fn with_encoders(&self, threads: usize) -> Repo {
        Repo {
            inner: self.inner.clone(),
            encoders: Some(gate::Gate::new(threads)),
        }
    }

    /// Where the repository is, without secrets, for logs.
    pub fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    /// Root directory of a `file://` repository (`None` for object storage).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.inner.local_root.as_deref()
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
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, RepoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::io("<blocking task>", io::Error::other(e)))?
}

#[cfg(test)]
mod tests;
