//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, `/readyz` and `/status`,
//! with optional basic auth and TLS (`metrics:` in the config).
//!
//! Owns the listener, TLS, authentication and each request's deadline. It knows nothing of
//! postgres, the supervisor or the repository: what it serves comes from a [`Source`] that the
//! daemon implements, so this module is tested with a fake one.
//!
//! Every connection is its own task, so a slow or stalled client holds only its own connection.
//! Memory is bounded by [`MAX_CONNECTIONS`] open connections; a TLS handshake must finish
//! within [`HANDSHAKE_TIMEOUT`] and a request's headers arrive within [`HEADER_READ_TIMEOUT`]
//! (which also closes idle keep-alive connections), and each answer is bounded by the scrape
//! deadline (`metrics.scrape_timeout` + [`DEADLINE_GRACE`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use futures_util::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{MetricsConfig, TlsConfig};

/// What the server adds to `metrics.scrape_timeout` before it gives up on the [`Source`] and
/// answers 503: the source is expected to honour the scrape timeout itself (answering with
/// what it has), so this outer deadline only catches a source that hangs.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// Open connections at most; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this; an idle keep-alive connection is closed after
/// it. Above Prometheus's default 15 s scrape interval, so its connection is reused.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// On cancellation, requests in flight get this long to finish before their connections close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The content type of Prometheus's text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The realm of the basic-auth challenge.
const REALM: &str = "Basic realm=\"pgward\"";

/// What the endpoints serve; implemented by the daemon.
///
/// The server may drop any of these futures before they finish (the client went away, or the
/// scrape deadline passed), so they must be cancel-safe: no half-done state left behind.
pub trait Source: Send + Sync + 'static {
    /// The Prometheus text body of one scrape. Should return within `metrics.scrape_timeout`,
    /// with whatever it has by then; the server waits [`DEADLINE_GRACE`] longer and then
    /// answers 503.
    fn metrics(&self) -> BoxFuture<'_, String>;
    /// `Ok` while pgward's loop is alive and postgres is supervised (not failed for good);
    /// otherwise why not, for the 503 body.
    fn healthy(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Whether postgres accepts connections and is not crash-looping.
    fn ready(&self) -> BoxFuture<'_, Readiness>;
    /// The JSON of `pgward status`.
    fn status(&self) -> BoxFuture<'_, serde_json::Value>;
}

/// The answer behind `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// postgres accepts connections as a primary.
    Ready,
    /// postgres accepts connections while in recovery (a standby, or a restore replaying WAL);
    /// ready only with `metrics.ready_in_recovery`.
    InRecovery,
    /// Not ready, and why (starting, stopped, crash-looping, ...).
    NotReady(String),
}

/// The endpoints, bound and ready to serve.
///
/// Binding is a step of its own so the daemon fails at start, before anything else runs, when
/// the port is taken or a TLS file is bad.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    credentials: Option<Arc<Credentials>>,
    /// How long a request waits for the source: `scrape_timeout` + [`DEADLINE_GRACE`].
    deadline: Duration,
    ready_in_recovery: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.credentials.is_some())
            .field("deadline", &self.deadline)
            .field("ready_in_recovery", &self.ready_in_recovery)
            .finish()
    }
}

/// Binds `metrics.listen` and serves until `cancel`: [`Server::bind`] then [`Server::serve`].
pub async fn serve(
    config: &MetricsConfig,
    source: Arc<dyn Source>,
    cancel: CancellationToken,
) -> Result<()> {
    Server::bind(config).await?.serve(source, cancel).await
}

impl Server {
    /// Reads the TLS certificate and key (if any) and binds `metrics.listen`. An error names
    /// the file or the address at fault.
    pub async fn bind(config: &MetricsConfig) -> Result<Server> {
        let credentials = match (&config.username, &config.password) {
            (Some(username), Some(password)) => Some(Arc::new(Credentials::new(
                username.as_bytes(),
                password.expose().as_bytes(),
            ))),
            (None, None) => None,
            // Config validation refuses these; a hand-built config must not serve unprotected.
            (Some(_), None) => bail!("metrics.username needs metrics.password"),
            (None, Some(_)) => bail!("metrics.password needs metrics.username"),
        };
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| bind_error(config.listen, e))?;
        let local_addr = listener.local_addr().with_context(|| {
            format!(
                "read the address bound for metrics.listen {}",
                config.listen
            )
        })?;
        Ok(Server {
            listener,
            local_addr,
            tls,
            credentials,
            deadline: config.scrape_timeout + DEADLINE_GRACE,
            ready_in_recovery: config.ready_in_recovery,
        })
    }

    /// The address bound (with the port the OS chose when `metrics.listen` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel`, then stops accepting, lets requests in flight finish for a few
    /// seconds and returns `Ok`; it does not return before `cancel`. Errors of one connection
    /// are logged at debug level and end only that connection.
    pub async fn serve(self, source: Arc<dyn Source>, cancel: CancellationToken) -> Result<()> {
        let Server {
            listener,
            local_addr,
            tls,
            credentials,
            deadline,
            ready_in_recovery,
        } = self;
        info!(
            address = %local_addr,
            tls = tls.is_some(),
            basic_auth = credentials.is_some(),
            "serving /metrics, /healthz, /readyz and /status"
        );
        let router = router(Endpoints {
            source,
            deadline,
            ready_in_recovery,
            credentials,
        });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let connections = TaskTracker::new();
        loop {
            let slot = tokio::select! {
                _ = cancel.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // not fatal, but do not spin.
                    warn!("failed to accept a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let router = router.clone().layer(Extension(Peer(peer)));
            let (tls, cancel) = (tls.clone(), cancel.clone());
            connections.spawn(async move {
                connection(stream, peer, tls, router, cancel).await;
                drop(slot);
            });
        }
        drop(listener);
        connections.close();
        connections.wait().await;
        info!(address = %local_addr, "metrics endpoints stopped");
        Ok(())
    }
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow!(
            "bind metrics.listen {addr}: {e}\nHINT: another process listens there (a \
             postgres_exporter, on the same default port?); set metrics.listen to another port"
        )
    } else {
        anyhow!("bind metrics.listen {addr}: {e}")
    }
}

/// Reads the PEM certificate chain and private key into a TLS acceptor (HTTP/1.1 only).
fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let certs = read_certificates(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        anyhow!(
            "read the private key from metrics.tls.key_file {}: {}",
            tls.key_file.display(),
            pem_error(e, "private key")
        )
    })?;
    // The provider the rest of the binary uses (reqwest, object_store), named explicitly:
    // the process-wide default is ambiguous when more than one is compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("set up TLS for the metrics endpoints")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let e = match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the private key is not the certificate's (the first in the file)".to_owned()
                }
                e => e.to_string(),
            };
            anyhow!(
                "use metrics.tls.cert_file {} with metrics.tls.key_file {}: {e}",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let what = || {
        format!(
            "read the certificates from metrics.tls.cert_file {}",
            path.display()
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{}: {}", what(), pem_error(e, "certificate")))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate in it", what());
    }
    Ok(certs)
}

/// pki-types says "no items found" when a file holds no PEM section of the wanted kind.
fn pem_error(e: rustls::pki_types::pem::Error, kind: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {kind} in it"),
        e => e.to_string(),
    }
}

/// Serves one accepted connection to its end (or until shutdown).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    cancel: CancellationToken,
) {
    // Answers are one write each; do not let Nagle hold the last segment back.
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return http(TokioIo::new(stream), peer, router, cancel).await;
    };
    let handshake = tokio::select! {
        _ = cancel.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => http(TokioIo::new(stream), peer, router, cancel).await,
        Ok(Err(e)) => debug!(%peer, "metrics TLS handshake failed: {e}"),
        Err(_) => {
            debug!(%peer, "metrics TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}")
        }
    }
}

/// HTTP/1.1 on one connection; on `cancel` an idle connection closes at once, one with a
/// request in flight (or half-received) finishes it and closes, or is dropped after
/// [`SHUTDOWN_GRACE`].
async fn http<I>(io: I, peer: SocketAddr, router: Router, cancel: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, "metrics connection ended: {e}");
    }
}

/// The client's address, for log lines.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The handlers' state.
#[derive(Clone)]
struct Endpoints {
    source: Arc<dyn Source>,
    deadline: Duration,
    ready_in_recovery: bool,
    credentials: Option<Arc<Credentials>>,
}

fn router(endpoints: Endpoints) -> Router {
    let credentials = endpoints.credentials.clone();
    let router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(endpoints);
    // `layer`, not `route_layer`: unknown paths need credentials too, so that nothing about
    // the server shows without them.
    match credentials {
        Some(credentials) => router.layer(middleware::from_fn_with_state(credentials, basic_auth)),
        None => router,
    }
}

async fn index() -> &'static str {
    "pgward: /metrics /healthz /readyz /status\n"
}

async fn metrics(State(endpoints): State<Endpoints>, peer: Extension<Peer>) -> Response {
    match endpoints
        .ask("/metrics", peer, endpoints.source.metrics())
        .await
    {
        Ok(body) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(response) => response,
    }
}

async fn healthz(State(endpoints): State<Endpoints>, peer: Extension<Peer>) -> Response {
    match endpoints
        .ask("/healthz", peer, endpoints.source.healthy())
        .await
    {
        Ok(Ok(())) => "ok\n".into_response(),
        Ok(Err(reason)) => unavailable(reason),
        Err(response) => response,
    }
}

async fn readyz(State(endpoints): State<Endpoints>, peer: Extension<Peer>) -> Response {
    match endpoints
        .ask("/readyz", peer, endpoints.source.ready())
        .await
    {
        Ok(Readiness::Ready) => "ready\n".into_response(),
        Ok(Readiness::InRecovery) if endpoints.ready_in_recovery => {
            "ready (in recovery)\n".into_response()
        }
        Ok(Readiness::InRecovery) => {
            unavailable("postgres is in recovery (metrics.ready_in_recovery is false)".to_owned())
        }
        Ok(Readiness::NotReady(reason)) => unavailable(reason),
        Err(response) => response,
    }
}

async fn status(State(endpoints): State<Endpoints>, peer: Extension<Peer>) -> Response {
    match endpoints
        .ask("/status", peer, endpoints.source.status())
        .await
    {
        Ok(status) => {
            let mut body =
                serde_json::to_vec_pretty(&status).expect("a serde_json::Value always serializes");
            body.push(b'\n');
            ([(CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(response) => response,
    }
}

impl Endpoints {
    /// Waits for the source at most [`Self::deadline`]; past it, the 503 to answer.
    async fn ask<T>(
        &self,
        endpoint: &str,
        Extension(Peer(peer)): Extension<Peer>,
        answer: BoxFuture<'_, T>,
    ) -> Result<T, Response> {
        tokio::time::timeout(self.deadline, answer)
            .await
            .map_err(|_| {
                warn!(%peer, "{endpoint} got no answer from pgward within {:?}", self.deadline);
                unavailable(format!("no answer within {:?}", self.deadline))
            })
    }
}

/// 503 with the reason as a line of text.
fn unavailable(mut reason: String) -> Response {
    reason.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

/// The expected basic-auth credentials, kept only as hashes: the clear password is not held
/// by the server, and comparing fixed-size digests takes the same time whatever the length or
/// content of what a client sends.
struct Credentials {
    username: blake3::Hash,
    password: blake3::Hash,
}

impl Credentials {
    fn new(username: &[u8], password: &[u8]) -> Credentials {
        Credentials {
            username: blake3::hash(username),
            password: blake3::hash(password),
        }
    }

    /// Whether the `Authorization` header carries these credentials (RFC 7617).
    fn admit(&self, headers: &HeaderMap) -> bool {
        let Some((scheme, encoded)) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
        else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let (username, password) = (&decoded[..colon], &decoded[colon + 1..]);
        // `blake3::Hash`'s `==` is constant-time; `&` rather than `&&` so that a right username
        // takes no longer to refuse than a wrong one.
        (blake3::hash(username) == self.username) & (blake3::hash(password) == self.password)
    }
}

async fn basic_auth(
    State(credentials): State<Arc<Credentials>>,
    request: Request,
    next: Next,
) -> Response {
    if credentials.admit(request.headers()) {
        return next.run(request).await;
    }
    if let Some(Peer(peer)) = request.extensions().get::<Peer>() {
        debug!(%peer, path = request.uri().path(), "metrics request without valid credentials");
    }
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::config::Secret;

    const BODY: &str =
        "# HELP pgward_up 1 while pgward runs.\n# TYPE pgward_up gauge\npgward_up 1\n";

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

    fn config() -> MetricsConfig {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            username: None,
            password: None,
            tls: None,
            ready_in_recovery: false,
            queries_file: None,
            scrape_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
        }
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
        let generated = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("a self-signed certificate");
        let cert = generated.cert.pem();
        let tls = TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        std::fs::write(&tls.cert_file, &cert).expect("write cert.pem");
        std::fs::write(&tls.key_file, generated.signing_key.serialize_pem())
            .expect("write key.pem");
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
}
