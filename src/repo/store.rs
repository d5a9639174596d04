//! [`StorageConfig`] → the object_store clients and the key prefix inside them.
//!
//! Two clients of one store, differing in their timeouts: [`Stores::small`] for requests
//! without object content (listing, metadata, deletes, the few bytes of a trailer), each
//! bounded as a whole by `storage.retry.timeout`; [`Stores::bulk`] for the transfers of object
//! content (downloads, uploads), which may take as long as the link needs and are abandoned
//! only when they make no progress for `storage.retry.idle_timeout`: a 128 MiB object over a
//! slow link takes minutes, and a whole-request timeout would fail it however healthy the link.
//!
//! Every client is wrapped in [`counted`](super::counted), so each request it makes is
//! counted.
//!
//! The only place that knows the cloud SDK builders. Credentials: each builder starts from
//! its cloud's standard environment variables (`from_env`), then the config's keys override
//! them. Nothing here performs a request: building a client is offline, so a bad credential
//! shows up at the first request, not here.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::counted::{counted, counted_bulk_delete};
use super::{RepoError, StorageConfig, StorageUrl};

/// Objects object_store's S3 client deletes in one `DeleteObjects` request.
const S3_DELETE_BATCH: usize = 1000;

/// The clients of one store; see the module documentation.
pub(crate) struct Stores {
    pub small: Arc<dyn ObjectStore>,
    pub bulk: Arc<dyn ObjectStore>,
}

/// Which requests a client makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Small,
    Bulk,
}

/// The stores `cfg.url` names, configured, and the prefix of the repository inside them.
pub(crate) fn build(cfg: &StorageConfig) -> Result<(Stores, String), RepoError> {
    let prefix = cfg.url.prefix().to_owned();
    if let StorageUrl::File(root) = &cfg.url {
        std::fs::create_dir_all(root).map_err(|e| RepoError::io(root, e))?;
        // Puts go to a temp file renamed into place, and create-only puts use a
        // no-replace link, so concurrent writers never see half an object.
        let store: Arc<dyn ObjectStore> = Arc::new(
            LocalFileSystem::new_with_prefix(root).map_err(|e| config_error(&cfg.url, e))?,
        );
        let store = counted(store);
        let stores = Stores {
            small: store.clone(),
            bulk: store,
        };
        return Ok((stores, prefix));
    }
    let counted = |store| match cfg.url {
        // `DeleteObjects`: up to 1,000 objects a request.
        StorageUrl::S3 { .. } => counted_bulk_delete(store, S3_DELETE_BATCH),
        _ => counted(store),
    };
    let stores = Stores {
        small: counted(client(cfg, Kind::Small)?),
        bulk: counted(client(cfg, Kind::Bulk)?),
    };
    Ok((stores, prefix))
}

/// A client of the object store `cfg.url` names, with the timeouts of `kind`.
fn client(cfg: &StorageConfig, kind: Kind) -> Result<Arc<dyn ObjectStore>, RepoError> {
    let store: Arc<dyn ObjectStore> = match &cfg.url {
        StorageUrl::File(_) => unreachable!("a file:// repository has no client"),
        StorageUrl::S3 { bucket, .. } => Arc::new(s3(cfg, bucket, kind)?),
        StorageUrl::Gcs { bucket, .. } => {
            let gcs = &cfg.gcs;
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config(cfg, kind))
                .with_client_options(client_options(cfg, kind));
            if let Some(key) = &gcs.service_account_key {
                b = b.with_service_account_key(key.expose());
            }
            if let Some(path) = &gcs.service_account_path {
                b = b.with_service_account_path(path.display().to_string());
            }
            Arc::new(b.build().map_err(|e| config_error(&cfg.url, e))?)
        }
        StorageUrl::Azure { container, .. } => {
            let az = &cfg.azure;
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_retry(retry_config(cfg, kind))
                .with_client_options(client_options(cfg, kind))
                // The emulator switch makes object_store ignore `with_endpoint` (it reads
                // AZURITE_BLOB_STORAGE_URL or uses 127.0.0.1:10000), so an explicit endpoint
                // wins: Azurite is reached path-style at `http://host:port/<account>`.
                .with_use_emulator(az.use_emulator && az.endpoint.is_none());
            if let Some(account) = &az.account {
                b = b.with_account(account);
            }
            if let Some(key) = &az.access_key {
                b = b.with_access_key(key.expose());
            }
            if let Some(endpoint) = &az.endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            if az.allow_http {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| config_error(&cfg.url, e))?)
        }
    };
    Ok(store)
}

fn s3(
    cfg: &StorageConfig,
    bucket: &str,
    kind: Kind,
) -> Result<object_store::aws::AmazonS3, RepoError> {
    let s3 = &cfg.s3;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config(cfg, kind))
        .with_client_options(client_options(cfg, kind))
        // Create-only puts as `If-None-Match: *`: AWS S3 and recent S3-compatible servers
        // honour it; a server that does not is caught by the repo's fallback.
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_virtual_hosted_style_request(!s3.path_style);
    if let Some(endpoint) = &s3.endpoint {
        b = b.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        b = b.with_region(region);
    }
    if let Some(id) = &s3.access_key_id {
        b = b.with_access_key_id(id);
    }
    if let Some(secret) = &s3.secret_access_key {
        b = b.with_secret_access_key(secret.expose());
    }
    if let Some(token) = &s3.session_token {
        b = b.with_token(token.expose());
    }
    if s3.allow_http {
        b = b.with_allow_http(true);
    }
    let has_key = s3.access_key_id.is_some() || std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    if !has_key && kind == Kind::Small {
        // object_store then asks the web-identity or instance-metadata endpoints, which only
        // exist on AWS; say so once instead of failing obscurely at the first request.
        tracing::info!(
            url = %cfg.url,
            "no S3 access key in storage.s3 or AWS_ACCESS_KEY_ID; using the instance or web \
             identity credentials of the environment"
        );
    }
    b.build().map_err(|e| config_error(&cfg.url, e))
}

fn client_options(cfg: &StorageConfig, kind: Kind) -> ClientOptions {
    match kind {
        Kind::Small => ClientOptions::new().with_timeout(cfg.retry.timeout),
        // The read timeout restarts with every read of a response body; before the answer
        // comes, it bounds sending the request (one upload part, at most `PART_SIZE`) and
        // waiting for its answer.
        Kind::Bulk => ClientOptions::new()
            .with_timeout_disabled()
            .with_read_timeout(cfg.retry.idle_timeout),
    }
}

fn retry_config(cfg: &StorageConfig, kind: Kind) -> RetryConfig {
    let mut retry = RetryConfig::default();
    retry.max_retries = cfg.retry.max_retries as usize;
    if kind == Kind::Bulk {
        // A download broken halfway resumes with a range read from the last byte received,
        // within `max_retries`; object_store's default also stops resuming 3 minutes after
        // the request began, which a long download over a slow link always passes.
        retry.retry_timeout = Duration::from_secs(24 * 3600);
    }
    retry.backoff = BackoffConfig {
        init_backoff: cfg.retry.initial_backoff,
        max_backoff: cfg.retry.max_backoff,
        base: 2.0,
    };
    retry
}

fn config_error(url: &StorageUrl, e: object_store::Error) -> RepoError {
    RepoError::Config(format!("cannot set up storage for {url}: {e}"))
}

/// The url and the endpoint, never a credential: for logs.
pub(crate) fn describe(cfg: &StorageConfig) -> String {
    let endpoint = match &cfg.url {
        StorageUrl::S3 { .. } => cfg.s3.endpoint.as_deref(),
        StorageUrl::Azure { .. } => cfg.azure.endpoint.as_deref(),
        _ => None,
    };
    match endpoint {
        Some(endpoint) => format!("{} (endpoint {endpoint})", cfg.url),
        None => cfg.url.to_string(),
    }
}
