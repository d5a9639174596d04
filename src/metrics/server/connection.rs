//! The connection loop: accepting up to [`MAX_CONNECTIONS`], each connection its own task
//! with its TLS handshake deadline, HTTP/1.1 with the header read timeout, and the graceful
//! close on shutdown. What a request gets is `endpoints`'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::endpoints::{router, Endpoints};
use super::{
    Server, Source, HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE,
};

impl Server {
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
pub(super) struct Peer(pub(super) SocketAddr);
