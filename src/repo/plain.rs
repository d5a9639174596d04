//! Objects stored as is, for the few a human reads (`repo.json`): no frame, no compression and
//! no codec extension, so `cat` or `aws s3 cp s3://bucket/prefix/repo.json -` shows them.
//!
//! They carry no trailer: an object that needs an integrity check carries it in its content.
//! [`Repo::list`] skips them (it lists names with a codec extension only), so they never pass
//! for WAL or backup objects, and no key here may end in a codec extension.
//!
//! Plain objects are small (at most [`PLAIN_MAX`]), so they are hashed on the calling thread
//! rather than on the blocking pool.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::{Checksum, Codec, PutMode, PutOutcome, Repo, RepoError};

/// Largest plain object read or written: a few KiB is what a human reads.
const PLAIN_MAX: usize = 1 << 20;

impl Repo {
    /// The stored name of the plain object `key`: the key itself under the prefix.
    fn plain_path(&self, key: &str) -> Result<ObjectPath, RepoError> {
        let framed_extension = key
            .rsplit_once('.')
            .and_then(|(_, ext)| Codec::from_extension(ext));
        if framed_extension.is_some() {
            return Err(RepoError::InvalidKey {
                key: key.to_owned(),
                reason: "a plain object's name may not end in a codec extension (it would be \
                         listed as a framed object)"
                    .into(),
            });
        }
        self.stored_path(key, "")
    }

    /// Reads the plain object `key` as stored; `None` when absent.
    pub async fn get_plain(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let path = self.plain_path(key)?;
        let get = match self.inner.store.get(&path).await {
            Ok(get) => get,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(RepoError::storage(key, e)),
        };
        if get.meta.size > PLAIN_MAX as u64 {
            return Err(RepoError::Corrupt {
                key: key.to_owned(),
                reason: format!(
                    "{} bytes, more than a plain object may hold ({PLAIN_MAX})",
                    get.meta.size
                ),
            });
        }
        let bytes = get.bytes().await.map_err(|e| RepoError::storage(key, e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Stores `bytes` as is under `key`. In [`PutMode::Create`] an existing object is never
    /// replaced: identical content is [`PutOutcome::AlreadyIdentical`], different content
    /// [`RepoError::Conflict`]; the checksums are the BLAKE3 of the stored bytes. A `file://`
    /// repository has the object fsynced (file and directories) before this returns.
    pub async fn put_plain(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<PutOutcome, RepoError> {
        let path = self.plain_path(key)?;
        if bytes.len() > PLAIN_MAX {
            return Err(RepoError::InvalidKey {
                key: key.to_owned(),
                reason: format!(
                    "{} bytes, more than a plain object may hold ({PLAIN_MAX})",
                    bytes.len()
                ),
            });
        }
        let checksum = Checksum(*blake3::hash(&bytes).as_bytes());
        let created = PutOutcome::Created {
            checksum,
            stored_bytes: bytes.len() as u64,
        };
        let payload = PutPayload::from(Bytes::from(bytes));
        let outcome = match mode {
            PutMode::Overwrite => {
                self.inner
                    .store
                    .put(&path, payload)
                    .await
                    .map_err(|e| RepoError::storage(key, e))?;
                created
            }
            PutMode::Create => {
                self.put_create_only(key, &path, payload, created, || self.plain_checksum(key))
                    .await?
            }
        };
        self.make_durable(key, &path, &outcome).await?;
        Ok(outcome)
    }

    /// BLAKE3 of the stored plain object `key`, `None` when absent.
    async fn plain_checksum(&self, key: &str) -> Result<Option<Checksum>, RepoError> {
        Ok(self
            .get_plain(key)
            .await?
            .map(|bytes| Checksum(*blake3::hash(&bytes).as_bytes())))
    }
}
