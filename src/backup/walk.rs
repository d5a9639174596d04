//! What a backup copies: a walk of the data directory and its tablespaces, with the files
//! postgres rebuilds (or that must not be restored) left out by `exclude`'s rules. Blocking:
//! run it off the async runtime.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::exclude::{rule, Rule};
use super::manifest::{DirEntry, Tablespace};

/// A file to back up.
pub(super) struct Source {
    pub(super) path: String,
    pub(super) abs: PathBuf,
    pub(super) mode: u32,
    /// Size when walked, for ordering only (the copy records what it reads).
    pub(super) len: u64,
}

/// What a walk of the data directory found.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) dirs: Vec<DirEntry>,
    pub(super) files: Vec<Source>,
    pub(super) tablespaces: Vec<Tablespace>,
    pub(super) bytes: u64,
}

/// Lists what to back up. Blocking.
pub(super) fn walk(data_dir: &Path) -> Result<Walk> {
    let mut out = Walk::default();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            data_dir.to_owned()
        } else {
            data_dir.join(&rel)
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Dropped while the backup runs (a database, a temp directory): nothing to copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!("skipping {}: not a UTF-8 name", entry.path().display());
                continue;
            };
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let abs = entry.path();
            // A tablespace is a symlink in pg_tblspc: remember where it points, walk it.
            let meta = if rel == "pg_tblspc" {
                let link = std::fs::symlink_metadata(&abs)
                    .with_context(|| format!("stat {}", abs.display()))?;
                if link.file_type().is_symlink() {
                    let location = std::fs::read_link(&abs)
                        .with_context(|| format!("read link {}", abs.display()))?;
                    out.tablespaces.push(Tablespace {
                        oid: name.parse().with_context(|| {
                            format!("{} is not a tablespace oid", abs.display())
                        })?,
                        location: location.to_string_lossy().into_owned(),
                    });
                }
                std::fs::metadata(&abs)
            } else {
                entry.metadata()
            };
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
            };
            let mode = meta.permissions().mode() & 0o7777;
            match rule(&path, meta.is_dir()) {
                Rule::Skip => {}
                Rule::KeepEmpty => out.dirs.push(DirEntry { path, mode }),
                Rule::Include if meta.is_dir() => {
                    out.dirs.push(DirEntry {
                        path: path.clone(),
                        mode,
                    });
                    pending.push(path);
                }
                Rule::Include if meta.is_file() => {
                    out.bytes += meta.len();
                    out.files.push(Source {
                        path,
                        abs,
                        mode,
                        len: meta.len(),
                    });
                }
                // Sockets, fifos, symlinks outside pg_tblspc: not data.
                Rule::Include => {
                    tracing::debug!("skipping {}: not a regular file", abs.display())
                }
            }
        }
    }
    out.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    // Largest first: the long uploads start early and the tail of the backup is short.
    out.files.sort_by_key(|s| std::cmp::Reverse(s.len));
    Ok(out)
}
