//! Base backups: taking them (`take`), the catalogue of complete ones (`catalog`), what a
//! backup is in the repository (`manifest`), and checking one without restoring it
//! (`verify`). Composes `repo/` and `postgres/`; restoring is `restore/`'s job.

pub mod catalog;
pub mod exclude;
pub mod manifest;
pub mod progress;
pub mod take;
pub mod verify;
