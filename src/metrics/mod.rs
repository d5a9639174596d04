//! The exporter: Prometheus metrics of postgres (postgres_exporter's names) and of pgward
//! itself, and the HTTP endpoints that serve them with the probes (`/metrics`, `/healthz`,
//! `/readyz`, `/status`).

pub mod postgres;
pub mod text;
