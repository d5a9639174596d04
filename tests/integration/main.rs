//! Integration tests: the built `pgward` binary with a real PostgreSQL server.
//!
//! One test binary (compile time); modules by subject. Each test gets its own temp dir and
//! free port, so they run in parallel.

mod common;

mod config_cli;
mod pid1;
mod postgres_run;
mod services;
mod storage_servers;
