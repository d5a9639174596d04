//! The endpoints served to a real HTTP client from a fake [`Source`]: answers, basic auth,
//! TLS, deadlines, and clients that stall.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine as _;
use tokio::net::TcpStream;

use super::auth::Credentials;
use super::*;
use crate::config::{Secret, TlsConfig};

const BODY: &str = "# HELP pgward_up 1 while pgward runs.\n# TYPE pgward_up gauge\npgward_up 1\n";

/// A source with fixed answers; with `hang_first`, the first `metrics()` never returns.
struct Fake {
    health: Result<(), String>,
    readiness: Readiness,
    hang_first: bool,
    scrapes: AtomicUsize,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            health: Ok(()),
            readiness: Readiness::Ready,
            hang_first: false,
            scrapes: AtomicUsize::new(0),
        }
    }
}

impl Source for Fake {
    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            if self.scrapes.fetch_add(1, Ordering::SeqCst) == 0 && self.hang_first {
                std::future::pending::<()>().await;
            }
            BODY.to_owned()
        })
    }
    fn healthy(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.health.clone() })
    }
    fn ready(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move { self.readiness.clone() })
    }
    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move { serde_json::json!({"postgres": {"state": "running"}}) })
    }
}

/// The built-in defaults, on a free port of loopback.
fn config() -> MetricsConfig {
    let mut metrics = crate::config::load(None, &|_| None)
        .expect("the built-in defaults are valid")
        .metrics;
    metrics.listen = "127.0.0.1:0".parse().expect("a socket address");
    metrics
}

/// A running server; cancelled, and checked to stop promptly, when dropped.
struct Running {
    addr: SocketAddr,
    source: Arc<Fake>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Running {
    async fn start(config: &MetricsConfig, source: Fake) -> Running {
        Running::start_bound(Server::bind(config).await.expect("bind"), source)
    }

    fn start_bound(server: Server, source: Fake) -> Running {
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let source = Arc::new(source);
        let task = tokio::spawn(server.serve(source.clone(), cancel.clone()));
        Running {
            addr,
            source,
            cancel,
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10s of cancellation")
            .expect("the server task does not panic")
            .expect("serve returns Ok");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

async fn get(url: &str) -> (StatusCode, Option<String>, String) {
    let response = client().get(url).send().await.expect(url);
    answer(response).await
}

async fn answer(response: reqwest::Response) -> (StatusCode, Option<String>, String) {
    let status = StatusCode::from_u16(response.status().as_u16()).expect("a status code");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().expect("an ASCII content type").to_owned());
    (status, content_type, response.text().await.expect("a body"))
}

#[tokio::test]
async fn every_endpoint_answers() {
    let server = Running::start(&config(), Fake::new()).await;

    let (status, content_type, body) = get(&server.url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(body, BODY);

    let (status, _, body) = get(&server.url("/healthz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, body) = get(&server.url("/readyz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));

    let (status, content_type, body) = get(&server.url("/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json, serde_json::json!({"postgres": {"state": "running"}}));

    let (status, _, body) = get(&server.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("/metrics"), "{body}");
    assert_eq!(get(&server.url("/nope")).await.0, StatusCode::NOT_FOUND);
    let post = client()
        .post(server.url("/metrics"))
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status().as_u16(), 405);
    let head = client()
        .head(server.url("/metrics"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status().as_u16(), 200);

    server.stop().await;
}

#[tokio::test]
async fn stalled_clients_do_not_hold_up_others() {
    use tokio::io::AsyncWriteExt as _;

    let server = Running::start(&config(), Fake::new()).await;
    let silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut halfway = TcpStream::connect(server.addr).await.expect("connect");
    halfway
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write half a request");
    let started = Instant::now();
    let (status, _, body) = get(&server.url("/metrics")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, BODY));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Else shutdown would give the half-received request its grace period.
    drop((silent, halfway));
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness_failures_are_503_with_the_reason() {
    let source = Fake {
        health: Err("postgres failed for good after 5 restarts".to_owned()),
        readiness: Readiness::NotReady("postgres is starting".to_owned()),
        ..Fake::new()
    };
    let server = Running::start(&config(), source).await;
    let (status, _, body) = get(&server.url("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "postgres failed for good after 5 restarts\n");
    let (status, _, body) = get(&server.url("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "postgres is starting\n");
    server.stop().await;
}

#[tokio::test]
async fn a_recovering_server_is_ready_only_with_ready_in_recovery() {
    let recovering = || Fake {
        readiness: Readiness::InRecovery,
        ..Fake::new()
    };
    let server = Running::start(&config(), recovering()).await;
    let (status, _, body) = get(&server.url("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "postgres is in recovery (metrics.ready_in_recovery is false)\n"
    );
    server.stop().await;

    let config = MetricsConfig {
        ready_in_recovery: true,
        ..config()
    };
    let server = Running::start(&config, recovering()).await;
    let (status, _, body) = get(&server.url("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "ready (in recovery)\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn basic_auth_guards_every_endpoint() {
    let config = MetricsConfig {
        username: Some("prometheus".to_owned()),
        password: Some(Secret::new("s3cret:with colon".to_owned())),
        ..config()
    };
    let server = Running::start(&config, Fake::new()).await;
    let client = client();
    for (path, expected) in [
        ("/metrics", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/status", 200),
        ("/", 200),
        ("/nope", 404),
    ] {
        let url = server.url(path);
        for (user, password) in [
            (None, None),
            (Some("prometheus"), Some("wrong")),
            (Some("prometheus"), Some("s3cret")),
            (Some("other"), Some("s3cret:with colon")),
            (Some("prometheus"), None),
        ] {
            let mut request = client.get(&url);
            if let Some(user) = user {
                request = request.basic_auth(user, password);
            }
            let response = request.send().await.expect(&url);
            assert_eq!(
                response.status().as_u16(),
                401,
                "{path} as {user:?}/{password:?}"
            );
            assert_eq!(
                response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Basic realm=\"pgward\""[..]),
            );
            let body = response.text().await.expect("a body");
            assert_eq!(body, "unauthorized\n");
        }
        let response = client
            .get(&url)
            .basic_auth("prometheus", Some("s3cret:with colon"))
            .send()
            .await
            .expect(&url);
        assert_eq!(
            response.status().as_u16(),
            expected,
            "{path} with the credentials"
        );
    }
    server.stop().await;
}

#[test]
fn credentials_parse_the_authorization_header() {
    let credentials = Credentials::new(b"prom", b"pa:ss");
    let admit = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(value).expect("a header"),
        );
        credentials.admit(&headers)
    };
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(admit(&format!("Basic {}", encode("prom:pa:ss"))));
    assert!(admit(&format!("basic  {} ", encode("prom:pa:ss"))));
    assert!(!admit(&format!("Bearer {}", encode("prom:pa:ss"))));
    assert!(!admit(&format!("Basic {}", encode("prom:pa"))));
    assert!(!admit(&format!("Basic {}", encode("prompa:ss"))));
    assert!(!admit(&format!("Basic {}", encode("prom"))));
    assert!(!admit("Basic not*base64"));
    assert!(!admit("Basic"));
    assert!(!credentials.admit(&HeaderMap::new()));
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn self_signed(dir: &Path) -> (String, TlsConfig) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    let cert = generated.cert.pem();
    let tls = TlsConfig {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    std::fs::write(&tls.cert_file, &cert).expect("write cert.pem");
    std::fs::write(&tls.key_file, generated.signing_key.serialize_pem()).expect("write key.pem");
    (cert, tls)
}

#[tokio::test]
async fn tls_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert, tls) = self_signed(dir.path());
    let config = MetricsConfig {
        tls: Some(tls),
        username: Some("prometheus".to_owned()),
        password: Some(Secret::new("pw".to_owned())),
        ..config()
    };
    let server = Running::start(&config, Fake::new()).await;
    // A client that never starts its handshake holds up no one.
    let _silent = TcpStream::connect(server.addr).await.expect("connect");
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).expect("PEM")])
        .build()
        .expect("an HTTPS client");
    let url = format!("https://{}/metrics", server.addr);
    let response = trusting
        .get(&url)
        .basic_auth("prometheus", Some("pw"))
        .send()
        .await
        .expect(&url);
    let (status, content_type, body) = answer(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some(METRICS_CONTENT_TYPE));
    assert_eq!(body, BODY);
    let response = trusting.get(&url).send().await.expect(&url);
    assert_eq!(response.status().as_u16(), 401);

    // Plain HTTP to the TLS port gets no answer, and a client that does not trust the
    // certificate refuses it; neither disturbs the server.
    assert!(client().get(server.url("/metrics")).send().await.is_err());
    assert!(client().get(&url).send().await.is_err());
    let response = trusting
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .basic_auth("prometheus", Some("pw"))
        .send()
        .await;
    // localhost may resolve to ::1 first, where nothing listens; 127.0.0.1 must answer.
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_tls_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_, good) = self_signed(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let other_dir = tempfile::tempdir().expect("a temp dir");
    let (_, other) = self_signed(other_dir.path());

    let error = |cert_file: &Path, key_file: &Path| {
        let config = MetricsConfig {
            tls: Some(TlsConfig {
                cert_file: cert_file.to_owned(),
                key_file: key_file.to_owned(),
            }),
            ..config()
        };
        async move {
            format!(
                "{:#}",
                Server::bind(&config).await.expect_err("a bad TLS file")
            )
        }
    };
    let d = |p: &Path| p.display().to_string();

    let e = error(&missing, &good.key_file).await;
    assert!(
        e.starts_with(&format!(
            "read the certificates from metrics.tls.cert_file {}: ",
            d(&missing)
        )),
        "{e}"
    );
    assert!(e.contains("No such file"), "{e}");
    let e = error(&garbage, &good.key_file).await;
    assert_eq!(
        e,
        format!(
            "read the certificates from metrics.tls.cert_file {}: no PEM certificate in it",
            d(&garbage)
        )
    );
    let e = error(&good.cert_file, &garbage).await;
    assert_eq!(
        e,
        format!(
            "read the private key from metrics.tls.key_file {}: no PEM private key in it",
            d(&garbage)
        )
    );
    // A certificate file given as the key: no private key in it.
    let e = error(&good.cert_file, &good.cert_file).await;
    assert!(
        e.starts_with(&format!(
            "read the private key from metrics.tls.key_file {}",
            d(&good.cert_file)
        )),
        "{e}"
    );
    let e = error(&good.cert_file, &missing).await;
    assert!(
        e.starts_with(&format!(
            "read the private key from metrics.tls.key_file {}: ",
            d(&missing)
        )),
        "{e}"
    );
    // A key that belongs to another certificate.
    let e = error(&good.cert_file, &other.key_file).await;
    assert_eq!(e, format!("use metrics.tls.cert_file {} with metrics.tls.key_file {}: the private key is not the certificate's (the first in the file)", d(&good.cert_file), d(&other.key_file)));
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("an address");
    let config = MetricsConfig {
        listen: addr,
        ..config()
    };
    let e = format!(
        "{:#}",
        Server::bind(&config).await.expect_err("the port is taken")
    );
    assert!(
        e.starts_with(&format!("bind metrics.listen {addr}: ")),
        "{e}"
    );
    assert!(e.contains("\nHINT: "), "{e}");
}

#[tokio::test]
async fn a_hanging_source_gets_503_after_the_deadline_and_others_are_served() {
    let mut server = Server::bind(&config()).await.expect("bind");
    server.deadline = Duration::from_secs(1);
    let source = Fake {
        hang_first: true,
        ..Fake::new()
    };
    let server = Running::start_bound(server, source);
    let started = Instant::now();
    let url = server.url("/metrics");
    let hanging = tokio::spawn(async move { get(&url).await });

    // Once the first scrape reached the source (and hangs there), scrape again: answered
    // while the first still waits.
    while server.source.scrapes.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _, body) = get(&server.url("/metrics")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, BODY));
    assert!(
        !hanging.is_finished(),
        "the first scrape ended before the second"
    );

    let (status, _, body) = hanging.await.expect("the first scrape");
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no answer within 1s\n");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    server.stop().await;
}
