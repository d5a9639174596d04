//! What makes a cluster itself, read from its data directory: the system identifier and WAL
//! segment size of `pg_control`, and the major version of `PG_VERSION`. WAL and backups of one
//! cluster carry these; a repository holds one cluster's.

use std::path::Path;

use anyhow::{Context, Result};

use super::control_file::ControlFile;
use super::server::data_dir_major;
use super::wal::WalSegSize;

/// A cluster's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    pub pg_major: u32,
    pub seg_size: WalSegSize,
}

impl ClusterIdentity {
    /// Reads the identity of the cluster in `data_dir`, off the async runtime.
    pub async fn read(data_dir: &Path) -> Result<ClusterIdentity> {
        let pg_major = data_dir_major(data_dir)?;
        let dir = data_dir.to_path_buf();
        let control = tokio::task::spawn_blocking(move || ControlFile::read(&dir))
            .await
            .context("join pg_control reader")??;
        Ok(ClusterIdentity {
            system_identifier: control.system_identifier,
            pg_major,
            seg_size: control.xlog_seg_size,
        })
    }
}

/// The WAL segment size of the cluster in `data_dir`, from its `pg_control` (read off the
/// async runtime).
pub async fn seg_size_of(data_dir: &Path) -> Result<WalSegSize> {
    let data_dir = data_dir.to_owned();
    let control = tokio::task::spawn_blocking(move || ControlFile::read(&data_dir))
        .await
        .context("join pg_control reader")??;
    Ok(control.xlog_seg_size)
}
