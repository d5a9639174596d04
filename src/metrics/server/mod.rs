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
//!
//! Layout: this file binds ([`Server::bind`]) and holds what the daemon implements
//! ([`Source`], [`Readiness`]); `connection` is the accept loop and each connection's HTTP
//! (deadlines, graceful close); `endpoints` routes and answers the paths; `auth` checks basic
//! auth; `tls` reads the certificate and key.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsConfig;
use auth::Credentials;

mod auth;
mod connection;
mod endpoints;
mod tls;

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
    /// The JSON of `pgward status`, without what only the control socket's clients may see
    /// (the jobs' output). Whatever the endpoint serves, it scrubs of secrets again.
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
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
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
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::AddrInUse => Some(
            "another process listens there (a postgres_exporter, on the same default port?); \
             set metrics.listen to another port"
                .to_owned(),
        ),
        // Ports below 1024 need root or CAP_NET_BIND_SERVICE.
        ErrorKind::PermissionDenied => Some(
            "set metrics.listen to a port above 1023, or give pgward the CAP_NET_BIND_SERVICE \
             capability"
                .to_owned(),
        ),
        ErrorKind::AddrNotAvailable => Some(format!(
            "this host has no such address: set metrics.listen to one of its own, or to \
             0.0.0.0:{} for all of them",
            addr.port()
        )),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow!("bind metrics.listen {addr}: {e}\nHINT: {hint}"),
        None => anyhow!("bind metrics.listen {addr}: {e}"),
    }
}

#[cfg(test)]
mod tests;
