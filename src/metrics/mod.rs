//! The exporter: Prometheus metrics of postgres (postgres_exporter's names) and of pgward
//! itself, and the HTTP endpoints that serve them with the probes (`/metrics`, `/healthz`,
//! `/readyz`, `/status`).
//!
//! - [`text`]: the Prometheus text format, for the families collected at a scrape.
//! - [`postgres`]: postgres_exporter's families, from one held session, single-flight.
//! - [`pgward`]: pgward's own metrics (`pgward_*`), through the `metrics` facade.
//! - [`server`]: the HTTP endpoints, with basic auth and TLS.

pub mod pgward;
pub mod postgres;
pub mod server;
pub mod text;
