//! pgward: PID 1 of a PostgreSQL container.
//!
//! # Layout
//! Floors, each importing only from the floors below it (and its own):
//!
//! **Ground** (leaves; import nothing above them, not even `config`):
//! - [`mod@failpoint`]: named points where tests stop or kill the process (test builds only).
//! - [`fsutil`]: durable local writes (temp file, fsync, rename, fsync dir); a directory held
//!   open, whose names are never followed as symlinks (for work in another user's directory).
//! - [`init`]: PID-1 duties off the async runtime: signal thread, the one reaper, subreaper,
//!   memory given back.
//! - [`logging`]: pgward's own log records, and their format.
//! - [`secret`]: values never printed (passwords, keys), for every floor.
//! - [`redact`]: what of a secret may show: secret-looking names, and secrets by their shape
//!   in text (conninfo `password=`, URL credentials and queries, webhook paths).
//! - [`spill`]: sorting more items than memory should hold (runs in unnamed temporary
//!   files, merged when read).
//! - [`tasks`]: the daemon's critical tasks (a panic or an early end stops pgward in order).
//! - [`process`]: spawning children (privilege drop, process group, parent-death signal,
//!   output relay, the environment they get), registered with the reaper.
//! - [`postgres`]: the server itself: binaries, bootstrap like the official image, command
//!   line, readiness, backup-mode SQL; its formats: WAL names and LSNs, WAL pages and
//!   records, `pg_control`, the cluster's identity.
//! - [`repo`]: the repository on object storage (file, S3, GCS, Azure): its settings, object
//!   format, codecs, key layout (`BackupId`), `repo.json`, create-only puts, retries (one
//!   layer per request), every request counted (`repo::counted`).
//!
//! **Config**: [`config`]: one YAML file → validated typed config (interpolation, secrets,
//! `file:line:col` errors, redaction, JSON Schema); builds the leaves' settings.
//!
//! **Domain** (compose the ground floor and `config`; never `site`, `cmd` or `app`):
//! - [`wal`]: archiving one WAL file, the daemon's archiver (look-ahead, staging, marks) and
//!   fetcher (prefetch spool), and what they may read and write in `pg_wal` for a client.
//! - [`backup`]: taking backups, the catalogue, manifests, verify, retention and expire.
//! - [`restore`]: a backup back into a data directory, with recovery settings (PITR).
//! - [`restore_test`]: a backup restored, recovered and queried in a scratch directory.
//! - [`check`]: the health checks, each OK or FAILED with the reason.
//! - [`supervisor`]: a pure state machine per service, its executor, ordered start and stop.
//! - [`scheduler`]: cron jobs, their policies, state and reports; the built-in actions come
//!   in from the wiring (`scheduler::Actions`).
//! - [`control`]: the unix-socket protocol between the CLI's clients and the daemon, and who
//!   is asking (the caller's uid, from `SO_PEERCRED`).
//! - [`metrics`]: the exporter (postgres's and pgward's metrics) and its HTTP endpoints.
//!
//! **Site**: [`site`]: the cluster's opened handles, built once per process from the config
//! (repository, run-as user, superuser connection, archive and restore commands, every
//! child's environment).
//!
//! **Top**: [`cmd`]: one file per command family (parse, call the domain, print); [`app`]:
//! `pgward run`, the daemon's wiring and ordered shutdown. [`cli`] is the command tree; only
//! `main.rs` uses `cmd`, and only `cmd::run` uses `app`.

pub mod app;
pub mod backup;
pub mod check;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
pub mod failpoint;
pub mod fsutil;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod redact;
pub mod repo;
pub mod restore;
pub mod restore_test;
pub mod scheduler;
pub mod secret;
pub mod site;
pub mod spill;
pub mod supervisor;
pub mod tasks;
pub mod wal;
