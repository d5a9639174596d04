//! The repository's own settings: where it is, how to reach it, how its objects are
//! written, how requests are retried.
//!
//! `config` reads these from the `storage:` section of the config file (and re-exports them
//! under the same names); the repository knows nothing of the file they came from. Serialized
//! as `config print` shows them, secrets redacted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Codec, StorageUrl};
use crate::secret::Secret;

/// `storage:` — the repository on object storage that holds WAL and backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageConfig {
    /// Where the repository lives: `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix`
    /// or `az://container/prefix`. Default `file:///var/lib/pgward/repo`.
    pub url: StorageUrl,
    /// Used when `url` is `s3://`.
    pub s3: S3Config,
    /// Used when `url` is `gs://`.
    pub gcs: GcsConfig,
    /// Used when `url` is `az://`.
    pub azure: AzureConfig,
    /// Codec of the objects pgward writes: `zstd`, `lz4` or `none`. Default `zstd`. Objects
    /// written with another codec stay readable.
    pub compression: Codec,
    /// zstd level, 1 to 19; ignored by the other codecs. Default 3.
    pub compression_level: i32,
    pub retry: StorageRetryConfig,
}

/// `storage.s3:` — S3 and S3-compatible servers. Every unset key falls back to the standard
/// AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph...). Default: AWS itself.
    pub endpoint: Option<String>,
    /// Region. Default: `$AWS_REGION`, `$AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id. Default `$AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key. Default `$AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials. Default `$AWS_SESSION_TOKEN`.
    pub session_token: Option<Secret>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`). Default: true when `endpoint` or `$AWS_ENDPOINT_URL` is set,
    /// else false.
    pub path_style: bool,
    /// Allow a plain `http://` endpoint. Default false.
    pub allow_http: bool,
}

/// `storage.gcs:` — Google Cloud Storage. Default credentials:
/// `$GOOGLE_SERVICE_ACCOUNT` / `$GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcsConfig {
    /// Service account key, the JSON text itself. Default: none.
    pub service_account_key: Option<Secret>,
    /// Path of a service account key file, read by the storage client. Default: none.
    pub service_account_path: Option<PathBuf>,
}

/// `storage.azure:` — Azure Blob Storage. Unset keys fall back to
/// `$AZURE_STORAGE_ACCOUNT_NAME` and `$AZURE_STORAGE_ACCOUNT_KEY`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AzureConfig {
    /// Storage account name. Default `$AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    /// Shared access key. Default `$AZURE_STORAGE_ACCOUNT_KEY`.
    pub access_key: Option<Secret>,
    /// Blob endpoint of an emulator or custom deployment, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`. Default: Azure itself.
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint. Default false.
    pub allow_http: bool,
    /// Use the Azurite emulator's well-known account, key and endpoint; an explicit `endpoint`
    /// wins. Default false.
    pub use_emulator: bool,
}

/// `storage.retry:` — retries and timeouts of storage requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageRetryConfig {
    /// Retries of a failed request before giving up: a request is attempted at most
    /// `max_retries + 1` times, by the storage client alone (see `repo::retry`). Default 5.
    pub max_retries: u32,
    /// First delay between retries; each next one is random between this and twice the
    /// previous one (jitter), up to `max_backoff`. Default 100ms.
    #[serde(serialize_with = "ser_duration")]
    pub initial_backoff: Duration,
    /// Upper bound of the delay between retries. Default 15s.
    #[serde(serialize_with = "ser_duration")]
    pub max_backoff: Duration,
    /// Timeout of one request that carries no object content (listing, metadata, deletes,
    /// the few bytes of an object's trailer). Default 60s.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// How long a transfer of object content (a download, an upload part) may go without
    /// progress before it is abandoned and retried; however long the whole transfer takes.
    /// Default 60s.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
