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
         {new})\nHINT: two clusters, or a restored copy of this one, may be writing to one \
         storage.url; give each cluster its own"
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
    #[error("the storage operation was cancelled")]
    Cancelled,
}

impl RepoError {
    /// Whether `e` only says the work was cancelled (by its caller, or after another part of
    /// it failed): a [`RepoError::Cancelled`] anywhere in its chain.
    pub fn only_cancelled(e: &anyhow::Error) -> bool {
        e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<RepoError>(),
                Some(RepoError::Cancelled)
            )
        })
    }

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

    /// True when the storage client has already retried the request this error ended, as
    /// `storage.retry` allows: an answer of the server (a `5xx` such as `503 SlowDown`, `429`,
    /// `408` are retried by the client until `max_retries`; any other status is definite) or
    /// a request that could not be sent (connect errors). Retrying the operation again would
    /// multiply the client's attempts, so [`retry`](super::retry::retry) does not.
    ///
    /// Not such an error: a timeout or a connection lost mid-request (the client retries those
    /// only for idempotent requests, and a create-only put is not one), a response that could
    /// not be read or decoded, and every error of a store without an HTTP client (`file://`,
    /// `InMemory`).
    pub fn retried_by_client(&self) -> bool {
        match self {
            RepoError::Storage { source, .. } => client_retried(source),
            _ => false,
        }
    }

    /// What the user can do about this error, when it says (the storage's refusals, a local
    /// repository's permissions); `None` when the message says all there is.
    pub fn hint(&self) -> Option<&'static str> {
        use object_store::Error as E;
        match self {
            RepoError::Storage { source, .. } => match source {
                E::PermissionDenied { .. } | E::Unauthenticated { .. } => Some(
                    "check the credentials in storage.s3, storage.gcs or storage.azure (or the \
                     AWS_*, GOOGLE_* and AZURE_* variables) and what they may do on the bucket",
                ),
                E::NotFound { .. } => {
                    Some("check the bucket (or container) and prefix of storage.url")
                }
                E::Generic { .. } => Some(
                    "is the storage endpoint reachable from here (storage.s3.endpoint, DNS, \
                     network)? pgward retries, see storage.retry",
                ),
                _ => None,
            },
            RepoError::Io { source, .. } => match source.kind() {
                io::ErrorKind::PermissionDenied => Some(
                    "the directory of a file:// storage.url must be readable and writable by \
                     pgward (and by postgres.user, who runs wal-push when no daemon answers)",
                ),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    Some("the repository's file system is full: free space, or run pgward expire")
                }
                _ => None,
            },
            _ => None,
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

/// The stores whose requests go through object_store's HTTP client and its retries, by the
/// name they give in `Error::Generic`.
const HTTP_STORES: [&str; 4] = ["S3", "GCS", "MicrosoftAzure", "HTTP"];

/// See [`RepoError::retried_by_client`]. object_store's `RetryError` (the end of its retry
/// loop) is not a public type: a transport failure shows as the public `HttpError` in the
/// chain, whose kind says whether the loop retries it; a chain without one ended with the
/// server's answer when it is the retry loop's error ("Error performing <method> <url>",
/// under the store's own "Error performing list request" and the like). Pinned by the tests
/// of `store` against a server that answers `503 SlowDown`.
pub(super) fn client_retried(error: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind as K;
    let object_store::Error::Generic { store, source } = error else {
        // The other variants are definite answers (absent, exists, refused...).
        return false;
    };
    if !HTTP_STORES.contains(store) {
        return false;
    }
    if let Some(http) =
        causes(source.as_ref()).find_map(|e| e.downcast_ref::<object_store::client::HttpError>())
    {
        return matches!(http.kind(), K::Connect | K::Request);
    }
    causes(source.as_ref()).any(|e| e.to_string().starts_with("Error performing "))
}

/// `error` and its sources, outermost first.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// The hint of the first repository error in `error`'s chain (see [`RepoError::hint`]).
pub fn hint_in(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    causes(error)
        .find_map(|e| e.downcast_ref::<RepoError>())
        .and_then(RepoError::hint)
}

/// `error` as its chain (anyhow's `{:#}`), with the hint of a repository error last when the
/// message has none yet: what users read of a failed command or archive attempt.
pub fn with_hint(error: &anyhow::Error) -> String {
    let message = format!("{error:#}");
    match hint_in(error.as_ref()) {
        Some(hint) if !message.contains("HINT:") => format!("{message}\nHINT: {hint}"),
        _ => message,
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_refused_request_ends_with_what_to_check() {
        let refused = RepoError::storage(
            "wal/00000001/000000010000000000000003",
            object_store::Error::PermissionDenied {
                path: "wal/00000001/000000010000000000000003".into(),
                source: "403 Forbidden".into(),
            },
        );
        let e = anyhow::Error::new(refused).context("upload 000000010000000000000003");
        let text = with_hint(&e);
        assert!(
            text.starts_with(
                "upload 000000010000000000000003: storage request for \
                 wal/00000001/000000010000000000000003 failed: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\nHINT: check the credentials in storage.s3, storage.gcs or storage.azure (or \
                 the AWS_*, GOOGLE_* and AZURE_* variables) and what they may do on the bucket"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_message_with_a_hint_gets_no_second_one_and_others_none() {
        let denied = RepoError::io(
            "/var/lib/pgward/repo/repo.json",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let e = Err::<(), _>(denied)
            .context("open the repository\nHINT: run as root")
            .unwrap_err();
        assert_eq!(with_hint(&e).matches("HINT:").count(), 1);
        let absent = anyhow::Error::new(RepoError::NotFound { key: "x".into() });
        assert_eq!(with_hint(&absent), "object x not found in the repository");
    }
}
