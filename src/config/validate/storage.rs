//! `storage:`: the repository's url, its cloud's settings (S3, GCS, Azure), compression and
//! request retries, read into the repository's own settings type ([`StorageConfig`]).

use super::values::{choice_ignoring_blanks, integer_from, parse_count, positive_duration};
use super::*;

/// The default repository: a local directory, so a container archives WAL out of the box
/// (mount a volume there, or point `storage.url` at object storage).
const DEFAULT_STORAGE_URL: &str = "file:///var/lib/pgward/repo";

pub(super) fn validate_storage(raw: RawStorage, cx: &mut Cx<'_>) -> StorageConfig {
    let RawStorage {
        url,
        s3,
        gcs,
        azure,
        compression,
        compression_level,
        retry,
    } = raw;
    let url = cx
        .parse("storage.url", url, StorageUrl::parse)
        .unwrap_or_else(|| {
            StorageUrl::parse(DEFAULT_STORAGE_URL).expect("the default storage url parses")
        });
    let level_given = compression_level.is_some();
    let compression = cx
        .parse("storage.compression", compression, |s| {
            let codecs = Codec::ALL.map(|codec| (codec.name(), codec));
            choice_ignoring_blanks("compression", s, &codecs)
        })
        .unwrap_or(Codec::Zstd);
    let compression_level = cx
        .parse(
            "storage.compression_level",
            compression_level,
            |s| match s.trim().parse::<i32>() {
                Ok(n @ 1..=19) => Ok(n),
                _ => Err(integer_from("zstd level", s, 1..=19)),
            },
        )
        .unwrap_or(3);
    if level_given && compression != Codec::Zstd {
        cx.at_key(
            "storage.compression_level",
            format!(
                "compression_level applies to zstd only, but compression is {}",
                compression.name()
            ),
        );
    }
    StorageConfig {
        url,
        s3: validate_s3(s3, cx),
        gcs: validate_gcs(gcs, cx),
        azure: validate_azure(azure, cx),
        compression,
        compression_level,
        retry: validate_storage_retry(retry, cx),
    }
}

/// An `http://` or `https://` URL; plain http only when `allow_http` (credentials and data
/// would cross the network in clear).
fn check_endpoint(cx: &mut Cx<'_>, path: &str, endpoint: &str, allow_http: bool, base: &str) {
    if endpoint.starts_with("https://") {
        return;
    }
    if endpoint.starts_with("http://") {
        if !allow_http {
            cx.at_value(
                path,
                format!(
                    "plain http endpoint {endpoint:?} is not allowed (use https, or set \
                     {base}.allow_http: true for a server on a trusted network)"
                ),
            );
        }
        return;
    }
    cx.at_value(
        path,
        format!("invalid endpoint {endpoint:?} (expected an http:// or https:// URL)"),
    );
}

fn validate_s3(raw: RawS3, cx: &mut Cx<'_>) -> S3Config {
    let RawS3 {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        secret_access_key_file,
        session_token,
        session_token_file,
        path_style,
        allow_http,
    } = raw;
    let endpoint = cx.string("storage.s3.endpoint", endpoint);
    let allow_http = cx
        .bool("storage.s3.allow_http", allow_http)
        .unwrap_or(false);
    if let Some(endpoint) = &endpoint {
        check_endpoint(
            cx,
            "storage.s3.endpoint",
            endpoint,
            allow_http,
            "storage.s3",
        );
    }
    S3Config {
        region: cx.string("storage.s3.region", region),
        access_key_id: cx.string("storage.s3.access_key_id", access_key_id),
        secret_access_key: cx.secret(
            "storage.s3.secret_access_key",
            secret_access_key,
            secret_access_key_file,
        ),
        session_token: cx.secret(
            "storage.s3.session_token",
            session_token,
            session_token_file,
        ),
        path_style: cx
            .bool("storage.s3.path_style", path_style)
            // MinIO and the like are addressed by path; an endpoint from the environment
            // (the storage client reads AWS_ENDPOINT_URL) is one of them too.
            .unwrap_or(endpoint.is_some() || image_env::var(cx.env, "AWS_ENDPOINT_URL").is_some()),
        endpoint,
        allow_http,
    }
}

fn validate_gcs(raw: RawGcs, cx: &mut Cx<'_>) -> GcsConfig {
    let RawGcs {
        service_account_key,
        service_account_key_file,
        service_account_path,
    } = raw;
    let key_given = service_account_key.is_some() || service_account_key_file.is_some();
    let service_account_key = cx.secret(
        "storage.gcs.service_account_key",
        service_account_key,
        service_account_key_file,
    );
    if let Some(key) = &service_account_key {
        if serde_json::from_str::<serde_json::Value>(key.expose()).is_err() {
            // Never echo the key: it is a secret even when malformed.
            cx.at_value(
                "storage.gcs.service_account_key",
                "the service account key is not valid JSON",
            );
        }
    }
    let path_given = service_account_path.is_some();
    let service_account_path = cx.path("storage.gcs.service_account_path", service_account_path);
    if key_given && path_given {
        cx.at_key(
            "storage.gcs.service_account_path",
            "service_account_key and service_account_path are exclusive; set one",
        );
    }
    GcsConfig {
        service_account_key,
        service_account_path,
    }
}

fn validate_azure(raw: RawAzure, cx: &mut Cx<'_>) -> AzureConfig {
    let RawAzure {
        account,
        access_key,
        access_key_file,
        endpoint,
        allow_http,
        use_emulator,
    } = raw;
    let endpoint = cx.string("storage.azure.endpoint", endpoint);
    let allow_http = cx
        .bool("storage.azure.allow_http", allow_http)
        .unwrap_or(false);
    let use_emulator = cx
        .bool("storage.azure.use_emulator", use_emulator)
        .unwrap_or(false);
    if let Some(endpoint) = &endpoint {
        // The emulator speaks plain http on localhost only.
        let allow = allow_http || use_emulator;
        check_endpoint(
            cx,
            "storage.azure.endpoint",
            endpoint,
            allow,
            "storage.azure",
        );
    }
    AzureConfig {
        account: cx.string("storage.azure.account", account),
        access_key: cx.secret("storage.azure.access_key", access_key, access_key_file),
        endpoint,
        allow_http,
        use_emulator,
    }
}

fn validate_storage_retry(raw: RawStorageRetry, cx: &mut Cx<'_>) -> StorageRetryConfig {
    let RawStorageRetry {
        max_retries,
        initial_backoff,
        max_backoff,
        timeout,
        idle_timeout,
    } = raw;
    let retry = StorageRetryConfig {
        max_retries: cx
            .parse("storage.retry.max_retries", max_retries, parse_count)
            .unwrap_or(5),
        initial_backoff: cx
            .duration("storage.retry.initial_backoff", initial_backoff)
            .unwrap_or(Duration::from_millis(100)),
        max_backoff: cx
            .duration("storage.retry.max_backoff", max_backoff)
            .unwrap_or(Duration::from_secs(15)),
        timeout: cx
            .parse("storage.retry.timeout", timeout, |s| {
                positive_duration("timeout", s)
            })
            .unwrap_or(Duration::from_secs(60)),
        idle_timeout: cx
            .parse("storage.retry.idle_timeout", idle_timeout, |s| {
                positive_duration("idle_timeout", s)
            })
            .unwrap_or(Duration::from_secs(60)),
    };
    check_order(
        cx,
        "storage.retry.max_backoff",
        ("max_backoff", retry.max_backoff),
        ("initial_backoff", retry.initial_backoff),
    );
    retry
}
