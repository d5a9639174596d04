//! `pgward health [--ready]`: the daemon's `/healthz` or `/readyz`, as a liveness or readiness
//! probe asks it: the image's HEALTHCHECK, without curl.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{Config, MetricsConfig};

/// How long `pgward health` waits for the daemon's answer: below a HEALTHCHECK's or a probe's
/// usual timeout (5 s), so the failure it reports is its own, with the reason.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(4);

/// GET `/healthz` or `/readyz` of the local daemon; prints the answer, exit 0 on 200 and 1 on
/// anything else.
pub async fn health(config: &Config, ready: bool) -> Result<i32> {
    let metrics = &config.metrics;
    if !metrics.enabled {
        bail!("metrics.enabled is false: the daemon serves no /healthz or /readyz\nHINT: enable metrics, or probe postgres with pg_isready");
    }
    let url = health_url(metrics, ready);
    let mut builder = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if metrics.tls.is_some() {
        // The daemon's own endpoint on loopback: its certificate names the host clients use,
        // not 127.0.0.1, and the probe asks nothing secret of it.
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder.build().context("build an HTTP client")?;
    let mut request = client.get(&url);
    if let (Some(user), Some(password)) = (&metrics.username, &metrics.password) {
        request = request.basic_auth(user, Some(password.expose()));
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            println!("{url}: no answer: {e}");
            return Ok(1);
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{url}: {} {}", status.as_u16(), body.trim());
    Ok(if status == reqwest::StatusCode::OK {
        0
    } else {
        1
    })
}

/// The URL of `/healthz` or `/readyz` on `metrics.listen`, with an unspecified address
/// (`0.0.0.0`, `::`) asked on loopback.
fn health_url(metrics: &MetricsConfig, ready: bool) -> String {
    let mut addr = metrics.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if metrics.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = if ready { "readyz" } else { "healthz" };
    format!("{scheme}://{addr}/{path}")
}
