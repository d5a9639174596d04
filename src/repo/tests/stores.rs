//! Stores built from settings (offline), and the fallbacks for stores without conditional
//! puts or suffix ranges.

use super::*;

#[tokio::test]
async fn opens_every_kind_of_store_without_network() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("a/b/repo");
    let file = storage(&format!("file://{}", root.display()), Codec::Lz4);
    let repo = Repo::open(&file).expect("file");
    assert!(root.is_dir(), "the root is created");
    assert_eq!(repo.codec(), Codec::Lz4);
    assert_eq!(repo.describe(), format!("file://{}", root.display()));
    repo.put_bytes("k", b"v".to_vec(), PutMode::Create)
        .await
        .expect("put");
    assert!(root.join("k.lz4").is_file());

    let mut s3 = storage("s3://bucket-1/pg/main", Codec::Zstd);
    s3.s3 = S3Config {
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("eu-west-3".into()),
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some(Secret::new("s3cr3t-value".into())),
        path_style: true,
        allow_http: true,
        ..S3Config::default()
    };
    let repo = Repo::open(&s3).expect("s3");
    assert_eq!(
        repo.describe(),
        "s3://bucket-1/pg/main (endpoint http://127.0.0.1:9)"
    );
    assert!(!format!("{repo:?}").contains("s3cr3t"));

    let mut az = storage("az://container1/x", Codec::Zstd);
    az.azure = AzureConfig {
        account: Some("devstoreaccount1".into()),
        access_key: Some(Secret::new("a2V5".into())),
        endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
        allow_http: true,
        ..AzureConfig::default()
    };
    assert_eq!(
        Repo::open(&az).expect("azure").describe(),
        "az://container1/x (endpoint http://127.0.0.1:10000/devstoreaccount1)"
    );
    let mut emulator = storage("az://container1", Codec::Zstd);
    emulator.azure.use_emulator = true;
    Repo::open(&emulator).expect("azurite");

    let gs = storage("gs://bucket-2/p", Codec::Zstd);
    assert_eq!(Repo::open(&gs).expect("gcs").describe(), "gs://bucket-2/p");
    let mut bad_key = gs.clone();
    bad_key.gcs.service_account_key = Some(Secret::new("{\"type\": \"service_account\"}".into()));
    match Repo::open(&bad_key) {
        Err(RepoError::Config(msg)) => {
            assert!(
                msg.starts_with("cannot set up storage for gs://bucket-2/p: "),
                "{msg}"
            )
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// An object that appears while a large (multipart) upload is being encoded: the upload
/// stops sending, finishes the checksum, and compares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_racing_a_creator_compares_instead_of_replacing() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = content(8, 9 * MIB, 0);
    let other = content(9, 9 * MIB, 0);
    let src = write_file(scratch.path(), "src", &data);
    let other_src = write_file(scratch.path(), "other", &other);
    for (name, store, _keep) in stores() {
        let repo = Repo::open_with_store(store, "", Codec::None, 3);
        let path = repo.path(SEGMENT, Codec::None).expect("path");
        let cancel = never();
        // Skips put_file_create's own check, as a writer racing it would.
        let upload = |src: &Path| {
            let file = std::fs::File::open(src).expect("open");
            repo.upload(
                SEGMENT,
                path.clone(),
                file,
                src.to_owned(),
                PutMode::Create,
                &cancel,
            )
        };
        let first = upload(&src).await.expect("first upload");
        assert!(matches!(first, PutOutcome::Created { .. }), "{name}");
        assert_eq!(
            upload(&src).await.expect("same content"),
            PutOutcome::AlreadyIdentical {
                checksum: first.checksum()
            }
        );
        match upload(&other_src).await {
            Err(RepoError::Conflict { existing, new, .. }) => {
                assert_eq!(existing, first.checksum());
                assert_eq!(new.0, *blake3::hash(&other).as_bytes());
            }
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        let dest = scratch.path().join("dest");
        repo.get_to_file(SEGMENT, &dest, &never())
            .await
            .expect("get");
        assert!(
            std::fs::read(&dest).expect("read") == data,
            "{name}: replaced"
        );
    }
}

/// A store like S3-compatible servers without conditional puts and like Azure without suffix
/// ranges: InMemory refusing both.
#[derive(Debug)]
struct Limited(InMemory);

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limited")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Limited {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if opts.mode == object_store::PutMode::Create {
            return Err(object_store::Error::NotImplemented {
                operation: "conditional put".into(),
                implementer: "Limited".into(),
            });
        }
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if let Some(GetRange::Suffix(_)) = options.range {
            return Err(object_store::Error::NotSupported {
                source: "no suffix ranges".into(),
            });
        }
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn stores_without_conditional_put_or_suffix_ranges_still_work() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let a = write_file(scratch.path(), "a", &content(10, 10_000, 10_000));
    let b = write_file(scratch.path(), "b", &content(11, 10_000, 10_000));
    let repo = Repo::open_with_store(Arc::new(Limited(InMemory::new())), "", Codec::Zstd, 3);
    let first = repo
        .put_file_create(SEGMENT, &a, &never())
        .await
        .expect("put");
    assert!(matches!(first, PutOutcome::Created { .. }));
    assert!(repo.inner.no_conditional_put.load(Ordering::Relaxed));
    assert_eq!(
        repo.exists(SEGMENT).await.expect("exists"),
        Some(first.checksum())
    );
    assert!(repo.inner.no_suffix_range.load(Ordering::Relaxed));
    assert!(matches!(
        repo.put_file_create(SEGMENT, &a, &never()).await,
        Ok(PutOutcome::AlreadyIdentical { .. })
    ));
    assert!(matches!(
        repo.put_file_create(SEGMENT, &b, &never()).await,
        Err(RepoError::Conflict { .. })
    ));
    let meta = RepoMeta::new(16, 5);
    assert_eq!(repo.ensure_meta(&meta).await.expect("meta"), meta);
    assert_eq!(repo.ensure_meta(&meta).await.expect("again"), meta);
    assert!(matches!(
        repo.put_plain(REPO_META, b"{}".to_vec(), PutMode::Create)
            .await,
        Err(RepoError::Conflict { .. })
    ));
    assert_eq!(repo.read_meta().await.expect("read"), Some(meta));
    let dest = scratch.path().join("dest");
    assert!(repo
        .get_to_file(SEGMENT, &dest, &never())
        .await
        .expect("get"));
    assert_eq!(
        std::fs::read(&dest).expect("read"),
        std::fs::read(&a).expect("a")
    );
}

/// A server that answers every request `503 SlowDown` with S3's XML body, counting them.
struct SlowDownServer {
    endpoint: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowDownServer {
    async fn start() -> SlowDownServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    // One request per connection: its head, then its body, then the answer.
                    let mut got = Vec::new();
                    let mut buf = [0u8; 8192];
                    let head_end = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() < head_end + body_len {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown\
                                </Code><Message>Please reduce your request rate.</Message></Error>";
                    let answer = format!(
                        "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        SlowDownServer { endpoint, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An S3 repository at `endpoint`, with `max_retries` and short backoffs.
fn s3_at(endpoint: &str, max_retries: u32) -> StorageConfig {
    let mut cfg = storage("s3://bucket/p", Codec::Zstd);
    cfg.s3 = S3Config {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some(Secret::new("secret".into())),
        path_style: true,
        allow_http: true,
        ..S3Config::default()
    };
    cfg.retry.max_retries = max_retries;
    cfg.retry.initial_backoff = std::time::Duration::from_millis(1);
    cfg.retry.max_backoff = std::time::Duration::from_millis(5);
    cfg
}

#[tokio::test]
async fn under_persistent_slowdown_a_request_is_attempted_max_retries_plus_one_times_in_all() {
    let server = SlowDownServer::start().await;
    let cfg = s3_at(&server.endpoint, 3);
    let repo = Repo::open(&cfg).expect("s3");
    let policy = RetryPolicy::from_config(&cfg.retry);
    let cancel = CancellationToken::new();
    let attempts = cfg.retry.max_retries as usize + 1;

    // An upload retried as an operation by its caller: the client's retries only.
    let before = server.requests();
    let err = retry(&policy, &cancel, "put k", || {
        repo.put_bytes("k", b"v".to_vec(), PutMode::Create)
    })
    .await
    .expect_err("the server never accepts");
    assert!(err.retried_by_client(), "{}", super::error::Chain(&err));
    assert!(!err.is_permanent());
    let text = super::error::Chain(&err).to_string();
    assert!(text.contains("SlowDown"), "{text}");
    // Each request attempted `attempts` times, none of them again by the operation: the
    // conditional put, and the looks that follow a failed one (the object's trailer, then
    // its size) — at most three requests.
    let made = server.requests() - before;
    assert_eq!(made % attempts, 0, "{made} requests: {text}");
    assert!(made <= 3 * attempts, "{made} requests: {text}");

    // A download and a listing, which the repository retries as operations itself.
    let before = server.requests();
    repo.get_bytes("k").await.expect_err("503");
    assert_eq!(server.requests() - before, attempts);
    let before = server.requests();
    repo.list("wal/").await.expect_err("503");
    assert_eq!(server.requests() - before, attempts);
}

#[tokio::test]
async fn a_refused_connection_is_retried_by_the_client_alone() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = s3_at(&format!("http://127.0.0.1:{port}"), 2);
    let repo = Repo::open(&cfg).expect("s3");
    let err = repo.get_bytes("k").await.expect_err("nobody listens");
    assert!(err.retried_by_client(), "{}", super::error::Chain(&err));
    // Errors of a store without an HTTP client are the repository's to retry.
    let local = RepoError::storage(
        "k",
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: "Error performing something".into(),
        },
    );
    assert!(!local.retried_by_client());
}

#[tokio::test]
async fn a_repository_on_any_store_counts_its_requests() {
    use counted::{RequestOp as Op, RequestResult as Res};
    let count = |op: Op, result: Res| {
        counted::snapshot()
            .into_iter()
            .find(|c| c.op == op && c.result == result)
            .map_or(0, |c| c.count)
    };
    let (puts, lists) = (count(Op::Put, Res::Ok), count(Op::List, Res::Ok));
    let repo = Repo::open_with_store(Arc::new(InMemory::new()), "p", Codec::Zstd, 3);
    repo.put_bytes("k", b"v".to_vec(), PutMode::Overwrite)
        .await
        .expect("put");
    repo.list("").await.expect("list");
    // Other tests of this process may count too: at least these.
    assert!(count(Op::Put, Res::Ok) > puts);
    assert!(count(Op::List, Res::Ok) > lists);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = storage(&format!("file://{}", dir.path().display()), Codec::Zstd);
    let puts = count(Op::Put, Res::Ok);
    let repo = Repo::open(&file).expect("file");
    repo.put_bytes("k", b"v".to_vec(), PutMode::Overwrite)
        .await
        .expect("put");
    assert!(count(Op::Put, Res::Ok) > puts);
}
