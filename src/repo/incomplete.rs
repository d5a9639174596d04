//! What a create-only put finds at its key, on the small paths a crash leaves behind.
//!
//! - An object without a complete frame (empty, or cut short before its trailer) was never
//!   acknowledged: every put that reports success wrote the trailer last, and a `file://` put
//!   fsyncs before it reports. Such an object is what a writer killed mid-way (or a power loss
//!   before an fsync) leaves; it holds nothing anyone relies on. A create-only put replaces it,
//!   with a warning naming it, instead of refusing the key forever as corrupt. An object whose
//!   trailer is there is never replaced: a different checksum stays a conflict.
//! - An object already there with the same content may have been written by a process that
//!   died before it fsynced it: for a `file://` repository the put fsyncs it (and its
//!   directory) before it reports success, as it would a new one.

use std::io;
use std::path::Path;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::{blocking, Repo, RepoError};

impl Repo {
    /// Removes the incomplete object at `path` (whose trailer could not be read: `reason`).
    pub(super) async fn remove_incomplete(
        &self,
        key: &str,
        path: &ObjectPath,
        reason: &str,
    ) -> Result<(), RepoError> {
        tracing::warn!(
            object = %path,
            "replacing the incomplete object {path} ({reason}): a writer stopped before it \
             finished it, and it was never acknowledged"
        );
        match self.inner.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RepoError::storage(key, e)),
        }
    }

    /// For a `file://` repository, makes the object a create-only put of `key` (at `path`,
    /// or under another codec) found identical durable (file and directory fsynced) before
    /// the put reports success: the process that wrote it may have died before it fsynced.
    /// Object stores: nothing to do.
    pub(super) async fn make_identical_durable(
        &self,
        key: &str,
        path: &ObjectPath,
    ) -> Result<(), RepoError> {
        let Some(root) = &self.inner.local_root else {
            return Ok(());
        };
        let mut stored = vec![root.join(path.as_ref())];
        for codec in self.codecs() {
            let other = root.join(self.path(key, codec)?.as_ref());
            if !stored.contains(&other) {
                stored.push(other);
            }
        }
        let this = self.clone();
        blocking(move || {
            for file in stored {
                this.sync_if_present(&file)?;
            }
            Ok(())
        })
        .await
    }

    /// Blocking: fsyncs the local object file `stored` and its directories when it exists.
    pub(super) fn sync_if_present(&self, stored: &Path) -> Result<(), RepoError> {
        match std::fs::symlink_metadata(stored) {
            Ok(_) => self.make_local_entry_durable(stored, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError::io(stored, e)),
        }
    }
}
