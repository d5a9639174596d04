//! Base backups: taking them (`take`: what to copy is `walk`'s, storing it `copy`'s, the
//! entries of what was stored are gathered off memory by `entries`, `block_delta` picks the
//! blocks an incremental reads, `exclusive` keeps it the only backup running, `control_copy`
//! copies `pg_control` last and checked, `complete` checks it before its manifest),
//! the catalogue of complete ones (`catalog`), which of them a cluster's lineage holds
//! (`lineage`), what a backup is in the repository
//! (`manifest`) and in words (`summary`), checking one without restoring it (`verify`), and
//! removing those retention no longer keeps, with the WAL only they needed (`retention`
//! decides, `expire` plans and deletes). Composes `repo/` and `postgres/`; restoring is
//! `restore/`'s job.

pub mod block_delta;
pub mod catalog;
pub mod complete;
mod control_copy;
mod copy;
pub mod entries;
pub mod exclude;
pub mod exclusive;
pub mod expire;
pub mod lineage;
pub mod manifest;
pub mod page_checksum;
pub mod progress;
pub mod retention;
pub mod summary;
pub mod take;
pub mod verify;
mod walk;

pub use copy::Bundling;
