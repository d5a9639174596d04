//! Everything about the PostgreSQL server itself: finding its binaries, bootstrapping an empty
//! data directory like the official image, the server's command line and readiness, and its
//! on-disk formats: WAL file names and LSNs, WAL page headers, `pg_control`, a cluster's
//! identity; the backup-mode SQL of each major version; which relation blocks a range of
//! WAL records changed (`wal_records`); the names of pgward's own files in a data
//! directory (`data_dir`); closing the current WAL segment (`wal_switch`) and ending recovery (`promotion`); and whether a postmaster runs on a data directory, told from its
//! lock file across PID namespaces (`postmaster`).
//!
//! A leaf: uses `process` to run programs, knows nothing of supervision or storage.

pub mod backup_mode;
pub mod bin;
pub mod bootstrap;
pub mod control_file;
pub mod data_dir;
pub mod identity;
pub mod postmaster;
pub mod promotion;
pub mod ready;
pub mod server;
pub mod standby;
pub mod timeline;
pub mod wal;
pub mod wal_header;
pub mod wal_records;
pub mod wal_switch;

pub use bin::BinDir;
pub use identity::ClusterIdentity;
