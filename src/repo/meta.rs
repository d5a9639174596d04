//! `repo.json`: which cluster and which PostgreSQL major version a repository belongs to, so
//! two clusters never mix their WAL in one place, and a newer repository format is never
//! misread by an older pgward.

use serde::{Deserialize, Serialize};

use super::layout::REPO_META;
use super::{PutMode, PutOutcome, Repo, RepoError};

/// Newest repository format this pgward reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// The content of `repo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    /// Repository format; [`FORMAT_VERSION`] when written by this pgward.
    pub format_version: u32,
    /// PostgreSQL major version of the cluster (`16`).
    pub pg_major: u32,
    /// The cluster's system identifier from `pg_control`. Stored as a JSON string: it is
    /// above 2^53, where JSON tools lose digits.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    /// When the repository was created, RFC 3339 UTC.
    pub created_at: String,
    /// `pgward <version>` that created it.
    pub created_by: String,
}

impl RepoMeta {
    /// Metadata for a new repository of this cluster, stamped now by this pgward.
    pub fn new(pg_major: u32, system_identifier: u64) -> RepoMeta {
        RepoMeta {
            format_version: FORMAT_VERSION,
            pg_major,
            system_identifier,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            created_by: format!("pgward {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

mod u64_string {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// A string, or a number for hand-written files.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(n),
            Either::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl Repo {
    /// Reads `repo.json`; `None` for a repository not initialized yet.
    pub async fn read_meta(&self) -> Result<Option<RepoMeta>, RepoError> {
        let Some(bytes) = self.get_bytes(REPO_META).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RepoError::Corrupt {
                key: REPO_META.to_owned(),
                reason: format!("invalid JSON: {e}"),
            })
    }

    /// Creates `repo.json` from `expected` when absent, else checks that the repository
    /// belongs to this cluster and can be read. Returns what is stored. Two initializers
    /// racing agree: the write is create-only, and the loser checks the winner's.
    pub async fn ensure_meta(&self, expected: &RepoMeta) -> Result<RepoMeta, RepoError> {
        if let Some(found) = self.read_meta().await? {
            return self.check_meta(found, expected);
        }
        let json = serde_json::to_vec_pretty(expected).expect("RepoMeta serializes to JSON");
        match self.put_bytes(REPO_META, json, PutMode::Create).await {
            Ok(PutOutcome::Created { .. }) | Ok(PutOutcome::AlreadyIdentical { .. }) => {
                tracing::info!(repo = %self.describe(), system_identifier = expected.system_identifier,
                    pg_major = expected.pg_major, "initialized the repository");
                Ok(expected.clone())
            }
            Err(RepoError::Conflict { .. }) => {
                let found = self.read_meta().await?.ok_or_else(|| RepoError::NotFound {
                    key: REPO_META.to_owned(),
                })?;
                self.check_meta(found, expected)
            }
            Err(e) => Err(e),
        }
    }

    fn check_meta(&self, found: RepoMeta, expected: &RepoMeta) -> Result<RepoMeta, RepoError> {
        let url = self.describe();
        if found.format_version > FORMAT_VERSION {
            return Err(RepoError::Meta(format!(
                "repository at {url} has format version {}, newer than this pgward reads \
                 ({FORMAT_VERSION})\nHINT: upgrade pgward to the version that wrote it ({})",
                found.format_version, found.created_by
            )));
        }
        if found.system_identifier != expected.system_identifier {
            return Err(RepoError::Meta(format!(
                "repository at {url} belongs to system identifier {}, this cluster is {}\n\
                 HINT: do two clusters share storage.url?",
                found.system_identifier, expected.system_identifier
            )));
        }
        if found.pg_major != expected.pg_major {
            return Err(RepoError::Meta(format!(
                "repository at {url} holds PostgreSQL {} WAL and backups, this cluster runs \
                 PostgreSQL {}\nHINT: after a major upgrade, start a new repository (another \
                 storage.url or prefix)",
                found.pg_major, expected.pg_major
            )));
        }
        Ok(found)
    }
}
