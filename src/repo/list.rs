//! Listing and deleting objects, and the write probe asked before work that would fail
//! half-way.

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;

use super::{Codec, ObjectSummary, PutMode, Repo, RepoError};

impl Repo {
    /// Objects under `prefix` (a directory-like key prefix such as `wal/00000001`, or empty
    /// for everything), sorted by key. Keys are relative to the repository with the codec
    /// extension stripped; objects without a codec extension are not pgward's and are
    /// skipped.
    ///
    /// A listing broken off (object_store retries each page's request, not a body cut
    /// short) is listed again from the start, as `storage.retry` allows.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, RepoError> {
        let op = format!("list {prefix}");
        let never = tokio_util::sync::CancellationToken::new();
        super::retry(&self.inner.retry, &never, &op, || self.list_once(prefix)).await
    }

    async fn list_once(&self, prefix: &str) -> Result<Vec<ObjectSummary>, RepoError> {
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

    /// Names of the directory-like prefixes right under `prefix` (for `wal`: the timeline
    /// directories, `00000001`, ...), sorted; one delimited listing, however many objects
    /// they hold.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, RepoError> {
        let prefix = prefix.trim_matches('/');
        let full = match (self.inner.prefix.as_str(), prefix) {
            ("", p) => p.to_owned(),
            (r, "") => r.to_owned(),
            (r, p) => format!("{r}/{p}"),
        };
        let full_path = match full.is_empty() {
            true => None,
            false => Some(ObjectPath::parse(&full).map_err(|e| RepoError::InvalidKey {
                key: prefix.to_owned(),
                reason: e.to_string(),
            })?),
        };
        let listed = match self
            .inner
            .store
            .list_with_delimiter(full_path.as_ref())
            .await
        {
            Ok(listed) => listed,
            // A local repository without the directory yet.
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(RepoError::storage(prefix, e)),
        };
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        out.sort();
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
        self.delete_keys(&[key.to_owned()]).await
    }

    /// Deletes each of `keys` under every codec, in as few requests as the store allows (on
    /// S3 one request per thousand objects); deleting an absent key succeeds. An error names
    /// the first of `keys`: some of them may be gone, and deleting again finishes the work.
    pub async fn delete_keys(&self, keys: &[String]) -> Result<(), RepoError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let mut paths = Vec::with_capacity(keys.len() * Codec::ALL.len());
        for key in keys {
            for codec in Codec::ALL {
                paths.push(Ok(self.path(key, codec)?));
            }
        }
        let named = || match keys.len() {
            1 => first.clone(),
            n => format!("{first} (and {} more)", n - 1),
        };
        let mut answers = self
            .inner
            .store
            .delete_stream(futures_util::stream::iter(paths).boxed());
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(RepoError::storage(&named(), e)),
            }
        }
        Ok(())
    }
}
