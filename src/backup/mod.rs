//! Base backups: taking them (`take`), the catalogue of complete ones (`catalog`), and what a
//! backup is in the repository (`manifest`). Composes `repo/` and `postgres/`; restoring is
//! `restore/`'s job.

pub mod catalog;
pub mod exclude;
pub mod manifest;
pub mod progress;
pub mod take;
