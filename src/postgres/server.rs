//! The postgres server process: its directories, command line and version checks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use super::BinDir;
use crate::process::{RunAs, Spec};

/// How to run this cluster's server.
#[derive(Debug, Clone)]
pub struct Server {
    pub bin: BinDir,
    pub data_dir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub parameters: BTreeMap<String, String>,
    /// Set when pgward is root: the OS user the server runs as.
    pub run_as: Option<RunAs>,
}

impl Server {
    /// `postgres -D <data> -p <port> -c unix_socket_directories=<dir> -c name=value...`.
    /// `extra` parameters override configured ones (the bootstrap server disables TCP).
    pub fn spec(&self, name: &str, extra: &[(&str, &str)]) -> Spec {
        let mut params: BTreeMap<&str, &str> = self
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let socket_dir = self.socket_dir.to_string_lossy();
        params.insert("unix_socket_directories", &socket_dir);
        for (k, v) in extra {
            params.insert(k, v);
        }
        let mut spec = Spec::new(name, self.bin.tool("postgres"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .run_as(self.run_as.clone());
        for (k, v) in params {
            spec = spec.arg("-c").arg(format!("{k}={v}"));
        }
        // Immediate shutdown if pgward dies: backends are told to exit, and crash recovery at
        // the next start makes the data consistent.
        spec.parent_death_signal = Signal::SIGQUIT;
        spec
    }

    /// A data directory is initialized once `PG_VERSION` exists (what initdb writes first
    /// and what the official image tests).
    pub fn is_initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Refuses a data directory written by another major version than the binaries.
    pub fn check_version(&self) -> Result<()> {
        let data_major = data_dir_major(&self.data_dir)?;
        if data_major != self.bin.major {
            bail!(
                "data directory {} was initialized by PostgreSQL {data_major}, but the server binaries in {} are PostgreSQL {}\n\
                 HINT: use the binaries of version {data_major} (postgres.bin_dir), or upgrade the cluster with pg_upgrade",
                self.data_dir.display(),
                self.bin.dir.display(),
                self.bin.major
            );
        }
        Ok(())
    }

    /// Creates the socket and data directories and, when root, gives them to the server's user
    /// (the data directory recursively if its top is not already theirs, as the official image
    /// does). postgres insists on a private data directory (0700).
    pub fn prepare_dirs(&self) -> Result<()> {
        fs::create_dir_all(&self.socket_dir)
            .with_context(|| format!("create socket directory {}", self.socket_dir.display()))?;
        fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("create data directory {}", self.data_dir.display()))?;
        if let Some(user) = &self.run_as {
            user.chown(&self.socket_dir)?;
            // setgid + group-writable: members of the server's group (pgbouncer...) may use it.
            fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o2775))
                .with_context(|| format!("chmod {}", self.socket_dir.display()))?;
            let meta = fs::metadata(&self.data_dir)
                .with_context(|| format!("stat {}", self.data_dir.display()))?;
            if meta.uid() != user.uid {
                chown_tree(&self.data_dir, user)?;
            }
        }
        let mode = fs::metadata(&self.data_dir)?.permissions().mode() & 0o777;
        // postgres accepts 0700 or 0750 only.
        if mode & 0o027 != 0 {
            fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 700 {}", self.data_dir.display()))?;
        }
        Ok(())
    }
}

/// The major version a data directory was initialized with (its `PG_VERSION`).
pub fn data_dir_major(data_dir: &Path) -> Result<u32> {
    let path = data_dir.join("PG_VERSION");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("{} holds no version number", path.display()))
}

/// chown -R, not following symlinks (a link into another tree must not hand that tree over).
pub fn chown_tree(root: &Path, user: &RunAs) -> Result<()> {
    let meta = fs::symlink_metadata(root).with_context(|| format!("stat {}", root.display()))?;
    std::os::unix::fs::lchown(root, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {} to {}", root.display(), user.name))?;
    if meta.is_dir() {
        for entry in fs::read_dir(root).with_context(|| format!("list {}", root.display()))? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}
