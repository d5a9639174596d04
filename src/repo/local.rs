//! What a `file://` repository needs that object stores do not: a completed put is durable
//! only once the file and its directories are fsynced, new files and directories go to the
//! local owner, and deleting objects leaves empty directories behind. On object stores each
//! of these does nothing.

use std::io;
use std::path::Path;

use object_store::path::Path as ObjectPath;

use super::{blocking, PutOutcome, Repo, RepoError};

impl Repo {
    /// For a `file://` repository, fsyncs a newly written object (stored at `path`) and its
    /// directory, and each ancestor up to the repository root once per process: a directory's
    /// entry in its parent only changes when the directory is created, and fsyncs are what a
    /// put costs on a busy disk. An object of `key` found identical is fsynced the same way
    /// (see [`Repo::make_identical_durable`]).
    pub(super) async fn make_durable(
        &self,
        key: &str,
        path: &ObjectPath,
        outcome: &PutOutcome,
    ) -> Result<(), RepoError> {
        if let PutOutcome::AlreadyIdentical { .. } = outcome {
            return self.make_identical_durable(key, path).await;
        }
        let Some(root) = &self.inner.local_root else {
            return Ok(());
        };
        let stored = root.join(path.as_ref());
        let this = self.clone();
        blocking(move || this.make_local_entry_durable(&stored, true)).await
    }

    /// The blocking body of [`Repo::make_durable`] for the object stored at `stored` in this
    /// `file://` repository; `sync_file` false when the writer synced the file before
    /// publishing it.
    pub(super) fn make_local_entry_durable(
        &self,
        stored: &Path,
        sync_file: bool,
    ) -> Result<(), RepoError> {
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
}
