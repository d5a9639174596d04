//! Integration tests: the built `pgward` binary with a real PostgreSQL server and real
//! storage servers.
//!
//! One test binary (compile time); modules by subject. Each test gets its own temp dir and
//! free ports, so they run in parallel. The shared fixtures are in `common` and the storage
//! servers in `storage_servers`; a subject module imports from those two only.

mod common;
mod storage_servers;

mod backup;
mod bundles;
mod check;
mod config_cli;
mod config_files;
mod container;
mod docs_cli;
mod expire;
mod exporter;
mod image;
mod incremental;
mod interruptions;
mod jobs;
mod lineage;
mod majors;
mod metrics_endpoints;
mod pid1;
mod postgres_run;
mod prometheus_rules;
mod races;
mod restore_safety;
mod restore_test;
mod security_env;
mod security_redaction;
mod security_restore;
mod security_socket;
mod services;
mod small_paths;
mod standby;
mod storage;
mod storage_requests;
mod transfers;
mod verify;
mod wal;
mod wal_records;
