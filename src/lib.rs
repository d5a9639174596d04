//! pgward: PID 1 of a PostgreSQL container.
//!
//! # Layout
//! - [`config`]: one YAML file → validated typed config (interpolation, secrets, `file:line:col`
//!   errors, redaction).
//! - `main.rs` stays thin: CLI → logging → config → runtime → `app::run` → exit code.
pub mod config;
