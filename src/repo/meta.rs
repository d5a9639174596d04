//! `repo.json`: which cluster and which PostgreSQL major version a repository belongs to, so
//! two clusters never mix their WAL in one place, and a newer repository format is never
//! misread by an older pgward.
//!
//! Stored plain (see `plain`) so a human can read it, as pretty JSON whose `"checksum"` is
//! the BLAKE3 of the fields' canonical form ([`RepoMeta::checksum`]): an object store keeps
//! no checksum of its own that a reader could check, and a hand edit or a damaged file must
//! not silently change which cluster a repository belongs to. Earlier builds stored it framed
//! like WAL (`repo.json.zst`); such a repository is read as it is and never given a second
//! `repo.json`.

use serde::{Deserialize, Serialize};

use super::layout::REPO_META;
use super::{Checksum, PutMode, PutOutcome, Repo, RepoError};

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

    /// BLAKE3 of the compact JSON of the fields (`serde_json::to_vec`): whitespace, key order
    /// and a numeric `system_identifier` in the file do not change it, a changed value does.
    pub fn checksum(&self) -> Checksum {
        let canonical = serde_json::to_vec(self).expect("RepoMeta serializes to JSON");
        Checksum(*blake3::hash(&canonical).as_bytes())
    }

    /// `repo.json` as stored: pretty JSON, the fields then their checksum, and a newline.
    pub(super) fn to_file(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Sealed<'a> {
            #[serde(flatten)]
            meta: &'a RepoMeta,
            checksum: String,
        }
        let sealed = Sealed {
            meta: self,
            checksum: self.checksum().to_string(),
        };
        let mut json = serde_json::to_vec_pretty(&sealed).expect("RepoMeta serializes to JSON");
        json.push(b'\n');
        json
    }

    /// Parses a stored `repo.json` and verifies its checksum; the error says why the file
    /// cannot be trusted.
    pub(super) fn from_file(bytes: &[u8]) -> Result<RepoMeta, String> {
        let mut fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        let stored = fields.remove("checksum");
        let meta: RepoMeta = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| format!("{e}"))?;
        if meta.format_version > FORMAT_VERSION {
            // Its checksum follows the newer format's rules, unknown here; `check_meta`
            // refuses the repository with a message that says to upgrade.
            return Ok(meta);
        }
        let stored = match stored {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => return Err(format!("\"checksum\" is not a string: {other}")),
            None => return Err("no \"checksum\" field; the file was edited or damaged".into()),
        };
        let actual = meta.checksum().to_string();
        if !stored.eq_ignore_ascii_case(&actual) {
            return Err(format!(
                "checksum mismatch: stored {stored}, content hashes to {actual}; the file was \
                 edited or damaged"
            ));
        }
        Ok(meta)
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
    /// Reads and verifies `repo.json`, or the framed `repo.json.<zst|lz4|raw>` of an earlier
    /// build when there is no plain one; `None` for a repository not initialized yet.
    pub async fn read_meta(&self) -> Result<Option<RepoMeta>, RepoError> {
        let corrupt = |reason: String| RepoError::Corrupt {
            key: REPO_META.to_owned(),
            reason,
        };
        if let Some(bytes) = self.get_plain(REPO_META).await? {
            return RepoMeta::from_file(&bytes).map(Some).map_err(corrupt);
        }
        // The frame's trailer has verified the content; there is no checksum field to check.
        let Some(bytes) = self.get_bytes(REPO_META).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            corrupt(format!(
                "invalid JSON in the framed object written by an earlier pgward: {e}"
            ))
        })
    }

    /// Creates `repo.json` from `expected` when absent, else checks that the repository
    /// belongs to this cluster and can be read. Returns what is stored. Two initializers
    /// racing agree: the write is create-only, and the loser checks the winner's. In a
    /// `file://` repository the new file is fsynced before it is trusted.
    pub async fn ensure_meta(&self, expected: &RepoMeta) -> Result<RepoMeta, RepoError> {
        if let Some(found) = self.read_meta().await? {
            return self.check_meta(found, expected);
        }
        match self
            .put_plain(REPO_META, expected.to_file(), PutMode::Create)
            .await
        {
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
