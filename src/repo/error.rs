//! [`RepoError`]: what a repository operation can fail with, and whether retrying can help.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::frame::Checksum;

/// Why a repository operation failed. Callers branch on the variant (absent, conflict,
/// corrupt) and [`retry`](super::retry::retry) on [`RepoError::is_permanent`].
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("object {key} not found in the repository")]
    NotFound { key: String },
    #[error(
        "object {key} already exists with different content (stored checksum {existing}, new \
         {new})"
    )]
    Conflict {
        key: String,
        existing: Checksum,
        new: Checksum,
    },
    #[error("object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage request for {key} failed")]
    Storage {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid repository key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The storage settings cannot make a client.
    #[error("{0}")]
    Config(String),
    /// `repo.json` disagrees with this cluster or this pgward (message carries a `HINT:`).
    #[error("{0}")]
    Meta(String),
    #[error("cancelled")]
    Cancelled,
}

impl RepoError {
    /// True when trying again cannot help: the answer was definite (absent, conflict, corrupt,
    /// refused) or the request itself is wrong. Transient storage and network errors are not
    /// permanent; object_store has already retried each request by then.
    pub fn is_permanent(&self) -> bool {
        use object_store::Error as E;
        match self {
            RepoError::Storage { source, .. } => !matches!(source, E::Generic { .. }),
            RepoError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            RepoError::NotFound { .. }
            | RepoError::Conflict { .. }
            | RepoError::Corrupt { .. }
            | RepoError::InvalidKey { .. }
            | RepoError::Config(_)
            | RepoError::Meta(_)
            | RepoError::Cancelled => true,
        }
    }

    pub(crate) fn storage(key: &str, source: object_store::Error) -> RepoError {
        RepoError::Storage {
            key: key.to_owned(),
            source,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> RepoError {
        RepoError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Displays an error with its sources, `: `-separated, like anyhow's `{:#}`.
pub(crate) struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
