//! Basic auth (RFC 7617) in front of every path, known or not: the expected credentials kept
//! only as hashes, and the middleware that answers 401 with the challenge. Which paths exist is
//! `endpoints`'.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tracing::debug;

use super::connection::Peer;

/// The realm of the basic-auth challenge.
const REALM: &str = "Basic realm=\"pgward\"";

/// The expected basic-auth credentials, kept only as hashes: the clear password is not held
/// by the server, and comparing fixed-size digests takes the same time whatever the length or
/// content of what a client sends.
pub(super) struct Credentials {
    username: blake3::Hash,
    password: blake3::Hash,
}

impl Credentials {
    pub(super) fn new(username: &[u8], password: &[u8]) -> Credentials {
        Credentials {
            username: blake3::hash(username),
            password: blake3::hash(password),
        }
    }

    /// Whether the `Authorization` header carries these credentials (RFC 7617).
    pub(super) fn admit(&self, headers: &HeaderMap) -> bool {
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

pub(super) async fn basic_auth(
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
