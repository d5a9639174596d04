//! The paths and their answers: `/metrics`, `/healthz`, `/readyz`, `/status` and the index,
//! each waiting for the [`Source`] at most the scrape deadline, behind basic auth when
//! configured (every path, `/status` included). Texts that may quote an error (`/status`, a
//! 503's reason) are scrubbed of what looks like a secret ([`crate::redact`]). Connections
//! are `connection`'s.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::future::BoxFuture;
use tracing::warn;

use super::auth::{basic_auth, Credentials};
use super::connection::Peer;
use super::{Readiness, Source, METRICS_CONTENT_TYPE};

/// The handlers' state.
#[derive(Clone)]
pub(super) struct Endpoints {
    pub(super) source: Arc<dyn Source>,
    pub(super) deadline: Duration,
    pub(super) ready_in_recovery: bool,
    pub(super) credentials: Option<Arc<Credentials>>,
}

pub(super) fn router(endpoints: Endpoints) -> Router {
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
        Ok(mut status) => {
            crate::redact::scrub_json(&mut status);
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
                let deadline = humantime::format_duration(self.deadline);
                warn!(%peer, "{endpoint} got no answer from pgward within {deadline}");
                unavailable(format!("no answer within {deadline}"))
            })
    }
}

/// 503 with the reason as a line of text (scrubbed: it may quote an error).
fn unavailable(reason: String) -> Response {
    let mut reason = crate::redact::scrub(&reason).into_owned();
    reason.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}
